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

/// JSON Schemas of protobuf types under the proto3 JSON mapping, registering each message
/// and enum reached in `components`.
struct Schemas {
    use_proto_names: bool,
    enums_as_ints: bool,
    components: BTreeMap<String, Value>,
}

impl Schemas {
    /// The JSON property name of `field` (what the gateway emits).
    fn name<'f>(&self, field: &'f FieldDescriptor) -> &'f str {
        if self.use_proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }

    /// A well-known type inline, any other message as a `$ref` to its component.
    fn message(&mut self, desc: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(desc) {
            return schema;
        }
        let name = desc.full_name();
        if !self.components.contains_key(name) {
            // Reserve the name first: a recursive field then finds it and stops at a ref.
            self.components.insert(name.to_string(), Value::Null);
            let schema = self.object(desc);
            self.components.insert(name.to_string(), schema);
        }
        reference(name)
    }

    fn object(&mut self, desc: &MessageDescriptor) -> Value {
        let properties: Map<String, Value> = desc
            .fields()
            .map(|field| (self.name(&field).to_string(), self.property(&field)))
            .collect();
        let mut schema = json!({ "type": "object", "properties": properties });
        describe(&mut schema, [comments(&desc.parent_file(), desc.path())]);
        schema
    }

    /// A field's schema plus its comment, oneof membership and deprecation.
    fn property(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.field(field);
        let oneof = field
            .containing_oneof()
            .filter(|o| !o.is_synthetic())
            .map(|o| format!("Member of oneof `{}`: set at most one.", o.name()));
        describe(&mut schema, [field_comments(field), oneof]);
        if is_deprecated(field) {
            schema["deprecated"] = true.into();
        }
        schema
    }

    /// A field with its cardinality: maps are objects keyed by the map key's text form.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let kind = field.kind();
        if let (true, Some(entry)) = (field.is_map(), kind.as_message()) {
            let value = self.kind(&entry.map_entry_value_field().kind());
            json!({ "type": "object", "additionalProperties": value })
        } else if field.is_list() {
            json!({ "type": "array", "items": self.kind(&kind) })
        } else {
            self.kind(&kind)
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(desc) => self.message(desc),
            Kind::Enum(desc) => self.enumeration(desc),
            scalar => scalar_schema(scalar),
        }
    }

    fn enumeration(&mut self, desc: &EnumDescriptor) -> Value {
        if desc.full_name() == "google.protobuf.NullValue" {
            return json!({ "type": "null" });
        }
        let name = desc.full_name();
        if !self.components.contains_key(name) {
            let schema = self.enum_schema(desc);
            self.components.insert(name.to_string(), schema);
        }
        reference(name)
    }

    /// Names by default; numbers (with the names listed) under `enums_as_ints`.
    fn enum_schema(&self, desc: &EnumDescriptor) -> Value {
        let mut schema = if self.enums_as_ints {
            // Aliases share a number; list each number once.
            let numbers: BTreeSet<i32> = desc.values().map(|v| v.number()).collect();
            let legend: Vec<String> = desc
                .values()
                .map(|v| format!("{} = {}", v.name(), v.number()))
                .collect();
            json!({
                "type": "integer",
                "format": "int32",
                "enum": numbers,
                "description": legend.join(", "),
            })
        } else {
            let names: Vec<String> = desc.values().map(|v| v.name().to_string()).collect();
            json!({ "type": "string", "enum": names })
        };
        describe(&mut schema, [comments(&desc.parent_file(), desc.path())]);
        schema
    }

    /// An object with only the named fields of `desc` (backend-for-frontend shaping;
    /// the names are already the emitted JSON names).
    fn subset(&mut self, desc: &MessageDescriptor, names: &[String]) -> Value {
        let kept: Vec<FieldDescriptor> = desc
            .fields()
            // A nested path (`price.units`) keeps its top-level field in the schema.
            .filter(|field| {
                names
                    .iter()
                    .any(|n| n.split('.').next() == Some(self.name(field)))
            })
            .collect();
        let properties: Map<String, Value> = kept
            .iter()
            .map(|field| (self.name(field).to_string(), self.property(field)))
            .collect();
        json!({
            "type": "object",
            "description": format!("Selected fields of `{}`.", desc.full_name()),
            "properties": properties,
        })
    }
}

/// The proto3 JSON form of a scalar. 64-bit integers are strings on the wire.
fn scalar_schema(kind: &Kind) -> Value {
    let (ty, format) = match kind {
        Kind::Double => ("number", Some("double")),
        Kind::Float => ("number", Some("float")),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ("integer", Some("int32")),
        Kind::Uint32 | Kind::Fixed32 => ("integer", Some("uint32")),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => ("string", Some("int64")),
        Kind::Uint64 | Kind::Fixed64 => ("string", Some("uint64")),
        Kind::Bool => ("boolean", None),
        Kind::String => ("string", None),
        Kind::Bytes => ("string", Some("byte")),
        // Not scalars: `Schemas::kind` handles them before calling here.
        Kind::Message(_) | Kind::Enum(_) => return json!({}),
    };
    let mut schema = json!({ "type": ty });
    if let Some(format) = format {
        schema["format"] = format.into();
    }
    schema
}

/// The JSON forms of the well-known types (and HttpBody, which has no JSON shape).
fn well_known(desc: &MessageDescriptor) -> Option<Value> {
    let schema = match desc.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": r"^-?[0-9]+(\.[0-9]+)?s$",
            "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Comma-separated field paths, e.g. `name,price.units`.",
        }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({ "description": "Any JSON value." }),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "description": "A message of any type, named by `@type`, with its fields alongside.",
            "properties": {
                "@type": {
                    "type": "string",
                    "description": "Type URL, e.g. `type.googleapis.com/google.rpc.ErrorInfo`.",
                },
            },
        }),
        "google.api.HttpBody" => {
            json!({ "description": "Arbitrary content (google.api.HttpBody)." })
        }
        name if WRAPPERS.contains(&name) => {
            nullable(scalar_schema(&desc.get_field_by_name("value")?.kind()))
        }
        _ => return None,
    };
    Some(schema)
}

/// `{"type": T}` → `{"type": [T, "null"]}`.
fn nullable(mut schema: Value) -> Value {
    if let Some(ty) = schema.get("type").cloned() {
        schema["type"] = json!([ty, "null"]);
    }
    schema
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A singular message field that query parameters may reach through: not a list or
/// map, and not a well-known type (their JSON forms are not objects of their fields).
fn singular_message(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(desc)
            if !field.is_list() && !field.is_map() && well_known(&desc).is_none() =>
        {
            Some(desc)
        }
        _ => None,
    }
}

fn is_deprecated(field: &FieldDescriptor) -> bool {
    let options = field.field_descriptor_proto().options.as_ref();
    options.is_some_and(|o| o.deprecated())
}

/// A `{…}` of a document path: its parameter name and the template variable it fills.
struct Slot {
    name: String,
    /// Index into `PathTemplate::variables`.
    variable: usize,
    /// One wildcard of a multi-segment variable that `expanded_path` split up.
    part: bool,
}

/// The path as `PathTemplate::openapi_path` prints it: one slot per variable.
fn plain_path(template: &PathTemplate) -> (String, Vec<Slot>) {
    let slots = template
        .variables
        .iter()
        .enumerate()
        .map(|(variable, v)| Slot {
            name: v.field_path.clone(),
            variable,
            part: false,
        })
        .collect();
    (template.openapi_path(), slots)
}

/// `/v1/{name=shelves/*/books/*}` → `/v1/shelves/{shelves}/books/{books}`: the literals
/// of multi-segment variables stay in the path and each wildcard becomes a parameter
/// named after the literal before it. Used when the plain form is already taken for the
/// method (GET `/v1/{name=shelves/*}` and GET `/v1/{name=shelves/*/books/*}` both print
/// `/v1/{name}`).
fn expanded_path(template: &PathTemplate) -> (String, Vec<Slot>) {
    let mut path = String::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut push_slot = |path: &mut String, name: &str, variable: usize, part: bool| {
        let name = unique_name(name, &slots);
        path.push_str(&format!("/{{{name}}}"));
        slots.push(Slot {
            name,
            variable,
            part,
        });
    };
    let mut i = 0;
    while i < template.segments.len() {
        let Some(index) = template.variables.iter().position(|v| v.start == i) else {
            path.push('/');
            path.push_str(segment_text(&template.segments[i]));
            i += 1;
            continue;
        };
        let variable = &template.variables[index];
        if variable.multi_segment {
            let mut previous = variable.field_path.as_str();
            for segment in &template.segments[variable.start..variable.end] {
                match segment {
                    Segment::Literal(literal) => {
                        path.push('/');
                        path.push_str(literal);
                        previous = literal;
                    }
                    _ => push_slot(&mut path, previous, index, true),
                }
            }
        } else {
            push_slot(&mut path, &variable.field_path, index, false);
        }
        i = variable.end;
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    (path, slots)
}

/// `path` with its parameter names blanked (`/v1/{name}` → `/v1/{}`): paths that differ
/// only in those are the same path to OpenAPI.
fn hierarchy(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// `base`, or `base_2`, `base_3`… when a slot of the path already has that name.
fn unique_name(base: &str, slots: &[Slot]) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while slots.iter().any(|slot| slot.name == name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

fn segment_text(segment: &Segment) -> &str {
    match segment {
        Segment::Literal(literal) => literal,
        Segment::Single => "*",
        Segment::Multi => "**",
    }
}

/// A template's segments as written in it (`shelves/*/books/*`).
fn segments_text(segments: &[Segment]) -> String {
    let parts: Vec<&str> = segments.iter().map(segment_text).collect();
    parts.join("/")
}

/// `static_GET/v1/status` → `static_get_v1_status`: operationIds should be identifiers.
fn identifier(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let parts: Vec<&str> = mapped.split('_').filter(|p| !p.is_empty()).collect();
    parts.join("_")
}

/// Sets `description` to the paragraphs present, followed by the one the target already
/// has (so a field's own comment comes before its well-known type's note).
fn describe(target: &mut Value, paragraphs: impl IntoIterator<Item = Option<String>>) {
    let Some(object) = target.as_object_mut() else {
        return;
    };
    let mut text: Vec<String> = paragraphs.into_iter().flatten().collect();
    if let Some(Value::String(existing)) = object.remove("description") {
        text.push(existing);
    }
    if !text.is_empty() {
        object.insert("description".into(), text.join("\n\n").into());
    }
}

fn field_comments(field: &FieldDescriptor) -> Option<String> {
    comments(&field.parent_file(), field.path())
}

/// The comment on the element at `path` of `file` (leading, else trailing). Only files
/// compiled from `.proto` sources keep comments; descriptor sets usually do not.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let raw = location
        .leading_comments
        .as_deref()
        .or(location.trailing_comments.as_deref())?;
    let lines: Vec<&str> = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let text = lines.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The first paragraph (on one line) as the summary; the whole comment as the
/// description only when it says more than that.
fn summary_and_description(text: &str) -> (String, Option<String>) {
    let first = text.split("\n\n").next().unwrap_or(text);
    let summary = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let whole = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let description = (whole != summary).then(|| text.to_string());
    (summary, description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PROTO: &str = r#"syntax = "proto3";

package test.library.v1;

import "google/api/annotations.proto";
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// Books on shelves.
service Library {
  // Gets one book.
  //
  // Looks the book up by its resource name.
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v1/books/{name}" }
    };
  }
  rpc GetShelf(GetBookRequest) returns (Author) {
    option (google.api.http) = { get: "/v1/{name=shelves/*}" };
  }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/shelves/{shelf}/books" body: "book" };
  }
  rpc UpdateBook(Book) returns (Book) {
    option (google.api.http) = { patch: "/v1/books/{name}" body: "*" };
  }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/books" };
  }
  rpc WatchBooks(ListBooksRequest) returns (stream Book) {
    option (google.api.http) = { get: "/v1/books:watch" };
  }
  rpc DeleteBook(GetBookRequest) returns (google.protobuf.Empty) {
    option deprecated = true;
    option (google.api.http) = { delete: "/v1/books/{name}" };
  }
}

enum Genre {
  GENRE_UNSPECIFIED = 0;
  FICTION = 1;
  POETRY = 2;
}

message Author {
  string name = 1;
  Author mentor = 2;
}

// A book.
message Book {
  string name = 1;
  string id = 2;
  int64 pages = 3; // Number of pages.
  uint64 isbn = 4;
  int32 edition = 5;
  double rating = 6;
  bool available = 7;
  Genre genre = 8;
  repeated string tags = 9;
  Author author = 10;
  map<string, int64> counts = 11;
  bytes cover = 12;
  google.protobuf.Timestamp published_at = 13;
  google.protobuf.Duration loan_period = 14; // How long a loan lasts.
  google.protobuf.FieldMask mask = 15;
  google.protobuf.Struct extra = 16;
  google.protobuf.Any any = 17;
  google.protobuf.Int64Value maybe_pages = 18;
  google.protobuf.Value value = 19;
  google.protobuf.ListValue list = 20;
  oneof format {
    string ebook_url = 21;
    int32 shelf_slot = 22;
  }
  string legacy = 23 [deprecated = true];
  float weight = 24;
  fixed32 crc = 25;
  optional string subtitle = 26;
}

message GetBookRequest {
  string name = 1;
}

message CreateBookRequest {
  string shelf = 1;
  Book book = 2;
  bool validate_only = 3;
}

message Filter {
  string author = 1;
  int64 min_pages = 2;
  Filter inner = 3;
}

message ListBooksRequest {
  // At most 100.
  int32 page_size = 1;
  repeated Genre genres = 2;
  Filter filter = 3;
  map<string, string> labels = 4;
  google.protobuf.Timestamp since = 5;
  repeated Author authors = 6;
  google.protobuf.Int64Value min_pages = 7;
  google.protobuf.Any any = 8;
}

message ListBooksResponse {
  repeated Book books = 1;
  string next_page_token = 2;
}
"#;

    const ROUTES: &str = r#"routes:
  - grpc_service: { upstream: library, service: test.library.v1.Library }
  - http: { get: "/mobile/v1/books/{name}" }
    grpc: { upstream: library, method: test.library.v1.Library/GetBook }
    response: { fields: [id, published_at] }
  - http: { get: "/v1/books/{name}/author", response_body: author }
    grpc: { upstream: library, method: test.library.v1.Library/GetBook }
  - http: { get: "/v1/status" }
    static: { status: 200, body: { ok: true }, headers: { x-served-by: switchboard } }
  - http: { get: "/v1/files/{path=**}" }
    static: { status: 200, body: "hello" }
"#;

    /// The document of the library fixture under `json:` options `json` (YAML flow map).
    /// Channels connect lazily, so the unreachable upstream is never dialled.
    fn build(json: &str) -> Value {
        build_with(PROTO, ROUTES, json)
    }

    /// The document of `proto` (as test/library/v1/library.proto) served by `routes`.
    fn build_with(proto: &str, routes: &str, json: &str) -> Value {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sb-openapi-{}-{n}", std::process::id()));
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("protos/test/library/v1/library.proto", proto);
        write("routes.yaml", routes);
        let config = format!(
            "descriptors: [protos/]\nmappings: [routes.yaml]\njson: {json}\nupstreams:\n  \
             library:\n    grpc: {{ endpoints: [\"http://127.0.0.1:1\"] }}\n"
        );
        write("switchboard.yaml", &config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config_path: PathBuf = dir.join("switchboard.yaml");
        let table = runtime
            .block_on(crate::gateway::build_table(&config_path, None))
            .unwrap_or_else(|e| panic!("fixture does not load: {e}"));
        let doc = document(&table);
        std::fs::remove_dir_all(&dir).ok();
        doc
    }

    /// Issue 14: PATCH `/v1/{book.name=shelves/*/books/*}` printed as `/v1/{book.name}`
    /// next to GET `/v1/{name}` (a shelf): the same path to OpenAPI, so tools dropped one.
    /// Every method is listed, on paths that differ in more than parameter names.
    #[test]
    fn multi_segment_variables_on_every_method_get_distinct_paths() {
        let proto = r#"syntax = "proto3";
package test.library.v1;
import "google/api/annotations.proto";
import "google/protobuf/empty.proto";
service Library {
  rpc GetShelf(ByName) returns (Shelf) { option (google.api.http) = { get: "/v1/{name=shelves/*}" }; }
  rpc DeleteShelf(ByName) returns (google.protobuf.Empty) { option (google.api.http) = { delete: "/v1/{name=shelves/*}" }; }
  rpc GetBook(ByName) returns (Book) { option (google.api.http) = { get: "/v1/{name=shelves/*/books/*}" }; }
  rpc UpdateBook(UpdateBookRequest) returns (Book) { option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "book" }; }
  rpc DeleteBook(ByName) returns (google.protobuf.Empty) { option (google.api.http) = { delete: "/v1/{name=shelves/*/books/*}" }; }
}
message ByName { string name = 1; }
message Shelf { string name = 1; }
message Book { string name = 1; string title = 2; }
message UpdateBookRequest { Book book = 1; }
"#;
        let routes =
            "routes:\n  - grpc_service: { upstream: library, service: test.library.v1.Library }\n";
        let doc = build_with(proto, routes, "{}");
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = Vec::new();
        let mut hierarchies = std::collections::HashSet::new();
        for (path, item) in paths {
            assert!(
                hierarchies.insert(hierarchy(path)),
                "{path} repeats a path: {paths:?}"
            );
            for method in item.as_object().unwrap().keys() {
                operations.push(item[method]["operationId"].as_str().unwrap().to_string());
            }
        }
        operations.sort();
        assert_eq!(operations.len(), 5, "{paths:?}");
        let patch = op(&doc, "/v1/shelves/{shelves}/books/{books}", "patch");
        assert_eq!(param_names(patch), ["shelves", "books"]);
        op(&doc, "/v1/shelves/{shelves}/books/{books}", "delete");
        op(&doc, "/v1/{name}", "delete");
    }

    /// The fixture with the default JSON options, built once.
    fn doc() -> &'static Value {
        static DOC: OnceLock<Value> = OnceLock::new();
        DOC.get_or_init(|| build("{}"))
    }

    fn op<'d>(doc: &'d Value, path: &str, method: &str) -> &'d Value {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "no {method} {path}");
        op
    }

    fn param<'d>(op: &'d Value, name: &str) -> &'d Value {
        op["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no parameter {name} in {op}"))
    }

    fn param_names(op: &Value) -> Vec<&str> {
        op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default()
    }

    fn schema<'d>(doc: &'d Value, name: &str) -> &'d Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no component {name}");
        schema
    }

    fn reference_to(name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// Every `$ref` anywhere in `value`.
    fn refs<'d>(value: &'d Value, out: &mut Vec<&'d str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    const BOOK: &str = "test.library.v1.Book";

    #[test]
    fn document_is_complete_and_deterministic() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Switchboard");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["tags"],
            json!([{ "name": "test.library.v1.Library", "description": "Books on shelves." }])
        );
        let mut all = Vec::new();
        refs(doc, &mut all);
        for r in all {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "dangling {r}");
        }
        assert_eq!(doc, &build("{}"), "same table, same document");
    }

    #[test]
    fn one_operation_per_route_with_unique_ids() {
        let doc = doc();
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            paths,
            [
                "/mobile/v1/books/{name}",
                "/v1/books",
                "/v1/books/{name}",
                "/v1/books/{name}/author",
                "/v1/books:watch",
                "/v1/files/{path}",
                "/v1/shelves/{shelf}/books",
                "/v1/shelves/{shelves}/books/{books}",
                "/v1/status",
                "/v1/{name}",
            ]
        );
        let item = doc["paths"]["/v1/books/{name}"].as_object().unwrap();
        assert_eq!(item.keys().collect::<Vec<_>>(), ["delete", "get", "patch"]);

        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| {
                op["operationId"]
                    .as_str()
                    .expect("every operation has an id")
            })
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "operationIds are unique: {ids:?}");
        for id in ["Library_GetBook", "Library_GetBook_2", "Library_ListBooks"] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
        // Mapping routes come after the service expansion in the file.
        assert_eq!(
            op(doc, "/mobile/v1/books/{name}", "get")["operationId"],
            "Library_GetBook_3"
        );
        assert_eq!(
            op(doc, "/v1/status", "get")["operationId"],
            "static_get_v1_status"
        );
    }

    #[test]
    fn operations_carry_comments_tags_and_grpc_method() {
        let get = op(doc(), "/v1/shelves/{shelves}/books/{books}", "get");
        assert_eq!(get["summary"], "Gets one book.");
        assert_eq!(
            get["description"],
            "Gets one book.\n\nLooks the book up by its resource name."
        );
        assert_eq!(get["tags"], json!(["test.library.v1.Library"]));
        assert_eq!(get["x-grpc-method"], "/test.library.v1.Library/GetBook");
        assert!(get.get("deprecated").is_none());
        let delete = op(doc(), "/v1/books/{name}", "delete");
        assert_eq!(delete["deprecated"], true);
        assert!(delete.get("summary").is_none(), "no comment, no summary");
    }

    #[test]
    fn path_parameters_are_required_and_typed() {
        let shelf = param(op(doc(), "/v1/{name}", "get"), "name");
        assert_eq!(shelf["in"], "path");
        assert_eq!(shelf["required"], true);
        assert_eq!(shelf["schema"], json!({ "type": "string" }));
        let note = shelf["description"].as_str().unwrap();
        assert!(
            note.contains("several path segments (`shelves/*`)"),
            "{note}"
        );
        let single = param(op(doc(), "/v1/books/{name}", "get"), "name");
        assert!(single.get("description").is_none(), "{single}");
        // Static routes declare their variables too.
        let rest = param(op(doc(), "/v1/files/{path}", "get"), "path");
        assert_eq!(rest["schema"], json!({ "type": "string" }));
        assert!(rest["description"].as_str().unwrap().contains("`**`"));
    }

    #[test]
    fn a_taken_path_is_listed_expanded() {
        // GetShelf holds GET /v1/{name}; GetBook's `{name=shelves/*/books/*}` prints the
        // same, so its literals stay in the path and each wildcard is a parameter.
        let doc = doc();
        assert_eq!(
            op(doc, "/v1/{name}", "get")["x-grpc-method"],
            "/test.library.v1.Library/GetShelf"
        );
        let get = op(doc, "/v1/shelves/{shelves}/books/{books}", "get");
        assert_eq!(get["x-grpc-method"], "/test.library.v1.Library/GetBook");
        assert_eq!(param_names(get), ["shelves", "books"]);
        let note = param(get, "books")["description"].as_str().unwrap();
        assert!(
            note.contains("Part of `name` (`shelves/*/books/*`)"),
            "{note}"
        );
    }

    #[test]
    fn expanded_paths_keep_names_unique() {
        let template = PathTemplate::parse("/v1/{a=x/*}/{b=x/*}/{x}/{rest=**}:go").unwrap();
        let (path, slots) = expanded_path(&template);
        assert_eq!(path, "/v1/x/{x}/x/{x_2}/{x_3}/{rest}:go");
        let variables: Vec<(usize, bool)> = slots.iter().map(|s| (s.variable, s.part)).collect();
        assert_eq!(variables, [(0, true), (1, true), (2, false), (3, true)]);
    }

    #[test]
    fn query_parameters_are_the_unbound_text_fields() {
        let list = op(doc(), "/v1/books", "get");
        assert_eq!(
            param_names(list),
            [
                "pageSize",
                "genres",
                "filter.author",
                "filter.minPages",
                "since",
                "minPages"
            ],
            "maps, repeated messages, well-known types' insides and fields deeper than two \
             levels are left out"
        );
        let page_size = param(list, "pageSize");
        assert_eq!(page_size["in"], "query");
        assert_eq!(page_size["description"], "At most 100.");
        assert!(page_size.get("required").is_none());
        let genres = param(list, "genres");
        assert_eq!(genres["explode"], true);
        assert_eq!(genres["style"], "form");
        assert_eq!(
            genres["schema"],
            json!({ "type": "array", "items": reference_to("test.library.v1.Genre") })
        );
        assert_eq!(
            param(list, "filter.minPages")["schema"],
            json!({ "type": "string", "format": "int64" })
        );
        assert_eq!(
            param(list, "since")["schema"],
            json!({ "type": "string", "format": "date-time" })
        );

        // Path and body fields are bound; the rest is query.
        let create = op(doc(), "/v1/shelves/{shelf}/books", "post");
        assert_eq!(param_names(create), ["shelf", "validateOnly"]);
        // `body: "*"` leaves nothing for the query.
        let update = op(doc(), "/v1/books/{name}", "patch");
        assert_eq!(param_names(update), ["name"]);
    }

    #[test]
    fn request_bodies_follow_the_body_rule() {
        let update = op(doc(), "/v1/books/{name}", "patch");
        assert_eq!(
            update["requestBody"],
            json!({
                "required": true,
                "content": { "application/json": { "schema": reference_to(BOOK) } },
            })
        );
        let create = op(doc(), "/v1/shelves/{shelf}/books", "post");
        assert_eq!(create["requestBody"]["required"], false);
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"],
            reference_to(BOOK)
        );
        assert!(op(doc(), "/v1/books", "get").get("requestBody").is_none());
    }

    #[test]
    fn responses_match_what_the_proxy_sends() {
        let doc = doc();
        let ok = |path: &str, media: &str| {
            op(doc, path, "get")["responses"]["200"]["content"][media]["schema"].clone()
        };
        assert_eq!(
            ok("/v1/books/{name}", "application/json"),
            reference_to(BOOK)
        );
        // response_body: the field's schema.
        assert_eq!(
            ok("/v1/books/{name}/author", "application/json"),
            reference_to("test.library.v1.Author")
        );
        // response fields: only those, by their emitted names.
        let shaped = ok("/mobile/v1/books/{name}", "application/json");
        let keys: Vec<&String> = shaped["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "publishedAt"]);
        // Server streaming: NDJSON and SSE, one message each.
        let stream = &op(doc, "/v1/books:watch", "get")["responses"]["200"];
        for media in ["application/x-ndjson", "text/event-stream"] {
            assert_eq!(stream["content"][media]["schema"], reference_to(BOOK));
        }
        assert!(
            stream["description"]
                .as_str()
                .unwrap()
                .contains("one message")
        );
        // Empty is an empty object, inline.
        assert_eq!(
            op(doc, "/v1/books/{name}", "delete")["responses"]["200"]["content"]["application/json"]
                ["schema"],
            json!({ "type": "object" })
        );
        // Errors: google.rpc.Status.
        let default = &op(doc, "/v1/books", "get")["responses"]["default"];
        assert_eq!(
            default["content"]["application/json"]["schema"],
            reference_to("google.rpc.Status")
        );
        let status = schema(doc, "google.rpc.Status");
        assert_eq!(status["properties"]["code"]["type"], "integer");
        assert_eq!(status["properties"]["message"]["type"], "string");
        assert_eq!(status["properties"]["details"]["type"], "array");
        assert_eq!(
            status["properties"]["details"]["items"]["properties"]["@type"]["type"],
            "string"
        );
    }

    #[test]
    fn static_routes_show_their_status_body_and_headers() {
        let response = &op(doc(), "/v1/status", "get")["responses"]["200"];
        assert_eq!(
            response["content"]["application/json"]["example"],
            json!({ "ok": true })
        );
        assert_eq!(response["headers"]["x-served-by"]["example"], "switchboard");
        let text = &op(doc(), "/v1/files/{path}", "get")["responses"]["200"]["content"];
        assert_eq!(
            text["text/plain; charset=utf-8"],
            json!({ "schema": { "type": "string" }, "example": "hello" })
        );
    }

    #[test]
    fn message_schemas_follow_the_proto3_json_mapping() {
        let book = schema(doc(), BOOK);
        assert_eq!(book["type"], "object");
        assert_eq!(book["description"], "A book.");
        let p = &book["properties"];
        let cases = [
            (
                "pages",
                json!({ "type": "string", "format": "int64", "description": "Number of pages." }),
            ),
            ("isbn", json!({ "type": "string", "format": "uint64" })),
            ("edition", json!({ "type": "integer", "format": "int32" })),
            ("crc", json!({ "type": "integer", "format": "uint32" })),
            ("rating", json!({ "type": "number", "format": "double" })),
            ("weight", json!({ "type": "number", "format": "float" })),
            ("available", json!({ "type": "boolean" })),
            ("cover", json!({ "type": "string", "format": "byte" })),
            ("subtitle", json!({ "type": "string" })),
            ("genre", reference_to("test.library.v1.Genre")),
            (
                "tags",
                json!({ "type": "array", "items": { "type": "string" } }),
            ),
            (
                "counts",
                json!({ "type": "object", "additionalProperties": { "type": "string", "format": "int64" } }),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(p[name], expected, "{name}");
        }
        assert_eq!(p["legacy"]["deprecated"], true);
        for member in ["ebookUrl", "shelfSlot"] {
            let note = p[member]["description"].as_str().unwrap();
            assert!(note.contains("oneof `format`"), "{member}: {note}");
        }
        assert_eq!(
            schema(doc(), "test.library.v1.Genre"),
            &json!({ "type": "string", "enum": ["GENRE_UNSPECIFIED", "FICTION", "POETRY"] })
        );
    }

    #[test]
    fn recursive_messages_are_references() {
        let author = schema(doc(), "test.library.v1.Author");
        assert_eq!(
            author["properties"]["mentor"],
            reference_to("test.library.v1.Author")
        );
        // Messages only read from the query are not components.
        assert!(
            doc()["components"]["schemas"]
                .get("test.library.v1.Filter")
                .is_none()
        );
    }

    #[test]
    fn well_known_types_have_their_json_forms() {
        let p = &schema(doc(), BOOK)["properties"];
        assert_eq!(
            p["publishedAt"],
            json!({ "type": "string", "format": "date-time" })
        );
        assert_eq!(p["loanPeriod"]["type"], "string");
        assert_eq!(p["loanPeriod"]["pattern"], r"^-?[0-9]+(\.[0-9]+)?s$");
        assert_eq!(
            p["loanPeriod"]["description"],
            "How long a loan lasts.\n\nSeconds with an `s` suffix, e.g. `1.5s`.",
            "the field's comment first, then the type's note"
        );
        assert_eq!(p["mask"]["type"], "string");
        assert_eq!(p["extra"], json!({ "type": "object" }));
        assert!(p["value"].get("type").is_none(), "any JSON value");
        assert_eq!(p["list"], json!({ "type": "array", "items": {} }));
        assert_eq!(p["any"]["properties"]["@type"]["type"], "string");
        assert_eq!(
            p["maybePages"],
            json!({ "type": ["string", "null"], "format": "int64" })
        );
        let components = doc()["components"]["schemas"].as_object().unwrap();
        assert!(
            !components.keys().any(|k| k.starts_with("google.protobuf.")),
            "well-known types are inlined"
        );
    }

    #[test]
    fn json_options_rename_fields_and_number_enums() {
        let doc = build("{ use_proto_names: true, enums_as_ints: true }");
        let book = &schema(&doc, BOOK)["properties"];
        assert!(book.get("published_at").is_some());
        assert!(book.get("publishedAt").is_none());
        let genre = schema(&doc, "test.library.v1.Genre");
        assert_eq!(genre["type"], "integer");
        assert_eq!(genre["enum"], json!([0, 1, 2]));
        assert!(
            genre["description"]
                .as_str()
                .unwrap()
                .contains("FICTION = 1")
        );
        assert_eq!(
            param_names(op(&doc, "/v1/books", "get")),
            [
                "page_size",
                "genres",
                "filter.author",
                "filter.min_pages",
                "since",
                "min_pages"
            ]
        );
        let shaped = &op(&doc, "/mobile/v1/books/{name}", "get")["responses"]["200"]["content"]["application/json"]
            ["schema"]["properties"];
        assert!(shaped.get("published_at").is_some(), "{shaped}");
    }
}
