//! Config + descriptors + route files → `RouteTable`. Everything that can be checked is
//! checked here, so that a bad configuration is refused before it serves: unknown
//! upstreams, methods and fields, bad templates, conflicting routes — each with its
//! `file:line`.

use super::template::PathTemplate;
use super::{BodyRule, GrpcRoute, Route, RouteTable, StaticRoute, Target};
use crate::config::mapping::AuthMode;
use crate::config::mapping::{GrpcServiceSpec, GrpcTarget, HttpSpec, RouteFile, RouteSpec};
use crate::config::{DEFAULT_TIMEOUT, GatewayConfig, LoadErrors, Location, SourceText};
use crate::middleware::{Middleware, RoutePolicy};
use crate::schema::Schema;
use crate::telemetry::RouteMetrics;
use crate::transcode::{FieldPath, MessageType, QueryBinding};
use crate::upstream::Upstreams;
use crate::upstream::grpc::status::header_value;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use prost_reflect::{DynamicMessage, MethodDescriptor, ReflectMessage, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Builds the route table, or every problem found on the way.
pub fn compile(
    config: Arc<GatewayConfig>,
    schema: Schema,
    upstreams: Arc<Upstreams>,
    middleware: Arc<Middleware>,
) -> Result<RouteTable, LoadErrors> {
    let mut errors = LoadErrors::default();
    for problem in crate::listener::check(&config) {
        errors.push(Location::new(&config.path, 0), problem);
    }

    let files = crate::config::collect_files(&config.mappings, &["yaml", "yml"], &mut errors);
    let mut compiler = Compiler {
        schema: &schema,
        upstreams: &upstreams,
        middleware: &middleware,
        routes: Vec::new(),
        use_proto_names: config.json.use_proto_names,
        seen: HashMap::new(),
        errors,
    };
    for file in files {
        let parsed = SourceText::read(&file).and_then(|source| source.parse::<RouteFile>());
        match parsed {
            Ok(route_file) => {
                for spanned in route_file.routes {
                    let location = Location::new(&file, spanned.referenced.line());
                    compiler.route(&spanned.value, location);
                }
            }
            Err(e) => compiler.errors.0.push(e),
        }
    }
    let Compiler { routes, errors, .. } = compiler;
    errors.into_result(())?;
    Ok(RouteTable::new(
        config, schema, upstreams, middleware, routes,
    ))
}

struct Compiler<'a> {
    schema: &'a Schema,
    upstreams: &'a Upstreams,
    middleware: &'a Middleware,
    routes: Vec<Route>,
    use_proto_names: bool,
    /// (method, template shape) → where it was first defined.
    seen: HashMap<(Method, String), Location>,
    errors: LoadErrors,
}

impl Compiler<'_> {
    fn route(&mut self, spec: &RouteSpec, location: Location) {
        if let Some(web) = &spec.grpc_web {
            match super::grpc_web::compile(spec, web, self.schema, self.upstreams) {
                Ok(routes) => {
                    for (template, route) in routes {
                        let target = Target::GrpcWeb(Box::new(route));
                        self.push(spec, Method::POST, template, target, &location);
                    }
                }
                Err(message) => self.errors.push(location, message),
            }
            return;
        }
        if spec.compose.is_some() {
            match &spec.http {
                Some(http) => self.compose_route(spec, http, &location),
                None => self
                    .errors
                    .push(location, "a `compose:` route needs `http:`"),
            }
            return;
        }
        if let Some(path) = &spec.websocket {
            // A GET route like any other, so lookup and conflict checks cover it.
            match super::websocket::compile_route(spec, path, self.schema, self.upstreams) {
                Ok((template, route)) => {
                    let target = Target::WebSocket(Box::new(route));
                    self.push(spec, Method::GET, template, target, &location);
                }
                Err(message) => self.errors.push(location, message),
            }
            return;
        }
        if let (Some(http), Some(amqp)) = (&spec.http, &spec.amqp) {
            if let Some((verb, template)) = self.pattern(http, &location) {
                match super::amqp::compile(spec, amqp, &template, self.schema, self.upstreams) {
                    Ok(route) => {
                        let target = Target::Amqp(Box::new(route));
                        self.push(spec, verb, template, target, &location);
                    }
                    Err(message) => self.errors.push(location, message),
                }
            }
            return;
        }
        match (
            &spec.http,
            &spec.grpc,
            &spec.static_response,
            &spec.grpc_service,
        ) {
            (Some(http), Some(grpc), None, None) => self.grpc_route(spec, http, grpc, &location),
            (Some(http), None, Some(_), None) => self.static_route(spec, http, &location),
            (None, None, None, Some(service)) => self.grpc_service(spec, service, &location),
            (None, _, _, None) => self.errors.push(
                location,
                "route needs `http:` (or `grpc_service:`, `grpc_web:`)",
            ),
            (Some(_), None, None, None) => self
                .errors
                .push(location, "route needs a target: `grpc:` or `static:`"),
            _ => self.errors.push(
                location,
                "route has more than one target; use one of `grpc`, `static`, `grpc_service`",
            ),
        }
    }

    /// A `compose:` route, compiled by `crate::compose::plan`.
    fn compose_route(&mut self, spec: &RouteSpec, http: &HttpSpec, location: &Location) {
        let Some((verb, template)) = self.pattern(http, location) else {
            return;
        };
        let cx = crate::compose::plan::Context {
            schema: self.schema,
            upstreams: self.upstreams,
            proto_names: self.use_proto_names,
            route_name: spec
                .name
                .clone()
                .unwrap_or_else(|| format!("{verb} {}", template.text)),
            method: &verb,
            template: &template,
            location,
        };
        match crate::compose::plan::compile(spec, &cx) {
            Ok(route) => {
                let target = Target::Compose(Box::new(route));
                self.push(spec, verb, template, target, location);
            }
            Err(errors) => {
                for (at, message) in errors {
                    self.errors.push(at, message);
                }
            }
        }
    }

    fn upstream(
        &mut self,
        name: &str,
        location: &Location,
    ) -> Option<Arc<crate::upstream::grpc::GrpcUpstream>> {
        let found = self.upstreams.grpc.get(name).cloned();
        if found.is_none() {
            self.errors
                .push(location.clone(), format!("unknown gRPC upstream `{name}`"));
        }
        found
    }

    fn method(&mut self, name: &str, location: &Location) -> Option<MethodDescriptor> {
        let (service, method) = name
            .rsplit_once('/')
            .or_else(|| name.rsplit_once('.'))
            .unwrap_or((name, ""));
        let found = self
            .schema
            .pool
            .get_service_by_name(service.trim_start_matches('/'))
            .and_then(|s| s.methods().find(|m| m.name() == method));
        if found.is_none() {
            self.errors.push(location.clone(), format!("unknown gRPC method `{name}` (expected `package.Service/Method` from the descriptors)"));
        }
        found
    }

    fn grpc_route(
        &mut self,
        spec: &RouteSpec,
        http: &HttpSpec,
        target: &GrpcTarget,
        location: &Location,
    ) {
        let upstream = self.upstream(&target.upstream, location);
        let method = self.method(&target.method, location);
        if let (Some(upstream), Some(method)) = (upstream, method) {
            self.bindings(spec, http, &upstream, &method, location);
        }
    }

    /// One route per binding of `http` (the rule and its `additional_bindings`).
    fn bindings(
        &mut self,
        spec: &RouteSpec,
        http: &HttpSpec,
        upstream: &Arc<crate::upstream::grpc::GrpcUpstream>,
        method: &MethodDescriptor,
        location: &Location,
    ) {
        if method.is_client_streaming() {
            self.errors.push(
                location.clone(),
                format!(
                    "`{}` is client- or bidi-streaming: serve it with a `websocket:` route",
                    method.full_name()
                ),
            );
            return;
        }
        let mut rules = vec![http];
        rules.extend(http.additional_bindings.iter());
        for (depth, rule) in rules.into_iter().enumerate() {
            if depth > 0 && !rule.additional_bindings.is_empty() {
                self.errors
                    .push(location.clone(), "additional_bindings cannot nest");
                continue;
            }
            let Some((verb, template)) = self.pattern(rule, location) else {
                continue;
            };
            if let Some(target) =
                self.grpc_target(spec, rule, upstream, method, (&verb, &template), location)
            {
                self.push(
                    spec,
                    verb,
                    template,
                    Target::Grpc(Box::new(target)),
                    location,
                );
            }
        }
    }

    /// The single (method, template) of a rule.
    fn pattern(&mut self, rule: &HttpSpec, location: &Location) -> Option<(Method, PathTemplate)> {
        let patterns = rule.patterns();
        let [(verb, text)] = patterns.as_slice() else {
            self.errors.push(
                location.clone(),
                "an http rule needs exactly one of get, put, post, delete, patch, custom",
            );
            return None;
        };
        let method = match Method::from_bytes(verb.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                self.errors
                    .push(location.clone(), format!("invalid HTTP method `{verb}`"));
                return None;
            }
        };
        match PathTemplate::parse(text) {
            Ok(template) => Some((method, template)),
            Err(e) => {
                self.errors.push(location.clone(), e);
                None
            }
        }
    }

    fn grpc_target(
        &mut self,
        spec: &RouteSpec,
        rule: &HttpSpec,
        upstream: &Arc<crate::upstream::grpc::GrpcUpstream>,
        method: &MethodDescriptor,
        (verb, template): (&Method, &PathTemplate),
        location: &Location,
    ) -> Option<GrpcRoute> {
        let input = method.input();
        let output = method.output();
        let mut ok = true;
        let mut fail = |errors: &mut LoadErrors, message: String| {
            errors.push(location.clone(), message);
            ok = false;
        };

        let mut path_fields = Vec::new();
        for variable in &template.variables {
            match FieldPath::resolve(&input, &variable.field_path) {
                Ok(path) if path.last().is_list() || path.last().is_map() => fail(
                    &mut self.errors,
                    format!(
                        "path variable `{}` names a repeated field",
                        variable.field_path
                    ),
                ),
                Ok(path) if !crate::transcode::settable_from_text(path.last()) => fail(
                    &mut self.errors,
                    format!(
                        "path variable `{}` names a message field",
                        variable.field_path
                    ),
                ),
                Ok(path) => path_fields.push(path),
                Err(e) => fail(
                    &mut self.errors,
                    format!("path variable in `{}`: {e}", template.text),
                ),
            }
        }

        let body = match rule.body.as_deref() {
            None | Some("") => BodyRule::None,
            Some("*") => BodyRule::Whole,
            Some(field) => match input
                .get_field_by_name(field)
                .or_else(|| input.get_field_by_json_name(field))
            {
                Some(f) => BodyRule::Field(FieldPath { fields: vec![f] }),
                None => {
                    fail(
                        &mut self.errors,
                        format!(
                            "body field `{field}` is not a field of `{}`",
                            input.full_name()
                        ),
                    );
                    BodyRule::None
                }
            },
        };

        let response_body = match rule.response_body.as_deref() {
            None | Some("") => None,
            Some(field) => match output
                .get_field_by_name(field)
                .or_else(|| output.get_field_by_json_name(field))
            {
                Some(f) => Some(FieldPath { fields: vec![f] }),
                None => {
                    fail(
                        &mut self.errors,
                        format!(
                            "response_body `{field}` is not a field of `{}`",
                            output.full_name()
                        ),
                    );
                    None
                }
            },
        };

        if spec.response.as_ref().is_some_and(|r| r.template.is_some()) {
            fail(
                &mut self.errors,
                "a `response:` template applies to `compose:` routes; a gRPC route takes `response: { fields: [...] }`".into(),
            );
        }
        // Shaping names may be proto or JSON names; keep them as the names emitted.
        let response_fields = spec.response.as_ref().map(|shaping| {
            let mut emitted = Vec::new();
            for name in &shaping.fields {
                if name.contains('.') {
                    // A nested path (`price.units`): checked against the type, kept as emitted.
                    use crate::compose::shape::{Mask, Shape};
                    let shape = Shape::Message(output.clone());
                    match Mask::from_paths([name.as_str()])
                        .and_then(|m| m.validate(&shape, self.use_proto_names))
                    {
                        Ok(mask) => emitted.extend(mask.paths()),
                        Err(e) => fail(&mut self.errors, format!("response field `{name}`: {e}")),
                    }
                    continue;
                }
                match output
                    .get_field_by_name(name)
                    .or_else(|| output.get_field_by_json_name(name))
                {
                    Some(f) if self.use_proto_names => emitted.push(f.name().to_string()),
                    Some(f) => emitted.push(f.json_name().to_string()),
                    None => fail(
                        &mut self.errors,
                        format!(
                            "response field `{name}` is not a field of `{}`",
                            output.full_name()
                        ),
                    ),
                }
            }
            emitted
        });

        let mut bound = path_fields.clone();
        if let BodyRule::Field(path) = &body {
            bound.push(path.clone());
        }
        if !ok {
            return None;
        }
        let timeout = spec
            .timeout
            .map(|t| t.0)
            .or_else(|| self.upstreams.timeouts.get(&upstream.name).copied())
            .unwrap_or(DEFAULT_TIMEOUT);
        Some(GrpcRoute {
            upstream: upstream.clone(),
            path: format!("/{}/{}", method.parent_service().full_name(), method.name())
                .parse()
                .expect("service and method names are valid path characters"),
            input: MessageType::new(method.input()),
            output: MessageType::new(output),
            server_streaming: method.is_server_streaming(),
            method: method.clone(),
            path_fields,
            query: QueryBinding {
                bound,
                body_is_whole: matches!(body, BodyRule::Whole),
                strict: spec.strict_query,
            },
            body,
            response_body,
            response_fields,
            partial_response: spec.partial_response,
            timeout,
            forward_authorization: spec.forward_authorization,
            idempotent: spec.idempotent || *verb == Method::GET,
        })
    }

    fn static_route(&mut self, spec: &RouteSpec, http: &HttpSpec, location: &Location) {
        let Some(static_spec) = &spec.static_response else {
            return;
        };
        let Ok(status) = StatusCode::from_u16(static_spec.status) else {
            self.errors.push(
                location.clone(),
                format!("invalid status {}", static_spec.status),
            );
            return;
        };
        let mut headers = HeaderMap::new();
        let body = match &static_spec.body {
            Some(serde_json::Value::String(text)) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    header_value("text/plain; charset=utf-8"),
                );
                bytes::Bytes::from(text.clone())
            }
            Some(value) => {
                headers.insert(http::header::CONTENT_TYPE, header_value("application/json"));
                bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default())
            }
            None => bytes::Bytes::new(),
        };
        for (name, value) in &static_spec.headers {
            match (
                HeaderName::try_from(name.as_str()),
                http::HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => {
                    self.errors.push(
                        location.clone(),
                        format!("invalid header `{name}: {value}`"),
                    );
                    return;
                }
            }
        }
        if let Some((verb, template)) = self.pattern(http, location) {
            self.push(
                spec,
                verb,
                template,
                Target::Static(StaticRoute {
                    status,
                    headers,
                    body,
                }),
                location,
            );
        }
    }

    /// `grpc_service:` — one route per annotated method; `unannotated: post` serves the
    /// rest at `POST /pkg.Service/Method` with the whole message as body.
    fn grpc_service(&mut self, spec: &RouteSpec, service: &GrpcServiceSpec, location: &Location) {
        let upstream = self.upstream(&service.upstream, location);
        let Some(descriptor) = self.schema.pool.get_service_by_name(&service.service) else {
            self.errors.push(
                location.clone(),
                format!("unknown gRPC service `{}`", service.service),
            );
            return;
        };
        let Some(upstream) = upstream else { return };
        match service.unannotated.as_deref() {
            None | Some("post") => {}
            Some(other) => {
                self.errors.push(
                    location.clone(),
                    format!("`unannotated: {other}`: the only choice is `post`"),
                );
                return;
            }
        }
        let mut exposed = 0;
        for method in descriptor.methods() {
            let rule = http_rule_of(&method, self.schema);
            let rule = match (rule, service.unannotated.is_some()) {
                (Some(rule), _) => rule,
                (None, true) if !method.is_client_streaming() => HttpSpec {
                    post: Some(format!("/{}/{}", descriptor.full_name(), method.name())),
                    body: Some("*".into()),
                    ..Default::default()
                },
                _ => continue,
            };
            if method.is_client_streaming() {
                continue; // Streaming-in methods are for websocket routes.
            }
            exposed += 1;
            self.bindings(spec, &rule, &upstream, &method, location);
        }
        if exposed == 0 {
            self.errors.push(
                location.clone(),
                format!("service `{}` has no google.api.http annotations; map its methods or set `unannotated: post`", service.service),
            );
        }
    }

    fn push(
        &mut self,
        spec: &RouteSpec,
        method: Method,
        template: PathTemplate,
        target: Target,
        location: &Location,
    ) {
        let key = (method.clone(), template.shape());
        if let Some(first) = self.seen.get(&key) {
            self.errors.push(
                location.clone(),
                format!(
                    "route `{method} {}` conflicts with the route defined at {first}",
                    template.text
                ),
            );
            return;
        }
        self.seen.insert(key, location.clone());
        let Some(policy) = self.policy(spec, location) else {
            return;
        };
        let name = match (&spec.name, &spec.grpc_service, &spec.grpc_web) {
            (Some(name), None, None) => name.clone(),
            _ => format!("{method} {}", template.text),
        };
        let cache = match &spec.cache {
            Some(cache) => {
                let authenticates = spec.auth != AuthMode::None;
                match crate::cache::RouteCache::compile(
                    cache,
                    &name,
                    &method,
                    &target,
                    authenticates,
                ) {
                    Ok(cache) => Some(cache),
                    Err(message) => return self.errors.push(location.clone(), message),
                }
            }
            None => None,
        };
        self.routes.push(Route {
            cache,
            metrics: RouteMetrics::new(&template.text, method.as_str()),
            name,
            method,
            template,
            location: location.clone(),
            target,
            policy,
        });
    }

    /// The route's auth, scopes and rate limit, checked against the shared middleware.
    fn policy(&mut self, spec: &RouteSpec, location: &Location) -> Option<RoutePolicy> {
        let before = self.errors.0.len();
        if spec.auth != AuthMode::None && self.middleware.jwt.is_none() {
            self.errors.push(
                location.clone(),
                format!(
                    "`auth: {:?}` needs an `auth:` section in the gateway config",
                    spec.auth
                )
                .to_lowercase(),
            );
        }
        if !spec.scopes.is_empty() && spec.auth == AuthMode::None {
            self.errors.push(
                location.clone(),
                "`scopes` need `auth: required` (or `optional`)",
            );
        }
        let rate_limit = match &spec.rate_limit {
            Some(name) => {
                let found = self.middleware.limiters.get(name).cloned();
                if found.is_none() {
                    self.errors.push(
                        location.clone(),
                        format!("unknown rate limit policy `{name}`"),
                    );
                }
                found
            }
            None => None,
        };
        (self.errors.0.len() == before).then(|| RoutePolicy {
            auth: spec.auth,
            scopes: spec.scopes.clone(),
            rate_limit,
        })
    }
}

/// The `google.api.http` annotation of a method, as an `HttpSpec`.
fn http_rule_of(method: &MethodDescriptor, schema: &Schema) -> Option<HttpSpec> {
    let options = method.options();
    if !options.has_extension(&schema.http_rule) {
        return None;
    }
    match options.get_extension(&schema.http_rule).as_ref() {
        Value::Message(rule) => Some(http_spec_from_rule(rule)),
        _ => None,
    }
}

fn http_spec_from_rule(rule: &DynamicMessage) -> HttpSpec {
    let text = |name: &str| -> Option<String> {
        let field = rule.descriptor().get_field_by_name(name)?;
        if !rule.has_field(&field) {
            return None;
        }
        rule.get_field(&field).as_str().map(str::to_string)
    };
    let custom = rule
        .descriptor()
        .get_field_by_name("custom")
        .filter(|f| rule.has_field(f))
        .and_then(|f| match rule.get_field(&f).as_ref() {
            Value::Message(c) => Some(crate::config::mapping::CustomPattern {
                kind: c
                    .get_field_by_name("kind")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                path: c
                    .get_field_by_name("path")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            }),
            _ => None,
        });
    let additional_bindings = rule
        .get_field_by_name("additional_bindings")
        .and_then(|v| match v.as_ref() {
            Value::List(items) => Some(
                items
                    .iter()
                    .filter_map(|item| match item {
                        Value::Message(m) => Some(http_spec_from_rule(m)),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    HttpSpec {
        get: text("get"),
        put: text("put"),
        post: text("post"),
        delete: text("delete"),
        patch: text("patch"),
        custom,
        body: text("body").filter(|b| !b.is_empty()),
        response_body: text("response_body").filter(|b| !b.is_empty()),
        additional_bindings,
    }
}
