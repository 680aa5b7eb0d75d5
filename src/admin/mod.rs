//! The admin listener (contract §6): health, readiness, Prometheus metrics, the route
//! table, upstreams, reload, and a small dashboard page for people.

mod cache;
pub(crate) mod guard;

use crate::config::Balance;
use crate::gateway::Gateway;
use crate::routing::Target;
use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) fn router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/", get(dashboard))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/routes", get(routes))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/reload", post(reload))
        .route("/admin/cache", axum::routing::delete(cache::purge))
        .with_state(gateway)
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.ready.load(Ordering::Acquire) {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
            .into_response()
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut text = crate::telemetry::prometheus().render();
    // Endpoint series are written from the live table at each scrape, so endpoints that
    // DNS or a reload removed disappear instead of lingering.
    let table = gateway.table();
    let mut upstreams: Vec<_> = table.upstreams.grpc.values().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let views: Vec<_> = upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.endpoint_views()))
        .collect();
    crate::telemetry::render_endpoints(&mut text, &views);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn routes(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let table = gateway.table();
    let routes: Vec<_> = table
        .routes
        .iter()
        .map(|route| {
            let mut entry = json!({
                "name": route.name,
                "method": route.method.as_str(),
                "path": route.template.text,
                "source": route.location.to_string(),
            });
            if let Some(cache) = &route.cache {
                entry["cache"] = cache.describe();
            }
            match &route.target {
                Target::Grpc(grpc) => {
                    entry["target"] = json!({
                        "kind": if grpc.server_streaming { "grpc-server-stream" } else { "grpc" },
                        "upstream": grpc.upstream.name,
                        "method": grpc.method.full_name(),
                        "timeout_ms": grpc.timeout.as_millis() as u64,
                    });
                }
                Target::Static(s) => {
                    entry["target"] = json!({ "kind": "static", "status": s.status.as_u16() })
                }
                Target::Amqp(amqp) => {
                    entry["target"] = json!({
                        "kind": if amqp.reply { "amqp-rpc" } else { "amqp-publish" },
                        "upstream": amqp.upstream.name,
                        "exchange": amqp.exchange.as_str(),
                        "routing_key": amqp.routing_key.text,
                        "timeout_ms": amqp.timeout.as_millis() as u64,
                    });
                }
                Target::WebSocket(ws) => entry["target"] = ws.describe().to_json(),
                Target::Compose(compose) => entry["target"] = compose.describe(),
                Target::GrpcWeb(web) => {
                    entry["target"] = json!({
                        "kind": web.kind(),
                        "upstream": web.upstream.name,
                        "method": web.method_name(),
                        "timeout_ms": web.timeout.as_millis() as u64,
                    });
                }
            }
            entry
        })
        .collect();
    let last_error = gateway
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let loaded_at = gateway
        .loaded_at
        .lock()
        .map(|t| *t)
        .unwrap_or_else(|e| *e.into_inner())
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Json(json!({
        "config": gateway.config_path().display().to_string(),
        "loaded_at_unix": loaded_at,
        "reloads": gateway.reloads.load(Ordering::Relaxed),
        "reload_failures": gateway.reload_failures.load(Ordering::Relaxed),
        "last_reload_error": last_error,
        "routes": routes,
    }))
}

async fn upstreams(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let table = gateway.table();
    let mut names: Vec<_> = table.upstreams.grpc.keys().collect();
    names.sort();
    let mut upstreams: Vec<_> = names
        .into_iter()
        .map(|name| {
            let upstream = &table.upstreams.grpc[name];
            let views = upstream.endpoint_views();
            let (balance, outlier) = upstream.balance();
            json!({
                "name": name,
                "protocol": "grpc",
                "balance": match balance {
                    Balance::P2c => "p2c",
                    Balance::RoundRobin => "round_robin",
                },
                "dns": upstream.dns.as_ref().map(|d| json!({
                    "host": d.host,
                    "port": d.port,
                    "refresh_ms": d.refresh.as_millis() as u64,
                })),
                "outlier": {
                    "consecutive_failures": outlier.consecutive_failures,
                    "base_ejection_ms": outlier.base_ejection.0.as_millis() as u64,
                    "max_ejection_ms": outlier.max_ejection.0.as_millis() as u64,
                    "max_ejected_percent": outlier.max_ejected_percent,
                },
                "endpoints": views.iter().map(|v| json!({
                    "endpoint": v.name,
                    "state": v.state.as_str(),
                    "in_flight": v.in_flight,
                    "ejections": v.ejections,
                    "consecutive_failures": v.consecutive_failures,
                })).collect::<Vec<_>>(),
                "health": views
                    .iter()
                    .map(|v| json!({ "endpoint": v.name, "healthy": v.healthy }))
                    .collect::<Vec<_>>(),
                "health_check": upstream.health_check.is_some(),
                "reflection": upstream.config.reflection,
                "circuit": upstream.breaker.as_ref().map(|b| b.state().as_str()),
                "retry_attempts": upstream.retry.as_ref().map(|r| r.config.attempts),
            })
        })
        .collect();
    let mut amqp: Vec<_> = table.upstreams.amqp.values().collect();
    amqp.sort_by(|a, b| a.name.cmp(&b.name));
    upstreams.extend(amqp.into_iter().map(|upstream| {
        json!({
            "name": upstream.name,
            "protocol": "amqp",
            "url": upstream.display_url,
            "connected": upstream.connected(),
            "in_flight": upstream.in_flight(),
            "reconnects": upstream.reconnects(),
        })
    }));
    Json(json!({ "upstreams": upstreams }))
}

async fn reload(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.reload().await {
        Ok(()) => Json(json!({ "ok": true, "routes": gateway.table().routes.len() })).into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>() })),
        )
            .into_response(),
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
