//! Live reload from watched files, the way files really change: an editor's rename-over, a
//! file deleted and re-created, a new file in a watched folder, a Kubernetes ConfigMap
//! `..data` symlink swap. A broken change is refused, reported and counted while the old
//! configuration keeps serving, and requests never fail across reloads.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::gateway::{self, TestGateway, client, echo_protos};
use switchboard::gateway::watch;

/// A change must be live within this long (the contract's 2 s).
const LIVE_WITHIN: Duration = Duration::from_secs(2);

fn hello(version: u64) -> String {
    format!(
        "routes:\n  - http: {{ get: \"/v1/hello\" }}\n    static: {{ body: {{ version: {version} }} }}\n"
    )
}

/// A gateway on `mappings/` (holding `files`) with the file watcher running.
async fn watched(extra_config: &str, files: &[(&str, &str)]) -> (TestGateway, watch::FileWatch) {
    let config = format!("mappings: [mappings/]\n{extra_config}");
    let gw = gateway::start(&config, files).await;
    let watch = watch::spawn(gw.gateway.clone());
    // Let the watcher register its folders before the test starts changing files.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (gw, watch)
}

async fn get(gw: &TestGateway, path: &str) -> (u16, Value) {
    let response = client().get(gw.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `path` until it answers 200 with `expected`, failing after [`LIVE_WITHIN`].
/// Returns how long it took.
async fn live(gw: &TestGateway, path: &str, expected: Value) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get(gw, path).await;
        if status == 200 && body == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < LIVE_WITHIN,
            "{path} not live within {LIVE_WITHIN:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn admin_routes(gw: &TestGateway) -> Value {
    gateway::get_json(gw.admin_url("/admin/routes")).await
}

/// Waits until the gateway has refused `count` reloads in all.
async fn refused(gw: &TestGateway, count: u64) {
    let started = Instant::now();
    while gw.gateway.reload_failures.load(Ordering::Relaxed) < count {
        assert!(
            started.elapsed() < LIVE_WITHIN,
            "reload failure #{count} not seen within {LIVE_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What an editor does on save: write a temp file, rename it over the original.
fn rename_over(path: &Path, text: &str) {
    let temp = path.with_extension("yaml.swp~");
    std::fs::write(&temp, text).expect("write temp file");
    std::fs::rename(&temp, path).expect("rename over");
}

#[tokio::test]
async fn an_editor_rename_over_is_live_within_two_seconds() {
    let (gw, _watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    live(&gw, "/v1/hello", json!({ "version": 1 })).await;
    rename_over(&gw.dir.path().join("mappings/routes.yaml"), &hello(2));
    let took = live(&gw, "/v1/hello", json!({ "version": 2 })).await;
    eprintln!("rename-over live after {took:?}");
    assert_eq!(gw.gateway.reloads.load(Ordering::Relaxed), 1);

    // The config file itself, rewritten the same way.
    let config = gw.dir.path().join("switchboard.yaml");
    let text = std::fs::read_to_string(&config).expect("read config");
    rename_over(
        &config,
        &text.replace("mappings: [mappings/]", "mappings: [mappings/, more/]"),
    );
    // `more/` does not exist: the reload is refused naming it, and the old table serves.
    refused(&gw, 1).await;
    let report = admin_routes(&gw).await;
    let errors = report["last_reload_error"].to_string();
    assert!(errors.contains("more"), "{report}");
    live(&gw, "/v1/hello", json!({ "version": 2 })).await;
}

#[tokio::test]
async fn a_file_deleted_and_re_created_is_picked_up() {
    let (gw, _watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    let routes = gw.dir.path().join("mappings/routes.yaml");
    std::fs::remove_file(&routes).expect("delete");
    // Long enough for the deletion alone to be handled (the route goes away with it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&routes, hello(2)).expect("re-create");
    live(&gw, "/v1/hello", json!({ "version": 2 })).await;

    // The config file deleted: nothing is reloaded (nor reported) until it is back.
    let config = gw.dir.path().join("switchboard.yaml");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::remove_file(&config).expect("delete config");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 0);
    live(&gw, "/v1/hello", json!({ "version": 2 })).await;
    // Re-created naming a folder that did not exist at start: it is watched from now on.
    gw.dir.write(
        "more/extra.yaml",
        &hello(3).replace("/v1/hello", "/v1/extra"),
    );
    std::fs::write(
        &config,
        text.replace("mappings: [mappings/]", "mappings: [mappings/, more/]"),
    )
    .expect("re-create config");
    live(&gw, "/v1/extra", json!({ "version": 3 })).await;
    std::fs::write(
        gw.dir.path().join("more/extra.yaml"),
        hello(4).replace("/v1/hello", "/v1/extra"),
    )
    .expect("change the new folder's file");
    live(&gw, "/v1/extra", json!({ "version": 4 })).await;
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_new_file_in_a_watched_folder_adds_its_routes() {
    let (gw, _watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    assert_eq!(get(&gw, "/v1/second").await.0, 404);
    gw.dir.write(
        "mappings/nested/second.yaml",
        &hello(7).replace("/v1/hello", "/v1/second"),
    );
    live(&gw, "/v1/second", json!({ "version": 7 })).await;
    live(&gw, "/v1/hello", json!({ "version": 1 })).await;
}

#[tokio::test]
async fn a_configmap_data_symlink_swap_is_picked_up() {
    // A ConfigMap volume: each key a symlink through `..data`, which points at a
    // timestamped folder and is replaced atomically on update.
    let (gw, _watch) = watched(
        "",
        &[
            ("mappings/routes.yaml", &hello(1)),
            (
                "configmap/..2026_01_01_v1/extra.yaml",
                &hello(1).replace("/v1/hello", "/v1/extra"),
            ),
        ],
    )
    .await;
    let volume = gw.dir.path().join("configmap");
    std::os::unix::fs::symlink("..2026_01_01_v1", volume.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/extra.yaml", volume.join("extra.yaml")).expect("key");
    let config = gw.dir.path().join("switchboard.yaml");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        text.replace("mappings: [mappings/]", "mappings: [mappings/, configmap/]"),
    )
    .expect("write config");
    // The hidden timestamped folder is not loaded a second time (that would conflict).
    live(&gw, "/v1/extra", json!({ "version": 1 })).await;

    // The kubelet's update: new folder, new symlink renamed over `..data`, old folder gone.
    gw.dir.write(
        "configmap/..2026_01_02_v2/extra.yaml",
        &hello(2).replace("/v1/hello", "/v1/extra"),
    );
    std::os::unix::fs::symlink("..2026_01_02_v2", volume.join("..data_tmp")).expect("tmp");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap");
    std::fs::remove_dir_all(volume.join("..2026_01_01_v1")).expect("remove old");
    live(&gw, "/v1/extra", json!({ "version": 2 })).await;
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_broken_change_is_refused_reported_and_counted() {
    // Counters are recorded only once the recorder exists.
    switchboard::telemetry::prometheus();
    let (gw, _watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    let routes = gw.dir.path().join("mappings/routes.yaml");
    std::fs::write(
        &routes,
        "routes:\n  - http: { get: \"/v1/hello\" }\n    grpc: { upstream: nowhere, method: a.B/C }\n",
    )
    .expect("write broken");
    refused(&gw, 1).await;
    let (status, body) = get(&gw, "/v1/hello").await;
    assert_eq!((status, body), (200, json!({ "version": 1 })));

    let report = admin_routes(&gw).await;
    let errors = report["last_reload_error"]
        .as_array()
        .unwrap_or_else(|| panic!("no last_reload_error: {report}"));
    let expected = format!("{}:2: ", routes.display());
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with(&expected) && e.contains("nowhere"))),
        "expected `{expected}…nowhere…` in {errors:?}"
    );
    assert_eq!(report["reload_failures"], 1);
    let metrics = gateway::get_text(gw.admin_url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_config_reloads_total{result=\"error\"}")),
        "{metrics}"
    );

    // Fixed: live again, and the error is cleared.
    std::fs::write(&routes, hello(2)).expect("fix");
    live(&gw, "/v1/hello", json!({ "version": 2 })).await;
    assert_eq!(admin_routes(&gw).await["last_reload_error"], Value::Null);
}

#[tokio::test]
async fn touching_a_file_without_changing_it_does_not_reload() {
    let (gw, _watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    let routes = gw.dir.path().join("mappings/routes.yaml");
    rename_over(&routes, &hello(1));
    std::fs::write(gw.dir.path().join("mappings/notes.txt"), "not a route file").expect("write");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw.gateway.reloads.load(Ordering::Relaxed), 0);
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_idle_watcher_stays_idle() {
    // Reading the files (the watcher's own fingerprint, the loader) must not count as a
    // change, or the watcher would read them again and again.
    let (gw, watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    rename_over(&gw.dir.path().join("mappings/routes.yaml"), &hello(2));
    live(&gw, "/v1/hello", json!({ "version": 2 })).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let settled = watch.batches();
    assert!(settled >= 1, "the change was never seen as a batch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        watch.batches(),
        settled,
        "the watcher keeps waking up on its own reads"
    );
    assert_eq!(gw.gateway.reloads.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_busy_log_next_to_the_config_does_not_wake_the_watcher() {
    // The gateway's own log written into its config folder: the watcher must not read
    // every file again at each write.
    let (gw, watch) = watched("", &[("mappings/routes.yaml", &hello(1))]).await;
    let log = gw.dir.path().join("gateway.log");
    let mut file = std::fs::File::create(&log).expect("create log");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let settled = watch.batches();
    for line in 0..60 {
        std::io::Write::write_all(&mut file, format!("line {line}\n").as_bytes()).expect("log");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(watch.batches(), settled, "log writes woke the watcher");
    // A real change in the same folder is still seen.
    let config = gw.dir.path().join("switchboard.yaml");
    let text = std::fs::read_to_string(&config).expect("read config");
    rename_over(&config, &format!("{text}\n# edited\n"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(watch.batches() > settled, "the config's change was missed");
}

/// A steady request loop (a static route and a gRPC route) through 20 file-driven reloads,
/// valid and broken alternating: no request fails, and the gRPC upstream, whose config
/// does not change, keeps its connection.
#[tokio::test]
async fn requests_never_fail_across_twenty_file_driven_reloads() {
    let echo = support::echo::start().await;
    let upstreams = format!(
        "descriptors: [\"{}\"]\nupstreams:\n{}",
        echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "")
    );
    let routes = |version: u64| {
        format!(
            "{}  - http: {{ get: \"/v1/echo/{{id}}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n",
            hello(version)
        )
    };
    let (gw, _watch) = watched(&upstreams, &[("mappings/routes.yaml", &routes(0))]).await;
    let upstream_before = gw.gateway.table().upstreams.grpc["echo"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for worker in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        let (hello_url, echo_url) = (gw.url("/v1/hello"), gw.url(&format!("/v1/echo/w{worker}")));
        loops.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for url in [&hello_url, &echo_url] {
                    match client.get(url.as_str()).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{url}: {}", r.status())),
                        Err(e) => failures.push(format!("{url}: {e}")),
                    }
                }
            }
            failures
        }));
    }

    let path = gw.dir.path().join("mappings/routes.yaml");
    let mut broken = 0;
    for reload in 1..=20u64 {
        if reload % 2 == 1 {
            rename_over(&path, &routes(reload));
            live(&gw, "/v1/hello", json!({ "version": reload })).await;
        } else {
            // A different mistake each time, so each one is a change.
            std::fs::write(&path, format!("{}  - http: [{reload}\n", routes(reload)))
                .expect("write broken");
            broken += 1;
            refused(&gw, broken).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in loops {
        failures.extend(task.await.expect("request loop"));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let served = ok.load(Ordering::Relaxed);
    eprintln!("{served} requests served across 20 reloads");
    assert!(served > 100, "the loop barely ran: {served}");
    assert_eq!(gw.gateway.reloads.load(Ordering::Relaxed), 10);
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 10);
    assert!(
        Arc::ptr_eq(&upstream_before, &gw.gateway.table().upstreams.grpc["echo"]),
        "the unchanged upstream was rebuilt"
    );
}
