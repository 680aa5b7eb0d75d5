//! The `compose:` section of a route as operators write it (contract §4). Steps keep
//! their declaration order (the default response lists them in it) and their source line
//! (load errors point at the step, not only at the route).

use crate::config::mapping::GrpcTarget;
use crate::config::{AmqpTarget, ConfigDuration};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// `compose:`: step name → step, in the order written.
#[derive(Debug, Clone, Default)]
pub struct ComposeSpec(pub Vec<(String, Spanned<StepSpec>)>);

impl<'de> Deserialize<'de> for ComposeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Steps;
        impl<'de> Visitor<'de> for Steps {
            type Value = ComposeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of step name to step")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ComposeSpec, A::Error> {
                let mut steps: Vec<(String, Spanned<StepSpec>)> = Vec::new();
                while let Some((name, step)) = map.next_entry::<String, Spanned<StepSpec>>()? {
                    if steps.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "step `{name}` is defined twice"
                        )));
                    }
                    steps.push((name, step));
                }
                Ok(ComposeSpec(steps))
            }
        }
        deserializer.deserialize_map(Steps)
    }
}

/// One step: a gRPC unary call or an AMQP request-reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub grpc: Option<GrpcTarget>,
    pub amqp: Option<AmqpTarget>,
    /// JSON template of the request message.
    pub request: Option<serde_json::Value>,
    /// A failure fails the whole call with this step's status.
    #[serde(default)]
    pub required: bool,
    /// `omit` (default), `cached`, or any other JSON value used as the result.
    pub fallback: Option<serde_json::Value>,
    /// This step's own deadline, inside the route's.
    pub timeout: Option<ConfigDuration>,
    /// `"{STEP.list_field}"`: one call per element; `{item}` is the element.
    pub for_each: Option<String>,
    /// `for_each` calls in flight at once (default 8).
    pub concurrency: Option<usize>,
    /// `for_each` elements used at most (the rest are ignored; default 100).
    pub max_items: Option<usize>,
}
