//! Server streaming over HTTP: NDJSON by default, SSE on `Accept: text/event-stream`,
//! errors before the first message as HTTP statuses and after it in-band, and a client
//! that goes away cancelling the backend stream.

mod support;

use futures_util::StreamExt;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client};

async fn setup() -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "    timeout: 2s\n"),
    );
    let mappings =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    (echo, gw)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_stream_carries_every_message() {
    let (_echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let messages = lines(&response.text().await.unwrap());
    assert_eq!(messages.len(), 3);
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(message["id"], "s", "bare message, no wrapper");
        assert_eq!(message["big"], (i + 1).to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_on_accept_header() {
    let (_echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=2"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data event")).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["big"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_after_first_message_ends_the_stream_in_band() {
    let (_echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=2&failCode=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the status line was already sent");
    let messages = lines(&response.text().await.unwrap());
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["big"], "2");
    assert_eq!(messages[2]["error"]["code"], 9);
    assert_eq!(messages[2]["error"]["message"], "stream failed");
    assert_eq!(messages[2]["error"]["details"][0]["reason"], "FORCED");

    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=1&fail_code=14"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .expect("an error event");
    assert_eq!(serde_json::from_str::<Value>(data).unwrap()["code"], 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_before_first_message_gets_the_http_status() {
    let (_echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=0&failCode=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 5);
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=3"))
        .header("grpc-metadata-x-echo-fail", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // An empty stream is a 200 with an empty body.
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_backend_stream() {
    let (echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/s/stream?small=1000"))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(!first.is_empty());
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while echo.stream_cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
