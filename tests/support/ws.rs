//! A WebSocket client for the tests: a real tokio-tungstenite socket onto a test gateway,
//! JSON frames in and out, and a JWT for routes with `auth: required`.

use super::gateway::TestGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The HMAC secret of [`jwt_auth`] and [`token`].
pub const JWT_SECRET: &str = "a-long-enough-test-secret-0123456789";

/// Config lines: HS256 tokens signed with [`JWT_SECRET`], `sub` forwarded as `x-user-id`.
pub fn jwt_auth() -> String {
    format!(
        "auth:\n  jwt:\n    allow_any_issuer: true\n    allow_any_audience: true\n    algorithms: [HS256]\n    secret: {JWT_SECRET}\n    forward_claims: {{ sub: x-user-id }}\n"
    )
}

/// An HS256 token for `sub`, signed with [`JWT_SECRET`], valid for 5 minutes.
pub fn token(sub: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn ws_url(gw: &TestGateway, path: &str) -> String {
    format!("ws://{}{}", gw.addr, path)
}

/// A socket onto `path`; the handshake must succeed (101).
pub async fn connect(gw: &TestGateway, path: &str) -> Socket {
    connect_with(gw, path, &[]).await
}

/// A socket onto `path` with `headers` on the upgrade request; the handshake must succeed.
pub async fn connect_with(
    gw: &TestGateway,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Socket {
    let mut request = ws_url(gw, path).into_client_request().expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

pub async fn send_text(socket: &mut Socket, text: &str) {
    socket
        .send(Message::text(text.to_string()))
        .await
        .expect("send frame");
}

pub async fn send(socket: &mut Socket, value: Value) {
    send_text(socket, &value.to_string()).await;
}

/// The next data frame as JSON (pings are skipped), within 5 s.
pub async fn next_json(socket: &mut Socket) -> Value {
    next_json_within(socket, Duration::from_secs(5)).await
}

/// The next data frame as JSON (pings are skipped), within `within`.
pub async fn next_json_within(socket: &mut Socket, within: Duration) -> Value {
    loop {
        let message = tokio::time::timeout(within, socket.next())
            .await
            .unwrap_or_else(|_| panic!("a frame within {within:?}"))
            .expect("socket still open")
            .expect("no socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("frame is JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The `google.rpc.Status` of the next frame (within `within`), which must be an error frame.
pub async fn next_error_within(socket: &mut Socket, within: Duration) -> Value {
    let frame = next_json_within(socket, within).await;
    assert!(
        frame["error"]["code"].is_number(),
        "not an error frame: {frame}"
    );
    frame["error"].clone()
}

/// Reads until the close frame and returns its code, within 5 s.
pub async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a close frame within 5s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(Message::Text(text))) => panic!("unexpected frame before close: {text}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}
