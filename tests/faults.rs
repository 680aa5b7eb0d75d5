//! The fault suite: what clients see when the things behind the gateway fail, against
//! real processes and services. A grpc-go backend killed mid-load and restarted, calls
//! stalling past their deadline, a backend resetting streams, the RabbitMQ and Redis
//! connections cut and restored (through a cuttable TCP proxy), and thousands of slow
//! clients next to normal ones. (A broken reload under load is tests/reload.rs:
//! `requests_never_fail_across_twenty_file_driven_reloads`.)

mod support;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::amqp::{BROKER, connect, require_broker, unique, wait_connected};
use support::gateway::{self, client};
use support::grpc_go;
use support::proxy::CutProxy;
use tokio::io::AsyncWriteExt;

/// What a load loop saw: count by status (0: transport error), and the slowest answer.
#[derive(Default, Debug)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    slowest: Duration,
    /// (time since the load started, status) of every answer, in order.
    timeline: Vec<(Duration, u16)>,
}

/// Runs `workers` loops of `request` until `running` clears; each answer is tallied.
async fn load<F, Fut>(workers: usize, running: Arc<AtomicBool>, request: F) -> Tally
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let (running, tally, request) = (running.clone(), tally.clone(), request.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = Instant::now();
                    let status = request(worker, n).await;
                    let took = sent.elapsed();
                    let mut tally = tally.lock().unwrap();
                    *tally.by_status.entry(status).or_default() += 1;
                    tally.slowest = tally.slowest.max(took);
                    tally.timeline.push((started.elapsed(), status));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        }
        Err(_) => 0,
    }
}

/// A grpc-go backend killed (SIGKILL) under load: clients get 503 at once, never a 500
/// or a hang; once it is back on the same port the gateway serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_503_then_recovers() {
    let addr = free_port().to_string();
    let mut server = grpc_go::start(&["-addr", &addr]);
    let (config, mappings) = grpc_go::echo_gateway_files(server.addr, "    timeout: 3s\n");
    let gw = gateway::start(&config, &[("m.yaml", &mappings)]).await;
    let running = Arc::new(AtomicBool::new(true));
    let http = client();
    let url = gw.url("/v1/echo/k");
    let loader = tokio::spawn(load(16, running.clone(), move |worker, _| {
        // Half the calls take a while, so some are in flight when the process dies.
        let delay = if worker % 2 == 0 { "0" } else { "200" };
        status_of(
            http.get(&url)
                .header("grpc-metadata-x-echo-delay-ms", delay),
        )
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _server = grpc_go::start(&["-addr", &addr]);
    let restarted = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);
    let tally = loader.await.unwrap();

    let unexpected: Vec<_> = tally
        .by_status
        .keys()
        .filter(|s| ![200, 503].contains(*s))
        .collect();
    assert!(
        unexpected.is_empty(),
        "only 200 and 503: {:?}",
        tally.by_status
    );
    assert!(
        tally.by_status.get(&503).copied().unwrap_or(0) > 0,
        "the kill was felt"
    );
    // No hang: every answer within the 3 s deadline (with a margin for a loaded machine).
    assert!(
        tally.slowest < Duration::from_millis(3500),
        "no hang: {:?}",
        tally.slowest
    );
    // Recovered: the last second is all 200.
    let end = tally.timeline.last().unwrap().0;
    let late: Vec<_> = tally
        .timeline
        .iter()
        .filter(|(at, _)| *at + Duration::from_secs(1) > end)
        .collect();
    assert!(
        late.len() > 20 && late.iter().all(|(_, s)| *s == 200),
        "restarted after {restarted:?}; not recovered: {late:?}"
    );
}

/// Calls to a backend that stalls are answered with 504 at their deadline (plus a small
/// margin), all of them, concurrently; the backend then serves normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_calls_are_answered_at_their_deadline() {
    let server = grpc_go::start(&[]);
    let (config, mappings) = grpc_go::echo_gateway_files(server.addr, "    timeout: 300ms\n");
    let gw = gateway::start(&config, &[("m.yaml", &mappings)]).await;
    let http = client();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let request = http
                .get(gw.url("/v1/echo/stall"))
                .header("grpc-metadata-x-echo-delay-ms", "10000");
            tokio::spawn(async move {
                let started = Instant::now();
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                (status, body["code"].clone(), started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (status, code, took) = call.await.unwrap();
        assert_eq!((status, code), (504, json!(4)));
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "answered after {took:?}"
        );
    }
    let response = http.get(gw.url("/v1/echo/fine")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// An HTTP/2 backend that resets streams (raw h2, no gRPC library in between): streams
/// refused with REFUSED_STREAM were never processed and are resent transparently;
/// other resets are a prompt error with a google.rpc.Status; the connection keeps
/// serving the calls it does not reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_resets_streams() {
    let backend = ResettingBackend::start().await;
    let (config, mappings) = grpc_go::echo_gateway_files(backend.addr, "    timeout: 2s\n");
    let gw = gateway::start(&config, &[("m.yaml", &mappings)]).await;
    let http = client();
    let get = |id: &str, reset: &str| {
        http.get(gw.url(&format!("/v1/echo/{id}")))
            .header("grpc-metadata-x-reset", reset.to_string())
            .send()
    };
    for i in 0..20 {
        let id = format!("refused{i}");
        let response = get(&id, "refuse-first").await.unwrap();
        assert_eq!(response.status(), 200, "a refused stream is resent");
        assert_eq!(response.json::<Value>().await.unwrap()["id"], id.as_str());
    }
    assert_eq!(
        backend.attempts.load(Ordering::SeqCst),
        40,
        "each refused once, then served"
    );

    for reset in ["internal", "cancel"] {
        let started = Instant::now();
        let response = get("r", reset).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(
            (500..600).contains(&status) && body["code"].is_u64() && body["message"].is_string(),
            "{reset}: {status} {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{reset}: prompt"
        );
        let response = get("after", "none").await.unwrap();
        assert_eq!(response.status(), 200, "after a {reset} reset");
    }
}

/// A raw HTTP/2 server speaking just enough gRPC to echo a unary request, which resets
/// streams on request (`x-reset` metadata): `refuse-first` (REFUSED_STREAM on the first
/// attempt of each path), `internal` (INTERNAL_ERROR), `cancel` (CANCEL).
struct ResettingBackend {
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
}

impl ResettingBackend {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let attempts = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
        let counter = attempts.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (counter, seen) = (counter.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        tokio::spawn(Self::answer(
                            request,
                            respond,
                            counter.clone(),
                            seen.clone(),
                        ));
                    }
                });
            }
        });
        Self { addr, attempts }
    }

    async fn answer(
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        attempts: Arc<AtomicU64>,
        seen: Arc<Mutex<HashSet<String>>>,
    ) {
        let reset = request
            .headers()
            .get("x-reset")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        match reset.as_str() {
            "internal" => return respond.send_reset(h2::Reason::INTERNAL_ERROR),
            "cancel" => return respond.send_reset(h2::Reason::CANCEL),
            "refuse-first" => {
                attempts.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let mut body = request.into_body();
        let mut message = Vec::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        // A resend carries the same message: refuse only its first attempt.
        if reset == "refuse-first" && seen.lock().unwrap().insert(format!("{message:?}")) {
            return respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let Ok(mut stream) = respond.send_response(response, false) else {
            return;
        };
        let _ = stream.send_data(bytes::Bytes::from(message), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = stream.send_trailers(trailers);
    }
}

/// RabbitMQ's connection cut and restored under a steady publish load: every publish
/// answered 202 is in the queue (none acknowledged and lost); during the cut publishes
/// fail with 503 promptly, and after it the gateway publishes again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cut_loses_no_acknowledged_publish() {
    require_broker().await;
    let proxy = CutProxy::start(BROKER).await;
    let queue = unique("faults-publish");
    let direct = connect().await;
    let channel = direct.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    let config = format!(
        "mappings: [m.yaml]\nupstreams:\n  mq:\n    amqp: {{ url: \"amqp://guest:guest@{}/%2f\" }}\n    timeout: 2s\n",
        proxy.addr
    );
    let routes = format!(
        "routes:\n  - http: {{ post: \"/publish\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: \"{queue}\", reply: false, persistent: true }}\n"
    );
    let gw = gateway::start(&config, &[("m.yaml", &routes)]).await;
    wait_connected(&gw, "mq").await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let (http, url, acked) = (client(), gw.url("/publish"), acknowledged.clone());
    let loader = tokio::spawn(load(8, running.clone(), move |worker, n| {
        let (http, url, acked) = (http.clone(), url.clone(), acked.clone());
        async move {
            let id = format!("w{worker}n{n}");
            let status = status_of(http.post(&url).json(&json!({ "id": id }))).await;
            if status == 202 {
                acked.lock().unwrap().push(id);
            }
            status
        }
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    support::wait_until("the gateway reconnects", Duration::from_secs(15), || {
        support::amqp::connected(&gw, "mq")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    let tally = loader.await.unwrap();

    let statuses: Vec<_> = tally.by_status.keys().copied().collect();
    assert!(statuses.iter().all(|s| [202, 503].contains(s)), "{tally:?}");
    assert!(
        tally.by_status.get(&503).copied().unwrap_or(0) > 0,
        "the cut was felt: {:?}",
        tally.by_status
    );
    assert!(
        tally.slowest < Duration::from_secs(3),
        "bounded by the deadline: {:?}",
        tally.slowest
    );
    let last = tally.timeline.last().unwrap();
    assert_eq!(last.1, 202, "publishing again after the cut");

    let mut in_queue = HashSet::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
        in_queue.insert(body["id"].as_str().unwrap().to_string());
    }
    let acknowledged = acknowledged.lock().unwrap();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !in_queue.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged publishes are not in the queue: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "{} publishes acknowledged, {} messages in the queue, statuses {:?}",
        acknowledged.len(),
        in_queue.len(),
        tally.by_status
    );
}

fn require_redis() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "Redis not reachable on 127.0.0.1:6379: start it with `redis-server --daemonize yes --port 6379 --save \"\"` (or scripts/services)"
        );
    }
}

/// Redis cut while rate limiting: the gateway keeps serving, each policy follows its
/// `on_store_error` (`allow`: served uncounted; `deny`: 503) within the store timeout,
/// and once Redis is back the limits count again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_while_rate_limiting_follows_the_policy() {
    require_redis();
    let proxy = CutProxy::start("127.0.0.1:6379").await;
    let echo = support::echo::start().await;
    let key = unique("rl");
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}rate_limits:\n  store: \"redis://{}\"\n  store_timeout: 100ms\n  policies:\n    lenient: {{ algorithm: token_bucket, rate: 100000, per: 1s, key: header.x-key, on_store_error: allow }}\n    strict: {{ algorithm: token_bucket, rate: 100000, per: 1s, key: header.x-key, on_store_error: deny }}\n    tight: {{ algorithm: fixed_window, rate: 3, per: 1m, key: header.x-key }}\n",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
        proxy.addr
    );
    let route = |path: &str, policy: &str| {
        format!(
            "  - http: {{ get: \"{path}/{{id}}\" }}\n    grpc: {{ upstream: echo, method: test.echo.v1.EchoService/Get }}\n    rate_limit: {policy}\n"
        )
    };
    let routes = format!(
        "routes:\n{}{}{}",
        route("/lenient", "lenient"),
        route("/strict", "strict"),
        route("/tight", "tight")
    );
    let gw = gateway::start(&config, &[("m.yaml", &routes)]).await;
    let http = client();
    let get = |path: &str| {
        let request = http.get(gw.url(path)).header("x-key", key.as_str());
        async move {
            let started = Instant::now();
            (status_of(request).await, started.elapsed())
        }
    };
    assert_eq!(get("/lenient/1").await.0, 200);
    assert_eq!(get("/strict/1").await.0, 200);

    proxy.cut();
    for _ in 0..20 {
        let (status, took) = get("/lenient/1").await;
        assert_eq!(status, 200, "allow: served while Redis is away");
        assert!(took < Duration::from_millis(600), "{took:?}");
        let (status, took) = get("/strict/1").await;
        assert_eq!(status, 503, "deny: refused while Redis is away");
        assert!(took < Duration::from_millis(600), "{took:?}");
    }
    // Uncounted while away: `tight` (allow by default) lets everything through.
    for _ in 0..5 {
        assert_eq!(get("/tight/1").await.0, 200);
    }

    proxy.restore();
    let back = Instant::now();
    while get("/strict/1").await.0 != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the store comes back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tight: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get("/tight/1").await.0);
        }
        statuses
    };
    assert_eq!(
        tight,
        vec![200, 200, 200, 429],
        "counting again once Redis is back"
    );
}

/// 2,000 clients trickling their request heads hold connections, but normal clients are
/// still served, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_clients_do_not_starve_normal_ones() {
    let echo = support::echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, "")
    );
    let routes =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway::start(&config, &[("m.yaml", routes)]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let (addr, stop) = (gw.addr, stop.clone());
        slow.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            if stream
                .write_all(b"GET /v1/echo/slow HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                return false;
            }
            // One header byte every 500 ms, until the test ends or the gateway hangs up.
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if stream.write_all(b"x").await.is_err() {
                    return false;
                }
            }
            true
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let http = client();
    let mut latencies = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        let response = http
            .get(gw.url(&format!("/v1/echo/n{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut still_open = 0;
    for task in slow {
        still_open += usize::from(task.await.unwrap());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("{still_open} slow clients held a connection; normal p99 {p99:?}");
    assert!(
        still_open > 1500,
        "the slow clients really held connections: {still_open}"
    );
    // Generous for a shared machine: starving would mean waiting on the slow ones (seconds).
    assert!(
        p99 < Duration::from_secs(1),
        "normal clients starved: p99 {p99:?}"
    );
}
