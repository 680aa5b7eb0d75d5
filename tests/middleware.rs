//! The middleware stack end to end: JWT auth (RS256, ES256, HS256, JWKS file and URL),
//! scopes and claim forwarding, rate limits (memory and Redis, shared by two gateways),
//! circuit breaking, retries, client deadlines and CORS — against the real echo backend
//! and the real Redis on 127.0.0.1:6379.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client, repo};

fn keys(name: &str) -> String {
    repo()
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, scope: &str) -> Value {
    json!({"sub": sub, "scope": scope, "iss": "https://auth.test", "aud": "shop-api", "exp": now() + 300, "iat": now()})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(keys("rsa.pem")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(keys("ec.pem")).unwrap()).unwrap()
        }
        _ => EncodingKey::from_secret(b"a-long-enough-test-secret-0123456789"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

fn sign_with_rsa2(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(keys("rsa2.pem")).unwrap()).unwrap(),
    )
    .unwrap()
}

const ROUTES: &str = r#"
routes:
  - http: { get: "/open/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
  - http: { get: "/optional/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    auth: optional
  - http: { get: "/private/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    auth: required
  - http: { post: "/orders", body: "*" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
    auth: required
    scopes: ["orders:write"]
"#;

async fn gateway_with(
    echo: &EchoServer,
    sections: &str,
    upstream_extra: &str,
    routes: &str,
) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{sections}\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, upstream_extra),
    );
    gateway::start(&config, &[("m.yaml", routes)]).await
}

fn jwt_section(jwks: &str, algorithms: &str) -> String {
    format!(
        "auth:\n  jwt:\n    issuer: https://auth.test\n    audiences: [shop-api]\n    algorithms: [{algorithms}]\n    jwks: \"{jwks}\"\n    secret: a-long-enough-test-secret-0123456789\n    leeway: 5s\n    jwks_min_refresh: 300ms\n    forward_claims: {{ sub: x-user-id, scope: x-user-scopes }}\n"
    )
}

async fn get(gw: &TestGateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(gw.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn status_of(gw: &TestGateway, path: &str, token: Option<&str>) -> u16 {
    get(gw, path, token).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_claims_forwarded() {
    let echo = echo::start().await;
    let gw = gateway_with(
        &echo,
        &jwt_section(&keys("jwks.json"), "RS256, ES256"),
        "",
        ROUTES,
    )
    .await;

    let rs = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("alice", "orders:read orders:write"),
    );
    let response = client()
        .get(gw.url("/private/1"))
        .bearer_auth(&rs)
        .header("x-user-id", "mallory")
        .header("grpc-metadata-x-user-id", "mallory")
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"],
        "only the verified id"
    );
    assert_eq!(seen["x-user-scopes"], "orders:read orders:write");

    let es = sign(Algorithm::ES256, Some("ec-1"), &claims("bob", ""));
    assert_eq!(status_of(&gw, "/private/1", Some(&es)).await, 200);

    let calls_before = echo.calls.load(Ordering::SeqCst);
    let mut expired = claims("a", "");
    expired["exp"] = json!(now() - 60);
    let mut early = claims("a", "");
    early["nbf"] = json!(now() + 60);
    let mut wrong_iss = claims("a", "");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut wrong_aud = claims("a", "");
    wrong_aud["aud"] = json!("other-api");
    let b64 = |v: Value| base64_url(v.to_string().as_bytes());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims("a", ""))
    );
    // Alg confusion: an HS256 token whose "secret" is the RSA public key.
    let confused = encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("rsa-1".into());
            h
        },
        &claims("a", ""),
        &EncodingKey::from_secret(&std::fs::read(keys("rsa.pub.pem")).unwrap()),
    )
    .unwrap();
    let hs_not_allowed = sign(Algorithm::HS256, None, &claims("a", ""));
    let bad_signature = sign_with_rsa2("rsa-1", &claims("a", ""));
    let unknown_kid = sign_with_rsa2("nope", &claims("a", ""));
    let tampered = {
        let mut parts: Vec<String> = rs.split('.').map(str::to_string).collect();
        parts[1] = b64(claims("root", "admin"));
        parts.join(".")
    };
    let cases = [
        ("expired", sign(Algorithm::RS256, Some("rsa-1"), &expired)),
        (
            "not yet valid",
            sign(Algorithm::RS256, Some("rsa-1"), &early),
        ),
        (
            "wrong iss",
            sign(Algorithm::RS256, Some("rsa-1"), &wrong_iss),
        ),
        (
            "wrong aud",
            sign(Algorithm::RS256, Some("rsa-1"), &wrong_aud),
        ),
        ("alg none", alg_none),
        ("alg confusion", confused),
        ("HS256 not configured", hs_not_allowed),
        ("bad signature", bad_signature),
        ("unknown kid", unknown_kid),
        ("tampered payload", tampered),
        ("garbage", "not.a.token".to_string()),
    ];
    for (name, token) in &cases {
        let response = get(&gw, "/private/1", Some(token)).await;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            16,
            "{name}"
        );
    }
    assert_eq!(
        status_of(&gw, "/private/1", None).await,
        401,
        "missing token"
    );
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls_before,
        "refused requests never reach the backend"
    );

    // Optional: anonymous passes without identity; a bad token is still refused.
    assert_eq!(status_of(&gw, "/optional/1", None).await, 200);
    assert!(
        echo.last_metadata
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .get("x-user-id")
            .is_none()
    );
    assert_eq!(
        status_of(&gw, "/optional/1", Some("not.a.token")).await,
        401
    );
    // No auth: client-sent identity headers are stripped all the same.
    client()
        .get(gw.url("/open/1"))
        .header("grpc-metadata-x-user-id", "mallory")
        .send()
        .await
        .unwrap();
    assert!(
        echo.last_metadata
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .get("x-user-id")
            .is_none()
    );

    // Scopes.
    let reader = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("carol", "orders:read"),
    );
    let response = client()
        .post(gw.url("/orders"))
        .bearer_auth(&reader)
        .json(&json!({"id": "o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 7);
    let writer = {
        let mut c = claims("dave", "");
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["orders:write"]);
        sign(Algorithm::ES256, Some("ec-1"), &c)
    };
    let response = client()
        .post(gw.url("/orders"))
        .bearer_auth(&writer)
        .json(&json!({"id": "o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn base64_url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_with_a_shared_secret() {
    let echo = echo::start().await;
    let gw = gateway_with(&echo, &jwt_section(&keys("jwks.json"), "HS256"), "", ROUTES).await;
    assert_eq!(
        status_of(
            &gw,
            "/private/1",
            Some(&sign(Algorithm::HS256, None, &claims("e", "")))
        )
        .await,
        200
    );
    assert_eq!(
        status_of(
            &gw,
            "/private/1",
            Some(&sign(Algorithm::RS256, Some("rsa-1"), &claims("e", "")))
        )
        .await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_cached_and_refreshed_on_unknown_kid_with_a_rate_limit() {
    let echo = echo::start().await;
    let fetches = Arc::new(AtomicU64::new(0));
    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = {
        let (fetches, rotated) = (fetches.clone(), rotated.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (fetches, rotated) = (fetches.clone(), rotated.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let name = if rotated.load(Ordering::SeqCst) {
                        "jwks-rotated.json"
                    } else {
                        "jwks.json"
                    };
                    std::fs::read_to_string(keys(name)).unwrap()
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let jwt = format!("{}    jwks_allow_http: true\n", jwt_section(&url, "RS256"));
    let gw = gateway_with(&echo, &jwt, "", ROUTES).await;

    let first = sign(Algorithm::RS256, Some("rsa-1"), &claims("a", ""));
    assert_eq!(status_of(&gw, "/private/1", Some(&first)).await, 200);
    assert_eq!(status_of(&gw, "/private/1", Some(&first)).await, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");

    let tokio_sleep = tokio::time::sleep(Duration::from_millis(350));
    tokio_sleep.await;
    let new_key = sign_with_rsa2("rsa-2", &claims("a", ""));
    assert_eq!(
        status_of(&gw, "/private/1", Some(&new_key)).await,
        401,
        "not published yet"
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "an unknown kid triggers a refresh"
    );
    assert_eq!(status_of(&gw, "/private/1", Some(&new_key)).await, 401);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "refreshes are rate-limited"
    );

    rotated.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        status_of(&gw, "/private/1", Some(&new_key)).await,
        200,
        "the rotated key is picked up"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
}

fn limits(store: &str, policies: &str) -> String {
    format!("rate_limits:\n  store: \"{store}\"\n  policies:\n{policies}")
}

fn limited_routes(policy: &str) -> String {
    format!(
        "routes:\n  - http: {{ get: \"/limited/{{id}}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n    rate_limit: {policy}\n"
    )
}

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_token_bucket_with_headers_and_keys() {
    let echo = echo::start().await;
    let policy = "    by_key: { algorithm: token_bucket, rate: 1, per: 1m, burst: 3, key: header.x-api-key }\n";
    let gw = gateway_with(
        &echo,
        &limits("memory", policy),
        "",
        &limited_routes("by_key"),
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let response = get_with(&gw, "/limited/1", &[("x-api-key", "k1")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(response.headers()["ratelimit-remaining"], remaining);
    }
    let calls = echo.calls.load(Ordering::SeqCst);
    let response = get_with(&gw, "/limited/1", &[("x-api-key", "k1")]).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    assert!(
        response.headers()["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 8);
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls,
        "limited requests never reach the backend"
    );
    // Another key has its own bucket; no key falls back to the client address.
    assert_eq!(
        get_with(&gw, "/limited/1", &[("x-api-key", "k2")])
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        assert_eq!(get_with(&gw, "/limited/1", &[]).await.status(), 200);
    }
    assert_eq!(get_with(&gw, "/limited/1", &[]).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_and_leaky_bucket() {
    let echo = echo::start().await;
    let policies = "    window: { algorithm: fixed_window, rate: 2, per: 1m, key: header.x-k }\n    leaky: { algorithm: leaky_bucket, rate: 4, per: 1s, burst: 2, key: header.x-k }\n";
    let routes = format!(
        "{}  - http: {{ get: \"/leaky/{{id}}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n    rate_limit: leaky\n",
        limited_routes("window")
    );
    let gw = gateway_with(&echo, &limits("memory", policies), "", &routes).await;
    let window: Vec<u16> = futures_util::future::join_all(
        (0..3).map(|_| get_with(&gw, "/limited/1", &[("x-k", "w")])),
    )
    .await
    .iter()
    .map(|r| r.status().as_u16())
    .collect();
    assert_eq!(
        window.iter().filter(|s| **s == 200).count(),
        2,
        "{window:?}"
    );
    assert_eq!(
        window.iter().filter(|s| **s == 429).count(),
        1,
        "{window:?}"
    );

    assert_eq!(
        get_with(&gw, "/leaky/1", &[("x-k", "l")]).await.status(),
        200
    );
    assert_eq!(
        get_with(&gw, "/leaky/1", &[("x-k", "l")]).await.status(),
        200
    );
    assert_eq!(
        get_with(&gw, "/leaky/1", &[("x-k", "l")]).await.status(),
        429,
        "full: rejects, never queues"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get_with(&gw, "/leaky/1", &[("x-k", "l")]).await.status(),
        200,
        "drained one slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_only_from_trusted_proxies() {
    let echo = echo::start().await;
    let policy = "    per_ip: { algorithm: fixed_window, rate: 1, per: 1m, key: client_ip }\n";
    let trusted = format!(
        "trusted_proxies: [127.0.0.1/32]\n{}",
        limits("memory", policy)
    );
    let gw = gateway_with(&echo, &trusted, "", &limited_routes("per_ip")).await;
    assert_eq!(
        get_with(&gw, "/limited/1", &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get_with(&gw, "/limited/1", &[("x-forwarded-for", "198.51.100.2")])
            .await
            .status(),
        200
    );
    assert_eq!(
        get_with(&gw, "/limited/1", &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status(),
        429
    );

    let untrusted = gateway_with(
        &echo,
        &limits("memory", policy),
        "",
        &limited_routes("per_ip"),
    )
    .await;
    assert_eq!(
        get_with(
            &untrusted,
            "/limited/1",
            &[("x-forwarded-for", "198.51.100.1")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        get_with(
            &untrusted,
            "/limited/1",
            &[("x-forwarded-for", "198.51.100.2")]
        )
        .await
        .status(),
        429,
        "XFF ignored"
    );
}

fn require_redis() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_err()
    {
        panic!(
            "Redis not reachable on 127.0.0.1:6379: start it with `redis-server --daemonize yes --port 6379 --save \"\"` (or scripts/services)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_enforces_one_limit_across_two_gateways() {
    require_redis();
    let echo = echo::start().await;
    // A fresh policy name per run keeps counters of earlier runs out of the way.
    let name = format!("shared_{}_{}", std::process::id(), now());
    for algorithm in ["token_bucket", "fixed_window", "leaky_bucket"] {
        let policy = format!(
            "    {name}_{algorithm}: {{ algorithm: {algorithm}, rate: 5, per: 1m, burst: 5, key: header.x-k }}\n"
        );
        let sections = limits("redis://127.0.0.1:6379", &policy);
        let routes = limited_routes(&format!("{name}_{algorithm}"));
        let a = gateway_with(&echo, &sections, "", &routes).await;
        let b = gateway_with(&echo, &sections, "", &routes).await;
        let mut allowed = 0;
        for i in 0..12 {
            let gw = if i % 2 == 0 { &a } else { &b };
            let response = get_with(gw, "/limited/1", &[("x-k", "same-client")]).await;
            match response.status().as_u16() {
                200 => allowed += 1,
                429 => assert!(response.headers().contains_key("retry-after")),
                other => panic!("{algorithm}: unexpected {other}"),
            }
        }
        assert_eq!(
            allowed, 5,
            "{algorithm}: one limit shared by both instances"
        );
    }
}

/// `reserve:` on a Redis policy, through two gateways: concurrent clients of one key get
/// no more than the shared limit together, at most what the instances hold fewer, and
/// most decisions are made without Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reserve_stays_within_the_shared_limit() {
    require_redis();
    let handle = switchboard::telemetry::prometheus();
    let echo = echo::start().await;
    let name = format!("reserve_{}_{}", std::process::id(), now());
    let policy = format!(
        "    {name}: {{ algorithm: token_bucket, rate: 200, per: 1h, key: header.x-k, reserve: 20 }}\n"
    );
    let sections = limits("redis://127.0.0.1:6379", &policy);
    let routes = limited_routes(&name);
    let a = gateway_with(&echo, &sections, "", &routes).await;
    let b = gateway_with(&echo, &sections, "", &routes).await;
    // Eight waves of 50 concurrent requests, alternating between the instances.
    let mut allowed = 0;
    for _ in 0..8 {
        let requests = (0..50).map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            get_with(gw, "/limited/1", &[("x-k", "busy-client")])
        });
        for response in futures_util::future::join_all(requests).await {
            match response.status().as_u16() {
                200 => allowed += 1,
                429 => assert!(response.headers().contains_key("retry-after")),
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert!(
        (200 - 2 * 20..=200).contains(&allowed),
        "{allowed} admitted for a limit of 200 with two instances holding at most 20 each"
    );
    let metrics = handle.render();
    let local: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchboard_ratelimit_local_decisions_total")
                && l.contains(&format!("policy=\"{name}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no local decisions counted: {metrics}"));
    assert!(local >= 100.0, "{local} of 400 decisions made locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_follows_on_store_error() {
    let handle = switchboard::telemetry::prometheus();
    let echo = echo::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let policies = "    lenient: { algorithm: token_bucket, rate: 1, per: 1m, on_store_error: allow }\n    strict: { algorithm: token_bucket, rate: 1, per: 1m, on_store_error: deny }\n";
    let routes = format!(
        "{}  - http: {{ get: \"/strict/{{id}}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n    rate_limit: strict\n",
        limited_routes("lenient")
    );
    let gw = gateway_with(
        &echo,
        &limits(&format!("redis://{dead}"), policies),
        "",
        &routes,
    )
    .await;
    let started = Instant::now();
    assert_eq!(get_with(&gw, "/limited/1", &[]).await.status(), 200);
    assert_eq!(
        get_with(&gw, "/limited/1", &[]).await.status(),
        200,
        "allow: no counting without the store"
    );
    let response = get_with(&gw, "/strict/1", &[]).await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "store errors are fast: {:?}",
        started.elapsed()
    );
    let metrics = handle.render();
    assert!(
        metrics.contains("switchboard_ratelimit_store_errors_total{policy=\"lenient\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let echo = echo::start().await;
    let breaker = "    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 400ms, half_open_requests: 2 }\n";
    let routes =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway_with(&echo, "", breaker, routes).await;
    let failing = [("grpc-metadata-x-echo-fail", "14")];

    // Client errors never trip it: they count as answers, not failures. After 10 of
    // them, it takes 10 failures to reach the 0.5 failure ratio.
    for _ in 0..10 {
        assert_eq!(
            get_with(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "3")])
                .await
                .status(),
            400
        );
    }
    for _ in 0..10 {
        assert_eq!(get_with(&gw, "/v1/echo/1", &failing).await.status(), 503);
    }
    let calls = echo.calls.load(Ordering::SeqCst);
    let mut times = Vec::new();
    let http = client();
    http.get(gw.url("/v9/warm-up")).send().await.unwrap();
    for _ in 0..11 {
        let started = Instant::now();
        let response = http.get(gw.url("/v1/echo/1")).send().await.unwrap();
        times.push(started.elapsed());
        assert_eq!(response.status(), 503);
        assert_eq!(response.json::<Value>().await.unwrap()["code"], 14);
    }
    times.sort();
    assert!(
        times[5] < Duration::from_millis(5),
        "open-state answers are immediate: median {:?}",
        times[5]
    );
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls,
        "open: the backend is not touched"
    );
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    assert_eq!(upstreams["upstreams"][0]["circuit"], "open");

    // Half-open: a failed probe reopens it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get_with(&gw, "/v1/echo/1", &failing).await.status(), 503);
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls + 1,
        "one probe went through"
    );
    assert_eq!(
        get_with(&gw, "/v1/echo/1", &[]).await.status(),
        503,
        "reopened"
    );
    assert_eq!(echo.calls.load(Ordering::SeqCst), calls + 1);

    // Half-open again: two good probes close it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get_with(&gw, "/v1/echo/1", &[]).await.status(), 200);
    assert_eq!(get_with(&gw, "/v1/echo/1", &[]).await.status(), 200);
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    assert_eq!(upstreams["upstreams"][0]["circuit"], "closed");
    for _ in 0..5 {
        assert_eq!(get_with(&gw, "/v1/echo/1", &[]).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_for_idempotent_calls_on_unavailable() {
    let echo = echo::start().await;
    let retry = "    retry: { attempts: 2, backoff: 5ms }\n";
    let routes = r#"
routes:
  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService, unannotated: post }
  - http: { post: "/safe", body: "*" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
    idempotent: true
  - http: { get: "/tight/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    timeout: 150ms
"#;
    let gw = gateway_with(&echo, "", retry, routes).await;
    let count = |before: u64| echo.calls.load(Ordering::SeqCst) - before;

    let before = echo.calls.load(Ordering::SeqCst);
    assert_eq!(
        get_with(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "14")])
            .await
            .status(),
        503
    );
    assert_eq!(count(before), 3, "GET: the first try and two retries");

    let before = echo.calls.load(Ordering::SeqCst);
    let post = |path: &'static str| {
        client()
            .post(gw.url(path))
            .header("grpc-metadata-x-echo-fail", "14")
            .json(&json!({"id": "x"}))
            .send()
    };
    assert_eq!(
        post("/test.echo.v1.EchoService/Plain")
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(count(before), 1, "POST is not retried");
    let before = echo.calls.load(Ordering::SeqCst);
    assert_eq!(post("/safe").await.unwrap().status(), 503);
    assert_eq!(count(before), 3, "idempotent: true is retried");

    let before = echo.calls.load(Ordering::SeqCst);
    assert_eq!(
        get_with(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "13")])
            .await
            .status(),
        500
    );
    assert_eq!(count(before), 1, "only UNAVAILABLE is retried");

    // Retries stay inside the deadline: a slow failure leaves no time for another try.
    let before = echo.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let response = get_with(
        &gw,
        "/tight/1",
        &[
            ("grpc-metadata-x-echo-fail", "14"),
            ("grpc-metadata-x-echo-delay-ms", "120"),
        ],
    )
    .await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count(before), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadlines_shorten_the_call() {
    let echo = echo::start().await;
    let routes =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway_with(&echo, "", "    timeout: 10s\n", routes).await;
    let started = Instant::now();
    let response = get_with(
        &gw,
        "/v1/echo/1",
        &[
            ("x-request-timeout", "150ms"),
            ("grpc-metadata-x-echo-delay-ms", "2000"),
        ],
    )
    .await;
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    get_with(&gw, "/v1/echo/1", &[("grpc-timeout", "700m")]).await;
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    let sent: u64 = seen["grpc-timeout"]
        .to_str()
        .unwrap()
        .trim_end_matches(|c: char| c.is_alphabetic())
        .parse()
        .unwrap();
    assert!(
        sent > 0,
        "the smaller client deadline is propagated: {:?}",
        seen["grpc-timeout"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_response_headers() {
    let echo = echo::start().await;
    let cors = "cors: { allow_origins: [\"https://shop.example\"], allow_headers: [authorization, content-type], max_age: 10m }\n";
    let routes =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway_with(&echo, cors, "", routes).await;
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, gw.url("/v1/echo/1"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let calls = echo.calls.load(Ordering::SeqCst);
    let response = preflight("https://shop.example").await.unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert_eq!(
        preflight("https://evil.example").await.unwrap().status(),
        403
    );
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls,
        "preflights never reach the backend"
    );

    let response = get_with(&gw, "/v1/echo/1", &[("origin", "https://shop.example")]).await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-trace-id")
    );
    let response = get_with(&gw, "/v1/echo/1", &[("origin", "https://evil.example")]).await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_middleware_is_a_load_error() {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "")
    );
    let dir = gateway::TempDir::new("mw-bad");
    dir.write(
        "switchboard.yaml",
        &format!("listen: 127.0.0.1:0\n{config}"),
    );
    dir.write(
        "m.yaml",
        "routes:\n  - http: { get: \"/a\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }\n    auth: required\n    rate_limit: nope\n",
    );
    let errors = match switchboard::Gateway::load(&dir.path().join("switchboard.yaml")).await {
        Ok(_) => panic!("should be refused"),
        Err(errors) => errors.to_string(),
    };
    assert!(
        errors.contains("m.yaml:2: `auth: required` needs an `auth:` section"),
        "{errors}"
    );
    assert!(
        errors.contains("m.yaml:2: unknown rate limit policy `nope`"),
        "{errors}"
    );
}
