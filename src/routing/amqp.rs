//! Compiling an `amqp:` route target (contract §4): upstream, routing key template and
//! protobuf types are resolved at load time, so that a request only fills in values.
//! `compile.rs` calls `compile` for every `http:` + `amqp:` route.

use super::template::PathTemplate;
use crate::config::mapping::RouteSpec;
use crate::config::{AmqpTarget, DEFAULT_TIMEOUT};
use crate::schema::Schema;
use crate::transcode::MessageType;
use crate::upstream::Upstreams;
use crate::upstream::amqp::AmqpUpstream;
use lapin::types::ShortString;
use std::sync::Arc;
use std::time::Duration;

/// A route onto RabbitMQ: request-reply (`reply`) or publish.
pub struct AmqpRoute {
    pub upstream: Arc<AmqpUpstream>,
    pub exchange: ShortString,
    pub routing_key: RoutingKey,
    /// Wait for a reply on direct reply-to; `false`: answer 202 once the broker confirmed.
    pub reply: bool,
    /// Delivery mode 2.
    pub persistent: bool,
    /// `body: "*"`: the request body is the message; otherwise the message is empty.
    pub reads_body: bool,
    /// JSON request bodies are sent as this protobuf message.
    pub request_type: Option<MessageType>,
    /// Protobuf replies are decoded as this message and answered as JSON.
    pub response_type: Option<MessageType>,
    /// `x-path-<variable>` header names, in the template's variable order.
    pub path_headers: Vec<ShortString>,
    pub timeout: Duration,
}

/// A routing key whose `{variable}` parts are path variables of the route.
#[derive(Debug)]
pub struct RoutingKey {
    pub text: String,
    parts: Vec<KeyPart>,
    /// `routing_key_allow_dots`: a variable may span several topic words.
    allow_dots: bool,
}

#[derive(Debug)]
enum KeyPart {
    Literal(String),
    /// Index into the route's path captures.
    Variable(usize),
}

impl RoutingKey {
    fn parse(text: &str, template: &PathTemplate, allow_dots: bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let (literal, after) = rest.split_at(open);
            let close = after
                .find('}')
                .ok_or_else(|| format!("routing_key `{text}`: `{{` without `}}`"))?;
            let name = &after[1..close];
            let index = template
                .variables
                .iter()
                .position(|v| v.field_path == name)
                .ok_or_else(|| {
                    format!(
                        "routing_key `{text}`: `{{{name}}}` is not a variable of `{}`",
                        template.text
                    )
                })?;
            if !literal.is_empty() {
                parts.push(KeyPart::Literal(literal.to_string()));
            }
            parts.push(KeyPart::Variable(index));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("routing_key `{text}`: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Literal(rest.to_string()));
        }
        ShortString::try_new(text).map_err(|e| format!("routing_key `{text}`: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            parts,
            allow_dots,
        })
    }

    /// The key for one request's path captures. A captured value is client data: it must
    /// stay one topic word (no `.`, unless the route allows it; never `#` or `*`), or the
    /// client picks which bindings of a topic exchange see the message.
    pub fn resolve(&self, captures: &[String]) -> Result<ShortString, String> {
        let mut key = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                KeyPart::Literal(text) => key.push_str(text),
                KeyPart::Variable(i) => {
                    let value = captures.get(*i).map_or("", String::as_str);
                    if value.contains(['#', '*']) || (!self.allow_dots && value.contains('.')) {
                        return Err(format!(
                            "path value `{value}` cannot go into the routing key: it must be one \
                             topic word (no `.`, `#` or `*`)"
                        ));
                    }
                    key.push_str(value);
                }
            }
        }
        ShortString::try_new(key).map_err(|e| format!("routing key too long: {e}"))
    }
}

/// The `amqp:` target of an `http:` route, or what is wrong with it.
pub fn compile(
    spec: &RouteSpec,
    target: &AmqpTarget,
    template: &PathTemplate,
    schema: &Schema,
    upstreams: &Upstreams,
) -> Result<AmqpRoute, String> {
    let Some(http) = &spec.http else {
        return Err("an `amqp:` route needs `http:`".into());
    };
    let reads_body = match http.body.as_deref() {
        None | Some("") => false,
        Some("*") => true,
        Some(field) => {
            return Err(format!(
                "`body: {field}`: an AMQP message is the whole body (`body: \"*\"`) or none"
            ));
        }
    };
    for (present, key) in [
        (http.response_body.is_some(), "http.response_body"),
        (
            !http.additional_bindings.is_empty(),
            "http.additional_bindings",
        ),
    ] {
        if present {
            return Err(format!("`{key}` does not apply to `amqp:` routes"));
        }
    }
    compile_target(spec, target, template, schema, upstreams, reads_body)
}

/// What every route onto RabbitMQ shares, whatever its front door (`http:` here, or
/// `websocket:` in `routing::websocket`): one target, the upstream, exchange, routing key,
/// protobuf types and timeout. `reads_body`: the client's payload is the message.
pub fn compile_target(
    spec: &RouteSpec,
    target: &AmqpTarget,
    template: &PathTemplate,
    schema: &Schema,
    upstreams: &Upstreams,
    reads_body: bool,
) -> Result<AmqpRoute, String> {
    if spec.grpc.is_some() || spec.static_response.is_some() || spec.grpc_service.is_some() {
        return Err("route has more than one target; use one of `grpc`, `amqp`, `static`".into());
    }
    for (present, key) in [
        (spec.response.is_some(), "response"),
        (spec.partial_response, "partial_response"),
        (spec.strict_query, "strict_query"),
        (spec.forward_authorization, "forward_authorization"),
    ] {
        if present {
            return Err(format!("`{key}` does not apply to `amqp:` routes"));
        }
    }
    let upstream = upstreams
        .amqp
        .get(&target.upstream)
        .cloned()
        .ok_or_else(|| {
            if upstreams.grpc.contains_key(&target.upstream) {
                format!(
                    "upstream `{}` is a gRPC upstream, not AMQP",
                    target.upstream
                )
            } else {
                format!("unknown AMQP upstream `{}`", target.upstream)
            }
        })?;
    let exchange = ShortString::try_new(target.exchange.as_str())
        .map_err(|e| format!("exchange `{}`: {e}", target.exchange))?;
    let message = |name: &Option<String>, key: &str| -> Result<Option<MessageType>, String> {
        name.as_deref()
            .map(|name| {
                schema
                    .pool
                    .get_message_by_name(name)
                    .map(MessageType::new)
                    .ok_or_else(|| format!("{key} `{name}` is not a message in the descriptors"))
            })
            .transpose()
    };
    let request_type = message(&target.request_type, "request_type")?;
    let response_type = message(&target.response_type, "response_type")?;
    if !target.reply && response_type.is_some() {
        return Err("`response_type` needs a reply; it does not apply with `reply: false`".into());
    }
    let mut path_headers = Vec::with_capacity(template.variables.len());
    for variable in &template.variables {
        let name = format!("x-path-{}", variable.field_path);
        path_headers.push(ShortString::try_new(name).map_err(|e| e.to_string())?);
    }
    let timeout = spec
        .timeout
        .map(|t| t.0)
        .or_else(|| upstreams.timeouts.get(&target.upstream).copied())
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(AmqpRoute {
        upstream,
        exchange,
        routing_key: RoutingKey::parse(
            &target.routing_key,
            template,
            target.routing_key_allow_dots,
        )?,
        reply: target.reply,
        persistent: target.persistent,
        reads_body,
        request_type,
        response_type,
        path_headers,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str, template: &str) -> Result<RoutingKey, String> {
        RoutingKey::parse(text, &PathTemplate::parse(template).unwrap(), false)
    }

    #[test]
    fn a_variable_is_one_topic_word() {
        let k = key("shop.{kind}", "/v1/events/{kind}").unwrap();
        for hostile in ["admin.delete", "#", "a*", "x.#", ".", "*"] {
            let error = k.resolve(&[hostile.to_string()]).unwrap_err();
            assert!(error.contains("one topic word"), "{hostile}: {error}");
        }
        assert_eq!(
            k.resolve(&["order-placed".into()]).unwrap().as_str(),
            "shop.order-placed"
        );
        let dotted = RoutingKey::parse(
            "shop.{kind}",
            &PathTemplate::parse("/v1/events/{kind}").unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(
            dotted.resolve(&["eu.order".into()]).unwrap().as_str(),
            "shop.eu.order"
        );
        assert!(dotted.resolve(&["eu.#".into()]).is_err());
        assert!(dotted.resolve(&["*.order".into()]).is_err());
    }

    #[test]
    fn routing_keys_fill_in_path_variables() {
        let k = key("shop.{kind}.{id}", "/v1/events/{kind}/{id}").unwrap();
        let captures = ["order".to_string(), "42".to_string()];
        assert_eq!(k.resolve(&captures).unwrap().as_str(), "shop.order.42");
        let fixed = key("shipping.quote", "/v1/quotes").unwrap();
        assert_eq!(fixed.resolve(&[]).unwrap().as_str(), "shipping.quote");
        let long = ["x".repeat(300)];
        assert!(key("{kind}", "/{kind}").unwrap().resolve(&long).is_err());
    }

    #[test]
    fn bad_routing_keys_are_load_errors() {
        assert!(
            key("shop.{nope}", "/v1/{kind}")
                .unwrap_err()
                .contains("`{nope}`")
        );
        assert!(key("shop.{kind", "/v1/{kind}").is_err());
        assert!(key("shop.kind}", "/v1/{kind}").is_err());
        assert!(key(&"k".repeat(256), "/v1").is_err());
    }
}
