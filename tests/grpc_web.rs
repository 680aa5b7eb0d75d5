//! gRPC-Web through the gateway (`grpc_web:` routes) against the real demo shop and the
//! echo backend: tonic-web's client for binary unary and server-streaming calls,
//! hand-made text-mode (base64) requests checked frame by frame, statuses in headers
//! (trailers-only) and in trailer frames, auth, rate limits and CORS in gRPC-Web form,
//! and hostile frames refused before any backend is called.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client, repo};
use support::shop::pb::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use support::shop::pb::shop::catalog::v1::{
    GetProductRequest, ListProductsRequest, Product, WatchPriceRequest,
};
use support::shop::{self, Shop};
use tonic::Code;
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};

const GET_PRODUCT: &str = "/shop.catalog.v1.CatalogService/GetProduct";
const WATCH_PRICE: &str = "/shop.catalog.v1.CatalogService/WatchPrice";

type WebChannel = GrpcWebClientService<Client<HttpConnector, GrpcWebCall<tonic::body::Body>>>;

/// The shipped demo (its `mappings/` include the catalog's `grpc_web:` entry).
async fn demo() -> (Shop, TestGateway) {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("shop starts");
    let mappings = format!("[\"{}\"]", repo().join("mappings").display());
    let config = gateway::demo_config(&shop, &mappings);
    (shop, gateway::start(&config, &[]).await)
}

/// A gateway with only the catalog, as a `grpc_web:` route with `route_extra` keys, and
/// `config_extra` top-level sections.
async fn catalog_gateway(config_extra: &str, route_extra: &str) -> (Shop, TestGateway) {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("shop starts");
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{config_extra}upstreams:\n{}",
        repo().join("descriptors").display(),
        gateway::grpc_upstream("catalog", shop.catalog, "    timeout: 2s\n"),
    );
    let routes = format!(
        "routes:\n  - grpc_web: {{ upstream: catalog, service: shop.catalog.v1.CatalogService }}\n{route_extra}"
    );
    let gw = gateway::start(&config, &[("m.yaml", &routes)]).await;
    (shop, gw)
}

/// The echo backend behind a `grpc_web:` route (it echoes metadata, sets a trailer, and
/// fails streams midway on request).
async fn echo_gateway() -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "    timeout: 2s\n"),
    );
    let routes = "routes:\n  - grpc_web: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway::start(&config, &[("m.yaml", routes)]).await;
    (echo, gw)
}

/// tonic's generated catalog client over tonic-web's client layer (HTTP/1.1).
fn web_client(gw: &TestGateway) -> CatalogServiceClient<WebChannel> {
    let http = Client::builder(TokioExecutor::new()).build_http();
    let channel = tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(http);
    let origin = gw.url("").parse().expect("gateway origin");
    CatalogServiceClient::with_origin(channel, origin)
}

/// `message` as one gRPC-Web data frame.
fn frame(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    out
}

/// A gRPC-Web POST with `body` as it is.
async fn post(
    gw: &TestGateway,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client()
        .post(gw.url(path))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("gateway answers")
}

/// A text-mode body → its bytes, decoding each padded base64 chunk on its own (a test
/// decoder independent of the gateway's).
fn decode_chunks(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // A chunk ends after its padding, or at the end of the body.
        let end = match rest.find('=') {
            Some(i) => rest[i..].find(|c| c != '=').map_or(rest.len(), |j| i + j),
            None => rest.len(),
        };
        out.extend(STANDARD.decode(&rest[..end]).expect("each chunk is base64"));
        rest = &rest[end..];
    }
    out
}

/// (flag, payload) of every frame; the prefixes must add up to the body exactly.
/// The echo backend's server stream over binary gRPC-Web: the HTTP status and the frames.
async fn echo_stream(
    gw: &TestGateway,
    request: echo::pb::test::echo::v1::EchoMessage,
) -> (u16, Vec<(u8, Vec<u8>)>) {
    let path = "/test.echo.v1.EchoService/Stream";
    let response = post(gw, path, "application/grpc-web", frame(&request), &[]).await;
    let status = response.status().as_u16();
    (status, split_frames(&response.bytes().await.unwrap()))
}

fn split_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a frame prefix is 5 bytes");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "the frame is complete");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// A trailer frame's block as (name, value) lines.
fn trailer_lines(payload: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(payload)
        .expect("trailers are text")
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').expect("name:value");
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_web_client_unary_and_server_stream() {
    let (_shop, gw) = demo().await;
    let mut catalog = web_client(&gw);

    let product = catalog
        .get_product(GetProductRequest { id: "1".into() })
        .await
        .expect("unary call succeeds")
        .into_inner();
    assert_eq!(product.sku, "SKU-001");
    assert_eq!(product.name, "Espresso Machine");

    let list = catalog
        .list_products(ListProductsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.products.len(), 2);
    assert_eq!(list.next_page_token, "2");

    let mut stream = catalog
        .watch_price(WatchPriceRequest {
            id: "2".into(),
            max_updates: 3,
            interval_ms: 10,
        })
        .await
        .expect("stream opens")
        .into_inner();
    let mut sequences = Vec::new();
    while let Some(update) = stream.message().await.expect("stream ends with OK") {
        assert_eq!(update.id, "2");
        sequences.push(update.sequence);
    }
    assert_eq!(sequences, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_reach_tonic_web_with_code_message_and_details() {
    let (_shop, gw) = demo().await;
    let mut catalog = web_client(&gw);
    let status = catalog
        .get_product(GetProductRequest { id: "404".into() })
        .await
        .expect_err("no such product");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "product 404 not found");
    // google.rpc.Status with the backend's ErrorInfo, passed through in binary form.
    let details = support::shop::pb::google::rpc::Status::decode(status.details())
        .expect("grpc-status-details-bin is a google.rpc.Status");
    assert_eq!(details.code, Code::NotFound as i32);
    let info: support::shop::pb::google::rpc::ErrorInfo = details.details[0].to_msg().unwrap();
    assert_eq!(info.reason, "PRODUCT_NOT_FOUND");

    // A stream refused before its first message: the same, in the headers.
    let mut stream = catalog
        .watch_price(WatchPriceRequest {
            id: "404".into(),
            ..Default::default()
        })
        .await;
    let status = match &mut stream {
        Err(status) => status.clone(),
        Ok(response) => response.get_mut().message().await.expect_err("refused"),
    };
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_mode_request_in_padded_chunks_answered_frame_by_frame() {
    let (_shop, gw) = demo().await;
    let request = frame(&GetProductRequest { id: "2".into() });
    // Two chunks, each padded: the prefix alone (5 bytes → `=`), then the message.
    let body = format!(
        "{}{}",
        STANDARD.encode(&request[..5]),
        STANDARD.encode(&request[5..])
    );
    assert!(body[..8].ends_with('='), "first chunk is padded: {body}");
    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web-text",
        body.into(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "application/grpc-web-text+proto"
    );
    let text = response.text().await.unwrap();
    let bytes = decode_chunks(&text);
    let frames = split_frames(&bytes);
    assert_eq!(frames.len(), 2, "one message, then the trailers");
    assert_eq!(frames[0].0, 0x00);
    let product = Product::decode(&frames[0].1[..]).unwrap();
    assert_eq!(product.name, "Burr Grinder");
    assert_eq!(frames[1].0, 0x80);
    let trailers = trailer_lines(&frames[1].1);
    assert!(
        trailers.contains(&("grpc-status".into(), "0".into())),
        "{trailers:?}"
    );

    // A server stream in text mode: one padded chunk per frame, as they are sent.
    let request = frame(&WatchPriceRequest {
        id: "3".into(),
        max_updates: 2,
        interval_ms: 10,
    });
    let response = post(
        &gw,
        WATCH_PRICE,
        "application/grpc-web-text+proto",
        STANDARD.encode(&request).into(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let bytes = decode_chunks(&text);
    let frames = split_frames(&bytes);
    let per_frame: String = frames
        .iter()
        .map(|(flag, payload)| {
            let mut frame = vec![*flag];
            frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            frame.extend_from_slice(payload);
            STANDARD.encode(frame)
        })
        .collect();
    assert_eq!(text, per_frame, "each frame is its own padded chunk");
    let flags: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(flags, [0x00, 0x00, 0x80]);
    let last = shop::pb::shop::catalog::v1::PriceUpdate::decode(&frames[1].1[..]).unwrap();
    assert_eq!(last.sequence, 2);
    assert!(trailer_lines(&frames[2].1).contains(&("grpc-status".into(), "0".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_answers_carry_backend_metadata_and_trailers_and_see_client_metadata() {
    let (echo, gw) = echo_gateway().await;
    let request = echo::pb::test::echo::v1::EchoMessage {
        id: "m-1".into(),
        ..Default::default()
    };
    let response = post(
        &gw,
        "/test.echo.v1.EchoService/Get",
        "application/grpc-web+proto",
        frame(&request),
        &[
            ("x-tenant", "acme"),
            ("x-user-agent", "grpc-web-javascript/0.1"),
            ("x-trace-id", "not a trace id!"),
            ("grpc-timeout", "1S"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "application/grpc-web+proto"
    );
    assert!(
        response.headers().get("grpc-status").is_none(),
        "not trailers-only"
    );
    let trace_id = header(&response, "x-trace-id").to_string();
    let body = response.bytes().await.unwrap();
    let frames = split_frames(&body);
    assert_eq!(frames.len(), 2);
    let echoed = echo::pb::test::echo::v1::EchoMessage::decode(&frames[0].1[..]).unwrap();
    assert_eq!(echoed.id, "m-1");
    let trailers = trailer_lines(&frames[1].1);
    assert!(trailers.contains(&("grpc-status".into(), "0".into())));
    assert!(
        trailers.iter().any(|(name, _)| name == echo::TRAILER),
        "the backend's trailer is in the trailer frame: {trailers:?}"
    );

    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-tenant"], "acme", "plain headers are metadata");
    assert!(
        seen.get("x-user-agent").is_none(),
        "browser headers are not"
    );
    assert!(seen.get("x-grpc-web").is_none());
    assert_eq!(seen.get_all("x-trace-id").iter().count(), 1);
    assert_eq!(
        seen["x-trace-id"],
        trace_id.as_str(),
        "the gateway owns the trace id"
    );
    assert_eq!(seen["content-type"], "application/grpc");
    // The client's one second, less what the gateway spent: sent on as `grpc-timeout`.
    let timeout = seen["grpc-timeout"].to_str().unwrap();
    let micros: u64 = timeout.trim_end_matches('u').parse().expect("microseconds");
    assert!(micros <= 1_000_000 && micros > 500_000, "{timeout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_well_carries_the_backends_trailers_in_the_trailer_frame() {
    let (_echo, gw) = echo_gateway().await;
    let (status, frames) = echo_stream(
        &gw,
        echo::pb::test::echo::v1::EchoMessage {
            id: "s".into(),
            small: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(status, 200);
    let flags: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(flags, [0x00, 0x00, 0x00, 0x80]);
    let trailers = trailer_lines(&frames[3].1);
    assert!(
        trailers.contains(&("grpc-status".into(), "0".into())),
        "{trailers:?}"
    );
    assert!(
        trailers.contains(&(echo::TRAILER.into(), "done".into())),
        "the backend's trailer is in the trailer frame: {trailers:?}"
    );
    assert_eq!(
        trailers.iter().filter(|(n, _)| n == "grpc-status").count(),
        1,
        "{trailers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_midway_ends_with_its_status_in_the_trailer_frame() {
    let (_echo, gw) = echo_gateway().await;
    let (status, frames) = echo_stream(
        &gw,
        echo::pb::test::echo::v1::EchoMessage {
            id: "s".into(),
            small: 2,
            fail_code: Code::ResourceExhausted as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        status, 200,
        "the status line was sent with the first message"
    );
    let flags: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(flags, [0x00, 0x00, 0x80]);
    let trailers = trailer_lines(&frames[2].1);
    assert!(
        trailers.contains(&("grpc-status".into(), "8".into())),
        "{trailers:?}"
    );
    assert!(trailers.contains(&("grpc-message".into(), "stream failed".into())));
    assert!(trailers.iter().any(|(n, _)| n == "grpc-status-details-bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_client_streaming_methods_are_unimplemented() {
    let (echo, gw) = echo_gateway().await;
    let message = frame(&echo::pb::test::echo::v1::EchoMessage::default());
    for (method, says) in [
        ("Nope", "unknown method `Nope`"),
        ("Collect", "client- or bidi-streaming"),
        ("Chat", "client- or bidi-streaming"),
    ] {
        let path = format!("/test.echo.v1.EchoService/{method}");
        let response = post(&gw, &path, "application/grpc-web", message.clone(), &[]).await;
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(header(&response, "grpc-status"), "12", "{method}");
        let text = percent_decode(header(&response, "grpc-message"));
        assert!(text.contains(says), "{method}: {text}");
    }
    assert_eq!(echo.calls.load(Ordering::Relaxed), 0, "no backend call");
}

fn percent_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_rate_limit_refusals_are_trailers_only() {
    let auth = support::ws::jwt_auth();
    let limits = "rate_limits:\n  store: memory\n  policies:\n    two: { algorithm: fixed_window, rate: 2, per: 1m, key: client_ip }\n";
    let (shop, gw) = catalog_gateway(
        &format!("{auth}{limits}"),
        "    auth: required\n    rate_limit: two\n",
    )
    .await;
    let request = frame(&GetProductRequest { id: "1".into() });

    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web+proto",
        request.clone(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "grpc-status"), "16", "UNAUTHENTICATED");
    assert_eq!(
        header(&response, "content-type"),
        "application/grpc-web+proto"
    );
    assert!(!header(&response, "grpc-message").is_empty());
    assert!(response.bytes().await.unwrap().is_empty(), "trailers-only");
    assert_eq!(shop.counters.catalog.load(Ordering::Relaxed), 0);

    let bearer = format!("Bearer {}", support::ws::token("u-1"));
    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web+proto",
        request.clone(),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    let frames = split_frames(&response.bytes().await.unwrap());
    assert_eq!(Product::decode(&frames[0].1[..]).unwrap().id, "1");

    // Two requests per minute: the third is RESOURCE_EXHAUSTED with its counters.
    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web+proto",
        request,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(header(&response, "grpc-status"), "8");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(shop.counters.catalog.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_grpc_web_headers_and_answers_expose_the_status() {
    let cors =
        "cors: { allow_origins: [\"https://shop.example\"], allow_headers: [authorization] }\n";
    let (_shop, gw) = catalog_gateway(cors, "").await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, gw.url(GET_PRODUCT))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        "https://shop.example"
    );
    assert_eq!(header(&preflight, "access-control-allow-methods"), "POST");
    let allowed = header(&preflight, "access-control-allow-headers");
    for name in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }

    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web+proto",
        frame(&GetProductRequest { id: "404".into() }),
        &[("origin", "https://shop.example")],
    )
    .await;
    assert_eq!(header(&response, "grpc-status"), "5");
    let exposed = header(&response, "access-control-expose-headers");
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_hostile_frames_are_refused_before_the_backend() {
    let (shop, gw) = catalog_gateway("limits: { max_body: 1KiB }\n", "").await;
    let status_of = |response: &reqwest::Response| header(response, "grpc-status").to_string();

    // A real message over max_body: the body is refused while it is read.
    let big = frame(&GetProductRequest {
        id: "x".repeat(4096),
    });
    let response = post(&gw, GET_PRODUCT, "application/grpc-web", big, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(status_of(&response), "8", "RESOURCE_EXHAUSTED");

    // A prefix announcing 4 GiB with three bytes behind it: refused on the prefix.
    let mut hostile = vec![0, 0xff, 0xff, 0xff, 0xf0];
    hostile.extend_from_slice(b"abc");
    let response = post(&gw, GET_PRODUCT, "application/grpc-web", hostile, &[]).await;
    assert_eq!(status_of(&response), "8");

    // Prefixes that disagree with the body: longer, shorter (a second frame behind).
    for (declared, payload) in [(100u32, &b"\x0a\x011"[..]), (1, &b"\x0a\x011"[..])] {
        let mut body = vec![0];
        body.extend_from_slice(&declared.to_be_bytes());
        body.extend_from_slice(payload);
        let response = post(&gw, GET_PRODUCT, "application/grpc-web", body, &[]).await;
        assert_eq!(status_of(&response), "3", "INVALID_ARGUMENT for {declared}");
    }

    // Text mode: not base64, and the same hostile prefix in base64.
    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web-text",
        b"!!!!".to_vec(),
        &[],
    )
    .await;
    assert_eq!(status_of(&response), "3");
    assert_eq!(
        header(&response, "content-type"),
        "application/grpc-web-text+proto"
    );
    let response = post(
        &gw,
        GET_PRODUCT,
        "application/grpc-web-text",
        STANDARD.encode([0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).into(),
        &[],
    )
    .await;
    assert_eq!(status_of(&response), "8");

    // A JSON body is not gRPC-Web: 415 in JSON, as any HTTP client expects.
    let response = client()
        .post(gw.url(GET_PRODUCT))
        .header("content-type", "application/json")
        .body("{\"id\": \"1\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    assert_eq!(
        shop.counters.catalog.load(Ordering::Relaxed),
        0,
        "no backend call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadline_bounds_the_call() {
    let (_echo, gw) = echo_gateway().await;
    let response = post(
        &gw,
        "/test.echo.v1.EchoService/Get",
        "application/grpc-web",
        frame(&echo::pb::test::echo::v1::EchoMessage::default()),
        &[("grpc-timeout", "100m"), ("x-echo-delay-ms", "1000")],
    )
    .await;
    assert_eq!(header(&response, "grpc-status"), "4", "DEADLINE_EXCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_list_each_method() {
    let (_shop, gw) = demo().await;
    let routes = gateway::get_json(gw.admin_url("/admin/routes")).await;
    let web: Vec<(String, String)> = routes["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| {
            r["target"]["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("grpc-web"))
        })
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["target"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        (GET_PRODUCT, "grpc-web"),
        ("/shop.catalog.v1.CatalogService/ListProducts", "grpc-web"),
        (WATCH_PRICE, "grpc-web-stream"),
        (
            "/shop.catalog.v1.CatalogService/{method}",
            "grpc-web-unimplemented",
        ),
    ] {
        assert!(
            web.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} in {web:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_web_entries_are_refused_at_load_with_their_line() {
    let dir = gateway::TempDir::new("grpc-web-refused");
    dir.write(
        "m.yaml",
        r#"routes:
  - grpc_web: { upstream: echo, service: test.echo.v1.EchoService }
    http: { post: "/x" }
    cache: { ttl: 5s }
  - grpc_web: { upstream: echo, service: test.echo.v1.NoSuchService }
  - grpc_web: { upstream: nowhere, service: test.echo.v1.EchoService }
  - grpc_web: { upstream: echo, service: test.echo.v1.EchoService }
  - grpc_web: { upstream: echo, service: test.echo.v1.EchoService }
"#,
    );
    let config = dir.write(
        "switchboard.yaml",
        &format!(
            "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
            gateway::echo_protos(),
            gateway::grpc_upstream("echo", "127.0.0.1:9".parse().unwrap(), ""),
        ),
    );
    gateway::assert_refused(
        &config,
        &[
            "m.yaml:2: `grpc_web:` is a route of its own; remove `http`, `cache` from it",
            "m.yaml:5: unknown gRPC service `test.echo.v1.NoSuchService`",
            "m.yaml:6: unknown gRPC upstream `nowhere`",
            "m.yaml:8: route `POST /test.echo.v1.EchoService/Get` conflicts with the route defined at",
        ],
    )
    .await;
}
