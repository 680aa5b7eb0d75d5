//! What backend-call spans are named and carry (OpenTelemetry's RPC and messaging
//! conventions, plus the upstream's name). Called only when spans are exported.

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use prost_reflect::MethodDescriptor;

/// A gRPC call: `package.Service/Method`.
pub fn grpc_span(upstream: &str, method: &MethodDescriptor) -> (String, SpanKind, Vec<KeyValue>) {
    let service = method.parent_service().full_name().to_owned();
    (
        format!("{service}/{}", method.name()),
        SpanKind::Client,
        vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method.name().to_owned()),
            KeyValue::new("switchboard.upstream", upstream.to_owned()),
        ],
    )
}

/// The `rpc.grpc.status_code` of a finished call.
pub fn grpc_code<T>(result: &Result<T, tonic::Status>) -> KeyValue {
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    KeyValue::new("rpc.grpc.status_code", code as i64)
}

/// An AMQP message: `publish <exchange>` (kind producer) or, when a reply is awaited,
/// `call <exchange>` (kind client); the default exchange is named by the routing key.
pub fn amqp_span(
    upstream: &str,
    exchange: &str,
    routing_key: &str,
    reply: bool,
) -> (String, SpanKind, Vec<KeyValue>) {
    let destination = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    let (operation, kind) = if reply {
        ("call", SpanKind::Client)
    } else {
        ("publish", SpanKind::Producer)
    };
    (
        format!("{operation} {destination}"),
        kind,
        vec![
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("messaging.destination.name", exchange.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ),
            KeyValue::new("switchboard.upstream", upstream.to_owned()),
        ],
    )
}

/// A step of a composed route: `step <name>`, with the call(s) it makes.
pub fn step_span(
    route: &str,
    step: &str,
    upstream: &str,
    calls: usize,
) -> (String, SpanKind, Vec<KeyValue>) {
    (
        format!("step {step}"),
        SpanKind::Client,
        vec![
            KeyValue::new("switchboard.route", route.to_owned()),
            KeyValue::new("switchboard.compose.step", step.to_owned()),
            KeyValue::new("switchboard.compose.calls", calls as i64),
            KeyValue::new("switchboard.upstream", upstream.to_owned()),
        ],
    )
}
