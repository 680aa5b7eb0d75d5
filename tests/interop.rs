//! Interop with grpc-go, the most common gRPC server: a plain grpc-go server
//! (tests/interop/grpc-go, built offline from Debian's `golang-go` and
//! `golang-google-grpc-dev` by its build.sh) behind the gateway, under steady load with
//! idle gaps, while the server retires connections with GOAWAY (max connection age) and
//! enforces grpc-go's keepalive policy. No request may fail.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::gateway::{self, client};
use support::grpc_go::{self, GoServer};

async fn gateway_for(server: &GoServer) -> gateway::TestGateway {
    let (config, mappings) = grpc_go::echo_gateway_files(server.addr, "");
    gateway::start(&config, &[("m.yaml", &mappings)]).await
}

/// Unary calls (a non-idempotent POST and a GET) at steady concurrency in phases with
/// idle gaps, while grpc-go retires every connection after about a second (GOAWAY, then
/// a grace period for in-flight calls). Requests the server refused unprocessed are
/// resent on a new connection; none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaways_and_idle_gaps_lose_no_request() {
    let server = grpc_go::start(&[
        "-max-connection-age",
        "1s",
        "-max-connection-age-grace",
        "10s",
    ]);
    let gw = gateway_for(&server).await;
    let http = client();
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for phase in 0..3 {
        let running = Arc::new(AtomicBool::new(true));
        let workers: Vec<_> = (0..32)
            .map(|worker| {
                let (http, running, ok, failures) =
                    (http.clone(), running.clone(), ok.clone(), failures.clone());
                let (post, get) = (gw.url("/v1/echo"), gw.url(&format!("/v1/echo/w{worker}")));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while running.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("p{phase}w{worker}n{n}");
                        let sent = if n.is_multiple_of(2) {
                            http.post(&post)
                                .json(&json!({ "id": id, "name": "x" }))
                                .send()
                        } else {
                            http.get(&get).send()
                        };
                        match sent.await {
                            Ok(response) if response.status() == 200 => {
                                let body: Value = response.json().await.unwrap_or_default();
                                let expected = if n.is_multiple_of(2) {
                                    id
                                } else {
                                    format!("w{worker}")
                                };
                                if body["id"] == expected.as_str() {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failures.lock().unwrap().push(format!("wrong body {body}"));
                                }
                            }
                            Ok(response) => {
                                let status = response.status();
                                let body = response.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{status} {body}"));
                            }
                            // With its causes: which side closed what.
                            Err(error) => failures.lock().unwrap().push(format!("{error:?}")),
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        running.store(false, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
        // An idle gap: the connection stays open with no call on it.
        if phase < 2 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let failures = failures.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed; first ones: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 300, "only {ok} requests in 9 s of load");
}

/// A server stream stays open across the server's GOAWAY (it is below the last stream
/// id: it finishes within the grace period), and calls made meanwhile go to a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_stream_finishes_after_goaway() {
    let server = grpc_go::start(&[
        "-max-connection-age",
        "500ms",
        "-max-connection-age-grace",
        "10s",
    ]);
    let gw = gateway_for(&server).await;
    let http = client();
    // 40 messages 50 ms apart: the stream lives 2 s, across several GOAWAYs.
    let stream = http
        .get(gw.url("/v1/echo/s1/stream"))
        .header("grpc-metadata-x-echo-count", "40")
        .header("grpc-metadata-x-echo-gap-ms", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let unary = async {
        for _ in 0..40 {
            let response = http.get(gw.url("/v1/echo/u")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (body, ()) = tokio::join!(stream.text(), unary);
    let lines: Vec<Value> = body
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        40,
        "every message of the stream arrived: {lines:?}"
    );
    assert!(lines.iter().all(|m| m["id"] == "s1"), "{lines:?}");
}

/// grpc-go's health service answers through the gateway's health checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_against_grpc_go() {
    let server = grpc_go::start(&[]);
    let (config, mappings) = grpc_go::echo_gateway_files(
        server.addr,
        "    health_check: { interval: 100ms, timeout: 500ms }\n",
    );
    let gw = gateway::start(&config, &[("m.yaml", &mappings)]).await;
    let mut healthy = Value::Null;
    for _ in 0..50 {
        let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
        healthy = upstreams["upstreams"][0]["health"][0]["healthy"].clone();
        if healthy == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthy, true, "grpc-go's grpc.health.v1 reports SERVING");
}
