//! Compiling a `grpc_web:` entry: one `POST /<service>/<Method>` route per unary or
//! server-streaming method of the service, plus one `POST /<service>/{method}` route that
//! answers every other name (unknown methods, client and bidi streams) with UNIMPLEMENTED
//! in gRPC-Web form. Client-streaming methods are not refused at load: a service that has
//! some still serves its other methods, and a browser that calls one reads why it cannot.

use super::template::PathTemplate;
use crate::config::DEFAULT_TIMEOUT;
use crate::config::mapping::{GrpcWebSpec, RouteSpec};
use crate::schema::Schema;
use crate::upstream::Upstreams;
use crate::upstream::grpc::GrpcUpstream;
use http::uri::PathAndQuery;
use prost_reflect::ServiceDescriptor;
use std::sync::Arc;
use std::time::Duration;

/// A gRPC-Web route: the framed request is passed through to `path` on the upstream.
pub struct GrpcWebRoute {
    pub upstream: Arc<GrpcUpstream>,
    pub service: ServiceDescriptor,
    /// What this route calls; `Unimplemented` for the service's catch-all route.
    pub call: GrpcWebCall,
    pub timeout: Duration,
    pub forward_authorization: bool,
    /// Unary calls may be retried (the route says `idempotent: true`).
    pub idempotent: bool,
}

pub enum GrpcWebCall {
    /// Answers come back as bytes.
    Unary { path: PathAndQuery },
    /// The stream's messages are passed through as bytes (`upstream::grpc::stream`).
    ServerStreaming { path: PathAndQuery },
    /// Any other method name of the service: answered UNIMPLEMENTED.
    Unimplemented,
}

impl GrpcWebRoute {
    /// The full method name (or `<service>/*` for the catch-all), for listings.
    pub fn method_name(&self) -> String {
        match &self.call {
            GrpcWebCall::Unary { path, .. } | GrpcWebCall::ServerStreaming { path, .. } => {
                path.as_str().trim_start_matches('/').to_string()
            }
            GrpcWebCall::Unimplemented => format!("{}/*", self.service.full_name()),
        }
    }

    /// `grpc-web`, `grpc-web-stream` or `grpc-web-unimplemented`.
    pub fn kind(&self) -> &'static str {
        match self.call {
            GrpcWebCall::Unary { .. } => "grpc-web",
            GrpcWebCall::ServerStreaming { .. } => "grpc-web-stream",
            GrpcWebCall::Unimplemented => "grpc-web-unimplemented",
        }
    }
}

/// Keys of a route entry that mean nothing next to `grpc_web:`.
fn misplaced_keys(spec: &RouteSpec) -> Vec<&'static str> {
    [
        (spec.http.is_some(), "http"),
        (spec.grpc.is_some(), "grpc"),
        (spec.grpc_service.is_some(), "grpc_service"),
        (spec.static_response.is_some(), "static"),
        (spec.amqp.is_some(), "amqp"),
        (spec.compose.is_some(), "compose"),
        (spec.websocket.is_some(), "websocket"),
        (spec.response.is_some(), "response"),
        (spec.cache.is_some(), "cache"),
        (spec.partial_response, "partial_response"),
        (spec.strict_query, "strict_query"),
    ]
    .into_iter()
    .filter_map(|(present, key)| present.then_some(key))
    .collect()
}

/// The routes of one `grpc_web:` entry as (template, route), every one a POST.
pub fn compile(
    spec: &RouteSpec,
    web: &GrpcWebSpec,
    schema: &Schema,
    upstreams: &Upstreams,
) -> Result<Vec<(PathTemplate, GrpcWebRoute)>, String> {
    let misplaced = misplaced_keys(spec);
    if !misplaced.is_empty() {
        return Err(format!(
            "`grpc_web:` is a route of its own; remove `{}` from it",
            misplaced.join("`, `")
        ));
    }
    let upstream = upstreams
        .grpc
        .get(&web.upstream)
        .cloned()
        .ok_or_else(|| format!("unknown gRPC upstream `{}`", web.upstream))?;
    let service = schema
        .pool
        .get_service_by_name(&web.service)
        .ok_or_else(|| format!("unknown gRPC service `{}`", web.service))?;
    let timeout = spec
        .timeout
        .map(|t| t.0)
        .or_else(|| upstreams.timeouts.get(&upstream.name).copied())
        .unwrap_or(DEFAULT_TIMEOUT);
    let route = |call| GrpcWebRoute {
        upstream: upstream.clone(),
        service: service.clone(),
        call,
        timeout,
        forward_authorization: spec.forward_authorization,
        idempotent: spec.idempotent,
    };
    let mut routes = Vec::new();
    for method in service.methods() {
        if method.is_client_streaming() {
            continue; // The catch-all answers it UNIMPLEMENTED, saying why.
        }
        let text = format!("/{}/{}", service.full_name(), method.name());
        let path: PathAndQuery = text
            .parse()
            .map_err(|e| format!("method path `{text}`: {e}"))?;
        let call = if method.is_server_streaming() {
            GrpcWebCall::ServerStreaming { path }
        } else {
            GrpcWebCall::Unary { path }
        };
        routes.push((PathTemplate::parse(&text)?, route(call)));
    }
    let catch_all = PathTemplate::parse(&format!("/{}/{{method}}", service.full_name()))?;
    routes.push((catch_all, route(GrpcWebCall::Unimplemented)));
    Ok(routes)
}
