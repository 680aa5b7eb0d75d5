//! What stands between a browser and the admin API. The admin listener is meant for the
//! operator's machine, so the threat is a web page in the operator's browser: it can post
//! to `http://127.0.0.1:9901/admin/reload` (CSRF: a "simple" cross-site request needs no
//! preflight) or point its own domain name at 127.0.0.1 (DNS rebinding) and read the
//! answers. So:
//!
//! - `Host` must name the listener by address (an IP literal) or `localhost`: a page on
//!   `evil.example` rebound to 127.0.0.1 still sends `Host: evil.example` (421);
//! - a mutating request (anything but GET/HEAD/OPTIONS) is refused (403) when it carries
//!   an `Origin` other than the admin address itself, or a content type an HTML form can
//!   send (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`).
//!   A plain `curl -X POST` (no body, no `Origin`) keeps working;
//! - with `admin_token` set, `/admin/*` requires `Authorization: Bearer <token>` (401).
//!   Probes (`/healthz`, `/readyz`) and `/metrics` stay open.

use crate::gateway::Gateway;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// The guard as middleware: `router.layer(axum::middleware::from_fn_with_state(gateway,
/// guard::check))`.
pub(crate) async fn check(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let token = gateway.table().config.admin_token.clone();
    match refusal(&request, token.as_deref()) {
        Some((status, message)) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                reason = message,
                "admin request refused"
            );
            let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"switchboard-admin\""),
                );
            }
            response
        }
        None => next.run(request).await,
    }
}

/// Why `request` may not reach the admin API, if it may not.
fn refusal(request: &Request, token: Option<&str>) -> Option<(StatusCode, &'static str)> {
    let headers = request.headers();
    // HTTP/2 carries the authority in the URI; HTTP/1.1 in `Host`.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host
        && !is_local_name(host)
    {
        return Some((
            StatusCode::MISDIRECTED_REQUEST,
            "the admin API answers to its address or localhost only",
        ));
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| host.as_deref() == Some(o));
            if !same {
                return Some((
                    StatusCode::FORBIDDEN,
                    "cross-origin requests may not change the gateway",
                ));
            }
        }
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if matches!(
                essence.as_str(),
                "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
            ) {
                return Some((
                    StatusCode::FORBIDDEN,
                    "form content types may not change the gateway",
                ));
            }
        }
    }
    if let Some(expected) = token
        && request.uri().path().starts_with("/admin/")
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !given.is_some_and(|given| same_secret(given, expected)) {
            return Some((
                StatusCode::UNAUTHORIZED,
                "the admin API needs its bearer token",
            ));
        }
    }
    None
}

/// `host[:port]` names the listener by IP literal or `localhost`.
fn is_local_name(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:9901`
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_secret(given: &str, expected: &str) -> bool {
    use sha2::Digest;
    let a = sha2::Sha256::digest(given.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    fn status(method: &str, path: &str, headers: &[(&str, &str)], token: Option<&str>) -> u16 {
        refusal(&request(method, path, headers), token).map_or(200, |(s, _)| s.as_u16())
    }

    #[test]
    fn rebinding_and_cross_site_posts_are_refused() {
        let local = ("host", "127.0.0.1:9901");
        assert_eq!(status("GET", "/admin/routes", &[local], None), 200);
        assert_eq!(
            status("GET", "/admin/routes", &[("host", "localhost:9901")], None),
            200
        );
        assert_eq!(
            status("GET", "/admin/routes", &[("host", "[::1]:9901")], None),
            200
        );
        assert_eq!(
            status(
                "GET",
                "/admin/routes",
                &[("host", "evil.example:9901")],
                None
            ),
            421
        );
        assert_eq!(
            status("POST", "/admin/reload", &[local], None),
            200,
            "curl -X POST"
        );
        assert_eq!(
            status(
                "POST",
                "/admin/reload",
                &[local, ("origin", "http://127.0.0.1:9901")],
                None
            ),
            200
        );
        assert_eq!(
            status(
                "POST",
                "/admin/reload",
                &[local, ("origin", "https://evil.example")],
                None
            ),
            403
        );
        assert_eq!(
            status("POST", "/admin/reload", &[local, ("origin", "null")], None),
            403
        );
        for form in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "Text/Plain;charset=UTF-8",
        ] {
            assert_eq!(
                status(
                    "POST",
                    "/admin/reload",
                    &[local, ("content-type", form)],
                    None
                ),
                403,
                "{form}"
            );
        }
        assert_eq!(
            status(
                "POST",
                "/admin/reload",
                &[local, ("content-type", "application/json")],
                None
            ),
            200
        );
    }

    #[test]
    fn the_token_guards_the_admin_api_but_not_probes() {
        let local = ("host", "127.0.0.1:9901");
        let token = Some("s3cret");
        assert_eq!(status("GET", "/admin/routes", &[local], token), 401);
        assert_eq!(
            status(
                "GET",
                "/admin/routes",
                &[local, ("authorization", "Bearer nope")],
                token
            ),
            401
        );
        assert_eq!(
            status(
                "GET",
                "/admin/routes",
                &[local, ("authorization", "Bearer s3cret")],
                token
            ),
            200
        );
        assert_eq!(
            status(
                "POST",
                "/admin/reload",
                &[local, ("authorization", "bearer s3cret")],
                token
            ),
            200
        );
        for probe in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(status("GET", probe, &[local], token), 200, "{probe}");
        }
    }
}
