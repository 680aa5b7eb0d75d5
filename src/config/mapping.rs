//! Route files (`mappings/*.yaml`, contract §4): `routes:` entries as written by operators.
//! Every entry keeps its source line so that load errors can point at it.

use super::ConfigDuration;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSpec>>,
}

/// One `routes:` entry. Which keys are present decides its kind: `http` or `websocket`
/// plus a target (`grpc`, `amqp`, `compose`, `static`), or a `grpc_service` / `grpc_web`
/// expansion.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub http: Option<HttpSpec>,
    pub websocket: Option<String>,
    pub grpc: Option<GrpcTarget>,
    pub grpc_service: Option<GrpcServiceSpec>,
    /// gRPC-Web clients onto every method of a service (`crate::proxy::grpc_web`).
    pub grpc_web: Option<GrpcWebSpec>,
    #[serde(rename = "static")]
    pub static_response: Option<StaticSpec>,
    /// Backend-for-frontend shaping of the JSON response.
    pub response: Option<ResponseShaping>,
    /// 400 for query parameters that name no field (default: ignore them).
    #[serde(default)]
    pub strict_query: bool,
    /// Forward the client's `authorization` header to the backend as metadata.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Per-route deadline; overrides the upstream's `timeout`.
    pub timeout: Option<ConfigDuration>,
    /// A name for metrics and logs (default: `METHOD template`).
    pub name: Option<String>,
    /// Token requirement (default `none`).
    #[serde(default)]
    pub auth: AuthMode,
    /// Scopes the token must all carry (403 otherwise).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A policy name from `rate_limits.policies`.
    pub rate_limit: Option<String>,
    /// Safe to retry even if not a GET (retries only ever happen for idempotent calls).
    #[serde(default)]
    pub idempotent: bool,

    /// RabbitMQ request-reply or publish (with `http:`).
    pub amqp: Option<super::AmqpTarget>,

    /// Response cache of a GET route (`crate::cache`).
    pub cache: Option<crate::cache::RouteCacheSpec>,
    /// Composition: several backend calls for one request (`crate::compose`).
    pub compose: Option<crate::compose::spec::ComposeSpec>,
    /// Clients may trim the JSON answer with `?fields=` (Google partial-response syntax).
    #[serde(default)]
    pub partial_response: bool,
}

/// The HTTP side, in `google.api.HttpRule` form.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub get: Option<String>,
    pub put: Option<String>,
    pub post: Option<String>,
    pub delete: Option<String>,
    pub patch: Option<String>,
    pub custom: Option<CustomPattern>,
    /// `*` (whole message), a field name, or absent (no body).
    pub body: Option<String>,
    /// Field of the response message sent as the HTTP body.
    pub response_body: Option<String>,
    #[serde(default)]
    pub additional_bindings: Vec<HttpSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub kind: String,
    pub path: String,
}

impl HttpSpec {
    /// The (method, template) pairs this binding names; more than one is an error.
    pub fn patterns(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (method, template) in [
            ("GET", &self.get),
            ("PUT", &self.put),
            ("POST", &self.post),
            ("DELETE", &self.delete),
            ("PATCH", &self.patch),
        ] {
            if let Some(template) = template {
                out.push((method.to_string(), template.clone()));
            }
        }
        if let Some(custom) = &self.custom {
            out.push((custom.kind.to_ascii_uppercase(), custom.path.clone()));
        }
        out
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTarget {
    pub upstream: String,
    /// `package.Service/Method` (a `.` before the method is accepted too).
    pub method: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServiceSpec {
    pub upstream: String,
    pub service: String,
    /// `post`: serve unannotated methods at `POST /pkg.Service/Method` with body `*`.
    pub unannotated: Option<String>,
}

/// `grpc_web: { upstream, service }`: `POST /<service>/<Method>` for each method, in
/// gRPC-Web framing (binary or base64 text), passed through to the gRPC upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebSpec {
    pub upstream: String,
    pub service: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSpec {
    #[serde(default = "default_static_status")]
    pub status: u16,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_static_status() -> u16 {
    200
}

/// `response:` — `{ fields: [paths] }` projects the answer; any other object is a
/// template over the step results of a `compose:` route.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct ResponseShaping {
    /// Keep only these fields of the JSON response (`a.b` paths; empty with a template).
    pub fields: Vec<String>,
    pub template: Option<serde_json::Value>,
}

impl TryFrom<serde_json::Value> for ResponseShaping {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(map) = &value else {
            return Err("`response:` must be an object".into());
        };
        match map.get("fields") {
            Some(fields) if map.len() == 1 => {
                let fields: Vec<String> = serde_json::from_value(fields.clone())
                    .map_err(|_| "`response: { fields }` must be a list of field paths")?;
                Ok(Self {
                    fields,
                    template: None,
                })
            }
            _ => Ok(Self {
                fields: Vec::new(),
                template: Some(value),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A valid token is needed: 401 without one.
    Required,
    /// A token is checked when present (401 when invalid); anonymous otherwise.
    Optional,
    #[default]
    None,
}
