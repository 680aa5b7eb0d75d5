//! HTTP/JSON → gRPC end to end: a real gateway in front of the real echo backend, which
//! answers with the request it received — so each test sees exactly what was sent.

mod support;

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client, raw_request};

const MAPPINGS: &str = r#"
routes:
  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService, unannotated: post }
  - http: { get: "/strict/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    strict_query: true
  - http: { post: "/v1/tags/{id}", body: "tags" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
  - http: { put: "/v1/labels/{id}", body: "labels" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
  - http: { get: "/slow/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    timeout: 300ms
  - http: { get: "/auth/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    forward_authorization: true
  - http: { get: "/mobile/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    response: { fields: [id, maybe_name] }
"#;

async fn setup_with(json_options: &str) -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [mappings/]\nlimits: {{ max_body: 1KiB, max_uri: 2KiB }}\n{json_options}\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "    timeout: 5s\n"),
    );
    let gw = gateway::start(&config, &[("mappings/echo.yaml", MAPPINGS)]).await;
    (echo, gw)
}

async fn setup() -> (EchoServer, TestGateway) {
    setup_with("").await
}

async fn get_json(gw: &TestGateway, path: &str) -> (u16, Value) {
    let response = client().get(gw.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn send_json(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let response = client()
        .request(method, gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_query_parameters_fill_the_request() {
    let (echo, gw) = setup().await;
    let query = "big=-9007199254740993&ubig=18446744073709551615&small=-5&ratio=1.5&flag=true\
        &color=GREEN&tags=a&tags=b+c&colors=RED&colors=3&nested.name=n&nested.child.name=c\
        &at=2024-01-02T03:04:05Z&ttl=1.5s&mask=a,b.c&maybeBig=7&maybe_name=x&numbers=1&numbers=2\
        &text=hello&blob=aGk%3D&score=0.5&id=ignored-because-bound&unknown=ignored";
    let (status, body) = get_json(&gw, &format!("/v1/echo/abc?{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "abc");
    assert_eq!(body["big"], "-9007199254740993");
    assert_eq!(body["ubig"], "18446744073709551615");
    assert_eq!(body["small"], -5);
    assert_eq!(body["ratio"], 1.5);
    assert_eq!(body["flag"], true);
    assert_eq!(body["color"], "GREEN");
    assert_eq!(body["tags"], json!(["a", "b c"]));
    assert_eq!(body["colors"], json!(["RED", "BLUE"]));
    assert_eq!(body["nested"]["name"], "n");
    assert_eq!(body["nested"]["child"]["name"], "c");
    assert_eq!(body["at"], "2024-01-02T03:04:05Z");
    assert_eq!(body["ttl"], "1.500s");
    assert_eq!(body["mask"], "a,b.c");
    assert_eq!(body["maybeBig"], "7");
    assert_eq!(body["maybeName"], "x");
    assert_eq!(body["numbers"], json!(["1", "2"]));
    assert_eq!(body["text"], "hello");
    assert_eq!(body["blob"], "aGk=");
    assert_eq!(body["score"], 0.5);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_multi_segment_wildcards_verbs_and_nested_paths() {
    let (_echo, gw) = setup().await;
    // Multi-segment variables keep %2F escaped; single-segment ones are fully unescaped.
    let (status, body) = get_json(&gw, "/v1/shelves/s1/books/b%2F2").await;
    assert_eq!(
        (status, body["name"].clone()),
        (200, json!("shelves/s1/books/b%2F2"))
    );
    let (_, body) = get_json(&gw, "/v1/echo/a%2Fb%20c").await;
    assert_eq!(body["id"], "a/b c");
    // additional_bindings with `**`.
    let (status, body) = get_json(&gw, "/v1/files/7/a/b/c.txt").await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["id"].clone(), body["rest"].clone()),
        (json!("7"), json!("a/b/c.txt"))
    );
    // A custom verb.
    let (status, body) = send_json(
        &gw,
        reqwest::Method::POST,
        "/v1/echo/9:cancel",
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(
        (status, body["id"].clone(), body["name"].clone()),
        (200, json!("9"), json!("x"))
    );
    // Nested field paths in the template.
    let (_, body) = get_json(&gw, "/v1/nested/n1/children/c1").await;
    assert_eq!(body["nested"]["name"], "n1");
    assert_eq!(body["nested"]["child"]["name"], "c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_whole_field_repeated_and_map() {
    let (_echo, gw) = setup().await;
    let whole = json!({
        "id": "x", "tags": ["t"], "extra": {"a": 1.5, "b": [true, null]},
        "any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
        "value": [1.5, "a"], "labels": {"k": "v"}, "number": 4, "maybeBig": "12",
    });
    let (status, body) =
        send_json(&gw, reqwest::Method::POST, "/v1/echo", &whole.to_string()).await;
    assert_eq!(status, 200, "{body}");
    for key in [
        "id", "tags", "extra", "any", "value", "labels", "number", "maybeBig",
    ] {
        assert_eq!(body[key], whole[key], "{key}");
    }
    // body: "nested" — the body is that field; other fields come from path and query.
    let (status, body) = send_json(
        &gw,
        reqwest::Method::PATCH,
        "/v1/echo/5?name=top&nested.name=ignored",
        r#"{"name":"nn","count":"3"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "5");
    assert_eq!(body["name"], "top");
    assert_eq!(body["nested"], json!({"name": "nn", "count": "3"}));
    // Repeated and map body fields.
    let (_, body) = send_json(&gw, reqwest::Method::POST, "/v1/tags/1", r#"["a","b"]"#).await;
    assert_eq!(body["tags"], json!(["a", "b"]));
    let (_, body) = send_json(
        &gw,
        reqwest::Method::PUT,
        "/v1/labels/1",
        r#"{"env":"prod"}"#,
    )
    .await;
    assert_eq!(body["labels"], json!({"env": "prod"}));
    // Unannotated method through `unannotated: post`.
    let (status, body) = send_json(
        &gw,
        reqwest::Method::POST,
        "/test.echo.v1.EchoService/Plain",
        r#"{"id":"p"}"#,
    )
    .await;
    assert_eq!((status, body["id"].clone()), (200, json!("p")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_response_body_empty_and_backend_for_frontend() {
    let (_echo, gw) = setup().await;
    let (status, body) = get_json(&gw, "/v1/echo/7/nested?nested.name=z").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "z");
    assert!(body.get("id").is_none(), "only the nested message: {body}");
    let response = client().delete(gw.url("/v1/echo/7")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    let (_, body) = get_json(&gw, "/mobile/3?maybe_name=m&name=dropped").await;
    assert_eq!(body, json!({"id": "3", "maybeName": "m"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_options_proto_names_defaults_and_enum_numbers() {
    let (_echo, gw) =
        setup_with("json: { emit_defaults: false, use_proto_names: true, enums_as_ints: true }")
            .await;
    let (status, body) = get_json(&gw, "/v1/echo/1?maybe_name=m&color=BLUE").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"id": "1", "maybe_name": "m", "color": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_trailers_and_trace_ids_cross_both_ways() {
    let (echo, gw) = setup().await;
    let response = client()
        .get(gw.url("/v1/echo/m"))
        .header("grpc-metadata-x-tenant", "acme")
        .header("authorization", "Bearer secret")
        .header("x-trace-id", "order-42.retry_1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-trace-id"], "order-42.retry_1");
    assert_eq!(headers["grpc-metadata-x-echo-x-tenant"], "acme");
    assert_eq!(
        headers["grpc-metadata-x-echo-trailer"], "done",
        "trailers become headers"
    );
    let seen = echo
        .last_metadata
        .lock()
        .unwrap()
        .clone()
        .expect("backend saw a call");
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-trace-id"], "order-42.retry_1");
    assert!(
        seen.get("authorization").is_none(),
        "authorization is not forwarded by default"
    );
    assert!(
        seen.get("grpc-timeout").is_some(),
        "the deadline travels as grpc-timeout"
    );
    let traceparent = seen["traceparent"].to_str().unwrap().to_string();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );

    // forward_authorization: true passes it on.
    client()
        .get(gw.url("/auth/1"))
        .header("authorization", "Bearer secret")
        .send()
        .await
        .unwrap();
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    assert_eq!(seen["authorization"], "Bearer secret");

    // A W3C traceparent supplies the trace id and is propagated with a new parent id.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .get(gw.url("/v1/echo/t"))
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    let forwarded = seen["traceparent"].to_str().unwrap();
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && forwarded.ends_with("-01")
    );
    assert!(!forwarded.contains("00f067aa0ba902b7"));

    // No id, or a malformed one: a fresh one, on errors too.
    let response = client()
        .get(gw.url("/nowhere"))
        .header("x-trace-id", "bad id!")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-trace-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_statuses_map_to_http_with_details() {
    let (_echo, gw) = setup().await;
    let table = [
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (code, http) in table {
        let response = client()
            .get(gw.url("/v1/echo/f"))
            .header("grpc-metadata-x-echo-fail", code.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), http, "gRPC code {code}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
        assert_eq!(body["message"], "forced");
        assert_eq!(
            body["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(body["details"][0]["reason"], "FORCED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_unreachable_backends() {
    let (_echo, gw) = setup().await;
    let started = std::time::Instant::now();
    let response = client()
        .get(gw.url("/slow/1"))
        .header("grpc-metadata-x-echo-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 4);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // An upstream nobody listens on: 503 UNAVAILABLE, quickly.
    let (_held, closed) = support::refusing_address();
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", closed, "")
    );
    let down = gateway::start(
        &config,
        &[(
            "m.yaml",
            "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n",
        )],
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = get_json(&down, "/v1/echo/1").await;
    assert_eq!((status, body["code"].clone()), (503, json!(14)), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_404_405_and_head() {
    let (_echo, gw) = setup().await;
    let (status, body) = get_json(&gw, "/v9/unknown").await;
    assert_eq!((status, body["code"].clone()), (404, json!(5)));
    let response = client().put(gw.url("/v1/echo/1")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let allow = response.headers()["allow"].to_str().unwrap().to_string();
    for method in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 12);
    // HEAD answers as GET does, with the GET's length and no body, on HTTP/1 and HTTP/2
    // alike (HTTP/1 would leave the body out by itself, HTTP/2 would send it).
    let get = client().get(gw.url("/v1/echo/1")).send().await.unwrap();
    let length = get.bytes().await.unwrap().len().to_string();
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, version) in [
        (client(), reqwest::Version::HTTP_11),
        (http2, reqwest::Version::HTTP_2),
    ] {
        let response = client.head(gw.url("/v1/echo/1")).send().await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.version()),
            (200, version)
        );
        assert_eq!(response.headers()["content-length"], length.as_str());
        assert!(response.bytes().await.unwrap().is_empty(), "{version:?}");
    }
}

/// Every kind of bad input: a clear 4xx google.rpc.Status, and the backend never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_the_backend() {
    let (echo, gw) = setup().await;
    let post = reqwest::Method::POST;
    let cases: Vec<(&str, u16, Value)> = vec![
        (
            "malformed JSON",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"id": "#)
                .await
                .1,
        ),
        (
            "trailing garbage",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"id": "x"} {"#)
                .await
                .1,
        ),
        (
            "wrong field type",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"small": "five"}"#)
                .await
                .1,
        ),
        (
            "out of range int",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"small": 99999999999}"#)
                .await
                .1,
        ),
        (
            "unknown field",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"nope": 1}"#)
                .await
                .1,
        ),
        (
            "unknown enum",
            400,
            send_json(&gw, post.clone(), "/v1/echo", r#"{"color": "PURPLE"}"#)
                .await
                .1,
        ),
        (
            "not an object",
            400,
            send_json(&gw, post.clone(), "/v1/echo", "[1,2]").await.1,
        ),
        (
            "bad query int",
            400,
            get_json(&gw, "/v1/echo/1?small=abc").await.1,
        ),
        (
            "bad query enum",
            400,
            get_json(&gw, "/v1/echo/1?color=PURPLE").await.1,
        ),
        (
            "bad query bool",
            400,
            get_json(&gw, "/v1/echo/1?flag=yes").await.1,
        ),
        (
            "bad timestamp",
            400,
            get_json(&gw, "/v1/echo/1?at=yesterday").await.1,
        ),
        (
            "query names a message",
            400,
            get_json(&gw, "/v1/echo/1?nested=x").await.1,
        ),
        (
            "strict query",
            400,
            get_json(&gw, "/strict/1?bogus=1").await.1,
        ),
    ];
    for (name, expected, body) in &cases {
        assert_eq!(body["code"], 3, "{name}: {body}");
        assert!(
            !body["message"].as_str().unwrap_or_default().is_empty(),
            "{name}"
        );
        let _ = expected;
    }
    for (name, path) in [
        ("bad query status", "/v1/echo/1?small=abc"),
        ("strict status", "/strict/1?bogus=1"),
    ] {
        assert_eq!(
            client().get(gw.url(path)).send().await.unwrap().status(),
            400,
            "{name}"
        );
    }

    let raw = |request: String| {
        let addr = gw.addr;
        async move { raw_request(addr, request.as_bytes()).await }
    };
    let host = "Host: x\r\nConnection: close";
    // Invalid UTF-8 inside a JSON string.
    let json: &[u8] = b"{\"id\":\"\xff\xfe\"}";
    let mut request = format!(
        "POST /v1/echo HTTP/1.1\r\n{host}\r\nContent-Length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    request.extend_from_slice(json);
    let (status, _, body) = raw_request(gw.addr, &request).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // Bad percent-encoding in path and query; invalid UTF-8 once decoded.
    for path in [
        "/v1/echo/%zz",
        "/v1/echo/%ff%fe",
        "/v1/echo/1?tags=%zz",
        "/v1/echo/1?tags=%ff",
    ] {
        let (status, _, body) = raw(format!("GET {path} HTTP/1.1\r\n{host}\r\n\r\n")).await;
        assert_eq!(status, 400, "{path}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 3, "{path}");
    }
    // Overlong URI (limit 2KiB here).
    let long = format!("/v1/echo/{}", "a".repeat(4096));
    let (status, _, body) = raw(format!("GET {long} HTTP/1.1\r\n{host}\r\n\r\n")).await;
    assert_eq!(status, 414);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["code"], 3);
    // Body over max_body (1KiB here): announced, and chunked without a length.
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(2000));
    let (status, body) = send_json(&gw, post.clone(), "/v1/echo", &big).await;
    assert_eq!((status, body["code"].clone()), (413, json!(3)));
    let chunked = format!(
        "POST /v1/echo HTTP/1.1\r\n{host}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, _, _) = raw(chunked).await;
    assert_eq!(status, 413);
    // Refused while most of the body is still on its way, on a keep-alive connection: the
    // server will close it, and the answer says so (a client that reused it would fail its
    // next request on a broken pipe). Over the limit, and on no route at all.
    for (path, expected) in [("/v1/echo", 413), ("/v1/nowhere", 404)] {
        let partial = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"id\":"
        );
        let (status, head, _) = raw(partial).await;
        assert_eq!(status, expected, "{path}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{path}: {head}"
        );
    }

    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "no bad request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_can_be_ignored_by_config() {
    let (echo, gw) = setup_with("json: { ignore_unknown_fields: true }").await;
    let (status, body) = send_json(
        &gw,
        reqwest::Method::POST,
        "/v1/echo",
        r#"{"id":"k","nope":1}"#,
    )
    .await;
    assert_eq!((status, body["id"].clone()), (200, json!("k")));
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}
