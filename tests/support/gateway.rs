//! Starting a real gateway in-process for a test: a config written to a temp folder,
//! listeners on free ports, stopped when dropped. Plus a raw HTTP/1.1 client for requests
//! that a well-behaved client library would refuse to send.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard::{Gateway, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// The repository root (for `descriptors/`, `mappings/`, fixtures).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchboard-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folder");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shipped `switchboard.yaml` pointed at `shop` (on free ports) and at the repository's
/// descriptors, with `mappings` in place of its `[mappings/]`, without listen/admin lines.
pub fn demo_config(shop: &super::shop::Shop, mappings: &str) -> String {
    let mut config = std::fs::read_to_string(repo().join("switchboard.yaml")).unwrap();
    for (default_port, addr) in [
        (50051, shop.catalog),
        (50052, shop.reviews),
        (50053, shop.inventory),
        (50054, shop.orders),
        (50055, shop.chat),
    ] {
        config = config.replace(
            &format!("${{SHOP_HOST:-127.0.0.1}}:{default_port}"),
            &addr.to_string(),
        );
    }
    config
        .lines()
        .filter(|l| !l.starts_with("listen:") && !l.starts_with("admin:"))
        .map(|l| {
            l.replace(
                "[descriptors/]",
                &format!("[\"{}\"]", repo().join("descriptors").display()),
            )
            .replace("[mappings/]", mappings)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running gateway. Dropping it shuts it down.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes `config` (listen/admin lines are added) and `files` into a temp folder and
/// starts a gateway on it. Relative paths in `config` are relative to that folder.
pub async fn start(config: &str, files: &[(&str, &str)]) -> TestGateway {
    let dir = TempDir::new("gw");
    for (name, text) in files {
        dir.write(name, text);
    }
    let config = format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nshutdown_grace: 2s\n{config}");
    let path = dir.write("switchboard.yaml", &config);
    let gateway = match Gateway::load(&path).await {
        Ok(g) => Arc::new(g),
        Err(errors) => panic!("gateway config refused:\n{errors}"),
    };
    let server = Server::bind(gateway.clone()).await.expect("bind gateway");
    let addr = server.local_addr().expect("local addr");
    let admin = server.admin_addr().expect("admin addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestGateway {
        addr,
        admin,
        gateway,
        dir,
        stop: Some(stop),
    }
}

/// Loads the config at `path`, which must be refused with every one of `expected` among
/// its errors.
pub async fn assert_refused(path: &Path, expected: &[&str]) {
    let Err(errors) = Gateway::load(path).await else {
        panic!("the config should be refused");
    };
    let text = errors.to_string();
    for expected in expected {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

/// Config lines for an upstream named `name` at `addr`.
pub fn grpc_upstream(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("  {name}:\n    grpc: {{ endpoints: [\"http://{addr}\"] }}\n{extra}")
}

/// The echo fixture protos folder.
pub fn echo_protos() -> String {
    repo().join("tests/fixtures/protos").display().to_string()
}

/// A raw HTTP/1.1 exchange: sends `request` bytes as they are, returns (status, headers
/// text, body) of the response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("response within 10s")
    .expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head, response[split + 4..].to_vec())
}

/// The body of a GET of `url` (with a fresh [`client`]) as JSON; the status is not checked.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The body of a GET of `url` (with a fresh [`client`]) as text; the status is not checked.
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    // The gateway's reqwest (JWKS over https) brings TLS into the test client too.
    switchboard::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        // Below the gateway's bound on an idle kept-alive HTTP/1 connection
        // (`limits.header_read_timeout`, 10 s): a pooled connection the gateway closes
        // just as a request goes out on it fails that request ("connection closed before
        // message completed"), as with any server's keep-alive limit.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("http client")
}
