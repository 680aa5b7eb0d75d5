//! CORS (`cors:`): preflights are answered by the gateway; allowed origins get the
//! `Access-Control-*` headers on every response.

use crate::config::CorsConfig;
use crate::error::GatewayError;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

/// Response headers browsers may read by default, besides the configured ones.
const ALWAYS_EXPOSED: &str =
    "x-trace-id, ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after";
/// What gRPC-Web clients read from a response, besides the above.
const GRPC_WEB_EXPOSED: &str = ", grpc-status, grpc-message, grpc-status-details-bin";
/// What gRPC-Web clients send (besides `content-type`), allowed on their routes' preflights.
const GRPC_WEB_ALLOWED: &str = "content-type, x-grpc-web, x-user-agent, grpc-timeout";

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    allow_headers: Option<HeaderValue>,
    allow_methods: Option<HeaderValue>,
    expose_headers: HeaderValue,
    /// `expose_headers` plus the gRPC-Web status headers.
    expose_grpc_web: HeaderValue,
    /// `allow_headers` plus the gRPC-Web request headers.
    allow_grpc_web: HeaderValue,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn joined(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| format!("invalid list {items:?}"))
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err("allow_origins is empty".into());
        }
        let any_origin = config.allow_origins.iter().any(|o| o == "*");
        if any_origin && config.allow_credentials {
            return Err("allow_credentials cannot be used with the `*` origin".into());
        }
        let mut exposed = ALWAYS_EXPOSED.to_string();
        for extra in &config.expose_headers {
            exposed.push_str(", ");
            exposed.push_str(extra);
        }
        let allow_grpc_web = match config.allow_headers.is_empty() {
            true => GRPC_WEB_ALLOWED.to_string(),
            false => format!("{}, {GRPC_WEB_ALLOWED}", config.allow_headers.join(", ")),
        };
        Ok(Self {
            expose_grpc_web: HeaderValue::from_str(&format!("{exposed}{GRPC_WEB_EXPOSED}"))
                .map_err(|_| "invalid expose_headers")?,
            allow_grpc_web: HeaderValue::from_str(&allow_grpc_web)
                .map_err(|_| "invalid allow_headers")?,
            any_origin,
            origins: config
                .allow_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allow_headers: joined(&config.allow_headers)?,
            allow_methods: joined(&config.allow_methods)?,
            expose_headers: HeaderValue::from_str(&exposed)
                .map_err(|_| "invalid expose_headers")?,
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || origin.to_str().is_ok_and(|o| {
                self.origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
            })
    }

    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if self.any_origin && !self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Adds CORS headers to a normal response for an allowed origin; a gRPC-Web answer
    /// also exposes its status headers.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap, grpc_web: bool) {
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            self.allow_origin(origin, headers);
            let exposed = match grpc_web {
                true => &self.expose_grpc_web,
                false => &self.expose_headers,
            };
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
    }

    /// Answers a preflight. `methods` are those the route table serves on the path;
    /// `grpc_web`: the path is a gRPC-Web route, whose clients send their own headers.
    pub fn preflight(
        &self,
        request: &HeaderMap,
        methods: &[Method],
        grpc_web: bool,
    ) -> Result<http::Response<axum::body::Body>, GatewayError> {
        let origin = request
            .get(header::ORIGIN)
            .filter(|o| self.allows(o))
            .ok_or_else(|| {
                GatewayError::new(
                    tonic::Code::PermissionDenied,
                    "origin not allowed by CORS policy",
                )
                .with_status(StatusCode::FORBIDDEN)
            })?;
        let mut response = http::Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.allow_origin(origin, headers);
        let methods = match &self.allow_methods {
            Some(configured) => configured.clone(),
            None => {
                let list = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("GET"))
            }
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        match (
            &self.allow_headers,
            request.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        ) {
            _ if grpc_web => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    self.allow_grpc_web.clone(),
                );
            }
            (Some(allowed), _) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
            }
            (None, Some(_)) => {}
            (None, None) => {}
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        headers.append(
            header::VARY,
            HeaderValue::from_static(
                "access-control-request-method, access-control-request-headers",
            ),
        );
        Ok(response)
    }
}

/// A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}
