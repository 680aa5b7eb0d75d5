//! Composition (`compose:` routes) against the real demo shop, made slow or failing on
//! demand through its fault control (`examples/shop/faults.rs`): concurrency of
//! independent steps, dependency order, fallbacks, required failures, timeouts,
//! `for_each`, response shaping and `?fields=`, load errors, and the shipped demo route.

mod support;

use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::gateway::{self, TestGateway, client, grpc_upstream, repo};
use support::shop::{self, Shop};
use tonic::Code;

async fn shop() -> Shop {
    shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("shop starts")
}

/// A gateway in front of `shop` serving `routes` (a mapping file's text).
async fn gateway(shop: &Shop, routes: &str) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [routes.yaml]\nupstreams:\n{}{}{}",
        repo().join("descriptors").display(),
        grpc_upstream("catalog", shop.catalog, "    timeout: 5s\n"),
        grpc_upstream("reviews", shop.reviews, "    timeout: 5s\n"),
        grpc_upstream("inventory", shop.inventory, "    timeout: 5s\n"),
    );
    gateway::start(&config, &[("routes.yaml", routes)]).await
}

struct Answer {
    status: u16,
    degraded: Option<String>,
    body: Value,
    elapsed: Duration,
}

async fn get(gw: &TestGateway, path: &str) -> Answer {
    let started = Instant::now();
    let response = client().get(gw.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let degraded = response
        .headers()
        .get("x-degraded")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.json().await.unwrap();
    Answer {
        status,
        degraded,
        body,
        elapsed: started.elapsed(),
    }
}

const PRODUCT: &str = r#"product: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, request: { id: "{path.id}" }, required: true }"#;
const REVIEWS: &str = r#"reviews: { grpc: { upstream: reviews, method: shop.reviews.v1.ReviewService/ListReviews }, request: { product_id: "{path.id}" }, fallback: { reviews: [], averageRating: 0 } }"#;
const INVENTORY: &str = r#"inventory: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "{product.sku}" }, fallback: cached }"#;

fn route(path: &str, extra: &str, steps: &[&str]) -> String {
    let mut text = format!("  - http: {{ get: \"{path}\" }}\n{extra}    compose:\n");
    for step in steps {
        text.push_str(&format!("      {step}\n"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_at_once() {
    let shop = shop().await;
    let stock = r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "SKU-001" }, required: true }"#;
    let routes = format!(
        "routes:\n{}",
        route("/v1/page/{id}", "", &[PRODUCT, REVIEWS, stock])
    );
    let gw = gateway(&shop, &routes).await;
    // Connections are opened by a first call, outside the measurement.
    assert_eq!(get(&gw, "/v1/page/1").await.status, 200);

    let delay = Duration::from_millis(200);
    shop.faults.catalog.set(delay, None);
    shop.faults.reviews.set(delay, None);
    shop.faults.inventory.set(delay, None);
    let answer = get(&gw, "/v1/page/1").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["product"]["sku"], "SKU-001");
    assert_eq!(
        answer.body["reviews"]["reviews"].as_array().unwrap().len(),
        3
    );
    assert_eq!(answer.body["stock"]["available"], 33);
    assert_eq!(answer.degraded, None);
    assert!(answer.elapsed >= delay, "{:?}", answer.elapsed);
    // One after the other would take 600 ms.
    assert!(
        answer.elapsed < Duration::from_millis(400),
        "three independent 200 ms steps took {:?}",
        answer.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_step_starts_when_its_input_is_there() {
    let shop = shop().await;
    let routes = format!(
        "routes:\n{}",
        route("/v1/page/{id}", "", &[PRODUCT, REVIEWS, INVENTORY])
    );
    let gw = gateway(&shop, &routes).await;
    assert_eq!(get(&gw, "/v1/page/2").await.status, 200);

    shop.faults.catalog.set(Duration::from_millis(150), None);
    shop.faults.reviews.set(Duration::from_millis(700), None);
    let before = shop.faults.inventory.arrivals().len();
    let sent = Instant::now();
    let answer = get(&gw, "/v1/page/2").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["inventory"]["sku"], "SKU-002");
    let arrivals = shop.faults.inventory.arrivals();
    assert_eq!(arrivals.len(), before + 1, "one inventory call");
    let started = arrivals[before].1.duration_since(sent);
    assert!(
        started >= Duration::from_millis(150),
        "inventory started at {started:?}, before the product it reads"
    );
    assert!(
        started < Duration::from_millis(650),
        "inventory started at {started:?}: it waited for the unrelated reviews step"
    );
    assert!(answer.elapsed >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_steps_fall_back_value_cached_or_omit() {
    let shop = shop().await;
    let related = r#"related: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/ListProducts }, request: { category: "{product.category}" }, fallback: omit }"#;
    // Reads a step that may fail: falls back with it, without a call.
    let again = r#"again: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "{inventory.sku}" }, fallback: { available: -1 } }"#;
    let routes = format!(
        "routes:\n{}",
        route(
            "/v1/page/{id}",
            "",
            &[PRODUCT, REVIEWS, INVENTORY, related, again]
        )
    );
    let gw = gateway(&shop, &routes).await;
    // The binary installs the recorder at start; a test process on first use.
    switchboard::telemetry::prometheus();

    let healthy = get(&gw, "/v1/page/1").await;
    assert_eq!(healthy.status, 200, "{}", healthy.body);
    assert_eq!(healthy.degraded, None);
    assert_eq!(healthy.body["inventory"]["available"], 33);
    assert_eq!(healthy.body["again"]["available"], 33);
    assert_eq!(
        healthy.body["related"]["products"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    shop.faults
        .reviews
        .set(Duration::ZERO, Some(Code::Unavailable));
    shop.faults
        .inventory
        .set(Duration::ZERO, Some(Code::Internal));
    // ListProducts fails; GetProduct (key "1", "3") still answers.
    shop.faults
        .catalog
        .set_for("", Duration::ZERO, Some(Code::Unavailable));
    let inventory_calls = shop.counters.inventory.load(Ordering::Relaxed);
    let degraded = get(&gw, "/v1/page/1").await;
    assert_eq!(degraded.status, 200, "{}", degraded.body);
    assert_eq!(
        degraded.degraded.as_deref(),
        Some("reviews, inventory, related, again")
    );
    assert_eq!(
        degraded.body["reviews"],
        json!({ "reviews": [], "averageRating": 0 })
    );
    assert_eq!(
        degraded.body["inventory"], healthy.body["inventory"],
        "cached: the last good result for the same request"
    );
    assert!(degraded.body.get("related").is_none(), "omitted");
    assert_eq!(degraded.body["again"], json!({ "available": -1 }));
    assert_eq!(
        shop.counters.inventory.load(Ordering::Relaxed),
        inventory_calls + 1,
        "`again` was not called: what it reads failed"
    );

    // Nothing cached for this product yet: `cached` acts as `omit`.
    let uncached = get(&gw, "/v1/page/3").await;
    assert_eq!(uncached.status, 200);
    assert!(
        uncached.body.get("inventory").is_none(),
        "{}",
        uncached.body
    );
    assert_eq!(uncached.body["product"]["sku"], "SKU-003");

    let metrics = gateway::get_text(gw.admin_url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_compose_fallbacks_total")
                && l.contains("route=\"GET /v1/page/{id}\"")
                && l.contains("step=\"reviews\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_failure_fails_the_call_with_its_status() {
    let shop = shop().await;
    let routes = format!(
        "routes:\n{}",
        route("/v1/page/{id}", "", &[PRODUCT, REVIEWS])
    );
    let gw = gateway(&shop, &routes).await;

    let missing = get(&gw, "/v1/page/404").await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.body["code"], 5);
    assert_eq!(missing.body["details"][0]["reason"], "PRODUCT_NOT_FOUND");

    // The other steps are cancelled: the answer does not wait for a slow one.
    shop.faults.reviews.set(Duration::from_secs(2), None);
    shop.faults
        .catalog
        .set(Duration::from_millis(50), Some(Code::PermissionDenied));
    let denied = get(&gw, "/v1/page/1").await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.body["code"], 7);
    assert!(
        denied.elapsed < Duration::from_millis(1500),
        "{:?}",
        denied.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeouts_sit_inside_the_route_deadline() {
    let shop = shop().await;
    let quick_reviews = r#"reviews: { grpc: { upstream: reviews, method: shop.reviews.v1.ReviewService/ListReviews }, request: { product_id: "{path.id}" }, fallback: { reviews: [] }, timeout: 200ms }"#;
    let patient_inventory = r#"inventory: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "{product.sku}" }, fallback: omit, timeout: 10s }"#;
    let routes = format!(
        "routes:\n{}{}",
        route("/v1/steps/{id}", "", &[PRODUCT, quick_reviews]),
        route(
            "/v1/deadline/{id}",
            "    timeout: 500ms\n",
            &[PRODUCT, patient_inventory]
        ),
    );
    let gw = gateway(&shop, &routes).await;

    shop.faults.reviews.set(Duration::from_secs(3), None);
    let answer = get(&gw, "/v1/steps/1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.degraded.as_deref(), Some("reviews"));
    assert_eq!(answer.body["reviews"], json!({ "reviews": [] }));
    assert!(
        answer.elapsed < Duration::from_millis(1500),
        "{:?}",
        answer.elapsed
    );

    // The step allows 10 s but the route only 500 ms: cut at the route's deadline.
    shop.faults.inventory.set(Duration::from_secs(3), None);
    let answer = get(&gw, "/v1/deadline/1").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.degraded.as_deref(), Some("inventory"));
    assert!(
        answer.elapsed >= Duration::from_millis(450),
        "{:?}",
        answer.elapsed
    );
    assert!(
        answer.elapsed < Duration::from_millis(1500),
        "{:?}",
        answer.elapsed
    );

    // A required step past the deadline: 504.
    shop.faults.catalog.set(Duration::from_secs(3), None);
    let answer = get(&gw, "/v1/deadline/1").await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.body["code"], 4);
    assert!(
        answer.elapsed < Duration::from_millis(1500),
        "{:?}",
        answer.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_keeps_element_order_and_its_bounds() {
    let shop = shop().await;
    let list = r#"list: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/ListProducts }, request: { category: "{path.category}" }, required: true }"#;
    let each = r#"details: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, for_each: "{list.products}", request: { id: "{item.id}" }, concurrency: 2, required: true }"#;
    let capped = r#"details: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, for_each: "{list.products}", request: { id: "{item.id}" }, max_items: 2, required: true }"#;
    let routes = format!(
        "routes:\n{}{}",
        route(
            "/v1/each/{category}",
            "    response: { fields: [details.id, details.name] }\n",
            &[list, each]
        ),
        route(
            "/v1/capped/{category}",
            "    response: { fields: [details.id] }\n",
            &[list, capped]
        ),
    );
    let gw = gateway(&shop, &routes).await;

    // The first element answers last; the order stays the list's.
    shop.faults
        .catalog
        .set_for("1", Duration::from_millis(300), None);
    shop.faults
        .catalog
        .set_for("2", Duration::from_millis(100), None);
    let answer = get(&gw, "/v1/each/kitchen").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ids: Vec<&str> = answer.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(answer.body["details"][0]["name"], "Espresso Machine");
    assert!(
        shop.faults.catalog.peak_concurrency() <= 2,
        "concurrency: 2 was exceeded ({})",
        shop.faults.catalog.peak_concurrency()
    );

    let calls = shop.counters.catalog.load(Ordering::Relaxed);
    let answer = get(&gw, "/v1/capped/kitchen").await;
    assert_eq!(
        answer.body,
        json!({ "details": [{ "id": "1" }, { "id": "2" }] })
    );
    assert_eq!(
        shop.counters.catalog.load(Ordering::Relaxed),
        calls + 3,
        "one list call and max_items detail calls"
    );

    // An empty list: no calls, an empty result.
    let answer = get(&gw, "/v1/capped/garden").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({ "details": [] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_shaped_by_template_or_projection() {
    let shop = shop().await;
    let template = r#"    response:
      name: "{product.name}"
      stock: "{inventory.available}"
      label: "{product.name} ({product.sku}) x{query.n}"
      ratings: "{reviews.reviews.rating}"
      missing: "{query.nope}"
      fixed: { ok: true }
"#;
    let routes = format!(
        "routes:\n{}{}",
        route(
            "/v1/template/{id}",
            template,
            &[PRODUCT, REVIEWS, INVENTORY]
        ),
        route(
            "/v1/projected/{id}",
            "    response: { fields: [product.name, product.price.units, reviews.reviews.rating] }\n",
            &[PRODUCT, REVIEWS, INVENTORY]
        ),
    ) + r#"  - http: { post: "/v1/posted", body: "*" }
    compose:
      product: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, request: { id: "{body.productId}" }, required: true }
      reviews: { grpc: { upstream: reviews, method: shop.reviews.v1.ReviewService/ListReviews }, request: { product_id: "{product.id}", page_size: "{header.x-page-size}" }, required: true }
"#;
    let gw = gateway(&shop, &routes).await;

    let answer = get(&gw, "/v1/template/1?n=2").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({
            "name": "Espresso Machine",
            "stock": 33,
            "label": "Espresso Machine (SKU-001) x2",
            "ratings": [5, 4, 3],
            "fixed": { "ok": true }
        })
    );

    // Body and header placeholders; text converts to the field's type (int32 page_size).
    let response = client()
        .post(gw.url("/v1/posted"))
        .header("x-page-size", "1")
        .json(&json!({ "productId": "3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let posted: Value = response.json().await.unwrap();
    assert_eq!(posted["product"]["sku"], "SKU-003");
    assert_eq!(posted["reviews"]["reviews"].as_array().unwrap().len(), 1);
    let bad = client()
        .post(gw.url("/v1/posted"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let answer = get(&gw, "/v1/projected/2").await;
    assert_eq!(
        answer.body,
        json!({
            "product": { "name": "Burr Grinder", "price": { "units": "89" } },
            "reviews": { "reviews": [{ "rating": 5 }, { "rating": 4 }] }
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trim_answers_with_fields() {
    let shop = shop().await;
    let routes = format!(
        "routes:\n{}{}",
        route(
            "/v1/page/{id}",
            "    partial_response: true\n",
            &[PRODUCT, REVIEWS, INVENTORY]
        ),
        r#"  - http: { get: "/v1/products/{id}" }
    grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }
    partial_response: true
  - http: { get: "/v1/bff/{id}" }
    grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }
    response: { fields: [name, price.units, thumbnail_url] }
    partial_response: true
"#
    );
    let gw = gateway(&shop, &routes).await;

    let answer = get(
        &gw,
        "/v1/page/1?fields=product(name,price/units),reviews.averageRating",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({
            "product": { "name": "Espresso Machine", "price": { "units": "199" } },
            "reviews": { "averageRating": 4.0 }
        })
    );
    // Proto names are accepted and answered under the emitted names.
    let answer = get(
        &gw,
        "/v1/page/1?fields=inventory/available,product/thumbnail_url",
    )
    .await;
    assert_eq!(
        answer.body,
        json!({ "product": { "thumbnailUrl": "https://img.shop.example/1.png" }, "inventory": { "available": 33 } })
    );

    let calls = shop.counters.catalog.load(Ordering::Relaxed);
    for bad in [
        "nope",
        "product(nope)",
        "product/name/x",
        "product(name",
        "a,,b",
    ] {
        let answer = get(&gw, &format!("/v1/page/1?fields={bad}")).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert_eq!(answer.body["code"], 3);
    }
    assert_eq!(
        shop.counters.catalog.load(Ordering::Relaxed),
        calls,
        "refused before any backend call"
    );

    // A plain gRPC route: `fields` trims, and is not taken for a request field.
    let answer = get(&gw, "/v1/products/3?fields=name,price(currencyCode)").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "name": "Pour-Over Kettle", "price": { "currencyCode": "USD" } })
    );
    assert_eq!(get(&gw, "/v1/products/3?fields=color").await.status, 400);
    let whole = get(&gw, "/v1/products/3").await;
    assert_eq!(whole.body["sku"], "SKU-003");

    // `response: { fields }` on a gRPC route takes nested paths; `?fields=` trims further
    // and cannot reach what the route leaves out.
    let bff = get(&gw, "/v1/bff/3").await;
    assert_eq!(
        bff.body,
        json!({ "name": "Pour-Over Kettle", "price": { "units": "45" }, "thumbnailUrl": "https://img.shop.example/3.png" })
    );
    let bff = get(&gw, "/v1/bff/3?fields=price").await;
    assert_eq!(bff.body, json!({ "price": { "units": "45" } }));
    assert_eq!(get(&gw, "/v1/bff/3?fields=sku").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compositions_are_refused_at_load_with_their_line() {
    let shop = shop().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [routes.yaml]\nupstreams:\n{}{}{}",
        repo().join("descriptors").display(),
        grpc_upstream("catalog", shop.catalog, ""),
        grpc_upstream("reviews", shop.reviews, ""),
        grpc_upstream("inventory", shop.inventory, ""),
    );
    let cases = [
        (
            r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "{prodct.sku}" } }"#,
            "unknown step `prodct`",
        ),
        (
            r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "{product.skew}" } }"#,
            "`skew` is not a field of `shop.catalog.v1.Product`",
        ),
        (
            r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { skew: "{product.sku}" } }"#,
            "`skew` is not a field of `shop.inventory.v1.GetStockRequest`",
        ),
        (
            r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStock }, request: { sku: "x" }, required: true, fallback: omit }"#,
            "has no `fallback`",
        ),
        (
            r#"stock: { grpc: { upstream: inventory, method: shop.inventory.v1.InventoryService/GetStok }, request: { sku: "x" } }"#,
            "unknown gRPC method",
        ),
    ];
    for (step, expected) in cases {
        let routes = format!("routes:\n{}", route("/v1/page/{id}", "", &[PRODUCT, step]));
        let dir = gateway::TempDir::new("compose-check");
        dir.write("routes.yaml", &routes);
        let path = dir.write("switchboard.yaml", &config);
        // Line 5 of routes.yaml is the second step.
        gateway::assert_refused(&path, &["routes.yaml:5:", expected]).await;
    }

    let cycle = r#"  - http: { get: "/v1/cycle" }
    compose:
      a: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, request: { id: "{c.id}" } }
      b: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, request: { id: "{a.id}" } }
      c: { grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/GetProduct }, request: { id: "{b.id}" } }
"#;
    let dir = gateway::TempDir::new("compose-cycle");
    dir.write("routes.yaml", &format!("routes:\n{cycle}"));
    let path = dir.write("switchboard.yaml", &config);
    gateway::assert_refused(&path, &["routes.yaml:4:", "cycle: a -> c -> b -> a"]).await;

    // `switchboard check` reports the same, with file:line, and exits 1.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run switchboard check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        format!("{stdout}{stderr}")
            .contains("routes.yaml:4: steps depend on each other in a cycle"),
        "{stdout}{stderr}"
    );

    let response_ref = format!(
        "routes:\n{}",
        route(
            "/v1/page/{id}",
            "    response: { name: \"{product.title}\" }\n",
            &[PRODUCT]
        )
    );
    let dir = gateway::TempDir::new("compose-response");
    dir.write("routes.yaml", &response_ref);
    let path = dir.write("switchboard.yaml", &config);
    gateway::assert_refused(&path, &["routes.yaml:2:", "`title` is not a field"]).await;
}

/// The demo as shipped: `switchboard.yaml` and `mappings/shop.yaml`, the shop, and a
/// shipping worker on a queue of this test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_product_details_page_end_to_end() {
    support::amqp::require_broker().await;
    let shop = shop().await;
    let queue = support::amqp::unique("quote");
    let _worker = support::amqp::worker(&queue, |d| support::amqp::quote(d, json!({}))).await;

    let config = gateway::demo_config(&shop, "[shop.yaml]");
    let mapping = std::fs::read_to_string(repo().join("mappings/shop.yaml"))
        .unwrap()
        .replace(
            "routing_key: shipping.quote",
            &format!("routing_key: {queue}"),
        );
    let gw = gateway::start(&config, &[("shop.yaml", &mapping)]).await;
    support::amqp::wait_connected(&gw, "shipping").await;

    let page = get(&gw, "/v1/productdetails/1?destination=NL").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.degraded, None, "{}", page.body);
    assert_eq!(page.body["product"]["name"], "Espresso Machine");
    assert_eq!(page.body["reviews"]["reviews"].as_array().unwrap().len(), 3);
    assert_eq!(page.body["inventory"]["available"], 33);
    let related = page.body["related"]["products"].as_array().unwrap();
    assert!(!related.is_empty() && related.iter().all(|p| p["category"] == "kitchen"));
    assert_eq!(
        page.body["shipping"]["carrier"], "NL",
        "the worker echoes the destination"
    );
    assert_eq!(page.body["shipping"]["days"], 1);

    let trimmed = get(
        &gw,
        "/v1/productdetails/1?fields=product(name),shipping/days",
    )
    .await;
    assert_eq!(
        trimmed.body,
        json!({ "product": { "name": "Espresso Machine" }, "shipping": { "days": 1 } })
    );

    let mobile = get(&gw, "/mobile/v1/productdetails/2").await;
    assert_eq!(mobile.status, 200, "{}", mobile.body);
    assert_eq!(
        mobile.body,
        json!({
            "product": {
                "id": "2",
                "name": "Burr Grinder",
                "price": { "currencyCode": "USD", "units": "89", "nanos": 500000000 },
                "thumbnailUrl": "https://img.shop.example/2.png"
            },
            "reviews": { "averageRating": 4.5 },
            "inventory": { "available": 34 },
            "shipping": { "days": 1 }
        })
    );

    // One backend down: the page still renders, and says what is missing.
    shop.faults
        .reviews
        .set(Duration::ZERO, Some(Code::Unavailable));
    let page = get(&gw, "/v1/productdetails/1").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.degraded.as_deref(), Some("reviews"));
    assert_eq!(page.body["reviews"]["reviews"], json!([]));
    // The shipped route is cached, but a degraded page is not stored: once reviews
    // recover, the same URL answers whole at once.
    shop.faults.reviews.clear();
    let page = get(&gw, "/v1/productdetails/1").await;
    assert_eq!(page.degraded, None, "{}", page.body);
    assert_eq!(page.body["reviews"]["reviews"].as_array().unwrap().len(), 3);
    assert_eq!(get(&gw, "/v1/productdetails/99").await.status, 404);

    // The admin API lists the steps and what they wait for.
    let routes = gateway::get_json(gw.admin_url("/admin/routes")).await;
    let details = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/v1/productdetails/{id}")
        .expect("the route is listed");
    let steps = details["target"]["steps"].as_array().unwrap();
    let inventory = steps.iter().find(|s| s["name"] == "inventory").unwrap();
    assert_eq!(inventory["depends_on"], json!(["product"]));
    assert_eq!(inventory["fallback"], "cached");

    // OpenAPI: an object of the steps' response schemas.
    let document = switchboard::openapi::document(&gw.gateway.table());
    let schema = &document["paths"]["/v1/productdetails/{id}"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_eq!(
        schema["properties"]["product"]["$ref"],
        "#/components/schemas/shop.catalog.v1.Product"
    );
    assert_eq!(
        schema["properties"]["shipping"]["$ref"],
        "#/components/schemas/shop.shipping.v1.Quote"
    );
}
