//! JSON Schemas for protobuf messages, enums and scalars under the proto3 JSON mapping.

use super::*;

/// JSON Schemas of protobuf types under the proto3 JSON mapping, registering each message
/// and enum reached in `components`.
pub(super) struct Schemas {
    pub(super) use_proto_names: bool,
    pub(super) enums_as_ints: bool,
    pub(super) components: BTreeMap<String, Value>,
}

impl Schemas {
    /// The JSON property name of `field` (what the gateway emits).
    pub(super) fn name<'f>(&self, field: &'f FieldDescriptor) -> &'f str {
        if self.use_proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }

    /// A well-known type inline, any other message as a `$ref` to its component.
    pub(super) fn message(&mut self, desc: &MessageDescriptor) -> Value {
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

    pub(super) fn object(&mut self, desc: &MessageDescriptor) -> Value {
        let properties: Map<String, Value> = desc
            .fields()
            .map(|field| (self.name(&field).to_string(), self.property(&field)))
            .collect();
        let mut schema = json!({ "type": "object", "properties": properties });
        describe(&mut schema, [comments(&desc.parent_file(), desc.path())]);
        schema
    }

    /// A field's schema plus its comment, oneof membership and deprecation.
    pub(super) fn property(&mut self, field: &FieldDescriptor) -> Value {
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
    pub(super) fn field(&mut self, field: &FieldDescriptor) -> Value {
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

    pub(super) fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(desc) => self.message(desc),
            Kind::Enum(desc) => self.enumeration(desc),
            scalar => scalar_schema(scalar),
        }
    }

    pub(super) fn enumeration(&mut self, desc: &EnumDescriptor) -> Value {
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
    pub(super) fn enum_schema(&self, desc: &EnumDescriptor) -> Value {
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
    pub(super) fn subset(&mut self, desc: &MessageDescriptor, names: &[String]) -> Value {
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
pub(super) fn scalar_schema(kind: &Kind) -> Value {
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
pub(super) fn well_known(desc: &MessageDescriptor) -> Option<Value> {
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
pub(super) fn nullable(mut schema: Value) -> Value {
    if let Some(ty) = schema.get("type").cloned() {
        schema["type"] = json!([ty, "null"]);
    }
    schema
}

pub(super) fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A singular message field that query parameters may reach through: not a list or
/// map, and not a well-known type (their JSON forms are not objects of their fields).
pub(super) fn singular_message(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(desc)
            if !field.is_list() && !field.is_map() && well_known(&desc).is_none() =>
        {
            Some(desc)
        }
        _ => None,
    }
}

pub(super) fn is_deprecated(field: &FieldDescriptor) -> bool {
    let options = field.field_descriptor_proto().options.as_ref();
    options.is_some_and(|o| o.deprecated())
}
