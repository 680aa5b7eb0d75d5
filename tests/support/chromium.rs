//! A headless Chromium driven over the Chrome DevTools Protocol (CDP): launched with
//! `--remote-debugging-port=0` in a throw-away profile folder, whose `DevToolsActivePort`
//! file names the port it chose; the page is then read and photographed with
//! `Runtime.evaluate` and `Page.captureScreenshot` over a WebSocket. No WebDriver.
//!
//! Every wait is bounded, and the browser's whole process group is killed when the
//! [`Browser`] is dropped, so a failing test leaves no browser behind.

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Debian package's binary.
pub const BINARY: &str = "chromium";

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether the browser binary is installed.
pub fn installed() -> bool {
    std::process::Command::new(BINARY)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running headless Chromium showing one page.
pub struct Browser {
    process: Process,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// `Runtime.exceptionThrown` events seen so far: uncaught errors of the page's script.
    pub exceptions: Vec<Value>,
}

/// The browser process and its profile folder: both gone when this is dropped.
struct Process {
    child: tokio::process::Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium on `url` with a `width`×`height` window and connects to the page.
    ///
    /// # Panics
    /// When the browser does not start or expose its page within 30 s: test setup.
    pub async fn open(url: &str, width: u32, height: u32) -> Browser {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("switchboard-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile folder");
        let child = tokio::process::Command::new(BINARY)
            .args([
                "--headless",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                // Tests and CI run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--hide-scrollbars",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Chromium logs D-Bus complaints there on headless machines: noise for a test.
            .stderr(Stdio::null())
            // Its own process group: dropping the browser kills renderers and helpers too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // From here on, a panic drops `process` and so kills the browser.
        let mut process = Process { child, profile };
        let port = process.devtools_port().await;
        let page = page_socket(port).await;
        let mut browser = Browser {
            process,
            page,
            next_id: 0,
            exceptions: Vec::new(),
        };
        browser.command("Runtime.enable", json!({})).await;
        browser
    }
}

impl Process {
    /// Waits (≤ 30 s) for the port the browser wrote to `DevToolsActivePort`.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited before it opened DevTools: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium wrote no {} within 30 s",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Browser {
    /// Sends one DevTools command to the page and returns its `result`; events that
    /// arrive meanwhile are skipped (uncaught exceptions are kept in `exceptions`). Panics on a protocol error or after 15 s.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        let exchange = async {
            self.page
                .send(Message::text(request))
                .await
                .expect("send a DevTools command");
            while let Some(message) = self.page.next().await {
                let Message::Text(text) = message.expect("read from DevTools") else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
                if reply["id"] == id {
                    return reply;
                }
                if reply["method"] == "Runtime.exceptionThrown" {
                    self.exceptions.push(reply["params"].clone());
                }
            }
            panic!("DevTools closed the connection during {method}");
        };
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("DevTools did not answer {method} within 15 s"));
        if let Some(error) = reply.get("error") {
            panic!("DevTools {method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// The value of the JavaScript expression `expression` in the page (promises awaited).
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("`{expression}` threw in the page: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// A PNG of the page as it is shown now, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let result = self
            .command("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let data = result["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The whole group: the browser process and the renderers it started.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The WebSocket of the browser's first page target, as listed by `/json/list` (≤ 30 s).
async fn page_socket(port: u16) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let list = format!("http://127.0.0.1:{port}/json/list");
    switchboard::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let url = loop {
        let targets: Option<Value> = match http.get(&list).send().await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let page = targets.as_ref().and_then(Value::as_array).and_then(|t| {
            t.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        });
        if let Some(url) = page {
            break url.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium listed no page at {list} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .expect("DevTools accepted the connection within 10 s")
    .expect("connect to the page's DevTools socket");
    socket
}
