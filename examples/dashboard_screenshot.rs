//! Takes the README's screenshot of the dashboard (docs/dashboard.png): with the demo
//! running (`scripts/demo`), sends it a little traffic, waits until the page shows
//! request rates, and photographs it in headless Chromium (Debian's `chromium`).
//!
//! ```sh
//! scripts/demo &                                  # gateway on :8080, admin on :9901
//! cargo run --example dashboard_screenshot        # [gateway URL] [admin URL] [output]
//! ```

// Shared with the tests, which use more of it.
#[allow(dead_code)]
#[path = "../tests/support/chromium.rs"]
mod chromium;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Demo requests, a mix of targets: gRPC, a composed page, AMQP request-reply.
const TRAFFIC: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/v1/products/1", None),
    ("GET", "/v1/products/2", None),
    ("GET", "/mobile/v1/products/1", None),
    ("GET", "/v1/productdetails/1", None),
    (
        "POST",
        "/v1/shipping/quotes",
        Some(r#"{"productId":"1","quantity":2}"#),
    ),
];

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let gateway = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let admin = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9901".into());
    let output = args.next().unwrap_or_else(|| "docs/dashboard.png".into());
    assert!(
        chromium::installed(),
        "`chromium` is needed (apt-get install chromium)"
    );

    switchboard::tls::install_crypto_provider();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client");
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (method, path, body) = TRAFFIC[n % TRAFFIC.len()];
                n += 1;
                let url = format!("{gateway}{path}");
                let request = match body {
                    Some(body) => http.request(method.parse().unwrap(), url).body(body),
                    None => http.request(method.parse().unwrap(), url),
                };
                let _ = request.send().await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let mut browser = chromium::Browser::open(&format!("{admin}/"), 1280, 1000).await;
    let ready =
        "[...document.querySelectorAll('td.rate')].filter(td => Number(td.textContent) > 0).length";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while browser.evaluate(ready).await.as_u64().unwrap_or(0) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard showed no request rates within 30 s: is the demo running?"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // One more refresh, so that p99 and rates describe a full interval of traffic.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // The whole page, not just the first screenful.
    let height = browser
        .evaluate("document.documentElement.scrollHeight")
        .await
        .as_u64()
        .unwrap_or(1000);
    browser
        .command(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({ "width": 1280, "height": height.min(4000), "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    browser.screenshot(std::path::Path::new(&output)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    println!("wrote {output}");
}
