//! The document for test protos and route files: paths, parameters, schemas.

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
    // Paths sorted; a path's operations in the order their routes are declared.
    assert_eq!(item.keys().collect::<Vec<_>>(), ["get", "patch", "delete"]);

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
        op(doc, "/v1/books/{name}", "delete")["responses"]["200"]["content"]["application/json"]["schema"],
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
