//! Composition (contract §4 `compose:`): one client call, several backend calls. Steps call
//! gRPC unary methods or AMQP request-reply targets; a step's request is a JSON template
//! that may read other steps' results, which orders the steps. Independent steps run at
//! once and a step starts as soon as what it reads is there. Failed optional steps fall
//! back (a value, the last good result, or nothing) and are named in `x-degraded`.
//!
//! `plan` compiles a route at load, `execute` runs it per request, `shape` builds and
//! trims the answer (also for `partial_response` on plain gRPC routes).

pub(crate) mod execute;
pub(crate) mod plan;
pub(crate) mod shape;
pub(crate) mod spec;
mod store;
pub(crate) mod template;

use crate::config::Location;
use crate::transcode::MessageType;
use crate::upstream::amqp::AmqpUpstream;
use crate::upstream::grpc::GrpcUpstream;
use lapin::types::ShortString;
use shape::{Mask, Shape};
use std::sync::Arc;
use std::time::Duration;
use store::StepStore;
use template::{Ref, Template};

pub(crate) use execute::call;

/// A compiled `compose:` route.
pub struct ComposeRoute {
    /// The route's name (metrics).
    pub name: String,
    /// In declaration order; `deps` index into this.
    pub steps: Vec<Step>,
    pub shaping: Shaping,
    /// What the answer looks like (for `?fields=` checks and OpenAPI).
    pub shape: Shape,
    /// Clients may trim the answer with `?fields=`.
    pub partial_response: bool,
    /// The whole call's deadline.
    pub timeout: Duration,
    /// Some template reads `{body.…}`: the request body is read (as JSON).
    pub reads_body: bool,
    pub forward_authorization: bool,
    store: Arc<StepStore>,
}

pub struct Step {
    pub name: String,
    pub location: Location,
    pub target: StepTarget,
    /// The shape of one call's result.
    pub shape: Shape,
    pub request: Option<Template>,
    pub for_each: Option<Ref>,
    /// Steps whose results this one reads (indices, ascending).
    pub deps: Vec<usize>,
    /// Another step reads this one's result, so it is parsed as it arrives; otherwise
    /// its JSON text goes into the answer as the backend's answer was transcoded.
    pub read_by_steps: bool,
    pub required: bool,
    pub fallback: Fallback,
    pub timeout: Duration,
    pub concurrency: usize,
    pub max_items: usize,
}

pub enum StepTarget {
    Grpc {
        upstream: Arc<GrpcUpstream>,
        path: http::uri::PathAndQuery,
        input: MessageType,
        output: MessageType,
        idempotent: bool,
        upstream_timeout: Option<Duration>,
    },
    Amqp {
        upstream: Arc<AmqpUpstream>,
        exchange: ShortString,
        routing_key: ShortString,
        request_type: Option<MessageType>,
        response_type: Option<MessageType>,
        upstream_timeout: Option<Duration>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    Value(serde_json::Value),
    /// The last good result for the same request; nothing cached acts as `Omit`.
    Cached,
    Omit,
}

pub enum Shaping {
    /// An object keyed by step name.
    Default,
    Template(Template),
    Fields(Mask),
}

impl ComposeRoute {
    /// One line per step for `switchboard routes`: `name <- deps: target`.
    pub fn summary(&self) -> String {
        format!("compose [{}]", self.step_list())
    }

    /// `product, inventory after product, ...`
    fn step_list(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                let deps: Vec<&str> = s
                    .deps
                    .iter()
                    .map(|&d| self.steps[d].name.as_str())
                    .collect();
                let after = if deps.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", deps.join("+"))
                };
                format!("{}{}", s.name, after)
            })
            .collect();
        steps.join(", ")
    }

    /// The steps and their dependencies for `/admin/routes`.
    pub fn describe(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                let (kind, upstream, target) = match &s.target {
                    StepTarget::Grpc { upstream, path, .. } => ("grpc", upstream.name.clone(), path.to_string()),
                    StepTarget::Amqp { upstream, routing_key, .. } => ("amqp", upstream.name.clone(), routing_key.to_string()),
                };
                let fallback = match &s.fallback {
                    Fallback::Value(v) => serde_json::json!({ "value": v }),
                    Fallback::Cached => serde_json::json!("cached"),
                    Fallback::Omit => serde_json::json!("omit"),
                };
                serde_json::json!({
                    "name": s.name,
                    "kind": kind,
                    "upstream": upstream,
                    "target": target,
                    "depends_on": s.deps.iter().map(|&d| self.steps[d].name.clone()).collect::<Vec<_>>(),
                    "required": s.required,
                    "fallback": if s.required { serde_json::Value::Null } else { fallback },
                    "timeout_ms": s.timeout.as_millis() as u64,
                    "for_each": s.for_each.as_ref().map(|r| r.text.clone()),
                })
            })
            .collect();
        serde_json::json!({
            "kind": "compose",
            // Shown by the dashboard next to the kind.
            "method": self.step_list(),
            "steps": steps,
            "timeout_ms": self.timeout.as_millis() as u64,
            "partial_response": self.partial_response,
        })
    }
}
