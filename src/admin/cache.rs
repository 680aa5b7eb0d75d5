//! `DELETE /admin/cache`: purge the response cache — everything, one route
//! (`?route=<name>`), and/or the entries whose `path?query` starts with `?key_prefix=`.

use crate::gateway::Gateway;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Purge {
    route: Option<String>,
    key_prefix: Option<String>,
}

pub(super) async fn purge(
    State(gateway): State<Arc<Gateway>>,
    Query(purge): Query<Purge>,
) -> Response {
    let table = gateway.table();
    let Some(cache) = &table.cache else {
        return Json(json!({ "purged": 0 })).into_response();
    };
    if let Some(route) = &purge.route
        && !table.routes.iter().any(|r| r.name == *route)
    {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no route named `{route}`") })),
        )
            .into_response();
    }
    match cache
        .purge(purge.route.as_deref(), purge.key_prefix.as_deref())
        .await
    {
        Ok(purged) => Json(json!({ "purged": purged })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cache purge failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the cache store did not answer" })),
            )
                .into_response()
        }
    }
}
