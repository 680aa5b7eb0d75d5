//! Compiling a `compose:` route at load time: every step's target resolved against the
//! upstreams and descriptors, every template parsed once, every `{STEP.field}` checked
//! against that step's response type and rewritten to the names the JSON answer uses, and
//! the dependency graph checked for unknown steps and cycles. Errors carry the step's
//! `file:line`.

use super::shape::{Mask, Shape};
use super::spec::StepSpec;
use super::store::StepStore;
use super::template::{Ref, Scope, Source, Template};
use super::{ComposeRoute, Fallback, Shaping, Step, StepTarget};
use crate::config::mapping::RouteSpec;
use crate::config::{DEFAULT_TIMEOUT, Location};
use crate::routing::template::PathTemplate;
use crate::schema::Schema;
use crate::transcode::MessageType;
use crate::upstream::Upstreams;
use http::Method;
use lapin::types::ShortString;
use prost_reflect::MessageDescriptor;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: usize = 64;
const DEFAULT_MAX_ITEMS: usize = 100;
/// A `for_each` never fans out wider than this, whatever the config says.
const MAX_ITEMS_LIMIT: usize = 1000;
/// Steps in one route: bounds the work one request can cause.
const MAX_STEPS: usize = 64;

/// What `compile` needs besides the route spec.
pub(crate) struct Context<'a> {
    pub schema: &'a Schema,
    pub upstreams: &'a Upstreams,
    pub proto_names: bool,
    /// The route's name for metrics (`switchboard_compose_fallbacks_total{route}`).
    pub route_name: String,
    pub method: &'a Method,
    pub template: &'a PathTemplate,
    pub location: &'a Location,
}

/// The compiled route, or every problem found (each with its location).
pub(crate) fn compile(
    spec: &RouteSpec,
    cx: &Context<'_>,
) -> Result<ComposeRoute, Vec<(Location, String)>> {
    let mut errors: Vec<(Location, String)> = Vec::new();
    let route_error = |errors: &mut Vec<(Location, String)>, message: String| {
        errors.push((cx.location.clone(), message));
    };
    let Some(compose) = &spec.compose else {
        return Err(vec![(
            cx.location.clone(),
            "route has no `compose:`".into(),
        )]);
    };
    for (present, key) in [
        (spec.grpc.is_some(), "grpc"),
        (spec.amqp.is_some(), "amqp"),
        (spec.static_response.is_some(), "static"),
        (spec.grpc_service.is_some(), "grpc_service"),
        (spec.websocket.is_some(), "websocket"),
    ] {
        if present {
            route_error(
                &mut errors,
                format!("`compose:` and `{key}:` cannot be on one route"),
            );
        }
    }
    if spec.strict_query {
        route_error(
            &mut errors,
            "`strict_query` does not apply to `compose:` routes (templates read the query)".into(),
        );
    }
    if let Some(http) = &spec.http
        && (http.response_body.is_some() || !http.additional_bindings.is_empty())
    {
        route_error(
            &mut errors,
            "`response_body` and `additional_bindings` do not apply to `compose:` routes".into(),
        );
    }
    if compose.0.is_empty() {
        route_error(&mut errors, "`compose:` needs at least one step".into());
    }
    if compose.0.len() > MAX_STEPS {
        route_error(
            &mut errors,
            format!("`compose:` has more than {MAX_STEPS} steps"),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let names: Vec<String> = compose.0.iter().map(|(n, _)| n.clone()).collect();
    let path_vars: Vec<String> = cx
        .template
        .variables
        .iter()
        .map(|v| v.field_path.clone())
        .collect();
    let route_timeout = spec.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
    let idempotent = spec.idempotent || *cx.method == Method::GET;

    // Pass 1: targets and result shapes, so references between steps can be checked.
    let mut targets = Vec::with_capacity(names.len());
    for (name, spanned) in &compose.0 {
        let location = Location::new(&cx.location.file, spanned.referenced.line());
        match target(name, &spanned.value, cx, idempotent) {
            Ok(t) => targets.push(Some(t)),
            Err(message) => {
                errors.push((location, format!("step `{name}`: {message}")));
                targets.push(None);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let targets: Vec<(StepTarget, Shape, Option<MessageDescriptor>)> =
        targets.into_iter().flatten().collect();
    let result_shapes: Vec<Shape> = compose
        .0
        .iter()
        .zip(&targets)
        .map(|((_, s), (_, shape, _))| match s.value.for_each {
            Some(_) => Shape::List(Box::new(shape.clone())),
            None => shape.clone(),
        })
        .collect();

    // Pass 2: templates, references, fallbacks.
    let mut steps = Vec::with_capacity(names.len());
    for (index, ((name, spanned), (target, shape, input))) in
        compose.0.iter().zip(targets).enumerate()
    {
        let location = Location::new(&cx.location.file, spanned.referenced.line());
        match step(
            index,
            name,
            &spanned.value,
            (target, shape, input),
            &names,
            &path_vars,
            &result_shapes,
            cx,
            route_timeout,
            location.clone(),
        ) {
            Ok(step) => steps.push(step),
            Err(message) => errors.push((location, format!("step `{name}`: {message}"))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Some(cycle) = find_cycle(&steps) {
        let path: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
        return Err(vec![(
            steps[cycle[0]].location.clone(),
            format!(
                "steps depend on each other in a cycle: {}",
                path.join(" -> ")
            ),
        )]);
    }

    for d in steps
        .iter()
        .flat_map(|s| s.deps.clone())
        .collect::<Vec<_>>()
    {
        steps[d].read_by_steps = true;
    }

    let default_shape = Shape::Object(
        names
            .iter()
            .cloned()
            .zip(result_shapes.iter().cloned())
            .collect(),
    );
    let scope = Scope {
        path_vars: &path_vars,
        steps: &names,
        item: false,
    };
    let (shaping, shape) = match &spec.response {
        None => (Shaping::Default, default_shape),
        Some(shaping) => match (&shaping.template, shaping.fields.is_empty()) {
            (Some(template), _) => {
                match Template::parse(template, &scope).and_then(|mut t| {
                    t.visit_refs_mut(&mut |r| {
                        check_ref(r, &result_shapes, cx.proto_names, None).map(|_| ())
                    })?;
                    Ok(t)
                }) {
                    Ok(t) => {
                        let shape = template_shape(&t, &result_shapes);
                        (Shaping::Template(t), shape)
                    }
                    Err(e) => return Err(vec![(cx.location.clone(), format!("`response:` {e}"))]),
                }
            }
            (None, false) => {
                match Mask::from_paths(shaping.fields.iter().map(String::as_str))
                    .and_then(|m| m.validate(&default_shape, cx.proto_names))
                {
                    Ok(mask) => {
                        let shape = default_shape.project(&mask);
                        (Shaping::Fields(mask), shape)
                    }
                    Err(e) => {
                        return Err(vec![(
                            cx.location.clone(),
                            format!("`response: {{ fields }}`: {e}"),
                        )]);
                    }
                }
            }
            (None, true) => {
                return Err(vec![(
                    cx.location.clone(),
                    "`response: { fields: [] }` selects nothing".into(),
                )]);
            }
        },
    };

    let reads_body = steps.iter().any(|s| {
        s.request
            .as_ref()
            .is_some_and(|t| t.refs().iter().any(|r| matches!(r.source, Source::Body(_))))
            || s.for_each
                .as_ref()
                .is_some_and(|r| matches!(r.source, Source::Body(_)))
    }) || matches!(&shaping, Shaping::Template(t) if t.refs().iter().any(|r| matches!(r.source, Source::Body(_))));

    Ok(ComposeRoute {
        name: cx.route_name.clone(),
        steps,
        shaping,
        shape,
        partial_response: spec.partial_response,
        timeout: route_timeout,
        reads_body,
        forward_authorization: spec.forward_authorization,
        store: Arc::new(StepStore::new()),
    })
}

/// Pass 1 for one step: its target, the shape of one result, and the request type.
fn target(
    name: &str,
    spec: &StepSpec,
    cx: &Context<'_>,
    idempotent: bool,
) -> Result<(StepTarget, Shape, Option<MessageDescriptor>), String> {
    if !valid_step_name(name) {
        return Err("a step name is letters, digits and `_`, not starting with a digit, and not one of path, query, body, header, claims, item".into());
    }
    match (&spec.grpc, &spec.amqp) {
        (Some(grpc), None) => {
            let upstream = cx
                .upstreams
                .grpc
                .get(&grpc.upstream)
                .cloned()
                .ok_or_else(|| {
                    if cx.upstreams.amqp.contains_key(&grpc.upstream) {
                        format!("upstream `{}` is an AMQP upstream, not gRPC", grpc.upstream)
                    } else {
                        format!("unknown gRPC upstream `{}`", grpc.upstream)
                    }
                })?;
            let (service, method) = grpc
                .method
                .rsplit_once('/')
                .or_else(|| grpc.method.rsplit_once('.'))
                .unwrap_or((&grpc.method, ""));
            let method = cx
                .schema
                .pool
                .get_service_by_name(service.trim_start_matches('/'))
                .and_then(|s| s.methods().find(|m| m.name() == method))
                .ok_or_else(|| format!("unknown gRPC method `{}` (expected `package.Service/Method` from the descriptors)", grpc.method))?;
            if method.is_client_streaming() || method.is_server_streaming() {
                return Err(format!(
                    "`{}` is a streaming method; compose steps call unary methods",
                    method.full_name()
                ));
            }
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name())
                .parse()
                .map_err(|_| format!("`{}` cannot be a request path", method.full_name()))?;
            let timeout = cx.upstreams.timeouts.get(&grpc.upstream).copied();
            let output = method.output();
            Ok((
                StepTarget::Grpc {
                    upstream,
                    path,
                    input: MessageType::new(method.input()),
                    output: MessageType::new(output.clone()),
                    idempotent,
                    upstream_timeout: timeout,
                },
                Shape::Message(output),
                Some(method.input()),
            ))
        }
        (None, Some(amqp)) => {
            let upstream = cx
                .upstreams
                .amqp
                .get(&amqp.upstream)
                .cloned()
                .ok_or_else(|| {
                    if cx.upstreams.grpc.contains_key(&amqp.upstream) {
                        format!("upstream `{}` is a gRPC upstream, not AMQP", amqp.upstream)
                    } else {
                        format!("unknown AMQP upstream `{}`", amqp.upstream)
                    }
                })?;
            if !amqp.reply {
                return Err("a compose step needs an answer; `reply: false` does not apply".into());
            }
            if amqp.persistent {
                return Err("`persistent` does not apply to request-reply steps".into());
            }
            if amqp.routing_key.contains(['{', '}']) {
                return Err("the routing key of a compose step is fixed text".into());
            }
            let exchange = ShortString::try_new(amqp.exchange.as_str())
                .map_err(|e| format!("exchange: {e}"))?;
            let routing_key = ShortString::try_new(amqp.routing_key.as_str())
                .map_err(|e| format!("routing_key: {e}"))?;
            let message =
                |name: &Option<String>, key: &str| -> Result<Option<MessageDescriptor>, String> {
                    name.as_deref()
                        .map(|n| {
                            cx.schema.pool.get_message_by_name(n).ok_or_else(|| {
                                format!("{key} `{n}` is not a message in the descriptors")
                            })
                        })
                        .transpose()
                };
            let request_type = message(&amqp.request_type, "request_type")?;
            let response_type = message(&amqp.response_type, "response_type")?;
            let shape = response_type
                .clone()
                .map(Shape::Message)
                .unwrap_or(Shape::Any);
            Ok((
                StepTarget::Amqp {
                    upstream_timeout: cx.upstreams.timeouts.get(&amqp.upstream).copied(),
                    upstream,
                    exchange,
                    routing_key,
                    request_type: request_type.clone().map(MessageType::new),
                    response_type: response_type.map(MessageType::new),
                },
                shape,
                request_type,
            ))
        }
        (Some(_), Some(_)) => Err("a step has one target: `grpc:` or `amqp:`".into()),
        (None, None) => Err("a step needs a target: `grpc:` or `amqp:`".into()),
    }
}

fn valid_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !["path", "query", "body", "header", "claims", "item"].contains(&name)
}

/// Pass 2 for one step.
#[allow(clippy::too_many_arguments)]
fn step(
    index: usize,
    name: &str,
    spec: &StepSpec,
    (target, shape, input): (StepTarget, Shape, Option<MessageDescriptor>),
    names: &[String],
    path_vars: &[String],
    result_shapes: &[Shape],
    cx: &Context<'_>,
    route_timeout: Duration,
    location: Location,
) -> Result<Step, String> {
    // `for_each`: exactly one placeholder naming a list.
    let (for_each, item_shape) = match &spec.for_each {
        None => (None, None),
        Some(text) => {
            let scope = Scope {
                path_vars,
                steps: names,
                item: false,
            };
            let Template::Exact(mut r) =
                Template::parse(&serde_json::Value::String(text.clone()), &scope)?
            else {
                return Err(format!(
                    "`for_each: {text}` must be exactly one placeholder, e.g. \"{{product.related_ids}}\""
                ));
            };
            let list_shape = check_ref(&mut r, result_shapes, cx.proto_names, Some(index))?;
            let item = match list_shape {
                Shape::List(inner) => *inner,
                Shape::Any => Shape::Any,
                _ => return Err(format!("`for_each: {text}` does not name a repeated field")),
            };
            (Some(r), Some(item))
        }
    };
    for (present, key) in [
        (spec.concurrency.is_some(), "concurrency"),
        (spec.max_items.is_some(), "max_items"),
    ] {
        if present && for_each.is_none() {
            return Err(format!("`{key}` applies to `for_each` steps only"));
        }
    }
    let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(format!("`concurrency` must be 1..={MAX_CONCURRENCY}"));
    }
    let max_items = spec.max_items.unwrap_or(DEFAULT_MAX_ITEMS);
    if !(1..=MAX_ITEMS_LIMIT).contains(&max_items) {
        return Err(format!("`max_items` must be 1..={MAX_ITEMS_LIMIT}"));
    }

    let request = match &spec.request {
        None => None,
        Some(value) => {
            let scope = Scope {
                path_vars,
                steps: names,
                item: for_each.is_some(),
            };
            let mut template = Template::parse(value, &scope)?;
            template.visit_refs_mut(&mut |r| {
                if let Source::Item(path) = &mut r.source {
                    let shape = item_shape.clone().unwrap_or(Shape::Any);
                    *path = normalise(path, &shape, cx.proto_names)
                        .map_err(|e| format!("`{}`: {e}", r.text))?;
                    return Ok(());
                }
                check_ref(r, result_shapes, cx.proto_names, Some(index)).map(|_| ())
            })?;
            if let Some(input) = &input {
                check_request(&template, input, "request")?;
            }
            Some(template)
        }
    };

    let mut deps: Vec<usize> = request
        .iter()
        .flat_map(|t| t.refs())
        .chain(for_each.iter())
        .filter_map(|r| match r.source {
            Source::Step(i, _) => Some(i),
            _ => None,
        })
        .collect();
    deps.sort_unstable();
    deps.dedup();

    let fallback = match (&spec.fallback, spec.required) {
        (Some(_), true) => {
            return Err("a `required` step fails the call; it has no `fallback`".into());
        }
        (None, _) => Fallback::Omit,
        (Some(serde_json::Value::String(s)), false) if s == "omit" => Fallback::Omit,
        (Some(serde_json::Value::String(s)), false) if s == "cached" => Fallback::Cached,
        (Some(value), false) => Fallback::Value(value.clone()),
    };

    let upstream_timeout = match &target {
        StepTarget::Grpc {
            upstream_timeout, ..
        }
        | StepTarget::Amqp {
            upstream_timeout, ..
        } => *upstream_timeout,
    };
    let timeout = spec
        .timeout
        .map(|t| t.0)
        .or(upstream_timeout)
        .unwrap_or(route_timeout);
    if timeout.is_zero() {
        return Err("`timeout` must be above zero".into());
    }
    Ok(Step {
        name: name.to_string(),
        location,
        target,
        shape,
        request,
        for_each,
        deps,
        read_by_steps: false,
        required: spec.required,
        fallback,
        timeout,
        concurrency,
        max_items,
    })
}

/// Checks a placeholder against what it reads; a step path is rewritten to emitted names.
/// Returns the shape of the value it reads.
fn check_ref(
    r: &mut Ref,
    results: &[Shape],
    proto_names: bool,
    current: Option<usize>,
) -> Result<Shape, String> {
    match &mut r.source {
        Source::Step(i, path) => {
            if Some(*i) == current {
                return Err(format!("`{}`: a step cannot read its own result", r.text));
            }
            let (normalised, shape) =
                walk(path, &results[*i], proto_names).map_err(|e| format!("`{}`: {e}", r.text))?;
            *path = normalised;
            Ok(shape)
        }
        Source::Item(_) => Err(format!(
            "`{}` is only defined in a `for_each` step's request",
            r.text
        )),
        _ => Ok(Shape::Any),
    }
}

fn normalise(path: &[String], shape: &Shape, proto_names: bool) -> Result<Vec<String>, String> {
    walk(path, shape, proto_names).map(|(p, _)| p)
}

/// Follows `path` through `shape`: names as emitted, and the shape reached.
fn walk(path: &[String], shape: &Shape, proto_names: bool) -> Result<(Vec<String>, Shape), String> {
    let mut out = Vec::with_capacity(path.len());
    let mut shape = shape.clone();
    for segment in path {
        if let (Shape::List(inner), Ok(_)) = (&shape, segment.parse::<usize>()) {
            out.push(segment.clone());
            shape = (**inner).clone();
            continue;
        }
        let list = matches!(shape, Shape::List(_));
        let (emitted, child) = shape.child(segment, proto_names)?;
        out.push(emitted);
        // A name applied to a list maps over it: the result is a list again.
        shape = if list && !matches!(child, Shape::List(_)) {
            Shape::List(Box::new(child))
        } else {
            child
        };
    }
    Ok((out, shape))
}

/// The request template against the request message type: every key a field, nested
/// objects only where the field is a message, arrays only for repeated fields.
fn check_request(template: &Template, desc: &MessageDescriptor, at: &str) -> Result<(), String> {
    let Template::Object(fields) = template else {
        return match template {
            Template::Exact(_) => Ok(()),
            _ => Err(format!(
                "`{at}` must be an object of `{}` fields",
                desc.full_name()
            )),
        };
    };
    for (key, value) in fields {
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
            .ok_or_else(|| {
                format!(
                    "`{at}.{key}`: `{key}` is not a field of `{}`",
                    desc.full_name()
                )
            })?;
        let here = format!("{at}.{key}");
        let message = field
            .kind()
            .as_message()
            .cloned()
            .filter(|m| !field.is_map() && !m.full_name().starts_with("google.protobuf."));
        match value {
            Template::Array(items) if field.is_list() => {
                if let Some(m) = &message {
                    for item in items {
                        if matches!(item, Template::Object(_)) {
                            check_request(item, m, &here)?;
                        }
                    }
                }
            }
            Template::Array(_) => return Err(format!("`{here}`: `{key}` is not a repeated field")),
            Template::Object(_)
                if field.is_map()
                    || field
                        .kind()
                        .as_message()
                        .is_some_and(|m| m.full_name().starts_with("google.protobuf.")) => {}
            Template::Object(_) => match &message {
                Some(m) if !field.is_list() => check_request(value, m, &here)?,
                _ => return Err(format!("`{here}`: `{key}` is not a message field")),
            },
            _ => {}
        }
    }
    Ok(())
}

/// The shape of a `response:` template's answer.
fn template_shape(template: &Template, results: &[Shape]) -> Shape {
    match template {
        Template::Object(fields) => Shape::Object(
            fields
                .iter()
                .map(|(k, t)| (k.clone(), template_shape(t, results)))
                .collect(),
        ),
        Template::Array(items) => Shape::List(Box::new(
            items
                .first()
                .map(|t| template_shape(t, results))
                .unwrap_or(Shape::Any),
        )),
        Template::Exact(Ref {
            source: Source::Step(i, path),
            ..
        }) => walk(path, &results[*i], true)
            .or_else(|_| walk(path, &results[*i], false))
            .map(|(_, s)| s)
            .unwrap_or(Shape::Any),
        Template::Exact(_) => Shape::Any,
        Template::Literal(serde_json::Value::Object(_)) => Shape::Any,
        _ => Shape::Scalar,
    }
}

/// A cycle among the steps' dependencies (step indices, first repeated at the end).
fn find_cycle(steps: &[Step]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(
        i: usize,
        steps: &[Step],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        stack.push(i);
        for &d in &steps[i].deps {
            if state[d] == 1 {
                let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(d);
                return Some(cycle);
            }
            if state[d] == 0
                && let Some(c) = visit(d, steps, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; steps.len()];
    for i in 0..steps.len() {
        if state[i] == 0
            && let Some(c) = visit(i, steps, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}
