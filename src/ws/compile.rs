//! `websocket:` route entries → `WsRoute`, checked at load time like every route
//! (`routing::compile` calls [`compile_route`] and files the result as a GET route, so
//! websocket routes share lookup and conflict detection).

use super::amqp::AmqpBridge;
use super::grpc::{CODEC, GrpcBridge};
use super::{Backend, WsRoute};
use crate::config::AmqpTarget;
use crate::config::mapping::{GrpcTarget, RouteSpec};
use crate::routing::template::PathTemplate;
use crate::schema::Schema;
use crate::telemetry::WsMetrics;
use crate::transcode::MessageType;
use crate::upstream::Upstreams;

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
        codec: CODEC,
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
