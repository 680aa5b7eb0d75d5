//! The compiled, immutable route table: built from config + descriptors + mappings by
//! `compile`, looked up per request, swapped whole on reload.

pub mod amqp;
mod compile;
pub mod grpc_web;
pub mod template;
mod tree;
pub mod websocket;

pub use compile::compile;

use crate::config::{GatewayConfig, Limits, Location};
use crate::middleware::{Middleware, RoutePolicy};
use crate::schema::Schema;
use crate::telemetry::RouteMetrics;
use crate::transcode::{FieldPath, JsonCodec, MessageType, QueryBinding};
use crate::upstream::Upstreams;
use crate::upstream::grpc::GrpcUpstream;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use prost_reflect::MethodDescriptor;
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
    /// The response cache store; set by `gateway::build_table` (kept across reloads).
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Span export (`telemetry.otlp`); set by `gateway::build_table` (kept across
    /// reloads while unchanged). `None`: no span is built.
    pub tracing: Option<Arc<crate::telemetry::otlp::SpanExport>>,
    /// The listener's certificate and key (`tls:`), loaded with the table; set by
    /// `gateway::build_table`.
    pub tls: Option<Arc<rustls::sign::CertifiedKey>>,
    /// The routes' templates as a tree of segments (`tree`), for `lookup`.
    tree: tree::RouteTree,
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
    /// `cache:` of a GET route; served by `RouteTable::cache`.
    pub cache: Option<crate::cache::RouteCache>,
}

pub enum Target {
    Grpc(Box<GrpcRoute>),
    Static(StaticRoute),
    /// An `amqp:` route: RabbitMQ request-reply or publish (`amqp::AmqpRoute`).
    Amqp(Box<amqp::AmqpRoute>),
    /// A `websocket:` route: a GET that upgrades and bridges frames (`websocket::WsRoute`,
    /// run by `crate::ws`).
    WebSocket(Box<websocket::WsRoute>),
    /// A `compose:` route: several backend calls, one JSON answer (`crate::compose`).
    Compose(Box<crate::compose::ComposeRoute>),
    /// A method of a `grpc_web:` service: gRPC-Web framing passed through to gRPC.
    GrpcWeb(Box<grpc_web::GrpcWebRoute>),
}

/// A route onto a unary or server-streaming gRPC method.
pub struct GrpcRoute {
    pub upstream: Arc<GrpcUpstream>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub path: http::uri::PathAndQuery,
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
    /// Starts the background work of a table that goes live: upstream connections and
    /// health checks, span export.
    pub fn start(&self) {
        self.upstreams.start();
        if let Some(tracing) = &self.tracing {
            tracing.start();
        }
    }

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
        let tree = tree::RouteTree::new(routes.iter().map(|route| &route.template));
        Self {
            json: JsonCodec::new(&config.json),
            limits: config.limits,
            config,
            schema,
            upstreams,
            middleware,
            routes,
            cache: None,
            tracing: None,
            tls: None,
            tree,
        }
    }

    /// Finds the most specific route for the path, then checks the method. `HEAD` is
    /// served by a `GET` route when no `HEAD` route exists.
    pub fn lookup(&self, method: &Method, path: &RequestPath<'_>) -> Lookup {
        let mut allowed: Vec<Method> = Vec::new();
        let mut head_fallback = None;
        for index in self.tree.candidates(path) {
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
