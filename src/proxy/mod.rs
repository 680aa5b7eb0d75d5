//! The client-facing request path: trace id → route lookup → target → response, with
//! every failure turned into a `google.rpc.Status` response.

mod amqp;
mod body;
mod grpc;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::middleware::{cors, ratelimit};
use crate::routing::template::RequestPath;
use crate::routing::{Lookup, RouteTable, Target};
use crate::telemetry::trace::TraceContext;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderValue, Request, Response, StatusCode, header};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The fallback handler of the client listener: every request comes through here.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    // The request keeps this table to the end, whatever reloads happen meanwhile.
    let table = gateway.table();
    let trace = TraceContext::from_headers(request.headers());
    let span = tracing::info_span!("request", trace_id = trace.id(), method = %request.method(), path = request.uri().path());
    async move {
        let method = request.method().clone();
        let origin = request.headers().get(header::ORIGIN).cloned();
        let preflight = cors::is_preflight(&method, request.headers());
        let (route_name, result) = dispatch(&table, request, &trace, &gateway.ws).await;
        let mut response = result.unwrap_or_else(GatewayError::into_response);
        response
            .headers_mut()
            .insert("x-trace-id", trace.trace_id.clone());
        if let (Some(cors), false) = (&table.middleware.cors, preflight) {
            cors.decorate(origin.as_ref(), response.headers_mut());
        }
        let status = response.status();
        match route_name {
            Some(index) => table.routes[index]
                .metrics
                .record(status, started.elapsed()),
            None => crate::telemetry::record_unmatched(&method, status, started.elapsed()),
        }
        tracing::info!(
            target: "switchboard::access",
            %method,
            status = status.as_u16(),
            route = route_name.map(|i| table.routes[i].name.as_str()).unwrap_or("-"),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}

/// Finds the route and runs its target. Returns the route's index for metrics.
async fn dispatch(
    table: &Arc<RouteTable>,
    request: Request<Body>,
    trace: &TraceContext,
    ws: &Arc<crate::ws::Hub>,
) -> (Option<usize>, Result<Response<Body>, GatewayError>) {
    let uri_len = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len as u64 > table.limits.max_uri.0 {
        let error = GatewayError::invalid_argument(format!(
            "request URI longer than {} bytes",
            table.limits.max_uri.0
        ))
        .with_status(StatusCode::URI_TOO_LONG);
        return (None, Err(error));
    }
    let uri = request.uri().clone();
    let path = match RequestPath::parse(uri.path()) {
        Ok(path) => path,
        Err(e) => return (None, Err(GatewayError::invalid_argument(e.to_string()))),
    };
    if let Some(cors) = &table.middleware.cors
        && cors::is_preflight(request.method(), request.headers())
    {
        return (None, preflight(cors, table, &request, &path));
    }
    let index = match table.lookup(request.method(), &path) {
        Lookup::Matched(index) => index,
        Lookup::MethodNotAllowed(allowed) => {
            let allow = allowed
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let error = GatewayError::new(
                tonic::Code::Unimplemented,
                format!("method {} not allowed here", request.method()),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_header(
                header::ALLOW,
                HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
            );
            return (None, Err(error));
        }
        Lookup::NotFound => {
            return (
                None,
                Err(GatewayError::not_found(format!(
                    "no route for {} {}",
                    request.method(),
                    uri.path()
                ))),
            );
        }
    };
    let route = &table.routes[index];
    let mut request = request;
    if let Target::WebSocket(_) = &route.target {
        // Browsers cannot set headers on a WebSocket: their token becomes one here.
        crate::ws::browser_credentials(&mut request);
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let admitted = match route
        .policy
        .admit(&table.middleware, request.headers_mut(), peer)
        .await
    {
        Ok(admitted) => admitted,
        Err(error) => return (Some(index), Err(error)),
    };
    request.extensions_mut().insert(admitted.identity);
    let mut result = match &route.target {
        Target::Static(target) => {
            let mut response = Response::new(Body::from(target.body.clone()));
            *response.status_mut() = target.status;
            response.headers_mut().extend(target.headers.clone());
            Ok(response)
        }
        Target::Grpc(target) => match route.template.captures(&path) {
            Ok(captures) => grpc::call(table, target, request, captures, trace).await,
            Err(e) => Err(GatewayError::invalid_argument(e.to_string())),
        },
        Target::Amqp(target) => match route.template.captures(&path) {
            Ok(captures) => amqp::call(table, target, request, captures, trace).await,
            Err(e) => Err(GatewayError::invalid_argument(e.to_string())),
        },
        // Auth and rate limits ran above; socket limits are checked in `ws::upgrade`.
        Target::WebSocket(_) => crate::ws::upgrade(ws, table, index, request, trace).await,
    };
    if let Some(decision) = &admitted.rate_limit {
        match &mut result {
            Ok(response) => ratelimit::add_headers(decision, response.headers_mut()),
            Err(error) => ratelimit::add_headers(decision, error.headers_mut()),
        }
    }
    (Some(index), result)
}

/// A CORS preflight: the methods the path serves, if the origin is allowed.
fn preflight(
    cors: &cors::Cors,
    table: &RouteTable,
    request: &Request<Body>,
    path: &RequestPath<'_>,
) -> Result<Response<Body>, GatewayError> {
    let requested = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    let methods = match table.lookup(&requested, path) {
        Lookup::Matched(index) => vec![table.routes[index].method.clone()],
        Lookup::MethodNotAllowed(allowed) => allowed,
        Lookup::NotFound => {
            return Err(GatewayError::not_found(format!(
                "no route for {}",
                request.uri().path()
            )));
        }
    };
    cors.preflight(request.headers(), &methods)
}
