//! The demo shop as shipped (`switchboard.yaml`, `descriptors/`, `mappings/`) in front of
//! the real demo services; and descriptors from reflection and from descriptor-set files.

mod support;

use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use support::gateway::{self, TestGateway, client, repo};
use support::shop::{self, Shop};

/// The shipped config, pointed at a shop on free ports, with the repo's folders.
async fn demo() -> (Shop, TestGateway) {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("shop starts");
    let mappings = format!("[\"{}\"]", repo().join("mappings").display());
    let config = gateway::demo_config(&shop, &mappings);
    let gw = gateway::start(&config, &[]).await;
    (shop, gw)
}

/// The top-level members of a JSON object's text, each as written (`"key":value`).
fn members(object: &str) -> Vec<String> {
    let inner = object
        .trim()
        .strip_prefix('{')
        .and_then(|o| o.strip_suffix('}'))
        .unwrap();
    let (mut out, mut start, mut depth, mut in_string, mut escaped) =
        (Vec::new(), 0, 0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                out.push(inner[start..i].to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(inner[start..].to_owned());
    out
}

async fn get(gw: &TestGateway, path: &str) -> (u16, Value) {
    let response = client().get(gw.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shop_routes_work_end_to_end() {
    let (shop, gw) = demo().await;
    let (status, product) = get(&gw, "/v1/products/1").await;
    assert_eq!(status, 200);
    assert_eq!(product["sku"], "SKU-001");
    assert_eq!(product["price"]["units"], "199", "int64 as a string");
    assert_eq!(product["createdAt"], "2024-01-01T00:00:00Z");

    let (status, error) = get(&gw, "/v1/products/404").await;
    assert_eq!(status, 404);
    assert_eq!(error["details"][0]["reason"], "PRODUCT_NOT_FOUND");

    let (_, list) = get(&gw, "/v1/products?pageSize=2").await;
    assert_eq!(list["products"].as_array().unwrap().len(), 2);
    assert_eq!(list["nextPageToken"], "2");
    let (status, by_category) = get(&gw, "/v1/categories/kitchen/products?page_size=50").await;
    assert_eq!(status, 200, "additional binding");
    assert!(
        by_category["products"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["category"] == "kitchen")
    );

    let (_, reviews) = get(&gw, "/v1/products/1/reviews").await;
    assert!(!reviews["reviews"].as_array().unwrap().is_empty());
    let (_, stock) = get(&gw, "/v1/stock/SKU-001").await;
    assert_eq!(stock["warehouse"], "AMS-1");

    let (_, mobile) = get(&gw, "/mobile/v1/products/1").await;
    let keys: Vec<&String> = mobile.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "name", "price", "thumbnailUrl"]);
    // The trimmed answer is the whole one without the other fields, byte for byte: the
    // same members in the same (field-number) order, nested ones too (compared as text:
    // a parsed object would not show the order).
    let text = |path: &'static str| gateway::get_text(gw.url(path));
    let kept: Vec<String> = members(&text("/v1/products/1").await)
        .into_iter()
        .filter(|m| {
            ["\"id\"", "\"name\"", "\"price\"", "\"thumbnailUrl\""]
                .iter()
                .any(|k| m.starts_with(k))
        })
        .collect();
    assert_eq!(
        text("/mobile/v1/products/1").await,
        format!("{{{}}}", kept.join(","))
    );

    let response = client()
        .post(gw.url("/v1/orders"))
        .json(&json!({"items": [{"productId": "1", "quantity": 2}], "note": "gift"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "ORDER_STATUS_ACCEPTED");
    assert_eq!(order["totalUnits"], "398");

    let response = client()
        .post(gw.url("/v1/orders"))
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(error["details"][0]["fieldViolations"][0]["field"], "items");

    let text =
        gateway::get_text(gw.url("/v1/products/2/price-updates?maxUpdates=3&intervalMs=5")).await;
    let sequences: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["sequence"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sequences, ["1", "2", "3"]);

    let (status, ok) = get(&gw, "/v1/status").await;
    assert_eq!((status, ok), (200, json!({"ok": true})));
    assert!(shop.counters.catalog.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_chat_over_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (shop, gw) = demo().await;
    let url = format!("ws://{}/ws/chat", gw.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"user": "ann", "text": "hello", "sequence": 1}).to_string();
    socket.send(Message::text(hello)).await.unwrap();
    let reply = match socket.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("expected a reply frame, got {other:?}"),
    };
    assert_eq!(reply["text"], "echo: hello");
    assert_eq!(reply["sequence"], "1");
    assert_eq!(shop.counters.chat.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_can_come_from_server_reflection() {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None).await.unwrap();
    // No descriptor files at all: the catalog's (with its google.api.http annotations)
    // come from its reflection service.
    let config = format!(
        "mappings: [m.yaml]\nupstreams:\n  catalog:\n    grpc: {{ endpoints: [\"http://{}\"], reflection: true }}\n",
        shop.catalog
    );
    let mappings = "routes:\n  - grpc_service: { upstream: catalog, service: shop.catalog.v1.CatalogService }\n";
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    let (status, product) = get(&gw, "/v1/products/3").await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["id"], "3");
    let (status, _) = get(&gw, "/v1/categories/kitchen/products").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_set_files_keep_http_annotations() {
    let echo = support::echo::start().await;
    for extension in ["binpb", "pb", "desc"] {
        let sets = gateway::TempDir::new("sets");
        sets.write(&format!("echo.{extension}"), "");
        std::fs::write(
            sets.path().join(format!("echo.{extension}")),
            support::echo::pb::ECHO_DESCRIPTOR,
        )
        .unwrap();
        let config = format!(
            "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
            sets.path().display(),
            gateway::grpc_upstream("echo", echo.addr, "")
        );
        let mappings =
            "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
        let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
        let (status, body) = get(&gw, "/v1/echo/from-set").await;
        assert_eq!(
            (status, body["id"].clone()),
            (200, json!("from-set")),
            ".{extension}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_imports_resolve_and_builtin_copies_are_accepted() {
    let echo = support::echo::start().await;
    // A service in one file importing messages from another, plus the operator's own copy
    // of google/api/annotations.proto and http.proto (identical to googleapis).
    let messages = r#"syntax = "proto3";
package acme.v1;
message Ping { string id = 1; }
"#;
    let service = r#"syntax = "proto3";
package acme.v1;
import "google/api/annotations.proto";
import "acme/v1/messages.proto";
service PingService {
  rpc Ping(acme.v1.Ping) returns (acme.v1.Ping) { option (google.api.http) = { get: "/ping/{id}" }; }
}
"#;
    let annotations =
        std::fs::read_to_string(repo().join("proto/google/api/annotations.proto")).unwrap();
    let http = std::fs::read_to_string(repo().join("proto/google/api/http.proto")).unwrap();
    let config = format!(
        "descriptors: [protos/]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::grpc_upstream("echo", echo.addr, "")
    );
    let gw = gateway::start(
        &config,
        &[
            ("protos/acme/v1/messages.proto", messages),
            ("protos/acme/v1/service.proto", service),
            ("protos/google/api/annotations.proto", &annotations),
            ("protos/google/api/http.proto", &http),
            (
                "m.yaml",
                "routes:\n  - grpc_service: { upstream: echo, service: acme.v1.PingService }\n",
            ),
        ],
    )
    .await;
    let table = gw.gateway.table();
    assert_eq!(table.routes.len(), 1);
    assert_eq!(table.routes[0].template.text, "/ping/{id}");
}
