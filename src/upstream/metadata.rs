//! What the gateway tells every backend about a request, whatever the protocol: one
//! builder for gRPC metadata (HTTP and WebSocket routes) and AMQP message headers.
//!
//! Order matters: client-supplied `Grpc-Metadata-*` go in first, then the gateway's own
//! names (trace, verified claims, a forwarded `authorization`) replace any client value
//! of the same name, so a client can never choose what a backend reads as who the caller
//! is or which trace it belongs to.

use crate::error::GatewayError;
use crate::middleware::Identity;
use crate::telemetry::trace::{TRACEPARENT, TraceContext, X_TRACE_ID};
use crate::upstream::grpc::status::{client_may_set, is_base64, metadata_from_headers};
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The headers only the gateway sets toward backends: the trace and the claims it
/// verified (`forward_claims`, e.g. `x-user-id`).
pub(crate) fn gateway_headers<'a>(
    trace: &'a TraceContext,
    identity: Option<&'a Identity>,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    [
        (&X_TRACE_ID, &trace.trace_id),
        (&TRACEPARENT, &trace.traceparent),
    ]
    .into_iter()
    .chain(
        identity
            .into_iter()
            .flat_map(|identity| identity.forwarded.iter().map(|(name, value)| (name, value))),
    )
}

/// How a route passes client headers on to a gRPC backend.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClientMetadata {
    /// `Grpc-Metadata-<name>` request headers become metadata `<name>`.
    pub grpc_metadata: bool,
    /// The client's `Authorization` is forwarded (the route says `forward_authorization`).
    pub authorization: bool,
    /// The client's own headers are its metadata, as gRPC-Web clients send it: every
    /// header a client may name (`client_may_set`) that is not about HTTP or the browser.
    pub plain_headers: bool,
}

/// Request headers that describe the HTTP exchange or the browser, not the call: never
/// metadata, even on routes whose client headers are metadata (gRPC-Web).
fn is_http_only(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-encoding"
            | "accept-language"
            | "origin"
            | "referer"
            | "cache-control"
            | "pragma"
            | "priority"
            | "dnt"
            | "expect"
            | "range"
            | "x-grpc-web"
            | "x-user-agent"
            | "x-requested-with"
            | "x-request-timeout"
    ) || name.starts_with("sec-")
        || name.starts_with("access-control-")
        || name.starts_with("if-")
        || name.starts_with("grpc-metadata-")
}

/// Plain request headers → metadata of the same name (gRPC-Web). A `-bin` value that is
/// not base64 is refused (400), as for `Grpc-Metadata-*-bin`.
fn metadata_from_plain_headers(
    headers: &HeaderMap,
    out: &mut HeaderMap,
) -> Result<(), GatewayError> {
    for (name, value) in headers {
        let text = name.as_str();
        if !client_may_set(text) || is_http_only(text) {
            continue;
        }
        if text.ends_with("-bin") && !is_base64(value.as_bytes()) {
            return Err(GatewayError::invalid_argument(format!(
                "header `{text}`: a binary metadata value must be base64"
            )));
        }
        out.append(name.clone(), value.clone());
    }
    Ok(())
}

/// The gRPC metadata of a call made for `headers` (the client's request). A malformed
/// client `Grpc-Metadata-*-bin` value is a 400.
pub(crate) fn grpc_metadata(
    headers: &HeaderMap,
    trace: &TraceContext,
    identity: Option<&Identity>,
    client: ClientMetadata,
) -> Result<HeaderMap, GatewayError> {
    // Room for the gateway's names and the protocol headers `unary::call` adds, so the
    // map is allocated once.
    let mut metadata = HeaderMap::with_capacity(8);
    if client.grpc_metadata {
        metadata_from_headers(headers, &mut metadata)?;
    }
    if client.plain_headers {
        metadata_from_plain_headers(headers, &mut metadata)?;
    }
    // `authorization` reaches a backend only as the client's real header, on routes
    // that ask for it: never from `Grpc-Metadata-Authorization`.
    metadata.remove(header::AUTHORIZATION);
    if client.authorization
        && let Some(authorization) = headers.get(header::AUTHORIZATION)
    {
        metadata.insert(header::AUTHORIZATION, authorization.clone());
    }
    for (name, value) in gateway_headers(trace, identity) {
        metadata.insert(name.clone(), value.clone());
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_win_over_client_metadata() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "grpc-metadata-x-trace-id",
            HeaderValue::from_static("forged"),
        );
        headers.insert("grpc-metadata-x-user-id", HeaderValue::from_static("admin"));
        headers.insert(
            "grpc-metadata-authorization",
            HeaderValue::from_static("Bearer forged"),
        );
        headers.insert("grpc-metadata-x-tenant", HeaderValue::from_static("a"));
        let trace = TraceContext::from_headers(&HeaderMap::new());
        let identity = Identity {
            claims: None,
            forwarded: vec![(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_static("u-1"),
            )],
        };
        let metadata = grpc_metadata(
            &headers,
            &trace,
            Some(&identity),
            ClientMetadata {
                grpc_metadata: true,
                authorization: false,
                plain_headers: false,
            },
        )
        .unwrap();
        assert_eq!(metadata["x-trace-id"], trace.trace_id);
        assert_eq!(metadata["x-user-id"], "u-1");
        assert_eq!(metadata.get_all("x-user-id").iter().count(), 1);
        assert_eq!(metadata["x-tenant"], "a");
        assert!(metadata.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn plain_headers_are_metadata_except_what_the_gateway_or_http_owns() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-tenant", "acme"),
            ("blob-bin", "aGk="),
            ("x-trace-id", "forged"),
            ("authorization", "Bearer t"),
            ("connection", "te"),
            ("te", "trailers"),
            ("content-type", "application/grpc-web"),
            ("grpc-timeout", "1S"),
            ("x-grpc-web", "1"),
            ("x-user-agent", "grpc-web-javascript/0.1"),
            ("origin", "https://shop.example"),
            ("sec-fetch-mode", "cors"),
            ("host", "gateway"),
            ("x-forwarded-for", "10.0.0.1"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let trace = TraceContext::from_headers(&HeaderMap::new());
        let plain = ClientMetadata {
            plain_headers: true,
            ..ClientMetadata::default()
        };
        let metadata = grpc_metadata(&headers, &trace, None, plain).unwrap();
        let mut names: Vec<&str> = metadata.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["blob-bin", "traceparent", "x-tenant", "x-trace-id"]);
        assert_eq!(metadata["x-trace-id"], trace.trace_id);

        headers.insert("blob-bin", HeaderValue::from_static("not base64!"));
        let error = grpc_metadata(&headers, &trace, None, plain).unwrap_err();
        assert_eq!(error.code, tonic::Code::InvalidArgument);
    }

    #[test]
    fn authorization_only_from_the_real_header_when_the_route_forwards_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer real"),
        );
        let trace = TraceContext::from_headers(&HeaderMap::new());
        let forwarded = ClientMetadata {
            grpc_metadata: true,
            authorization: true,
            plain_headers: false,
        };
        let metadata = grpc_metadata(&headers, &trace, None, forwarded).unwrap();
        assert_eq!(metadata[header::AUTHORIZATION], "Bearer real");
        let not = grpc_metadata(&headers, &trace, None, ClientMetadata::default()).unwrap();
        assert!(not.get(header::AUTHORIZATION).is_none());
    }
}
