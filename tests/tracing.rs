//! Span export over OTLP/HTTP (`telemetry: { otlp: { endpoint } }`), received by a small
//! collector in the test (an axum server taking `POST /v1/traces`, decoding the
//! protobuf `ExportTraceServiceRequest` with the exporter's own message types): one
//! request span, one child span per backend call (gRPC, AMQP) or composed step, all in
//! the trace the client sent, with the `traceparent` each backend received naming its
//! call's span as parent.

mod support;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::amqp::{self, require_broker, unique, wait_connected, worker};
use support::gateway::{self, TestGateway, client, echo_protos};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP trace receiver on a free port of 127.0.0.1.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn collector() -> Collector {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (received, seen) = (spans.clone(), requests.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| async move {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(content_type);
            let request = ExportTraceServiceRequest::decode(body).expect("a protobuf export");
            let mut spans = received.lock().unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            (
                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let addr = listener.local_addr().expect("collector address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("collector serves");
    });
    Collector {
        addr,
        spans,
        requests,
        task,
    }
}

impl Collector {
    /// The spans of `trace` (hex), once `count` have arrived (≤ 10 s); then half a
    /// second more, so that a span too many would be seen too.
    async fn trace(&self, trace: &str, count: usize) -> Vec<Span> {
        let of_trace = || -> Vec<Span> {
            self.spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace)
                .cloned()
                .collect()
        };
        support::wait_until(
            &format!("{count} spans of trace {trace} are exported"),
            Duration::from_secs(10),
            || of_trace().len() >= count,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        of_trace()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Value::from(s.clone()),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::BoolValue(b) => Value::from(*b),
        other => Value::from(format!("{other:?}")),
    })
}

/// The one server span of `spans`, and the others (its children).
fn split(spans: Vec<Span>) -> (Span, Vec<Span>) {
    let (servers, others): (Vec<_>, Vec<_>) = spans
        .into_iter()
        .partition(|s| s.kind == SpanKind::Server as i32);
    assert_eq!(servers.len(), 1, "one request span: {servers:#?}");
    (servers.into_iter().next().unwrap(), others)
}

/// The parent id in a `traceparent` value.
fn parent_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).expect("a traceparent")
}

async fn traced_gateway(collector: &Collector, upstreams: &str, routes: &str) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\ntelemetry: {{ otlp: {{ endpoint: \"http://{}\" }} }}\nupstreams:\n{upstreams}",
        echo_protos(),
        collector.addr,
    );
    gateway::start(&config, &[("m.yaml", routes)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_a_child_span_in_the_clients_trace() {
    let collector = collector().await;
    let echo = support::echo::start().await;
    let routes = r#"
routes:
  - http: { get: "/v1/traced/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
"#;
    let gw = traced_gateway(
        &collector,
        &gateway::grpc_upstream("echo", echo.addr, ""),
        routes,
    )
    .await;

    let response = client()
        .get(gw.url("/v1/traced/7"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-trace-id"], TRACE);
    let received = echo
        .last_metadata
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get("traceparent").cloned())
        .expect("the backend received a traceparent");
    let received = received.to_str().unwrap().to_string();
    assert!(
        received.starts_with(&format!("00-{TRACE}-")) && received.ends_with("-01"),
        "{received}"
    );

    let (request, children) = split(collector.trace(TRACE, 2).await);
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN, "{request:#?}");
    assert_eq!(request.name, "GET /v1/traced/{id}");
    assert_eq!(
        attribute(&request, "http.route"),
        Some("/v1/traced/{id}".into())
    );
    assert_eq!(
        attribute(&request, "http.response.status_code"),
        Some(200.into())
    );
    assert_eq!(
        children.len(),
        1,
        "one span per backend call: {children:#?}"
    );
    let call = &children[0];
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.name, "test.echo.v1.EchoService/Get");
    assert_eq!(hex(&call.parent_span_id), hex(&request.span_id));
    assert_eq!(attribute(call, "rpc.system"), Some("grpc".into()));
    assert_eq!(attribute(call, "rpc.grpc.status_code"), Some(0.into()));
    assert_eq!(attribute(call, "switchboard.upstream"), Some("echo".into()));
    // The backend's parent is the call's span: its own spans hang under it.
    assert_eq!(parent_of(&received), hex(&call.span_id));
    assert!(call.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= request.end_time_unix_nano);
    assert!(
        collector
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "OTLP/HTTP with protobuf bodies"
    );

    // No `traceparent` from the client: a new trace, the one `x-trace-id` names, and a
    // request span with no parent; a failing call is a span with an error status.
    let response = client()
        .get(gw.url("/v1/traced/8"))
        .header("grpc-metadata-x-echo-fail", "5")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let trace = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(trace.len(), 32, "{trace}");
    let (request, children) = split(collector.trace(&trace, 2).await);
    assert!(request.parent_span_id.is_empty(), "{request:#?}");
    assert_eq!(children.len(), 1);
    assert_eq!(hex(&children[0].parent_span_id), hex(&request.span_id));
    assert_eq!(
        attribute(&children[0], "rpc.grpc.status_code"),
        Some(5.into())
    );
    let status = children[0].status.as_ref().expect("a status");
    assert_eq!(status.code, 2, "error: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_composed_step_is_a_child_span() {
    let collector = collector().await;
    let echo = support::echo::start().await;
    let routes = r#"
routes:
  - http: { get: "/v1/composed/{id}" }
    compose:
      first: { grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }, request: { id: "{path.id}" }, required: true }
      second: { grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }, request: { id: "{first.id}-2" }, required: true }
      third: { grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }, request: { id: "{path.id}-3" }, required: true }
"#;
    let gw = traced_gateway(
        &collector,
        &gateway::grpc_upstream("echo", echo.addr, ""),
        routes,
    )
    .await;
    let response = client()
        .get(gw.url("/v1/composed/5"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["second"]["id"], "5-2", "{body}");
    let received = echo
        .last_metadata
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get("traceparent").cloned())
        .expect("the backend received a traceparent");

    let (request, steps) = split(collector.trace(TRACE, 4).await);
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    let mut names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["step first", "step second", "step third"]);
    for step in &steps {
        assert_eq!(
            hex(&step.parent_span_id),
            hex(&request.span_id),
            "{step:#?}"
        );
        assert_eq!(attribute(step, "switchboard.upstream"), Some("echo".into()));
    }
    // Each step's calls carry the step's own span id.
    let ids: Vec<String> = steps.iter().map(|s| hex(&s.span_id)).collect();
    assert!(
        ids.iter()
            .any(|id| id == parent_of(received.to_str().unwrap())),
        "{received:?} names one of {ids:?}"
    );
    // `second` read `first`: it started after `first` ended.
    let step = |name: &str| steps.iter().find(|s| s.name == name).unwrap();
    assert!(step("step second").start_time_unix_nano >= step("step first").end_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_message_is_a_child_span() {
    require_broker().await;
    let collector = collector().await;
    let queue = unique("traced");
    let _worker = worker(&queue, amqp::echo).await;
    let routes = format!(
        "routes:\n  - http: {{ post: \"/v1/queued\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: {queue} }}\n"
    );
    let upstreams = format!(
        "  mq:\n    amqp: {{ url: \"{}\" }}\n    timeout: 3s\n",
        amqp::BROKER_URL
    );
    let gw = traced_gateway(&collector, &upstreams, &routes).await;
    wait_connected(&gw, "mq").await;
    let response = client()
        .post(gw.url("/v1/queued"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({ "n": 1 }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.expect("the worker's echo");
    let received = seen["headers"]["traceparent"]
        .as_str()
        .expect("the message carried a traceparent")
        .to_string();
    assert!(received.starts_with(&format!("00-{TRACE}-")), "{received}");

    let (request, children) = split(collector.trace(TRACE, 2).await);
    assert_eq!(request.name, "POST /v1/queued");
    assert_eq!(children.len(), 1, "{children:#?}");
    let call = &children[0];
    assert_eq!(call.name, format!("call {queue}"));
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(hex(&call.parent_span_id), hex(&request.span_id));
    assert_eq!(attribute(call, "messaging.system"), Some("rabbitmq".into()));
    assert_eq!(parent_of(&received), hex(&call.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_is_propagated_but_not_exported() {
    let collector = collector().await;
    let echo = support::echo::start().await;
    let routes = r#"
routes:
  - http: { get: "/v1/traced/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
"#;
    let gw = traced_gateway(
        &collector,
        &gateway::grpc_upstream("echo", echo.addr, ""),
        routes,
    )
    .await;
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let response = client()
        .get(gw.url("/v1/traced/1"))
        .header("traceparent", format!("00-{unsampled}-{CLIENT_SPAN}-00"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let received = response.headers()["grpc-metadata-x-echo-traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        received.starts_with(&format!("00-{unsampled}-")) && received.ends_with("-00"),
        "{received}"
    );
    // A sampled request afterwards is exported: the unsampled one was not just late.
    let response = client()
        .get(gw.url("/v1/traced/2"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    collector.trace(TRACE, 2).await;
    let leaked = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| hex(&s.trace_id) == unsampled)
        .count();
    assert_eq!(leaked, 0, "an unsampled trace was exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_request() {
    // A port that was free a moment ago: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let echo = support::echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\ntelemetry: {{ otlp: {{ endpoint: \"http://{closed}\" }} }}\nupstreams:\n{}",
        echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    let routes = r#"
routes:
  - http: { get: "/v1/traced/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
"#;
    let gw = gateway::start(&config, &[("m.yaml", routes)]).await;
    let http = client();
    for i in 0..50 {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(gw.url(&format!("/v1/traced/{i}"))).send(),
        )
        .await
        .expect("an answer within 5 s")
        .expect("request");
        assert_eq!(response.status(), 200);
    }
    // Exports keep failing in the background (batches every 500 ms); requests still pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = http.get(gw.url("/v1/traced/last")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
