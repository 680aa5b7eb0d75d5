//! Running a composed call. Steps start as soon as every step they read has finished
//! (not in waves); each runs under its own timeout, inside the route's deadline. A failed
//! `required` step ends the call with its status and drops (cancels) the others; a failed
//! optional step falls back, and so do the steps that read it.

use super::shape::{Mask, Shape};
use super::template::{Resolve, Source, lookup};
use super::{ComposeRoute, Fallback, Shaping, Step, StepTarget};
use crate::error::{GatewayError, code_for_http_status};
use crate::middleware::Identity;
use crate::middleware::deadline::Deadline;
use crate::proxy::body::read_limited;
use crate::routing::RouteTable;
use crate::telemetry::spans;
use crate::telemetry::trace::TraceContext;
use crate::transcode::{JsonCodec, parse_query};
use crate::upstream::amqp::Message;
use crate::upstream::amqp::message::{self, JSON, PROTOBUF};
use crate::upstream::grpc::status::status_to_error;
use crate::upstream::grpc::{Call, unary};
use crate::upstream::metadata::{ClientMetadata, grpc_metadata};
use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::{self, FuturesUnordered, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

static X_DEGRADED: HeaderName = HeaderName::from_static("x-degraded");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// JSON bytes all steps of one call may bring back together (`for_each` fans out up to
/// 1000 calls): beyond it a step fails, so one request cannot hold unbounded memory.
const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

/// One composed request, from the client's request to the JSON answer.
pub(crate) async fn call(
    table: &Arc<RouteTable>,
    route: &ComposeRoute,
    request: Request<Body>,
    captures: Vec<String>,
    trace: &TraceContext,
    request_deadline: Deadline,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    let deadline = request_deadline.instant();
    let query: Vec<(String, String)> = parse_query(parts.uri.query().unwrap_or(""))?
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // A bad `?fields=` is refused before any backend is called.
    let partial = if route.partial_response {
        fields_mask(&query, &route.shape, table.config.json.use_proto_names)?
    } else {
        None
    };
    let body =
        if route.reads_body {
            let bytes = read_limited(
                body,
                &parts.headers,
                table.limits.max_body.0,
                request_deadline,
            )
            .await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                    GatewayError::invalid_argument(format!("invalid JSON body: {e}"))
                })?)
            }
        } else {
            None
        };
    let identity = parts.extensions.get::<Identity>();
    let claims = identity.and_then(|i| i.claims.clone());

    // Metadata every step sends: trace ids, verified claims, `Grpc-Metadata-*`.
    let metadata = grpc_metadata(
        &parts.headers,
        trace,
        identity,
        ClientMetadata {
            grpc_metadata: true,
            authorization: route.forward_authorization,
            plain_headers: false,
        },
    )?;
    let mut amqp_headers = metadata.clone();
    amqp_headers.remove(header::AUTHORIZATION);

    let request = RequestData {
        captures: &captures,
        query: &query,
        body: body.as_ref(),
        headers: &parts.headers,
        claims: claims.as_deref(),
    };
    let env = Env {
        table,
        route,
        trace,
        metadata: &metadata,
        amqp_headers: &amqp_headers,
        deadline,
        client_deadline: request_deadline.client_set,
        received: AtomicUsize::new(0),
    };
    let outcome = run(&env, &request).await?;

    let bytes = answer(route, &request, outcome.shown, partial)?;
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    let degraded: Vec<&str> = route
        .steps
        .iter()
        .zip(&outcome.degraded)
        .filter(|(_, d)| **d)
        .map(|(s, _)| s.name.as_str())
        .collect();
    if !degraded.is_empty()
        && let Ok(value) = HeaderValue::from_str(&degraded.join(", "))
    {
        response.headers_mut().insert(X_DEGRADED.clone(), value);
    }
    Ok(response)
}

/// The answer's JSON text. The default shape (an object keyed by step name, in
/// declaration order) is spliced from the steps' JSON text as it came back, without
/// parsing it again; a template, a `fields` projection or a client's `?fields=` work on
/// parsed values.
fn answer(
    route: &ComposeRoute,
    request: &RequestData<'_>,
    shown: Vec<Option<Part>>,
    partial: Option<Mask>,
) -> Result<Vec<u8>, GatewayError> {
    let encode_error = |e: serde_json::Error| GatewayError::internal(e.to_string());
    if matches!(route.shaping, Shaping::Default) && partial.is_none() {
        let size: usize = shown.iter().flatten().map(Part::len_hint).sum();
        let mut out = Vec::with_capacity(size + 16 * route.steps.len() + 2);
        out.push(b'{');
        for (step, part) in route.steps.iter().zip(shown) {
            let Some(part) = part else { continue };
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &step.name).map_err(encode_error)?;
            out.push(b':');
            match part {
                Part::Text(text) => out.extend_from_slice(&text),
                Part::Value(value) => {
                    serde_json::to_writer(&mut out, &value).map_err(encode_error)?
                }
            }
        }
        out.push(b'}');
        return Ok(out);
    }
    let shown: Vec<Option<Value>> = shown
        .into_iter()
        .map(|part| part.map(Part::into_value).transpose())
        .collect::<Result<_, _>>()?;
    let mut answer = match &route.shaping {
        Shaping::Default => default_answer(route, shown),
        Shaping::Fields(mask) => mask.apply(default_answer(route, shown)),
        Shaping::Template(template) => template
            .resolve(&Inputs {
                request,
                results: &shown,
                item: None,
            })
            .unwrap_or(Value::Null),
    };
    if let Some(mask) = partial {
        answer = mask.apply(answer);
    }
    serde_json::to_vec(&answer).map_err(encode_error)
}

/// The client's `?fields=` (Google partial-response syntax), checked against `shape`.
/// Absent or empty: no trimming. Unknown paths are INVALID_ARGUMENT (400).
pub(crate) fn fields_mask(
    query: &[(String, String)],
    shape: &Shape,
    proto_names: bool,
) -> Result<Option<Mask>, GatewayError> {
    let Some((_, text)) = query.iter().find(|(k, _)| k == "fields") else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    Mask::parse_param(text)
        .and_then(|mask| mask.validate(shape, proto_names))
        .map(Some)
        .map_err(|e| GatewayError::invalid_argument(format!("invalid `fields` parameter: {e}")))
}

/// The object keyed by step name; omitted steps are absent.
fn default_answer(route: &ComposeRoute, shown: Vec<Option<Value>>) -> Value {
    let mut map = Map::new();
    for (step, value) in route.steps.iter().zip(shown) {
        if let Some(value) = value {
            map.insert(step.name.clone(), value);
        }
    }
    Value::Object(map)
}

/// What the answer shows for one step.
enum Part {
    /// JSON text: a result as transcoded, or a cached one.
    Text(Bytes),
    /// A configured fallback value.
    Value(Value),
}

impl Part {
    fn len_hint(&self) -> usize {
        match self {
            Part::Text(text) => text.len(),
            Part::Value(_) => 64,
        }
    }

    fn into_value(self) -> Result<Value, GatewayError> {
        match self {
            Part::Text(text) => parse_result(&text),
            Part::Value(value) => Ok(value),
        }
    }
}

/// A step result's JSON text as a value (the text was checked when it arrived).
fn parse_result(text: &[u8]) -> Result<Value, GatewayError> {
    serde_json::from_slice(text).map_err(|e| GatewayError::internal(e.to_string()))
}

/// What does not change while the steps run.
struct Env<'a> {
    table: &'a RouteTable,
    route: &'a ComposeRoute,
    /// Each step is a span of the request (when spans are exported).
    trace: &'a TraceContext,
    metadata: &'a HeaderMap,
    amqp_headers: &'a HeaderMap,
    deadline: Instant,
    /// The client shortened the deadline: running out of it is the client's doing.
    client_deadline: bool,
    /// Result bytes received so far (bounded by `MAX_RESULT_BYTES`).
    received: AtomicUsize,
}

impl Env<'_> {
    /// Counts `size` result bytes; an error once the call's results grow too large.
    fn receive(&self, step: &Step, size: usize) -> Result<(), GatewayError> {
        let total = self.received.fetch_add(size, Ordering::Relaxed) + size;
        if total > MAX_RESULT_BYTES {
            return Err(GatewayError::internal(format!(
                "step `{}`: the composed results exceed {MAX_RESULT_BYTES} bytes",
                step.name
            )));
        }
        Ok(())
    }
}

/// The client request as templates read it.
struct RequestData<'a> {
    captures: &'a [String],
    query: &'a [(String, String)],
    body: Option<&'a Value>,
    headers: &'a HeaderMap,
    claims: Option<&'a Map<String, Value>>,
}

/// Everything a template can read at one moment.
struct Inputs<'a> {
    request: &'a RequestData<'a>,
    results: &'a [Option<Value>],
    item: Option<&'a Value>,
}

impl Resolve for Inputs<'_> {
    fn get(&self, source: &Source) -> Option<Value> {
        let r = self.request;
        match source {
            Source::Path(i) => r.captures.get(*i).map(|s| Value::String(s.clone())),
            Source::Query(name) => r
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Value::String(v.clone())),
            Source::Body(path) => lookup(r.body?, path),
            Source::Header(name) => r
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| Value::String(v.to_string())),
            Source::Claims(path) => {
                let (first, rest) = path.split_first()?;
                lookup(r.claims?.get(first)?, rest)
            }
            Source::Step(i, path) => lookup(self.results.get(*i)?.as_ref()?, path),
            Source::Item(path) => lookup(self.item?, path),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Succeeded,
    FellBack,
}

struct Outcome {
    /// What the answer shows per step: the result, the fallback, or nothing.
    shown: Vec<Option<Part>>,
    degraded: Vec<bool>,
}

/// A finished step: its result as JSON text, and parsed when another step reads it.
struct Success {
    text: Bytes,
    value: Option<Value>,
}

type StepFuture<'a> =
    Pin<Box<dyn Future<Output = (usize, Result<Success, GatewayError>)> + Send + 'a>>;

/// Runs every step; returns early with the error of a failed required step (dropping the
/// steps still running, which cancels their calls).
async fn run(env: &Env<'_>, request: &RequestData<'_>) -> Result<Outcome, GatewayError> {
    let steps = &env.route.steps;
    let n = steps.len();
    let mut state = vec![State::Waiting; n];
    // Successful results: what dependents read.
    let mut results: Vec<Option<Value>> = vec![None; n];
    let mut shown: Vec<Option<Part>> = (0..n).map(|_| None).collect();
    let mut degraded = vec![false; n];
    let mut keys: Vec<Option<String>> = vec![None; n];
    // Why a step fell back: a required step reading it fails with the same status.
    let mut errors: Vec<Option<GatewayError>> = vec![None; n];
    let mut running: FuturesUnordered<StepFuture<'_>> = FuturesUnordered::new();

    loop {
        // Start (or fall back) every step whose inputs are all settled; falling back can
        // settle more, hence the inner loop.
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..n {
                if state[i] != State::Waiting {
                    continue;
                }
                let step = &steps[i];
                if step
                    .deps
                    .iter()
                    .any(|&d| matches!(state[d], State::Waiting | State::Running))
                {
                    continue;
                }
                changed = true;
                let failed_dep = step.deps.iter().find(|&&d| state[d] == State::FellBack);
                let prepared = match failed_dep {
                    Some(&d) => {
                        let message = format!(
                            "step `{}` needs step `{}`, which failed",
                            step.name, steps[d].name
                        );
                        Err(match &errors[d] {
                            Some(cause) => GatewayError {
                                message,
                                ..cause.clone()
                            },
                            None => GatewayError::unavailable(message),
                        })
                    }
                    None => prepare(
                        env,
                        step,
                        &Inputs {
                            request,
                            results: &results,
                            item: None,
                        },
                    ),
                };
                match prepared {
                    Ok((key, calls)) => {
                        keys[i] = key;
                        state[i] = State::Running;
                        running.push(Box::pin(
                            async move { (i, execute(env, step, calls).await) },
                        ));
                    }
                    Err(error) => {
                        state[i] = State::FellBack;
                        errors[i] = Some(error.clone());
                        shown[i] = fall_back(env, step, keys[i].as_deref(), error).await?;
                        degraded[i] = true;
                    }
                }
            }
        }
        let Some((i, result)) = running.next().await else {
            break;
        };
        let step = &steps[i];
        match result {
            Ok(success) => {
                if let Some(key) = &keys[i] {
                    env.route.store.put(&step.name, key, &success.text).await;
                }
                state[i] = State::Succeeded;
                shown[i] = Some(Part::Text(success.text));
                results[i] = success.value;
            }
            Err(error) => {
                state[i] = State::FellBack;
                errors[i] = Some(error.clone());
                shown[i] = fall_back(env, step, keys[i].as_deref(), error).await?;
                degraded[i] = true;
            }
        }
    }
    Ok(Outcome { shown, degraded })
}

/// A failed step: the call's error when it is required, else what its fallback shows.
async fn fall_back(
    env: &Env<'_>,
    step: &Step,
    key: Option<&str>,
    error: GatewayError,
) -> Result<Option<Part>, GatewayError> {
    if step.required {
        tracing::debug!(step = %step.name, code = ?error.code, message = %error.message, "required compose step failed");
        return Err(error);
    }
    tracing::info!(step = %step.name, code = ?error.code, message = %error.message, "compose step failed; falling back");
    metrics::counter!(
        "switchboard_compose_fallbacks_total",
        "route" => env.route.name.clone(),
        "step" => step.name.clone()
    )
    .increment(1);
    Ok(match &step.fallback {
        Fallback::Value(value) => Some(Part::Value(value.clone())),
        Fallback::Omit => None,
        Fallback::Cached => match key {
            Some(key) => env.route.store.get(&step.name, key).await.map(Part::Text),
            None => None,
        },
    })
}

/// One prepared backend call: the encoded request.
enum Prepared {
    Grpc(Bytes),
    Amqp {
        payload: Vec<u8>,
        content_type: &'static str,
    },
}

/// The step's request(s), built and encoded now that its inputs are there, and the key
/// its `cached` fallback is stored under (when it has one). Bad values (a client's text
/// in a number field) fail the step with INVALID_ARGUMENT.
fn prepare(
    env: &Env<'_>,
    step: &Step,
    inputs: &Inputs<'_>,
) -> Result<(Option<String>, Vec<Prepared>), GatewayError> {
    let build = |item: Option<&Value>| -> Value {
        let inputs = Inputs {
            request: inputs.request,
            results: inputs.results,
            item,
        };
        step.request
            .as_ref()
            .and_then(|t| t.resolve(&inputs))
            .unwrap_or_else(|| Value::Object(Map::new()))
    };
    let requests: Vec<Value> = match &step.for_each {
        None => vec![build(None)],
        Some(r) => match inputs.get(&r.source) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .take(step.max_items)
                .map(|item| build(Some(item)))
                .collect(),
            Some(_) => {
                return Err(GatewayError::internal(format!(
                    "step `{}`: `for_each: {}` is not a list",
                    step.name, r.text
                )));
            }
        },
    };
    let key = (step.fallback == Fallback::Cached).then(|| match &step.for_each {
        None => requests[0].to_string(),
        Some(_) => Value::Array(requests.clone()).to_string(),
    });
    let json = &env.table.json;
    let mut calls = Vec::with_capacity(requests.len());
    for mut request in requests {
        calls.push(match &step.target {
            StepTarget::Grpc { input, .. } => {
                coerce_message(&mut request, input.descriptor());
                // JSON text through the byte-level transcoder: cheaper than building a
                // DynamicMessage from the value.
                let text = serde_json::to_vec(&request)
                    .map_err(|e| GatewayError::internal(e.to_string()))?;
                let mut framed = Vec::with_capacity(unary::FRAME_PREFIX.len() + text.len());
                framed.extend_from_slice(&unary::FRAME_PREFIX);
                json.json_to_proto(input, &text, &mut framed).map_err(|e| {
                    GatewayError::invalid_argument(format!("step `{}`: {}", step.name, e.message))
                })?;
                Prepared::Grpc(
                    unary::finish_frame(framed)
                        .map_err(|s| GatewayError::internal(s.message().to_owned()))?,
                )
            }
            StepTarget::Amqp {
                request_type: Some(ty),
                ..
            } => {
                coerce_message(&mut request, ty.descriptor());
                let text = serde_json::to_vec(&request)
                    .map_err(|e| GatewayError::internal(e.to_string()))?;
                Prepared::Amqp {
                    payload: message::typed_payload(json, ty, &text).map_err(|e| {
                        GatewayError::invalid_argument(format!(
                            "step `{}`: {}",
                            step.name, e.message
                        ))
                    })?,
                    content_type: PROTOBUF,
                }
            }
            StepTarget::Amqp {
                request_type: None, ..
            } => Prepared::Amqp {
                payload: serde_json::to_vec(&request)
                    .map_err(|e| GatewayError::internal(e.to_string()))?,
                content_type: JSON,
            },
        });
    }
    Ok((key, calls))
}

/// Runs a step's call(s) within its timeout and the route's deadline. A `for_each` step
/// runs at most `concurrency` calls at once and keeps element order; one failure fails it.
async fn execute(
    env: &Env<'_>,
    step: &Step,
    calls: Vec<Prepared>,
) -> Result<Success, GatewayError> {
    let deadline = (Instant::now() + step.timeout).min(env.deadline);
    let span = env.trace.backend(|| {
        let upstream = match &step.target {
            StepTarget::Grpc { upstream, .. } => &upstream.name,
            StepTarget::Amqp { upstream, .. } => &upstream.name,
        };
        spans::step_span(&env.route.name, &step.name, upstream, calls.len())
    });
    let traceparent = span.own_traceparent();
    let work = async {
        if step.for_each.is_none() {
            let Some(call) = calls.into_iter().next() else {
                return Err(GatewayError::internal("a step without a request"));
            };
            return call_once(env, step, call, deadline, traceparent).await;
        }
        let results: Vec<Success> = stream::iter(calls)
            .map(|call| call_once(env, step, call, deadline, traceparent))
            .buffered(step.concurrency)
            .try_collect()
            .await?;
        let size = results.iter().map(|s| s.text.len() + 1).sum::<usize>() + 2;
        let mut text = Vec::with_capacity(size);
        text.push(b'[');
        for (n, result) in results.iter().enumerate() {
            if n > 0 {
                text.push(b',');
            }
            text.extend_from_slice(&result.text);
        }
        text.push(b']');
        let value = step
            .read_by_steps
            .then(|| Value::Array(results.into_iter().filter_map(|s| s.value).collect()));
        Ok(Success {
            text: Bytes::from(text),
            value,
        })
    };
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => {
            let error = GatewayError::deadline_exceeded(format!(
                "step `{}` did not finish in time",
                step.name
            ));
            // The request's own deadline ran out and the client had shortened it.
            Err(if env.client_deadline && deadline == env.deadline {
                error.with_origin(crate::error::Origin::Client)
            } else {
                error.with_origin(crate::error::Origin::Upstream)
            })
        }
    };
    span.finish(&result);
    result
}

/// One backend call of a step; `traceparent` is the step's own, when spans are exported.
async fn call_once(
    env: &Env<'_>,
    step: &Step,
    call: Prepared,
    deadline: Instant,
    traceparent: Option<&HeaderValue>,
) -> Result<Success, GatewayError> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let json: &JsonCodec = &env.table.json;
    match (&step.target, call) {
        (
            StepTarget::Grpc {
                upstream,
                path,
                output,
                idempotent,
                ..
            },
            Prepared::Grpc(framed),
        ) => {
            let mut metadata = env.metadata.clone();
            if let Some(traceparent) = traceparent {
                metadata.insert(TRACEPARENT.clone(), traceparent.clone());
            }
            let call = Call {
                path: path.clone(),
                metadata: MetadataMap::from_headers(metadata),
                framed,
                timeout,
                client_deadline: env.client_deadline && deadline == env.deadline,
                idempotent: *idempotent,
            };
            let response = upstream
                .unary(call)
                .await
                .map_err(|status| status_to_error(&status, &env.table.schema.pool, json))?;
            let bytes = response.into_inner();
            env.receive(step, bytes.len())?;
            // Our own transcoder wrote it: valid JSON, parsed only when a step reads it.
            let text = json.proto_to_json(output, &bytes)?;
            let value = step
                .read_by_steps
                .then(|| parse_result(&text))
                .transpose()?;
            Ok(Success {
                text: Bytes::from(text),
                value,
            })
        }
        (
            StepTarget::Amqp {
                upstream,
                exchange,
                routing_key,
                response_type,
                ..
            },
            Prepared::Amqp {
                payload,
                content_type,
            },
        ) => {
            let mut headers = message::header_table(env.amqp_headers.iter());
            if let Some(traceparent) = traceparent {
                headers.insert(
                    TRACEPARENT.as_str().into(),
                    message::text(traceparent.as_bytes()),
                );
            }
            let properties = message::properties(headers, Some(content_type.into()), false);
            let message = Message {
                exchange,
                routing_key: routing_key.clone(),
                payload: &payload,
                properties,
            };
            let reply = upstream.call(message, timeout).await?;
            let status = message::reply_status(&reply)?;
            if !status.is_success() {
                return Err(GatewayError::new(
                    code_for_http_status(status),
                    format!("upstream `{}` answered {}", upstream.name, status.as_u16()),
                )
                .with_status(status));
            }
            env.receive(step, reply.body.len())?;
            let (body, _) = message::reply_body(json, response_type.as_ref(), reply)?;
            // A worker's JSON goes into the answer as it is: it must be one JSON value.
            let not_json = |_| {
                GatewayError::internal(format!(
                    "upstream `{}` sent a reply that is not JSON",
                    upstream.name
                ))
            };
            let value = if step.read_by_steps {
                Some(serde_json::from_slice::<Value>(&body).map_err(not_json)?)
            } else {
                serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(not_json)?;
                None
            };
            Ok(Success {
                text: Bytes::from(body),
                value,
            })
        }
        _ => Err(GatewayError::internal(
            "step request does not fit its target",
        )),
    }
}

/// Template values into the request type's JSON: text into numbers and booleans, numbers
/// into text, a single value into a repeated field (contract §9: "strings convert to the
/// target field's type").
fn coerce_message(value: &mut Value, desc: &MessageDescriptor) {
    let Value::Object(map) = value else { return };
    for (key, v) in map.iter_mut() {
        let Some(field) = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
        else {
            continue;
        };
        if field.is_map() {
            continue;
        }
        if field.is_list() {
            if !v.is_array() {
                *v = Value::Array(vec![v.take()]);
            }
            if let Value::Array(items) = v {
                items
                    .iter_mut()
                    .for_each(|item| coerce_single(item, &field));
            }
        } else {
            coerce_single(v, &field);
        }
    }
}

fn coerce_single(value: &mut Value, field: &FieldDescriptor) {
    match field.kind() {
        Kind::Message(m) if !m.full_name().starts_with("google.protobuf.") => {
            coerce_message(value, &m)
        }
        Kind::String => match value {
            Value::Number(n) => *value = Value::String(n.to_string()),
            Value::Bool(b) => *value = Value::String(b.to_string()),
            _ => {}
        },
        Kind::Bool => {
            if let Value::String(s) = value {
                match s.trim() {
                    "true" => *value = Value::Bool(true),
                    "false" => *value = Value::Bool(false),
                    _ => {}
                }
            }
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            if let Value::String(s) = value
                && let Ok(n) = s.trim().parse::<i64>()
            {
                *value = Value::from(n);
            }
        }
        Kind::Double | Kind::Float => {
            if let Value::String(s) = value
                && let Ok(n) = s.trim().parse::<f64>()
                && let Some(number) = serde_json::Number::from_f64(n)
            {
                *value = Value::Number(number);
            }
        }
        // 64-bit integers are strings in proto3 JSON; numbers are accepted as they are.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercion_follows_the_field_types() {
        let schema = crate::schema::Schema::builtin();
        // google.rpc.Status: int32 code, string message, repeated Any details.
        let desc = schema.status;
        let mut v = json!({"code": "5", "message": 12, "details": []});
        coerce_message(&mut v, &desc);
        assert_eq!(v, json!({"code": 5, "message": "12", "details": []}));
        let mut bad = json!({"code": "five"});
        coerce_message(&mut bad, &desc);
        assert_eq!(
            bad,
            json!({"code": "five"}),
            "left for the decoder to refuse"
        );
    }
}
