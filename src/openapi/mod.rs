//! OpenAPI 3.1 document built from the route table and the message descriptors.
//!
//! Paths come from the compiled routes, so the document describes exactly what this
//! configuration serves. Schemas follow the proto3 JSON mapping with the table's `json:`
//! options (field names, enums as names or numbers, 64-bit integers as strings). Every
//! message type reached becomes a `components.schemas` entry keyed by its full name and is
//! used through `$ref`, which keeps recursive types finite; well-known types are inlined
//! in their JSON forms.
//!
//! OpenAPI cannot say everything a route table can: WebSocket routes and routes on HTTP
//! methods outside the eight OpenAPI knows are left out, and unnamed `*`/`**` segments
//! stay literal in the path. A multi-segment variable prints as one parameter
//! (`/v1/{name}`); when that path is already taken for the method, or another path
//! differs from it only in parameter names (`/v1/{book.name}`: the same path to OpenAPI),
//! the route is listed in an expanded form instead (`/v1/shelves/{shelves}/books/{books}`).

use crate::routing::template::{PathTemplate, Segment};
use crate::routing::{BodyRule, GrpcRoute, Route, RouteTable, StaticRoute, Target};
use crate::transcode::{FieldPath, settable_from_text};
use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};

mod comments;
mod paths;
mod schemas;

use comments::*;
use paths::*;
use schemas::*;

/// Methods an OpenAPI path item can hold (lowercase, as its keys).
const OPENAPI_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Query parameters reach at most this many fields deep (`filter.author`): deeper
/// expansions bloat the parameter list and recursive messages would never end.
const MAX_QUERY_DEPTH: usize = 2;

/// Well-known wrapper messages: JSON carries the wrapped scalar, or `null` for unset.
const WRAPPERS: &[&str] = &[
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

const STREAM_DESCRIPTION: &str = "A server stream. With `application/x-ndjson` (the \
default) each line is one message; with `text/event-stream` (send `Accept: \
text/event-stream`) each `data:` event is one message. A stream that fails after it \
started ends with a last line `{\"error\": <google.rpc.Status>}` (SSE: `event: error`).";

const ERROR_DESCRIPTION: &str = "Error from the gateway or the backend: a google.rpc.Status, \
with the HTTP status mapped from its gRPC code.";

/// The OpenAPI document of `table`.
pub fn document(table: &RouteTable) -> Value {
    let mut builder = Builder::new(table);
    for route in declaration_order(&table.routes) {
        builder.route(route);
    }
    builder.finish()
}

/// Routes in the order their files declare them (the table sorts them by specificity),
/// so that a method's first binding gets the plain operationId. The sort is stable:
/// bindings of one rule keep the table's order.
fn declaration_order(routes: &[Route]) -> Vec<&Route> {
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by(|a, b| {
        (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line))
    });
    ordered
}

/// Collects paths, tags and schemas while walking the routes.
struct Builder<'t> {
    table: &'t RouteTable,
    schemas: Schemas,
    paths: BTreeMap<String, Map<String, Value>>,
    operation_ids: HashSet<String>,
    /// Service full name → its proto comment.
    tags: BTreeMap<String, Option<String>>,
}

impl<'t> Builder<'t> {
    fn new(table: &'t RouteTable) -> Self {
        Self {
            table,
            schemas: Schemas {
                use_proto_names: table.config.json.use_proto_names,
                enums_as_ints: table.config.json.enums_as_ints,
                components: BTreeMap::new(),
            },
            paths: BTreeMap::new(),
            operation_ids: HashSet::new(),
            tags: BTreeMap::new(),
        }
    }

    fn route(&mut self, route: &Route) {
        let method = route.method.as_str().to_ascii_lowercase();
        if !OPENAPI_METHODS.contains(&method.as_str()) {
            return;
        }
        let (path, slots) = match plain_path(&route.template) {
            plain if !self.taken(&plain.0, &method) => plain,
            _ => expanded_path(&route.template),
        };
        if self.taken(&path, &method) {
            return; // The same shape as a listed route; `compile` refuses those anyway.
        }
        let operation = match &route.target {
            Target::Grpc(grpc) => self.grpc_operation(&route.template, &slots, grpc),
            Target::Static(fixed) => self.static_operation(route, &slots, fixed),
            Target::Amqp(amqp) => self.amqp_operation(route, &slots, amqp),
            Target::Compose(compose) => self.compose_operation(route, &slots, compose),
            // OpenAPI has no way to describe a WebSocket or gRPC-Web framing (binary
            // protobuf frames); `/admin/routes` and `switchboard routes` list them.
            Target::WebSocket(_) | Target::GrpcWeb(_) => return,
        };
        self.paths
            .entry(path)
            .or_default()
            .insert(method, operation);
    }

    /// Whether `path` cannot take `method`: the path has it already, or another path has
    /// the same hierarchy with other parameter names (`/v1/{name}` and `/v1/{book.name}`),
    /// which OpenAPI counts as the same path (tools keep one and drop the other).
    fn taken(&self, path: &str, method: &str) -> bool {
        let shape = hierarchy(path);
        self.paths.iter().any(|(listed, item)| {
            if listed == path {
                item.contains_key(method)
            } else {
                hierarchy(listed) == shape
            }
        })
    }

    fn grpc_operation(
        &mut self,
        template: &PathTemplate,
        slots: &[Slot],
        grpc: &GrpcRoute,
    ) -> Value {
        let method = &grpc.method;
        let service = method.parent_service();
        self.tags
            .entry(service.full_name().to_string())
            .or_insert_with(|| comments(&service.parent_file(), service.path()));

        let mut operation = Map::new();
        let id = self.operation_id(&format!("{}_{}", service.name(), method.name()));
        operation.insert("operationId".into(), id.into());
        operation.insert("tags".into(), json!([service.full_name()]));
        operation.insert("x-grpc-method".into(), grpc.path.as_str().into());
        if let Some(text) = comments(&method.parent_file(), method.path()) {
            let (summary, description) = summary_and_description(&text);
            operation.insert("summary".into(), summary.into());
            if let Some(description) = description {
                operation.insert("description".into(), description.into());
            }
        }
        let deprecated = method.method_descriptor_proto().options.as_ref();
        if deprecated.is_some_and(|options| options.deprecated()) {
            operation.insert("deprecated".into(), true.into());
        }
        let parameters = self.parameters(template, slots, grpc);
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }
        if let Some(body) = self.request_body(grpc) {
            operation.insert("requestBody".into(), body);
        }
        let responses = json!({ "200": self.success(grpc), "default": self.error_response() });
        operation.insert("responses".into(), responses);
        Value::Object(operation)
    }

    /// `base`, or `base_2`, `base_3`… when a route of the same method came first.
    fn operation_id(&mut self, base: &str) -> String {
        let mut id = base.to_string();
        let mut n = 1;
        while !self.operation_ids.insert(id.clone()) {
            n += 1;
            id = format!("{base}_{n}");
        }
        id
    }

    /// Path parameters in path order, then the query parameters.
    fn parameters(
        &mut self,
        template: &PathTemplate,
        slots: &[Slot],
        grpc: &GrpcRoute,
    ) -> Vec<Value> {
        let mut parameters = self.path_parameters(template, slots, &grpc.path_fields);
        if !grpc.query.body_is_whole {
            let input = grpc.method.input();
            let mut prefix = Vec::new();
            self.query_parameters(&input, &mut prefix, &grpc.query.bound, &mut parameters);
        }
        parameters
    }

    /// One parameter per slot. `fields` are the fields the variables set (none on static
    /// routes, whose variables are plain text).
    fn path_parameters(
        &mut self,
        template: &PathTemplate,
        slots: &[Slot],
        fields: &[FieldPath],
    ) -> Vec<Value> {
        slots
            .iter()
            .map(|slot| self.path_parameter(template, slot, fields.get(slot.variable)))
            .collect()
    }

    fn path_parameter(
        &mut self,
        template: &PathTemplate,
        slot: &Slot,
        field: Option<&FieldPath>,
    ) -> Value {
        let variable = &template.variables[slot.variable];
        let pattern = segments_text(&template.segments[variable.start..variable.end]);
        let schema = match field {
            Some(path) if !slot.part => self.schemas.field(path.last()),
            _ => json!({ "type": "string" }),
        };
        let mut parameter = json!({
            "name": slot.name,
            "in": "path",
            "required": true,
            "schema": schema,
        });
        if slot.part {
            let note = format!(
                "Part of `{}` (`{pattern}`): the matched segments together set that field.",
                variable.field_path
            );
            describe(&mut parameter, [Some(note)]);
        } else {
            let span = variable.multi_segment.then(|| {
                format!("Spans several path segments (`{pattern}`): send its `/` unescaped.")
            });
            describe(
                &mut parameter,
                [field.and_then(|f| field_comments(f.last())), span],
            );
        }
        parameter
    }

    /// HttpRule: every field not bound by the path or the body can come from the query.
    /// Text-settable fields become parameters; other singular messages are expanded as
    /// dotted names down to `MAX_QUERY_DEPTH`; maps and repeated messages cannot be sent.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        prefix: &mut Vec<FieldDescriptor>,
        bound: &[FieldPath],
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            prefix.push(field.clone());
            let path = FieldPath {
                fields: prefix.clone(),
            };
            if bound.iter().any(|b| b.covers(&path)) {
                // Set by the path or the body.
            } else if settable_from_text(&field) {
                out.push(self.query_parameter(&path));
            } else if let Some(inner) = singular_message(&field)
                && prefix.len() < MAX_QUERY_DEPTH
            {
                self.query_parameters(&inner, prefix, bound, out);
            }
            prefix.pop();
        }
    }

    fn query_parameter(&mut self, path: &FieldPath) -> Value {
        let field = path.last();
        let name: Vec<&str> = path.fields.iter().map(|f| self.schemas.name(f)).collect();
        let mut parameter = json!({
            "name": name.join("."),
            "in": "query",
            "schema": self.schemas.field(field),
        });
        if field.is_list() {
            parameter["style"] = "form".into();
            parameter["explode"] = true.into();
        }
        describe(&mut parameter, [field_comments(field)]);
        if is_deprecated(field) {
            parameter["deprecated"] = true.into();
        }
        parameter
    }

    fn request_body(&mut self, grpc: &GrpcRoute) -> Option<Value> {
        let (schema, required) = match &grpc.body {
            BodyRule::None => return None,
            BodyRule::Whole => (self.schemas.message(&grpc.method.input()), true),
            BodyRule::Field(path) => (self.schemas.field(path.last()), false),
        };
        Some(json!({
            "required": required,
            "content": { "application/json": { "schema": schema } },
        }))
    }

    fn success(&mut self, grpc: &GrpcRoute) -> Value {
        let schema = self.response_schema(grpc);
        if grpc.server_streaming {
            json!({
                "description": STREAM_DESCRIPTION,
                "content": {
                    "application/x-ndjson": { "schema": schema },
                    "text/event-stream": { "schema": schema },
                },
            })
        } else {
            json!({
                "description": "OK",
                "content": { "application/json": { "schema": schema } },
            })
        }
    }

    /// What the proxy sends: the `response_body` field, else the shaped subset, else the
    /// whole output message (same precedence as `proxy::grpc::encode_response`).
    fn response_schema(&mut self, grpc: &GrpcRoute) -> Value {
        let output = grpc.method.output();
        if let Some(path) = &grpc.response_body {
            self.schemas.field(path.last())
        } else if let Some(names) = &grpc.response_fields {
            self.schemas.subset(&output, names)
        } else {
            self.schemas.message(&output)
        }
    }

    fn error_response(&mut self) -> Value {
        json!({
            "description": ERROR_DESCRIPTION,
            "content": {
                "application/json": { "schema": self.schemas.message(&self.table.schema.status) },
            },
        })
    }

    /// An AMQP route: the typed messages when it names them, any JSON otherwise; a
    /// publish route answers 202 `{}`.
    fn amqp_operation(
        &mut self,
        route: &Route,
        slots: &[Slot],
        amqp: &crate::routing::amqp::AmqpRoute,
    ) -> Value {
        let base = format!("amqp_{}{}", route.method, route.template.text);
        let id = self.operation_id(&identifier(&base));
        let mut schema = |ty: &Option<crate::transcode::MessageType>| match ty {
            Some(ty) => self.schemas.message(ty.descriptor()),
            None => json!({}),
        };
        let (request, reply) = (schema(&amqp.request_type), schema(&amqp.response_type));
        let (kind, responses) = if amqp.reply {
            let ok = json!({
                "description": "The worker's reply (status from its `x-status` header).",
                "content": { "application/json": { "schema": reply } },
            });
            ("request-reply", json!({ "200": ok }))
        } else {
            let accepted = json!({
                "description": "Confirmed by the broker.",
                "content": { "application/json": { "schema": { "type": "object" } } },
            });
            ("publish", json!({ "202": accepted }))
        };
        let mut operation = json!({
            "operationId": id,
            "summary": format!("AMQP {kind} `{}`", amqp.routing_key.text),
            "x-amqp-routing-key": amqp.routing_key.text,
            "responses": responses,
        });
        operation["responses"]["default"] = self.error_response();
        if amqp.reads_body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": request } },
            });
        }
        let parameters = self.path_parameters(&route.template, slots, &[]);
        if !parameters.is_empty() {
            operation["parameters"] = parameters.into();
        }
        operation
    }

    /// A composed route answers one object; its schema follows the answer's shape (by
    /// default an object of the steps' response schemas).
    fn compose_operation(
        &mut self,
        route: &Route,
        slots: &[Slot],
        compose: &crate::compose::ComposeRoute,
    ) -> Value {
        let base = format!("compose_{}{}", route.method, route.template.text);
        let id = self.operation_id(&identifier(&base));
        let schema = self.shape_schema(&compose.shape, 0);
        let steps: Vec<&str> = compose.steps.iter().map(|s| s.name.as_str()).collect();
        let mut operation = json!({
            "operationId": id,
            "summary": format!("Composed from steps {}", steps.join(", ")),
            "x-compose-steps": compose.describe()["steps"].clone(),
            "responses": { "200": {
                "description": "The composed answer. Steps that fell back are listed in `x-degraded`; omitted ones are absent.",
                "headers": { "x-degraded": { "schema": { "type": "string" }, "description": "Comma-separated names of the steps that fell back." } },
                "content": { "application/json": { "schema": schema } },
            } },
        });
        operation["responses"]["default"] = self.error_response();
        let parameters = self.path_parameters(&route.template, slots, &[]);
        if !parameters.is_empty() {
            operation["parameters"] = parameters.into();
        }
        operation
    }

    fn shape_schema(&mut self, shape: &crate::compose::shape::Shape, depth: usize) -> Value {
        use crate::compose::shape::Shape;
        match shape {
            _ if depth > 16 => json!({}),
            Shape::Any | Shape::Scalar => json!({}),
            Shape::Message(desc) => self.schemas.message(desc),
            Shape::List(inner) => {
                json!({ "type": "array", "items": self.shape_schema(inner, depth + 1) })
            }
            Shape::Object(members) => {
                let mut properties = serde_json::Map::new();
                for (name, member) in members {
                    properties.insert(name.clone(), self.shape_schema(member, depth + 1));
                }
                json!({ "type": "object", "properties": properties })
            }
        }
    }

    /// A static route answers with its configured status, headers and body; the body is
    /// shown as the example.
    fn static_operation(&mut self, route: &Route, slots: &[Slot], fixed: &StaticRoute) -> Value {
        let base = format!("static_{}{}", route.method, route.template.text);
        let id = self.operation_id(&identifier(&base));
        let mut response = json!({
            "description": fixed.status.canonical_reason().unwrap_or("Static response"),
        });
        if !fixed.body.is_empty() {
            let content_type = fixed
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream");
            let media = match serde_json::from_slice::<Value>(&fixed.body) {
                Ok(example) if content_type.contains("json") => {
                    json!({ "schema": {}, "example": example })
                }
                _ => json!({
                    "schema": { "type": "string" },
                    "example": String::from_utf8_lossy(&fixed.body),
                }),
            };
            response["content"] = json!({ content_type: media });
        }
        let headers: Map<String, Value> = fixed
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::CONTENT_TYPE)
            .map(|(name, value)| {
                let example = String::from_utf8_lossy(value.as_bytes());
                (
                    name.to_string(),
                    json!({ "schema": { "type": "string" }, "example": example }),
                )
            })
            .collect();
        if !headers.is_empty() {
            response["headers"] = headers.into();
        }
        let mut operation = json!({
            "operationId": id,
            "summary": "Static response",
            "responses": { fixed.status.as_str(): response },
        });
        let parameters = self.path_parameters(&route.template, slots, &[]);
        if !parameters.is_empty() {
            operation["parameters"] = parameters.into();
        }
        operation
    }

    fn finish(self) -> Value {
        let tags: Vec<Value> = self
            .tags
            .into_iter()
            .map(|(name, description)| {
                let mut tag = json!({ "name": name });
                describe(&mut tag, [description]);
                tag
            })
            .collect();
        let paths: Map<String, Value> = self
            .paths
            .into_iter()
            .map(|(path, item)| (path, Value::Object(item)))
            .collect();
        let schemas: Map<String, Value> = self.schemas.components.into_iter().collect();
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Switchboard",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "HTTP/JSON API served by Switchboard. Each operation is \
                    transcoded to the gRPC method named in its `x-grpc-method`; bodies follow \
                    the proto3 JSON mapping.",
            },
            "tags": tags,
            "paths": paths,
            "components": { "schemas": schemas },
        })
    }
}

#[cfg(test)]
mod tests;
