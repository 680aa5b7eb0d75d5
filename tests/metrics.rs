//! `/metrics` as an operator scrapes it: requests labelled by the route's template as
//! written (never the raw path), method and status code; reloads; build info.

mod support;

use support::gateway::{self, client, echo_protos};

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn requests_are_labelled_by_template_method_and_code() {
    // Handles are made when routes compile: the recorder must exist first.
    switchboard::telemetry::prometheus();
    let echo = support::echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    let mappings = r#"
routes:
  - http: { get: "/v1/metered/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    name: metered-get
  - http: { get: "/v1/metered-static" }
    static: { status: 418, body: { teapot: true } }
"#;
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    let http = client();
    for id in ["a", "b", "c"] {
        let response = http
            .get(gw.url(&format!("/v1/metered/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let failed = http
        .get(gw.url("/v1/metered/x"))
        .header("grpc-metadata-x-echo-fail", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 404);
    assert_eq!(
        http.get(gw.url("/v1/metered-static"))
            .send()
            .await
            .unwrap()
            .status(),
        418
    );
    // A method no route has and a client cannot use to mint label values.
    let odd = http
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            gw.url("/nowhere/at/all"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 404);
    assert_eq!(gw.gateway.reload().await.map_err(|e| e.to_string()), Ok(()));

    let text = gateway::get_text(gw.admin_url("/metrics")).await;
    let route = r#"route="/v1/metered/{id}""#;
    assert_eq!(
        sample(
            &text,
            "switchboard_http_requests_total",
            &[route, r#"method="GET""#, r#"code="200""#]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchboard_http_requests_total",
            &[route, r#"method="GET""#, r#"code="404""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchboard_http_requests_total",
            &[r#"route="/v1/metered-static""#, r#"code="418""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "switchboard_http_request_duration_seconds_count",
            &[route, r#"method="GET""#]
        ),
        Some(4.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "switchboard_http_requests_total",
            &[r#"route="unmatched""#, r#"method="OTHER""#, r#"code="404""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // Never a raw path, nor the client's method.
    for raw in ["/v1/metered/a", "/nowhere", "BREW", "metered-get"] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("switchboard_http") && l.contains(raw)),
            "`{raw}` leaked into a label:\n{text}"
        );
    }
    assert!(
        sample(
            &text,
            "switchboard_upstream_requests_total",
            &[r#"upstream="echo""#, r#"code="NotFound""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "switchboard_config_reloads_total",
            &[r#"result="ok""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = sample(
        &text,
        "switchboard_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap_or_else(|| panic!("no last-success timestamp:\n{text}"));
    assert!((now - last).abs() < 60.0, "timestamp {last} vs now {now}");
    let revision = format!(r#"revision="{}""#, switchboard::telemetry::REVISION);
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        sample(&text, "switchboard_build_info", &[&version, &revision]),
        Some(1.0),
        "{text}"
    );
}
