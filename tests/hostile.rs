//! A catalogue of hostile input over HTTP and WebSocket against one real gateway (in front
//! of the real echo backend). Every case must be answered with a 4xx `google.rpc.Status`
//! (or, for a socket, an error frame or the documented close code) — never a 5xx, a panic
//! or a hang — and the gateway must serve normally after the whole catalogue.
//!
//! Two kinds of answer are not JSON: what the HTTP layer refuses before a request exists
//! (a malformed request line or header: a bare 400; a head over `max_header_bytes`: 431),
//! and cases whose input is legal (`-0`, a `grpc-timeout` the gateway ignores because it
//! does not parse), which must simply not fail.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client, raw_request};
use tokio_tungstenite::tungstenite::Message;

const ROUTES: &str = r#"
routes:
  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService, unannotated: post }
  - http: { put: "/v1/labels/{id}", body: "labels" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
  - websocket: "/ws/echo/chat"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
"#;

async fn setup() -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nlimits: {{ max_body: 64KiB, max_uri: 4KiB, max_ws_frame: 16KiB }}\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "    timeout: 5s\n"),
    );
    let gw = gateway::start(&config, &[("m.yaml", ROUTES)]).await;
    (echo, gw)
}

/// What a case must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exactly this status, with a `google.rpc.Status` body.
    Status(u16),
    /// Any 4xx with a `google.rpc.Status` body.
    ClientError,
    /// Not a 5xx (legal input, or an answer the HTTP layer gives without a body).
    NotServerError,
}

fn deep(open: &str, close: &str, levels: usize) -> String {
    format!("{}{}", open.repeat(levels), close.repeat(levels))
}

/// JSON bodies POSTed to `/v1/echo` (body `*` of `EchoMessage`).
fn body_cases() -> Vec<(String, Vec<u8>, Expect)> {
    use Expect::*;
    let mut cases: Vec<(String, Vec<u8>, Expect)> = [
        (r#"{"id":"a","id":"b"}"#, Status(400)),
        (r#"{"ratio": 1e400}"#, Status(400)),
        (r#"{"small": 18446744073709551616}"#, Status(400)),
        (r#"{"small": 2147483648}"#, Status(400)),
        (r#"{"small": "abc"}"#, Status(400)),
        (r#"{"small": 1.5}"#, Status(400)),
        (r#"{"small": 01}"#, Status(400)),
        (r#"{"big": "1.5"}"#, Status(400)),
        (r#"{"big": 9223372036854775808}"#, Status(400)),
        (r#"{"ubig": -1}"#, Status(400)),
        (r#"{"score": 1e39}"#, Status(400)),
        (r#"{"flag": "true"}"#, Status(400)),
        (r#"{"color": "PURPLE"}"#, Status(400)),
        (r#"{"colors": ["RED", "PURPLE"]}"#, Status(400)),
        (r#"{"tags": "not a list"}"#, Status(400)),
        (r#"{"tags": [1, 2]}"#, Status(400)),
        (r#"{"tags": ["a", null]}"#, Status(400)),
        (r#"{"nested": "text"}"#, Status(400)),
        (r#"{"nested": {"child": {"count": "x"}}}"#, Status(400)),
        (r#"{"blob": "!!not base64!!"}"#, Status(400)),
        (r#"{"at": "yesterday"}"#, Status(400)),
        (r#"{"at": "2024-13-45T99:99:99Z"}"#, Status(400)),
        (r#"{"ttl": "5 minutes"}"#, Status(400)),
        (r#"{"mask": 5}"#, Status(400)),
        (r#"{"extra": "not a struct"}"#, Status(400)),
        (
            r#"{"any": {"@type": "type.googleapis.com/no.such.Type", "x": 1}}"#,
            Status(400),
        ),
        (r#"{"maybeBig": "x"}"#, Status(400)),
        (r#"{"labels": {"a": 1}}"#, Status(400)),
        (r#"{"text": "a", "number": 1}"#, Status(400)),
        (r#"{"nope": 1}"#, Status(400)),
        (r#"{"id": "\ud800"}"#, Status(400)),
        (r#"{"id": "a"} trailing"#, Status(400)),
        (r#"{"id":"#, Status(400)),
        (r#"[]"#, Status(400)),
        (r#""a string""#, Status(400)),
        (r#"{"small": -0}"#, NotServerError),
    ]
    .into_iter()
    .map(|(body, expect)| (body.to_string(), body.as_bytes().to_vec(), expect))
    .collect();
    cases.push((
        "invalid UTF-8".into(),
        b"{\"id\": \"\xff\xfe\"}".to_vec(),
        Status(400),
    ));
    let nested = format!(r#"{{"extra": {{"k": {}}}}}"#, deep("[", "]", 10_000));
    cases.push((
        "10,000 nested arrays".into(),
        nested.into_bytes(),
        Status(400),
    ));
    let value = format!(r#"{{"value": {}}}"#, deep(r#"{"a":"#, "}", 10_000));
    cases.push((
        "10,000 nested objects".into(),
        value.into_bytes(),
        Status(400),
    ));
    let messages = format!(
        r#"{{"nested": {}"x"{}}}"#,
        r#"{"child": "#.repeat(5_000),
        "}".repeat(5_000)
    );
    cases.push((
        "5,000 nested messages".into(),
        messages.into_bytes(),
        Status(400),
    ));
    let huge = format!(r#"{{"numbers": [{}1]}}"#, "1,".repeat(100_000));
    cases.push(("huge repeated field".into(), huge.into_bytes(), Status(413)));
    cases
}

/// GET paths (path variables and query strings).
fn path_cases() -> Vec<(String, Expect)> {
    use Expect::*;
    let mut cases: Vec<(String, Expect)> = [
        ("/v1/echo/1?small=abc", Status(400)),
        ("/v1/echo/1?small=99999999999", Status(400)),
        ("/v1/echo/1?big=1e3", Status(400)),
        ("/v1/echo/1?color=PURPLE", Status(400)),
        ("/v1/echo/1?flag=yes", Status(400)),
        ("/v1/echo/1?ratio=1e400", Status(400)),
        ("/v1/echo/1?at=not-a-time", Status(400)),
        ("/v1/echo/1?ttl=forever", Status(400)),
        ("/v1/echo/1?blob=%%%", Status(400)),
        ("/v1/echo/1?a=%zz", Status(400)),
        ("/v1/echo/1?a=%ff", Status(400)),
        ("/v1/echo/1?nested=x", Status(400)),
        ("/v1/echo/1?labels=x", Status(400)),
        ("/v1/echo/1?nested.child.count=x", Status(400)),
        ("/v1/echo/a%2Fb", NotServerError),
        ("/v1/echo/%2e%2e", NotServerError),
        ("/v1/echo/..%2f..%2fadmin", NotServerError),
        ("/v1/echo/../../admin/routes", NotServerError),
        ("/v1/echo/%00", NotServerError),
        ("/v1/echo/%ff", ClientError),
        ("/v1/files/1/a/../../../etc/passwd", NotServerError),
        ("/no/such/route", Status(404)),
    ]
    .into_iter()
    .map(|(path, expect)| (path.to_string(), expect))
    .collect();
    cases.push((
        format!("/v1/echo/1?nested.{}name=x", "child.".repeat(40)),
        Status(400),
    ));
    cases.push((format!("/v1/echo/{}", "x".repeat(5000)), Status(414)));
    cases
}

/// Headers on `GET /v1/echo/1`.
fn header_cases() -> Vec<(&'static str, &'static str, Expect)> {
    use Expect::*;
    vec![
        ("grpc-timeout", "abc", NotServerError),
        ("grpc-timeout", "99999999H", NotServerError),
        ("grpc-timeout", "-1S", NotServerError),
        ("x-request-timeout", "-5s", NotServerError),
        ("x-request-timeout", "soon", NotServerError),
        ("grpc-metadata-x-blob-bin", "***", Status(400)),
        (
            "grpc-metadata-connection",
            "te, content-type",
            NotServerError,
        ),
        ("content-type", "application/xml", NotServerError),
    ]
}

/// Raw HTTP/1.1 requests a client library would refuse to send.
fn raw_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut cases = vec![
        (
            "CR inside a header value",
            b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "obsolete line folding",
            b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        (
            "NUL in a header value",
            b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "space in the header name",
            b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX A: b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            // RFC 9112 §6.3: chunked wins and the length is dropped; the request is then
            // well-formed (an empty body), and nothing is forwarded as HTTP/1, so there is
            // no second parser to smuggle past. Must not fail; need not be refused.
            "both Content-Length and chunked (accepted)",
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "two different Content-Lengths",
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}".to_vec(),
        ),
        (
            "bad chunk size",
            b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "garbage request line",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
        ),
    ];
    let big = format!(
        "GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 << 10)
    );
    cases.push(("64 KiB of headers", big.into_bytes()));
    cases
}

fn check(what: &str, status: u16, body: &[u8], expect: Expect) {
    assert!(
        status < 500,
        "{what}: {status} {}",
        String::from_utf8_lossy(body)
    );
    let status_body = || {
        let json: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| panic!("{what}: not JSON: {}", String::from_utf8_lossy(body)));
        assert!(
            json["code"].is_number() && json["message"].is_string(),
            "{what}: not a google.rpc.Status: {json}"
        );
        json
    };
    match expect {
        Expect::Status(expected) => {
            assert_eq!(
                status,
                expected,
                "{what}: {}",
                String::from_utf8_lossy(body)
            );
            status_body();
        }
        Expect::ClientError => {
            assert!((400..500).contains(&status), "{what}: {status}");
            status_body();
        }
        Expect::NotServerError => {
            if status >= 400 && !body.is_empty() {
                status_body();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_catalogue_gets_4xx_and_the_gateway_keeps_serving() {
    let (_echo, gw) = setup().await;
    let http = client();
    let mut count = 0;

    for (what, body, expect) in body_cases() {
        let response = http
            .post(gw.url("/v1/echo"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        check(&what, status, &bytes, expect);
        count += 1;
    }
    // A map as the body field is parsed as a JSON value first.
    for body in [r#"{"a":"1","a":"2"}"#, r#"{"a": {"b": 1}}"#, r#"["a"]"#] {
        let response = http
            .put(gw.url("/v1/labels/1"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        check(
            body,
            status,
            &response.bytes().await.unwrap(),
            Expect::Status(400),
        );
        count += 1;
    }
    for (path, expect) in path_cases() {
        let (status, _, body) = raw_request(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        check(&path, status, &body, expect);
        count += 1;
    }
    for (name, value, expect) in header_cases() {
        let response = http
            .get(gw.url("/v1/echo/1"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        check(
            &format!("{name}: {value}"),
            status,
            &response.bytes().await.unwrap(),
            expect,
        );
        count += 1;
    }
    for (what, request) in raw_cases() {
        let (status, _, body) = raw_request(gw.addr, &request).await;
        if !what.ends_with("(accepted)") {
            assert!((400..500).contains(&status), "{what}: {status}");
        }
        check(what, status, &body, Expect::NotServerError);
        count += 1;
    }
    count += websocket_cases(&gw).await;
    assert!(count >= 80, "{count} cases");

    // The gateway serves normally after all of it.
    let response = http.get(gw.url("/v1/echo/ok")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "ok");
}

/// Frames onto the bidi echo route; returns how many cases ran.
async fn websocket_cases(gw: &TestGateway) -> usize {
    let url = format!("ws://{}/ws/echo/chat", gw.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let frames: Vec<Message> = vec![
        Message::text("not json"),
        Message::text(r#"{"id":"a","id":"b"}"#),
        Message::text(r#"{"small": 18446744073709551616}"#),
        Message::text(r#"{"ratio": 1e400}"#),
        Message::text(r#"{"color": "PURPLE"}"#),
        Message::text(r#"{"small": "abc"}"#),
        Message::text(deep("[", "]", 5_000)),
        Message::text(r#"{"id": "\ud800"}"#),
        Message::binary(b"\xff\xfe\xfd".to_vec()),
        Message::binary(br#"{"id": 5}"#.to_vec()),
    ];
    let count = frames.len();
    for frame in frames {
        let what = format!("{frame:?}");
        socket.send(frame).await.unwrap();
        let answer = next_text(&mut socket).await;
        let json: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(json["error"]["code"], 3, "{what}: {json}");
    }
    // The socket is still good for valid frames.
    socket
        .send(Message::text(r#"{"id": "still-here"}"#))
        .await
        .unwrap();
    let json: Value = serde_json::from_str(&next_text(&mut socket).await).unwrap();
    assert_eq!(json["id"], "still-here");

    // A frame over max_ws_frame closes with 1009.
    socket
        .send(Message::text(format!(
            r#"{{"id": "{}"}}"#,
            "x".repeat(32 << 10)
        )))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, 1009);
    count + 2
}

async fn next_text(socket: &mut support::ws::Socket) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5s")
            .expect("socket open")
            .expect("no error");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn close_code(socket: &mut support::ws::Socket) -> u16 {
    support::ws::close_code(socket).await
}
