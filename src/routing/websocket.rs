//! `websocket:` routes: what a socket is bridged to, compiled at load time like every
//! route (`compile` files the result as a GET route, so websocket routes share lookup
//! and conflict detection). Running a socket is `crate::ws`'s part: it adds the
//! behaviour (`Backend::run`, the bridges' calls) to the types defined here.

use super::amqp::AmqpRoute;
use super::template::PathTemplate;
use crate::config::AmqpTarget;
use crate::config::mapping::{GrpcTarget, RouteSpec};
use crate::schema::Schema;
use crate::telemetry::WsMetrics;
use crate::transcode::MessageType;
use crate::upstream::Upstreams;
use crate::upstream::grpc::GrpcUpstream;
use http::uri::PathAndQuery;
use lapin::types::ShortString;
use prost_reflect::MethodDescriptor;
use std::sync::Arc;

/// A compiled `websocket:` route.
pub struct WsRoute {
    pub backend: Backend,
    /// Forward the client's `authorization` (also one taken from a subprotocol or
    /// `access_token`) to the backend.
    pub forward_authorization: bool,
    pub metrics: WsMetrics,
}

/// What is behind a socket.
pub enum Backend {
    Grpc(GrpcBridge),
    Amqp(AmqpBridge),
}

/// How `routes` and `/admin/routes` show a websocket route.
pub enum Description {
    /// `websocket-grpc-bidi`, `websocket-grpc-client-stream`, `websocket-grpc-server-stream`.
    Grpc {
        kind: &'static str,
        upstream: String,
        method: String,
    },
    /// `websocket-amqp`: each frame is an RPC.
    Amqp {
        upstream: String,
        exchange: String,
        routing_key: String,
        /// Per frame.
        timeout_ms: u64,
    },
}

impl Description {
    /// The `target` object of `/admin/routes` (the AMQP one has the fields of an HTTP
    /// AMQP route's).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Description::Grpc {
                kind,
                upstream,
                method,
            } => serde_json::json!({ "kind": kind, "upstream": upstream, "method": method }),
            Description::Amqp {
                upstream,
                exchange,
                routing_key,
                timeout_ms,
            } => serde_json::json!({
                "kind": "websocket-amqp",
                "upstream": upstream,
                "exchange": exchange,
                "routing_key": routing_key,
                "timeout_ms": timeout_ms,
            }),
        }
    }

    /// One line for `switchboard routes`: kind, upstream, method or routing key.
    pub fn summary(&self) -> String {
        match self {
            Description::Grpc {
                kind,
                upstream,
                method,
            } => format!("{kind} {upstream} {method}"),
            Description::Amqp {
                upstream,
                routing_key,
                ..
            } => format!("websocket-amqp {upstream} {routing_key}"),
        }
    }
}

impl WsRoute {
    pub fn describe(&self) -> Description {
        match &self.backend {
            Backend::Grpc(bridge) => Description::Grpc {
                kind: bridge.kind(),
                upstream: bridge.upstream.name.clone(),
                method: bridge.method.full_name().to_string(),
            },
            Backend::Amqp(bridge) => Description::Amqp {
                upstream: bridge.route.upstream.name.clone(),
                exchange: bridge.route.exchange.to_string(),
                routing_key: bridge.routing_key.to_string(),
                timeout_ms: bridge.route.timeout.as_millis() as u64,
            },
        }
    }
}

/// A websocket route onto a streaming gRPC method.
pub struct GrpcBridge {
    pub upstream: Arc<GrpcUpstream>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub path: PathAndQuery,
    pub input: MessageType,
    pub output: MessageType,
}

impl GrpcBridge {
    pub fn kind(&self) -> &'static str {
        match (
            self.method.is_client_streaming(),
            self.method.is_server_streaming(),
        ) {
            (true, true) => "websocket-grpc-bidi",
            (true, false) => "websocket-grpc-client-stream",
            _ => "websocket-grpc-server-stream",
        }
    }
}

/// A websocket route onto an AMQP request-reply target.
pub struct AmqpBridge {
    /// The target compiled as for an HTTP route (the frame is the body).
    pub route: AmqpRoute,
    /// The routing key: a websocket route has no path variables to fill it in with.
    pub routing_key: ShortString,
}

/// Compiles the route `spec` whose `websocket:` key is `path`. The error is one message
/// for the route's `file:line`.
pub(crate) fn compile_route(
    spec: &RouteSpec,
    path: &str,
    schema: &Schema,
    upstreams: &Upstreams,
) -> Result<(PathTemplate, WsRoute), String> {
    let template = PathTemplate::parse(path)?;
    if !template.variables.is_empty() {
        return Err(format!(
            "websocket route `{path}`: path variables are not supported on websocket routes"
        ));
    }
    for (present, key) in [
        (spec.http.is_some(), "http"),
        (spec.static_response.is_some(), "static"),
        (spec.grpc_service.is_some(), "grpc_service"),
        (spec.response.is_some(), "response"),
        (spec.partial_response, "partial_response"),
        (spec.strict_query, "strict_query"),
    ] {
        if present {
            return Err(format!("`{key}` does not apply to a `websocket:` route"));
        }
    }
    let backend = match (&spec.grpc, &spec.amqp) {
        (Some(target), None) => Backend::Grpc(grpc_bridge(spec, target, schema, upstreams)?),
        (None, Some(target)) => {
            Backend::Amqp(amqp_bridge(spec, target, &template, schema, upstreams)?)
        }
        (Some(_), Some(_)) => {
            return Err("route has more than one target; use one of `grpc`, `amqp`".into());
        }
        (None, None) => {
            return Err("a `websocket:` route needs a target: `grpc:` or `amqp:`".into());
        }
    };
    // Labelled like the route's HTTP metrics: its path as written.
    let metrics = WsMetrics::new(&template.text);
    Ok((
        template,
        WsRoute {
            backend,
            forward_authorization: spec.forward_authorization,
            metrics,
        },
    ))
}

/// A streaming gRPC method: the call lives as long as the socket.
fn grpc_bridge(
    spec: &RouteSpec,
    target: &GrpcTarget,
    schema: &Schema,
    upstreams: &Upstreams,
) -> Result<GrpcBridge, String> {
    // A socket lives as long as both ends keep it: see `limits.ws_idle_timeout`.
    if spec.timeout.is_some() {
        return Err(
            "`timeout` does not apply to a `websocket:` route onto gRPC (the call lives as long as the socket)"
                .into(),
        );
    }
    let upstream = upstreams
        .grpc
        .get(&target.upstream)
        .ok_or_else(|| format!("unknown gRPC upstream `{}`", target.upstream))?
        .clone();
    let method = find_method(schema, &target.method)?;
    if !method.is_client_streaming() && !method.is_server_streaming() {
        return Err(format!(
            "`{}` is unary: serve it with an `http:` route (websocket routes take streaming methods)",
            method.full_name()
        ));
    }
    Ok(GrpcBridge {
        upstream,
        path: format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .map_err(|e| format!("method `{}`: {e}", method.full_name()))?,
        input: MessageType::new(method.input()),
        output: MessageType::new(method.output()),
        method,
    })
}

/// An AMQP request-reply target, checked as for an HTTP route onto it; each frame is one
/// RPC, whose deadline is the route `timeout` (else the upstream's).
fn amqp_bridge(
    spec: &RouteSpec,
    target: &AmqpTarget,
    template: &PathTemplate,
    schema: &Schema,
    upstreams: &Upstreams,
) -> Result<AmqpBridge, String> {
    if !target.reply {
        return Err(
            "`reply: false` does not apply to a `websocket:` route: each frame is an RPC".into(),
        );
    }
    let route =
        crate::routing::amqp::compile_target(spec, target, template, schema, upstreams, true)?;
    // Without path variables the key is the same for every frame.
    let routing_key = route.routing_key.resolve(&[])?;
    Ok(AmqpBridge { route, routing_key })
}

/// `package.Service/Method` (or `package.Service.Method`) in the descriptors.
fn find_method(schema: &Schema, name: &str) -> Result<prost_reflect::MethodDescriptor, String> {
    let (service, method) = name
        .rsplit_once('/')
        .or_else(|| name.rsplit_once('.'))
        .unwrap_or((name, ""));
    schema
        .pool
        .get_service_by_name(service.trim_start_matches('/'))
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .ok_or_else(|| {
            format!(
                "unknown gRPC method `{name}` (expected `package.Service/Method` from the descriptors)"
            )
        })
}
