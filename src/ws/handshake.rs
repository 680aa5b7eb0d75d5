//! Before the upgrade: is this a WebSocket handshake, may it proceed, and with which
//! subprotocol. Every refusal here is a plain HTTP response with a `google.rpc.Status`
//! body (contract §5, §9): the browser never gets a socket.
//!
//! Browsers cannot set headers on a WebSocket, so a token may come as the subprotocol
//! pair `["bearer", "<token>"]` (`new WebSocket(url, ["bearer", token])`) or as the query
//! parameter `access_token`. [`browser_credentials`] moves either into
//! `Authorization: Bearer <token>` (unless the request has one already), the form the
//! route's auth policy reads; the request pipeline (`proxy`) calls it before that policy runs.

use super::session::{self, Session};
use super::{Full, Hub, Permit, WsRoute};
use crate::error::GatewayError;
use crate::middleware::Identity;
use crate::routing::{RouteTable, Target};
use crate::telemetry::trace::TraceContext;
use crate::upstream::metadata::{ClientMetadata, grpc_metadata};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use percent_encoding::percent_decode_str;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::Instrument;

/// The subprotocol that announces a token in the next offered subprotocol.
const BEARER_PROTOCOL: &str = "bearer";
/// The query parameter that may carry a token.
const TOKEN_PARAMETER: &str = "access_token";

/// tungstenite allocates (and zero-fills) this much per socket and reads at most this
/// much per read call: small, because idle sockets are the common case. A busy socket's
/// small reads are answered from the listener's read-ahead block (listener/read_ahead.rs),
/// not by the kernel. A bigger frame grows the buffer while it is read. Not smaller: the
/// frames read share the buffer until they are transcoded, so once it is used up it is
/// allocated anew, each read through four layers of wrappers; at 512 bytes (every six
/// chat messages) that was 12% of a busy socket's instructions per message, for 1.5 KiB
/// less per idle socket (BENCHMARKS.md).
const READ_BUFFER: usize = 2048;
/// Outgoing frames are written out once this much is buffered (and at every flush).
const WRITE_BUFFER: usize = 16 << 10;

/// What the checks before the upgrade hand to the socket: its place in the connection
/// count, and the policies that may still close it later with 1008.
pub(super) struct Admission {
    pub(super) permit: Permit,
    /// Consulted for every data frame from the client; a refusal sends
    /// `{"error": <status>}` and closes with 1008 (e.g. a per-message rate limit).
    pub frame_policy: Option<Box<dyn Fn() -> Result<(), GatewayError> + Send + Sync>>,
    /// The socket is closed with 1008 (UNAUTHENTICATED) at this instant, e.g. the `exp`
    /// of the token it was opened with.
    pub expires_at: Option<tokio::time::Instant>,
}

/// Upgrades a request on the websocket route `index` of `table` and runs the socket in
/// its own task, or refuses with an HTTP error.
pub(crate) async fn upgrade(
    hub: &Arc<Hub>,
    table: &Arc<RouteTable>,
    index: usize,
    request: Request<Body>,
    trace: &TraceContext,
) -> Result<Response<Body>, GatewayError> {
    let Target::WebSocket(route) = &table.routes[index].target else {
        return Err(GatewayError::internal("not a websocket route"));
    };
    let (mut parts, _body) = request.into_parts();
    let mut upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| {
            GatewayError::invalid_argument(format!(
                "this route takes WebSocket connections: {rejection}"
            ))
            .with_status(StatusCode::UPGRADE_REQUIRED)
            .with_header(header::UPGRADE, HeaderValue::from_static("websocket"))
        })?;
    let admission = admit(hub, table, route, &parts)?;
    if let Some(protocol) = chosen_protocol(&parts.headers) {
        upgrade.set_selected_protocol(protocol);
    }

    let metadata = grpc_metadata(
        &parts.headers,
        trace,
        parts.extensions.get::<Identity>(),
        ClientMetadata {
            grpc_metadata: route.backend.takes_client_metadata(),
            authorization: route.forward_authorization,
            plain_headers: false,
        },
    )?;

    let max_frame = usize::try_from(table.limits.max_ws_frame.0).unwrap_or(usize::MAX);
    let span =
        tracing::info_span!("websocket", trace_id = trace.id(), route = %table.routes[index].name);
    let session = Session {
        table: table.clone(),
        index,
        admission,
        metadata,
    };
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| session::run(socket, session).instrument(span)))
}

/// The checks a socket needs before the upgrade, after the route's auth and rate-limit
/// policy (which the request pipeline runs for every route). A check that returns `Err`
/// refuses with that error's HTTP status and body; one that must act later fills the
/// [`Admission`] hooks (closing with 1008).
fn admit(
    hub: &Arc<Hub>,
    table: &RouteTable,
    route: &WsRoute,
    parts: &Parts,
) -> Result<Admission, GatewayError> {
    if hub.is_shutting_down() {
        return Err(GatewayError::unavailable("the gateway is shutting down"));
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let client = table.middleware.client_ip(peer, &parts.headers);
    let limit = table.limits.max_ws_connections;
    let per_client = table.limits.max_ws_per_client;
    let permit = match hub.try_acquire(limit, client, per_client, &route.metrics) {
        Ok(permit) => permit,
        Err(Full::Gateway) => {
            return Err(GatewayError::unavailable(format!(
                "too many WebSocket connections (limit {limit})"
            )));
        }
        Err(Full::Client) => {
            return Err(GatewayError::new(
                tonic::Code::ResourceExhausted,
                format!("too many WebSocket connections from this client (limit {per_client})"),
            ));
        }
    };
    // The socket must not outlive the token that opened it (contract: close 1008).
    let expires_at = parts
        .extensions
        .get::<Identity>()
        .and_then(|identity| identity.claims.as_ref())
        .and_then(|claims| claims.get("exp"))
        .and_then(expiry_instant);
    Ok(Admission {
        permit,
        frame_policy: None,
        expires_at,
    })
}

/// A JWT `exp` (seconds since the epoch, possibly fractional) as a tokio instant.
fn expiry_instant(exp: &serde_json::Value) -> Option<tokio::time::Instant> {
    let exp = exp.as_f64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = (exp - now).max(0.0);
    // A far-future `exp` is "never" for a socket (and must not overflow the instant).
    let left = std::time::Duration::try_from_secs_f64(left.min(1e9)).ok()?;
    tokio::time::Instant::now().checked_add(left)
}

/// Moves a browser's token (the subprotocol after `bearer`, or `access_token`) into
/// `Authorization`, unless the request has that header already.
pub(crate) fn browser_credentials<B>(request: &mut Request<B>) {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return;
    }
    let offered = offered_protocols(request.headers());
    let token = match offered
        .iter()
        .position(|p| p.eq_ignore_ascii_case(BEARER_PROTOCOL))
    {
        Some(i) => offered.get(i + 1).map(|t| t.to_string()),
        None => request.uri().query().and_then(token_from_query),
    };
    if let Some(Ok(mut value)) = token.map(|t| HeaderValue::from_str(&format!("Bearer {t}"))) {
        value.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
}

/// The subprotocol to answer with: `bearer` when the token came that way (never the
/// token itself), otherwise the first one offered, since a browser fails the handshake
/// when it offered subprotocols and none comes back. Frames are JSON whatever it is.
fn chosen_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let offered = offered_protocols(headers);
    if offered
        .iter()
        .any(|p| p.eq_ignore_ascii_case(BEARER_PROTOCOL))
    {
        return Some(HeaderValue::from_static(BEARER_PROTOCOL));
    }
    offered.first().and_then(|p| HeaderValue::from_str(p).ok())
}

/// `Sec-WebSocket-Protocol` values, in the order offered.
fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The decoded `access_token` of a query string.
fn token_from_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == TOKEN_PARAMETER)
            .then(|| percent_decode_str(value).decode_utf8().ok())
            .flatten()
            .map(|token| token.into_owned())
            .filter(|token| !token.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, protocols: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(p) = protocols {
            builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn bearer_pair_becomes_authorization_and_echoes_bearer() {
        let mut r = request("/ws", Some("json, bearer, abc.def.ghi"));
        browser_credentials(&mut r);
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer abc.def.ghi");
        assert_eq!(chosen_protocol(r.headers()).unwrap(), "bearer");
    }

    #[test]
    fn query_token_becomes_authorization() {
        let mut r = request("/ws?x=1&access_token=a%2Eb", None);
        browser_credentials(&mut r);
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer a.b");
        assert!(chosen_protocol(r.headers()).is_none());
    }

    #[test]
    fn explicit_authorization_wins_and_other_protocols_are_echoed() {
        let mut r = request("/ws?access_token=q", Some("chat.v1, json"));
        r.headers_mut()
            .insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        browser_credentials(&mut r);
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer h");
        assert_eq!(chosen_protocol(r.headers()).unwrap(), "chat.v1");
    }

    #[test]
    fn token_expiry_becomes_the_socket_deadline() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let soon = expiry_instant(&serde_json::json!(now + 60)).unwrap();
        let left = soon - tokio::time::Instant::now();
        assert!(
            left > std::time::Duration::from_secs(55) && left <= std::time::Duration::from_secs(61)
        );
        let past = expiry_instant(&serde_json::json!(now - 60)).unwrap();
        assert!(past <= tokio::time::Instant::now());
        assert!(expiry_instant(&serde_json::json!(1e300)).is_some());
        assert!(expiry_instant(&serde_json::json!("soon")).is_none());
    }

    #[test]
    fn nothing_offered_nothing_echoed() {
        let mut r = request("/ws", None);
        browser_credentials(&mut r);
        assert!(!r.headers().contains_key(header::AUTHORIZATION));
        assert!(chosen_protocol(r.headers()).is_none());
    }
}
