//! The response cache end to end, against the echo backend (which counts its calls and
//! is made slow or failing per request through `Grpc-Metadata-x-echo-*` headers) and a
//! real Redis for the shared store.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Response;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client};

const SECRET: &str = "a-long-enough-test-secret-0123456789";

/// A name no other test (or earlier run, for Redis) uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A gateway in front of `echo` with `sections` (top level) and `routes`.
async fn gateway_with(echo: &EchoServer, sections: &str, routes: &str) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{sections}\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    gateway::start(&config, &[("m.yaml", routes)]).await
}

/// One cached GET route onto echo `Get` named `name`, with `cache` as its policy.
fn cached_route(name: &str, path: &str, cache: &str, extra: &str) -> String {
    format!(
        "  - http: {{ get: \"{path}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n    name: {name}\n    cache: {cache}\n{extra}"
    )
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// (status, x-cache, body) of a GET.
async fn fetch(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let response = get(gw, path, headers).await;
    let status = response.status().as_u16();
    let cache = header(&response, "x-cache").to_string();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

fn calls(echo: &EchoServer) -> u64 {
    echo.calls.load(Ordering::SeqCst)
}

async fn metrics(gw: &TestGateway) -> String {
    gateway::get_text(gw.admin_url("/metrics")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_never_reaches_the_backend() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route("hits", "/v1/echo/{id}", "{ ttl: 30s }", "")
    );
    let gw = gateway_with(&echo, "", &routes).await;

    let first = get(&gw, "/v1/echo/1?name=a&small=2", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache"), "miss");
    assert_eq!(header(&first, "age"), "0");
    assert_eq!(header(&first, "cache-control"), "max-age=30");
    assert!(!header(&first, "x-trace-id").is_empty());
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(
        (&first_body["id"], &first_body["name"], &first_body["small"]),
        (&json!("1"), &json!("a"), &json!(2))
    );
    assert_eq!(calls(&echo), 1);

    // Same query in another order: the same entry.
    let second = get(&gw, "/v1/echo/1?small=2&name=a", &[]).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-cache"), "hit");
    assert!(header(&second, "content-type").starts_with("application/json"));
    let age: u64 = header(&second, "age").parse().unwrap();
    assert!(age <= 1, "age {age}");
    let max_age: u64 = header(&second, "cache-control")
        .strip_prefix("max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&max_age), "max-age {max_age}");
    assert!(!header(&second, "x-trace-id").is_empty());
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    assert_eq!(calls(&echo), 1, "a hit must not call the backend");

    // Another path or another query is another entry.
    assert_eq!(fetch(&gw, "/v1/echo/2", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1?name=b&small=2", &[]).await.1, "miss");
    assert_eq!(calls(&echo), 3);
    for _ in 0..5 {
        assert_eq!(fetch(&gw, "/v1/echo/2", &[]).await.1, "hit");
    }
    assert_eq!(calls(&echo), 3);

    // A reload that leaves the `cache:` section alone keeps the entries.
    gw.gateway.reload().await.expect("reload");
    assert_eq!(fetch(&gw, "/v1/echo/2", &[]).await.1, "hit");
    assert_eq!(calls(&echo), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route("ttl", "/v1/echo/{id}", "{ ttl: 1s }", "")
    );
    let gw = gateway_with(&echo, "", &routes).await;
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "hit");
    assert_eq!(calls(&echo), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "miss");
    assert_eq!(calls(&echo), 2);
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "hit");
    // Without `stale_if_error` an expired entry does not stand in for a failure.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, cache, _) = fetch(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "14")]).await;
    assert_eq!((status, cache.as_str()), (503, "miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_failures_and_deadlines_but_not_client_errors() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route(
            "stale",
            "/v1/echo/{id}",
            "{ ttl: 300ms, stale_if_error: 30s }",
            "    timeout: 1s\n"
        )
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let (_, cache, fresh) = fetch(&gw, "/v1/echo/1?name=x", &[]).await;
    assert_eq!(cache, "miss");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // UNAVAILABLE (503): the expired entry answers, with a 200.
    let response = get(
        &gw,
        "/v1/echo/1?name=x",
        &[("grpc-metadata-x-echo-fail", "14")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-cache"), "stale");
    assert_eq!(header(&response, "cache-control"), "max-age=0");
    assert_eq!(response.json::<Value>().await.unwrap(), fresh);
    assert_eq!(
        calls(&echo),
        2,
        "a stale answer is only given after the backend was tried"
    );

    // INTERNAL (500) and a backend slower than the route's deadline (504) too.
    let (status, cache, body) = fetch(
        &gw,
        "/v1/echo/1?name=x",
        &[("grpc-metadata-x-echo-fail", "13")],
    )
    .await;
    assert_eq!((status, cache.as_str(), &body), (200, "stale", &fresh));
    let (status, cache, body) = fetch(
        &gw,
        "/v1/echo/1?name=x",
        &[("grpc-metadata-x-echo-delay-ms", "3000")],
    )
    .await;
    assert_eq!((status, cache.as_str(), &body), (200, "stale", &fresh));

    // NOT_FOUND is the backend's answer, not a failure: it goes to the client.
    let (status, cache, _) = fetch(
        &gw,
        "/v1/echo/1?name=x",
        &[("grpc-metadata-x-echo-fail", "5")],
    )
    .await;
    assert_eq!((status, cache.as_str()), (404, "miss"));

    // Nothing stored for this key: the failure itself.
    let (status, cache, body) =
        fetch(&gw, "/v1/echo/2", &[("grpc-metadata-x-echo-fail", "14")]).await;
    assert_eq!((status, cache.as_str()), (503, "miss"));
    assert_eq!(body["code"], 14);

    // A working backend refreshes the entry.
    assert_eq!(fetch(&gw, "/v1/echo/1?name=x", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1?name=x", &[]).await.1, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_backend_call() {
    switchboard::telemetry::prometheus(); // handles made before the recorder record nothing
    let echo = echo::start().await;
    let name = unique("coalesce");
    let routes = format!(
        "routes:\n{}",
        cached_route(&name, "/v1/echo/{id}", "{ ttl: 30s }", "")
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let requests = (0..50).map(|_| {
        let url = gw.url("/v1/echo/7?name=herd");
        tokio::spawn(async move {
            let response = client()
                .get(url)
                .header("grpc-metadata-x-echo-delay-ms", "1000")
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let cache = header(&response, "x-cache").to_string();
            (status, cache, response.json::<Value>().await.unwrap())
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    // On a loaded machine a request may only arrive once the answer is stored: a hit.
    let mut hits = 0;
    for answer in answers {
        let (status, cache, body) = answer.expect("task");
        assert_eq!(status, 200);
        assert!(cache == "miss" || cache == "hit", "x-cache {cache}");
        hits += u32::from(cache == "hit");
        assert_eq!((&body["id"], &body["name"]), (&json!("7"), &json!("herd")));
    }
    assert!(hits < 25, "{hits} of 50 requests came after the fetch");
    assert_eq!(calls(&echo), 1, "50 concurrent misses, one backend call");
    let metrics = metrics(&gw).await;
    let line = format!(
        "switchboard_cache_coalesced_total{{route=\"{name}\"}} {}",
        49 - hits
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    let line = format!(
        "switchboard_cache_requests_total{{route=\"{name}\",result=\"miss\"}} {}",
        50 - hits
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_share_a_failure_a_refusal_and_a_stale_answer() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route(
            "herd-fail",
            "/v1/echo/{id}",
            "{ ttl: 200ms, stale_if_error: 30s }",
            ""
        )
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let herd = |path: &'static str, fail: &'static str| {
        let gw_url = gw.url(path);
        (0..10).map(move |_| {
            let url = gw_url.clone();
            tokio::spawn(async move {
                let response = client()
                    .get(url)
                    .header("grpc-metadata-x-echo-delay-ms", "1000")
                    .header("grpc-metadata-x-echo-fail", fail)
                    .send()
                    .await
                    .expect("request");
                (
                    response.status().as_u16(),
                    header(&response, "x-cache").to_string(),
                )
            })
        })
    };
    // Nothing stored: all ten get the failure, from one backend call.
    for answer in futures_util::future::join_all(herd("/v1/echo/1", "14")).await {
        assert_eq!(answer.unwrap(), (503, "miss".to_string()));
    }
    assert_eq!(calls(&echo), 1);
    // A refusal (NOT_FOUND) is shared the same way.
    for answer in futures_util::future::join_all(herd("/v1/echo/3", "5")).await {
        assert_eq!(answer.unwrap(), (404, "miss".to_string()));
    }
    assert_eq!(calls(&echo), 2);
    // Stored, then expired: all ten get the stale entry, from one backend call.
    assert_eq!(fetch(&gw, "/v1/echo/2", &[]).await.1, "miss");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for answer in futures_util::future::join_all(herd("/v1/echo/2", "14")).await {
        assert_eq!(answer.unwrap(), (200, "stale".to_string()));
    }
    assert_eq!(calls(&echo), 4);
}

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": sub, "iss": "https://auth.test", "aud": "shop-api", "exp": now + 300, "iat": now});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_routes_keep_one_entry_per_user() {
    let echo = echo::start().await;
    let auth = format!(
        "auth:\n  jwt:\n    issuer: https://auth.test\n    audiences: [shop-api]\n    algorithms: [HS256]\n    secret: {SECRET}\n"
    );
    let routes = format!(
        "routes:\n{}{}",
        cached_route("mine", "/mine/{id}", "{ ttl: 30s }", "    auth: required\n"),
        cached_route(
            "maybe",
            "/maybe/{id}",
            "{ ttl: 30s }",
            "    auth: optional\n"
        ),
    );
    let gw = gateway_with(&echo, &auth, &routes).await;
    let alice = format!("Bearer {}", token("alice"));
    let bob = format!("Bearer {}", token("bob"));
    let as_alice = [("authorization", alice.as_str())];
    let as_bob = [("authorization", bob.as_str())];

    assert_eq!(fetch(&gw, "/mine/1", &as_alice).await.1, "miss");
    assert_eq!(fetch(&gw, "/mine/1", &as_alice).await.1, "hit");
    assert_eq!(fetch(&gw, "/mine/1", &as_bob).await.1, "miss");
    assert_eq!(fetch(&gw, "/mine/1", &as_bob).await.1, "hit");
    assert_eq!(calls(&echo), 2);
    // No token: refused before the cache is asked.
    assert_eq!(fetch(&gw, "/mine/1", &[]).await.0, 401);
    assert_eq!(calls(&echo), 2);

    // `auth: optional`: anonymous callers share one entry, apart from any user's.
    assert_eq!(fetch(&gw, "/maybe/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/maybe/1", &[]).await.1, "hit");
    assert_eq!(fetch(&gw, "/maybe/1", &as_alice).await.1, "miss");
    assert_eq!(fetch(&gw, "/maybe/1", &as_alice).await.1, "hit");
    assert_eq!(calls(&echo), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_headers_are_part_of_the_key() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route(
            "vary",
            "/v1/echo/{id}",
            "{ ttl: 30s, vary: [Accept-Language] }",
            ""
        )
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let fr = [("accept-language", "fr")];
    let de = [("accept-language", "de")];
    assert_eq!(fetch(&gw, "/v1/echo/1", &fr).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &fr).await.1, "hit");
    assert_eq!(fetch(&gw, "/v1/echo/1", &de).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &de).await.1, "hit");
    // A header not in `vary` does not split entries.
    assert_eq!(fetch(&gw, "/v1/echo/1", &[("x-other", "1")]).await.1, "hit");
    assert_eq!(calls(&echo), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_no_cache_bypasses_only_where_the_route_allows() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}{}",
        cached_route(
            "bypass",
            "/yes/{id}",
            "{ ttl: 30s, client_bypass: true }",
            ""
        ),
        cached_route("nobypass", "/no/{id}", "{ ttl: 30s }", ""),
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let no_cache = [("cache-control", "max-age=0, No-Cache")];

    assert_eq!(fetch(&gw, "/yes/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/yes/1", &[]).await.1, "hit");
    assert_eq!(fetch(&gw, "/yes/1", &no_cache).await.1, "miss");
    assert_eq!(calls(&echo), 2);
    // The bypassing request refreshed the entry for everyone else.
    assert_eq!(fetch(&gw, "/yes/1", &[]).await.1, "hit");

    assert_eq!(fetch(&gw, "/no/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/no/1", &no_cache).await.1, "hit");
    assert_eq!(calls(&echo), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_200_answers_are_stored() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route("only200", "/v1/echo/{id}", "{ ttl: 30s }", "")
    );
    let gw = gateway_with(&echo, "", &routes).await;
    for _ in 0..2 {
        let (status, cache, body) =
            fetch(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "5")]).await;
        assert_eq!((status, cache.as_str()), (404, "miss"));
        assert_eq!(body["code"], 5);
    }
    assert_eq!(calls(&echo), 2);
    // The failures left nothing behind: the next good answer is a miss, then stored.
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "hit");
    assert_eq!(calls(&echo), 3);

    // A GET with a body neither reads nor fills the cache: the key does not cover it.
    for _ in 0..2 {
        let response = client()
            .get(gw.url("/v1/echo/1"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "x-cache"), "miss");
    }
    assert_eq!(calls(&echo), 5);
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_max_entry_bytes_pass_through_unstored() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}",
        cached_route("large", "/v1/echo/{id}", "{ ttl: 30s }", "")
    );
    // An answer without `name` is about 300 bytes.
    let gw = gateway_with(&echo, "cache: { max_entry_bytes: 1KiB }\n", &routes).await;
    let long = "x".repeat(2000);
    let path = format!("/v1/echo/1?name={long}");
    for _ in 0..2 {
        let (status, cache, body) = fetch(&gw, &path, &[]).await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
        assert_eq!(body["name"], long.as_str());
    }
    assert_eq!(calls(&echo), 2);
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/v1/echo/1", &[]).await.1, "hit");
}

async fn purge(gw: &TestGateway, query: &str) -> (u16, Value) {
    let response = client()
        .delete(gw.admin_url(&format!("/admin/cache{query}")))
        .send()
        .await
        .expect("purge");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_purges_all_one_route_or_a_key_prefix() {
    let echo = echo::start().await;
    let routes = format!(
        "routes:\n{}{}",
        cached_route("purge-a", "/a/{id}", "{ ttl: 30s }", ""),
        cached_route("purge-b", "/b/{id}", "{ ttl: 30s }", ""),
    );
    let gw = gateway_with(&echo, "", &routes).await;
    let fill = async |paths: &[&str]| {
        for path in paths {
            fetch(&gw, path, &[]).await;
        }
    };
    fill(&["/a/1", "/a/12", "/a/2", "/b/1"]).await;
    let listed = gateway::get_json(gw.admin_url("/admin/routes")).await;
    let route = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "purge-a")
        .unwrap();
    assert_eq!(route["cache"]["ttl_ms"], 30000);
    assert_eq!(fetch(&gw, "/a/12", &[]).await.1, "hit");

    assert_eq!(
        purge(&gw, "?key_prefix=/a/1").await,
        (200, json!({"purged": 2}))
    );
    assert_eq!(fetch(&gw, "/a/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/a/12", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/a/2", &[]).await.1, "hit");

    assert_eq!(
        purge(&gw, "?route=purge-b").await,
        (200, json!({"purged": 1}))
    );
    assert_eq!(fetch(&gw, "/b/1", &[]).await.1, "miss");
    assert_eq!(fetch(&gw, "/a/2", &[]).await.1, "hit");

    assert_eq!(purge(&gw, "?route=nope").await.0, 404);
    assert_eq!(purge(&gw, "").await, (200, json!({"purged": 4})));
    for path in ["/a/1", "/a/12", "/a/2", "/b/1"] {
        assert_eq!(fetch(&gw, path, &[]).await.1, "miss", "{path}");
    }
}

const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_is_shared_by_two_gateways() {
    let echo = echo::start().await;
    // A fresh route name per run: entries of earlier runs stay out of the way.
    let name = unique("shared");
    let routes = format!(
        "routes:\n{}",
        cached_route(
            &name,
            "/v1/echo/{id}",
            "{ ttl: 30s, stale_if_error: 1m }",
            ""
        )
    );
    let store = format!("cache: {{ store: \"{REDIS}\" }}\n");
    let one = gateway_with(&echo, &store, &routes).await;
    let two = gateway_with(&echo, &store, &routes).await;

    let (status, cache, body) = fetch(&one, "/v1/echo/5?name=r", &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    let response = get(&two, "/v1/echo/5?name=r", &[]).await;
    assert_eq!(header(&response, "x-cache"), "hit");
    assert!(header(&response, "content-type").starts_with("application/json"));
    assert_eq!(response.json::<Value>().await.unwrap(), body);
    assert_eq!(calls(&echo), 1, "the second gateway answered from Redis");

    // A purge through one instance empties the shared store for both.
    assert_eq!(
        purge(&two, &format!("?route={name}")).await,
        (200, json!({"purged": 1}))
    );
    assert_eq!(fetch(&one, "/v1/echo/5?name=r", &[]).await.1, "miss");
    assert_eq!(fetch(&two, "/v1/echo/5?name=r", &[]).await.1, "hit");
    assert_eq!(
        purge(&one, "?key_prefix=/v1/echo/5").await.1["purged"]
            .as_u64()
            .map(|n| n >= 1),
        Some(true)
    );
    assert_eq!(fetch(&two, "/v1/echo/5?name=r", &[]).await.1, "miss");
    assert_eq!(calls(&echo), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_still_serves_from_the_backend() {
    switchboard::telemetry::prometheus(); // handles made before the recorder record nothing
    let echo = echo::start().await;
    // A port nothing listens on: every store call fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = format!(
        "routes:\n{}",
        cached_route("redis-down", "/v1/echo/{id}", "{ ttl: 30s }", "")
    );
    let store = format!("cache: {{ store: \"redis://{closed}\", store_timeout: 200ms }}\n");
    let gw = gateway_with(&echo, &store, &routes).await;
    let before = store_errors(&metrics(&gw).await);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let (status, cache, body) = fetch(&gw, "/v1/echo/1", &[]).await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
        assert_eq!(body["id"], "1");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(calls(&echo), 3);
    let after = store_errors(&metrics(&gw).await);
    assert!(after >= before + 3, "store errors {before} -> {after}");
}

fn store_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("switchboard_cache_store_errors_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_cache_settings_are_load_errors() {
    let dir = gateway::TempDir::new("cache-refused");
    dir.write(
        "m.yaml",
        r#"
routes:
  - http: { post: "/v1/echo", body: "*" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Create }
    cache: { ttl: 30s }
  - http: { get: "/v1/stream/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Stream }
    cache: { ttl: 30s }
  - websocket: "/ws/chat"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
    cache: { ttl: 30s }
  - http: { get: "/v1/echo/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    cache: { ttl: 0s, vary: ["bad header"] }
  - http: { get: "/v1/forwarded/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    forward_authorization: true
    cache: { ttl: 1s }
"#,
    );
    let config = dir.write(
        "switchboard.yaml",
        &format!(
            "listen: 127.0.0.1:0\ndescriptors: [\"{}\"]\nmappings: [m.yaml]\ncache: {{ store: \"memcached://x\" }}\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://127.0.0.1:1\"] }}\n",
            gateway::echo_protos()
        ),
    );
    gateway::assert_refused(
        &config,
        &["cache.store `memcached://x`: use `memory` or a redis:// URL"],
    )
    .await;
    // With a good store, every route problem is reported with its line.
    let config = dir.write(
        "switchboard.yaml",
        &format!(
            "listen: 127.0.0.1:0\ndescriptors: [\"{}\"]\nmappings: [m.yaml]\ncache: {{ store: memory, max_entries: 100 }}\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://127.0.0.1:1\"] }}\n",
            gateway::echo_protos()
        ),
    );
    gateway::assert_refused(
        &config,
        &[
            "m.yaml:3: `cache` applies to GET routes only (this route is POST)",
            "m.yaml:6: `cache` cannot apply to a server-streaming route",
            "m.yaml:9: `cache` cannot apply to a websocket route",
            "m.yaml:12: `cache.ttl` must be more than 0",
            "m.yaml:15: `cache` with `forward_authorization: true` needs `auth: required` or `optional`",
        ],
    )
    .await;
}
