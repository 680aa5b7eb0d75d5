//! The `switchboard` binary as operators use it: `check` errors with `path:line`,
//! `routes`, `openapi`, and `serve` with its admin API, reload (SIGHUP, POST
//! /admin/reload, refused when bad) and draining shutdown on SIGTERM.

mod support;

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::gateway::{self, TempDir, client, echo_protos, repo};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchboard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// A config in a temp folder with the echo protos and the given mapping file.
fn config_with(mapping: &str) -> TempDir {
    let dir = TempDir::new("cli");
    dir.write(
        "switchboard.yaml",
        &format!(
            "listen: 127.0.0.1:0\ndescriptors: [\"{}\"]\nmappings: [mappings/]\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://127.0.0.1:1\"] }}\n",
            echo_protos()
        ),
    );
    dir.write("mappings/routes.yaml", mapping);
    dir
}

fn check(dir: &TempDir) -> (i32, String) {
    let config = dir.path().join("switchboard.yaml");
    let (code, _, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    (code, stderr)
}

#[test]
fn check_accepts_the_demo_config() {
    let config = repo().join("switchboard.yaml");
    let (code, stdout, stderr) = run(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_reports_each_error_with_file_and_line() {
    let cases = [
        (
            "routes:\n  - http: { get: \"/a\" }\n    grpc: { upstream: nowhere, method: test.echo.v1.EchoService/Get }\n",
            2,
            "unknown gRPC upstream `nowhere`",
        ),
        (
            "routes:\n\n  - http: { get: \"/a\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Nope }\n",
            3,
            "unknown gRPC method",
        ),
        (
            "routes:\n  - http: { get: \"/a/{missing}\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }\n",
            2,
            "has no field `missing`",
        ),
        (
            "routes:\n  - http: { get: \"/a/{id\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }\n",
            2,
            "unbalanced",
        ),
        (
            "routes:\n  - http: { post: \"/a\", body: \"nope\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }\n",
            2,
            "body field `nope`",
        ),
        (
            "routes:\n  - http: { get: \"/a/{id}\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }\n  - http: { get: \"/a/{name}\" }\n    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }\n",
            4,
            "conflicts with the route defined at",
        ),
        (
            "routes:\n  - http: { get: \"/a\" }\n    grcp: {}\n",
            3,
            "grcp",
        ),
        ("routes:\n  - http: { get: \"/a\" \n", 2, "unclosed bracket"),
    ];
    for (mapping, line, message) in cases {
        let dir = config_with(mapping);
        let (code, stderr) = check(&dir);
        assert_eq!(code, 1, "{mapping}\n{stderr}");
        let file = dir.path().join("mappings/routes.yaml");
        let expected = format!("{}:{line}: ", file.display());
        assert!(
            stderr.contains(&expected),
            "want `{expected}` in:\n{stderr}"
        );
        assert!(stderr.contains(message), "want `{message}` in:\n{stderr}");
    }
}

#[test]
fn check_reports_proto_and_config_errors() {
    let dir = TempDir::new("cli-proto");
    dir.write(
        "protos/bad.proto",
        "syntax = \"proto3\";\npackage x;\nmessage A {\n  strng id = 1;\n}\n",
    );
    dir.write(
        "switchboard.yaml",
        "descriptors: [protos/]\nmappings: []\nupstreams: {}\n",
    );
    let (code, stderr) = check(&dir);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{}:4: ",
            dir.path().join("protos/bad.proto").display()
        )),
        "{stderr}"
    );

    let dir = TempDir::new("cli-config");
    dir.write(
        "switchboard.yaml",
        "listen: 127.0.0.1:0\nlimits: { max_body: 1 furlong }\n",
    );
    let (code, stderr) = check(&dir);
    assert_eq!(code, 1);
    assert!(stderr.contains("switchboard.yaml:2: "), "{stderr}");
}

#[test]
fn check_names_the_line_of_middleware_errors() {
    // Errors found when CORS, rate limits and the JWT verifier are built (not when the
    // YAML is parsed) still point at their section, or at the policy itself.
    let dir = TempDir::new("cli-middleware");
    dir.write(
        "switchboard.yaml",
        "listen: 127.0.0.1:0\n\
         mappings: []\n\
         cors:\n  allow_origins: []\n\
         rate_limits:\n  policies:\n    fine: { algorithm: token_bucket, rate: 5, per: 1s }\n\
         \x20   broken: { algorithm: token_bucket, rate: 5, per: 1s, key: nonsense }\n\
         auth:\n  jwt: { issuer: a, audiences: [b], algorithms: [RS256], jwks: nowhere.json }\n",
    );
    let (code, stderr) = check(&dir);
    assert_eq!(code, 1, "{stderr}");
    let file = dir.path().join("switchboard.yaml");
    // A section written as a block points at its first line of content.
    for (line, message) in [(4, "cors"), (8, "broken"), (10, "auth.jwt")] {
        let expected = format!("{}:{line}: ", file.display());
        let found = stderr
            .lines()
            .any(|l| l.contains(&expected) && l.contains(message));
        assert!(found, "want `{expected}` … `{message}` in:\n{stderr}");
    }
}

#[test]
fn routes_and_openapi_print_the_table() {
    let config = repo().join("switchboard.yaml");
    let (code, stdout, _) = run(&["routes", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("/v1/products/{id}")
            && stdout.contains("shop.catalog.v1.CatalogService.GetProduct"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["openapi", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    let document: Value = serde_json::from_str(&stdout).expect("OpenAPI is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert!(
        document["paths"]["/v1/products/{id}"]["get"].is_object(),
        "{document}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_ready(admin: &str) {
    for _ in 0..100 {
        if let Ok(r) = client().get(format!("{admin}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_refuses_bad_config_and_drains_on_sigterm() {
    let echo = support::echo::start().await;
    let (port, admin_port) = (free_port(), free_port());
    let dir = TempDir::new("serve");
    dir.write(
        "switchboard.yaml",
        &format!(
            "listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin_port}\nshutdown_grace: 5s\ndescriptors: [\"{}\"]\nmappings: [mappings/]\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://{}\"] }}\n",
            echo_protos(),
            echo.addr
        ),
    );
    let routes =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    dir.write("mappings/routes.yaml", routes);
    let child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            dir.path().join("switchboard.yaml").to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_ready(&admin).await;

    // Admin API.
    let health = gateway::get_json(format!("{admin}/healthz")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(
        client()
            .get(format!("{base}/v1/echo/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = gateway::get_text(format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("switchboard_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_upstream_requests_total"),
        "{metrics}"
    );
    let listed = gateway::get_json(format!("{admin}/admin/routes")).await;
    assert!(listed["routes"].as_array().unwrap().len() >= 9);
    let upstreams = gateway::get_json(format!("{admin}/admin/upstreams")).await;
    assert_eq!(upstreams["upstreams"][0]["name"], "echo");
    let page = gateway::get_text(format!("{admin}/")).await;
    assert!(page.contains("<title>Switchboard</title>"));

    // SIGHUP picks up a new route.
    dir.write(
        "mappings/routes.yaml",
        &format!(
            "{routes}  - http: {{ get: \"/v1/hello\" }}\n    static: {{ body: {{ hi: 1 }} }}\n"
        ),
    );
    signal(child.id(), "HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if client()
            .get(format!("{base}/v1/hello"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP reload did not add the route");

    // A broken config is refused; the old one keeps serving and the error is reported.
    dir.write(
        "mappings/routes.yaml",
        "routes:\n  - http: { get: \"/x\" }\n    grpc: { upstream: ghost, method: a.B/C }\n",
    );
    let response = client()
        .post(format!("{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let refused: Value = response.json().await.unwrap();
    assert!(
        refused["errors"][0]
            .as_str()
            .unwrap()
            .contains("routes.yaml:2: unknown gRPC upstream `ghost`"),
        "{refused}"
    );
    assert_eq!(
        client()
            .get(format!("{base}/v1/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let listed = gateway::get_json(format!("{admin}/admin/routes")).await;
    assert_eq!(listed["reload_failures"], 1);
    assert!(
        listed["last_reload_error"][0]
            .as_str()
            .unwrap()
            .contains("ghost")
    );
    let metrics = gateway::get_text(format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("switchboard_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );

    // SIGTERM while a slow request is in flight: it completes, then the process exits 0.
    let slow = tokio::spawn({
        let url = format!("{base}/v1/echo/slow");
        async move {
            client()
                .get(url)
                .header("grpc-metadata-x-echo-delay-ms", "700")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(child.id(), "TERM");
    assert_eq!(
        slow.await.unwrap().expect("in-flight request completes"),
        200
    );
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&status.stderr);
    let access = logs
        .lines()
        .find(|l| l.contains("switchboard::access") && l.contains("/v1/echo/1"))
        .unwrap_or_else(|| panic!("no access log line:\n{logs}"));
    let access: Value = serde_json::from_str(access).expect("JSON log lines");
    assert_eq!(
        access["span"]["trace_id"].as_str().unwrap().len(),
        32,
        "{access}"
    );
}

/// The default log format, as a process under a supervisor writes it (stderr is a pipe):
/// no colour codes, one access line per request with the request span's fields, and
/// `RUST_LOG` still decides (`switchboard::access=off`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_log_format_writes_plain_access_lines() {
    let echo = support::echo::start().await;
    for (filter, expect_lines) in [("info", true), ("info,switchboard::access=off", false)] {
        let (port, admin_port) = (free_port(), free_port());
        let dir = TempDir::new("access-log");
        dir.write(
            "switchboard.yaml",
            &format!(
                "listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{admin_port}\ndescriptors: [\"{}\"]\nmappings: [mappings/]\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://{}\"] }}\n",
                echo_protos(),
                echo.addr
            ),
        );
        dir.write(
            "mappings/routes.yaml",
            "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n",
        );
        let child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                dir.path().join("switchboard.yaml").to_str().unwrap(),
            ])
            .env("RUST_LOG", filter)
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("http://127.0.0.1:{admin_port}")).await;
        for path in ["/v1/echo/1", "/v1/nowhere"] {
            client().get(format!("{base}{path}")).send().await.unwrap();
        }
        signal(child.id(), "TERM");
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let logs = String::from_utf8_lossy(&output.stderr);
        assert!(
            !logs.contains('\u{1b}'),
            "colour codes in a piped log:\n{logs}"
        );
        let access: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("switchboard::access"))
            .collect();
        if !expect_lines {
            assert!(access.is_empty(), "{filter}: {access:?}");
            continue;
        }
        assert_eq!(access.len(), 2, "{logs}");
        for (line, path, status, route) in [
            (access[0], "/v1/echo/1", 200, "GET /v1/echo/{id}"),
            (access[1], "/v1/nowhere", 404, "-"),
        ] {
            let (time, rest) = line.split_once("  INFO request{trace_id=\"").unwrap();
            assert_eq!(time.len(), "2026-12-03T13:30:58.455813Z".len(), "{line}");
            assert!(time.ends_with('Z'), "{line}");
            let (trace_id, rest) = rest.split_once('"').unwrap();
            assert_eq!(trace_id.len(), 32, "{line}");
            let rest = rest
                .strip_prefix(&format!(
                    " method=GET path=\"{path}\"}}: switchboard::access: request method=GET status={status} route=\"{route}\" micros="
                ))
                .unwrap_or_else(|| panic!("{line}"));
            assert!(rest.parse::<u64>().is_ok(), "{line}");
        }
    }
}
