//! The compiled, immutable route table: built from config + descriptors + mappings by
//! `compile`, looked up per request, swapped whole on reload.

pub mod amqp;
mod compile;
pub mod template;

pub use compile::compile;

use crate::config::{GatewayConfig, Limits, Location};
use crate::middleware::{Middleware, RoutePolicy};
use crate::schema::Schema;
use crate::telemetry::RouteMetrics;
use crate::transcode::{FieldPath, JsonCodec, MessageType, QueryBinding};
use crate::upstream::Upstreams;
use crate::upstream::grpc::{DynamicCodec, GrpcUpstream};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use prost_reflect::MethodDescriptor;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use template::{PathTemplate, RequestPath};

/// Everything one configuration serves with. Requests hold an `Arc` of the table they
/// started on, so a reload never changes a request midway.
pub struct RouteTable {
    pub config: Arc<GatewayConfig>,
    pub schema: Schema,
    pub upstreams: Arc<Upstreams>,
    pub middleware: Arc<Middleware>,
    pub json: JsonCodec,
    pub limits: Limits,
    /// Sorted most specific first; indices below are into this.
    pub routes: Vec<Route>,
    by_first_literal: HashMap<String, Vec<usize>>,
    /// Routes whose first segment is not a literal: candidates for every path.
    wildcard_first: Vec<usize>,
}

/// One (HTTP method, path template) → action.
pub struct Route {
    pub name: String,
    pub method: Method,
    pub template: PathTemplate,
    pub location: Location,
    pub target: Target,
    /// Authentication, scopes and rate limit of this route.
    pub policy: RoutePolicy,
    pub metrics: RouteMetrics,
}

pub enum Target {
    Grpc(Box<GrpcRoute>),
    Static(StaticRoute),
    /// An `amqp:` route: RabbitMQ request-reply or publish (`amqp::AmqpRoute`).
    Amqp(Box<amqp::AmqpRoute>),
    /// A `websocket:` route: a GET that upgrades and bridges frames (`crate::ws`).
    WebSocket(Box<crate::ws::WsRoute>),
    /// A `compose:` route: several backend calls, one JSON answer (`crate::compose`).
    Compose(Box<crate::compose::ComposeRoute>),
}

/// A route onto a unary or server-streaming gRPC method.
pub struct GrpcRoute {
    pub upstream: Arc<GrpcUpstream>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub path: http::uri::PathAndQuery,
    pub codec: DynamicCodec,
    /// The request and response types, ready for the byte-level transcoder.
    pub input: MessageType,
    pub output: MessageType,
    pub server_streaming: bool,
    /// Field set by each template variable, in `template.variables` order.
    pub path_fields: Vec<FieldPath>,
    pub body: BodyRule,
    pub query: QueryBinding,
    pub response_body: Option<FieldPath>,
    /// Backend-for-frontend: keep only these top-level JSON fields.
    pub response_fields: Option<Vec<String>>,
    /// Clients may trim the answer with `?fields=`.
    pub partial_response: bool,
    pub timeout: Duration,
    pub forward_authorization: bool,
    /// Safe to retry: a GET, or a route marked `idempotent: true`.
    pub idempotent: bool,
}

#[derive(Clone, Debug)]
pub enum BodyRule {
    None,
    Whole,
    Field(FieldPath),
}

pub struct StaticRoute {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub enum Lookup {
    /// Index into `RouteTable::routes`.
    Matched(usize),
    /// The path exists, with these methods.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

impl RouteTable {
    fn new(
        config: Arc<GatewayConfig>,
        schema: Schema,
        upstreams: Arc<Upstreams>,
        middleware: Arc<Middleware>,
        mut routes: Vec<Route>,
    ) -> Self {
        routes.sort_by(|a, b| {
            a.template
                .specificity()
                .cmp(&b.template.specificity())
                .then_with(|| a.template.text.cmp(&b.template.text))
        });
        let mut by_first_literal: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_first = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match route.template.first_literal() {
                Some(literal) => by_first_literal
                    .entry(literal.to_string())
                    .or_default()
                    .push(i),
                None => wildcard_first.push(i),
            }
        }
        Self {
            json: JsonCodec::new(&config.json),
            limits: config.limits,
            config,
            schema,
            upstreams,
            middleware,
            routes,
            by_first_literal,
            wildcard_first,
        }
    }

    /// Finds the most specific route for the path, then checks the method. `HEAD` is
    /// served by a `GET` route when no `HEAD` route exists.
    pub fn lookup(&self, method: &Method, path: &RequestPath<'_>) -> Lookup {
        let literal = path
            .first_segment()
            .and_then(|s| self.by_first_literal.get(s))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut allowed: Vec<Method> = Vec::new();
        let mut head_fallback = None;
        for index in merge_sorted(literal, &self.wildcard_first) {
            let route = &self.routes[index];
            if !route.template.matches(path) {
                continue;
            }
            if route.method == *method {
                return Lookup::Matched(index);
            }
            if *method == Method::HEAD && route.method == Method::GET && head_fallback.is_none() {
                head_fallback = Some(index);
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if let Some(index) = head_fallback {
            return Lookup::Matched(index);
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

/// Two ascending index lists as one ascending sequence (both are precedence-ordered).
fn merge_sorted<'a>(a: &'a [usize], b: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(&x), Some(&y)) if x <= y => {
            i += 1;
            Some(x)
        }
        (_, Some(&y)) => {
            j += 1;
            Some(y)
        }
        (Some(&x), None) => {
            i += 1;
            Some(x)
        }
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::merge_sorted;

    #[test]
    fn merge_keeps_order() {
        let merged: Vec<usize> = merge_sorted(&[1, 4, 6], &[0, 2, 5, 9]).collect();
        assert_eq!(merged, vec![0, 1, 2, 4, 5, 6, 9]);
    }
}
