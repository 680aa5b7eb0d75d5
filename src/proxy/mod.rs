//! The request pipeline. Every client request — plain HTTP and WebSocket upgrades alike —
//! goes through [`handle`], whose phases run in this order:
//!
//! | # | phase | why it sits there |
//! |---|-------|-------------------|
//! | 1 | trace id | every log line and every answer, refusals included, carries it |
//! | 2 | request line | URI length and path syntax: the cheapest refusals (414, 400) first |
//! | 3 | strip reserved headers | nothing later may read a client's own `x-user-id` |
//! | 4 | CORS preflight | browsers send preflights without credentials: answered here |
//! | 5 | route lookup | 404 / 405 before any per-route work; path variables captured once |
//! | 6 | browser credentials | WebSocket only: a token in the subprotocol or `access_token` becomes `Authorization` for phase 8 |
//! | 7 | cheap limits | rate limits keyed by address or header, before a signature check costs CPU |
//! | 8 | authentication, scopes | 401 / 403; the verified claims become the request's `Identity` |
//! | 9 | keyed limits | rate limits keyed by a claim need phase 8 |
//! | 10 | deadline | one budget from the route timeout and the client's shorter one, spent by every later phase |
//! | 11 | cache | GET routes with `cache:`: a hit never reaches phase 12; concurrent misses of one key make one call |
//! | 12 | target | static, gRPC, gRPC-Web, AMQP, composed or WebSocket; upstreams add breaker, retries and balancing |
//! | 13 | response decoration | `RateLimit-*`, `x-trace-id`, CORS headers, on errors too |
//! | 14 | metrics, access log | with the route's template and the final status |
//!
//! Every failure becomes a `google.rpc.Status` response in one place
//! ([`GatewayError::into_response`], the rescue): clients read a safe message, the log gets
//! the cause. A request whose content type is `application/grpc-web*` gets the same
//! failure as a trailers-only gRPC-Web answer instead
//! ([`GatewayError::into_grpc_web_response`]: HTTP 200, `grpc-status` in the headers),
//! whichever phase refused it; metrics and the access log record the HTTP status that
//! `grpc-status` stands for.

mod amqp;
pub(crate) mod body;
mod grpc;
pub(crate) mod grpc_web;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::middleware::deadline::Deadline;
use crate::middleware::ratelimit::{self, Decision};
use crate::middleware::{Identity, cors};
use crate::routing::template::RequestPath;
use crate::routing::{Lookup, Route, RouteTable, Target};
use crate::telemetry::trace::TraceContext;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderValue, Request, Response, StatusCode, header};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

/// The client listener's handler (`listener::serve`): every request comes through here.
pub(crate) async fn handle(gateway: Arc<Gateway>, request: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    // The request keeps this table to the end, whatever reloads happen meanwhile.
    let table = gateway.table();
    // 1. Trace id.
    let mut trace = TraceContext::start(
        request.method(),
        request.uri(),
        request.headers(),
        table.tracing.as_ref(),
    );
    let span =
        crate::telemetry::access::request_span(trace.id(), request.method(), request.uri().path());
    let in_span = !span.is_disabled();
    async move {
        let method = request.method().clone();
        // The path the phases match and the access line reports (a clone shares the
        // URI's bytes; the request itself is consumed by its target).
        let uri = request.uri().clone();
        let origin = request.headers().get(header::ORIGIN).cloned();
        let preflight = cors::is_preflight(&method, request.headers());
        // gRPC-Web clients read every outcome, refusals included, from `grpc-status`.
        let grpc_web = grpc_web::framing::Mode::of(request.headers());
        let body_may_stay_unread = body_may_stay_unread(&request);
        let mut outcome = Outcome::default();
        // Boxed: the phases' future is several KiB (the largest of every target's), and
        // held inline it was copied each time the handler's future moved (axum, tower).
        let result = Box::pin(run(
            &table,
            request,
            &uri,
            &trace,
            &gateway.ws,
            &mut outcome,
        ))
        .await;
        // The rescue: one place turns every error into the client's answer.
        let mut response = result.unwrap_or_else(|mut error| {
            if body_may_stay_unread {
                error = error.closing_connection();
            }
            match grpc_web {
                Some(mode) => error.into_grpc_web_response(mode.content_type()),
                None => error.into_response(),
            }
        });

        // 13. Response decoration.
        let headers = response.headers_mut();
        if let Some(decision) = &outcome.rate_limit {
            ratelimit::add_headers(decision, headers);
        }
        headers.insert(&crate::telemetry::trace::X_TRACE_ID, trace.trace_id.clone());
        if let (Some(cors), false) = (&table.middleware.cors, preflight) {
            cors.decorate(origin.as_ref(), headers, grpc_web.is_some());
        }

        // 14. Metrics and access log.
        let status = match grpc_web {
            Some(_) => crate::error::effective_status(&response),
            None => response.status(),
        };
        match outcome.route {
            Some(index) => table.routes[index]
                .metrics
                .record(status, started.elapsed()),
            None => crate::telemetry::record_unmatched(&method, status, started.elapsed()),
        }
        let route = outcome.route.map(|i| &table.routes[i]);
        trace.end(
            route.map(|r| (r.template.text.as_str(), r.name.as_str())),
            status,
        );
        crate::telemetry::access::log(&crate::telemetry::access::Access {
            trace_id: trace.id(),
            method: &method,
            path: uri.path(),
            status: status.as_u16(),
            route: route.map(|r| r.name.as_str()).unwrap_or("-"),
            micros: started.elapsed().as_micros() as u64,
            in_span,
        });
        response
    }
    .instrument(span)
    .await
}

/// Whether a refusal may leave part of this request's body on an HTTP/1 connection. Most
/// refusals come before the body is read; hyper then drains what has already arrived and
/// keeps the connection, or closes it when more is on its way. A refusal says
/// `Connection: close` in that second case, or a client would send its next request on a
/// connection about to close and fail it. A body of up to one read buffer has arrived
/// with its head; a longer or chunked one may not have.
fn body_may_stay_unread(request: &Request<Body>) -> bool {
    const ONE_READ: u64 = 8 * 1024;
    if request.version() >= http::Version::HTTP_2 {
        return false;
    }
    request.headers().contains_key(header::TRANSFER_ENCODING)
        || body::announced_length(request.headers()).is_some_and(|len| len > ONE_READ)
}

/// What the phases learned that decoration and metrics need, even when a phase failed.
#[derive(Default)]
struct Outcome {
    /// Index of the matched route in the table.
    route: Option<usize>,
    /// The rate-limit decision, reported in `RateLimit-*` headers.
    rate_limit: Option<Decision>,
}

/// Phases 2 to 12.
async fn run(
    table: &Arc<RouteTable>,
    mut request: Request<Body>,
    uri: &http::Uri,
    trace: &TraceContext,
    ws: &Arc<crate::ws::Hub>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    // 2. Request line.
    check_uri_length(table, &request)?;
    let path = RequestPath::parse(uri.path())
        .map_err(|e| GatewayError::invalid_argument(e.to_string()))?;

    // 3. Strip reserved headers.
    table.middleware.strip_reserved(request.headers_mut());

    // 4. CORS preflight.
    if let Some(cors) = &table.middleware.cors
        && cors::is_preflight(request.method(), request.headers())
    {
        return preflight(cors, table, &request, &path);
    }

    // 5. Route lookup.
    let index = lookup(table, &request, &path)?;
    outcome.route = Some(index);
    let route = &table.routes[index];
    let captures = route
        .template
        .captures(&path)
        .map_err(|e| GatewayError::invalid_argument(e.to_string()))?;

    // 6. Browser credentials.
    if let Target::WebSocket(_) = &route.target {
        crate::ws::browser_credentials(&mut request);
    }

    // 7. Cheap limits.
    let middleware = &table.middleware;
    let peer = peer_ip(&request);
    outcome.rate_limit = route
        .policy
        .limit_before_auth(middleware, request.headers(), peer)
        .await
        .map_err(|e| with_limit_headers(e, outcome))?;

    // 8. Authentication and scopes.
    let identity = route
        .policy
        .authenticate(middleware, request.headers())
        .await
        .map_err(|e| with_limit_headers(e, outcome))?;

    // 9. Keyed limits.
    if let Some(decision) = route
        .policy
        .limit_after_auth(middleware, &identity, request.headers(), peer)
        .await?
    {
        outcome.rate_limit = Some(decision);
    }

    // 10. Deadline.
    let deadline = match route_timeout(route) {
        Some(timeout) => Deadline::admit(timeout, request.headers())?,
        None => Deadline::after(std::time::Duration::MAX / 4),
    };

    // 11. Cache: GET routes with `cache:`. The key (route, path, query, user, `vary`
    // headers) is taken before the target consumes the request.
    let cached = route
        .cache
        .as_ref()
        .zip(table.cache.as_ref())
        .map(|(policy, cache)| {
            (
                policy,
                cache,
                policy.lookup(&request, identity.claims.as_deref()),
            )
        });
    // An anonymous identity reads as none (no claims, nothing forwarded); not storing it
    // spares public routes an insert into the request's extensions, often the one that
    // makes the map grow.
    if identity.claims.is_some() || !identity.forwarded.is_empty() {
        request.extensions_mut().insert::<Identity>(identity);
    }

    // 12. Target. Each kind's future is boxed: inline, this block would be as large as the
    // largest of them (KiBs: compose, streams, WebSocket) for every request, and copied
    // whole wherever it moves (into the cache phase, into `run`'s own state).
    let target = async {
        match &route.target {
            Target::Static(target) => {
                let mut response = Response::new(Body::from(target.body.clone()));
                *response.status_mut() = target.status;
                response.headers_mut().extend(target.headers.clone());
                Ok(response)
            }
            Target::Grpc(target) => {
                Box::pin(grpc::call(
                    table, target, request, captures, trace, deadline,
                ))
                .await
            }
            Target::Amqp(target) => {
                Box::pin(amqp::call(
                    table, target, request, captures, trace, deadline,
                ))
                .await
            }
            Target::Compose(target) => {
                Box::pin(crate::compose::call(
                    table, target, request, captures, trace, deadline,
                ))
                .await
            }
            // Socket limits are checked in `ws::upgrade`; a socket has no request deadline.
            Target::WebSocket(_) => {
                Box::pin(crate::ws::upgrade(ws, table, index, request, trace)).await
            }
            Target::GrpcWeb(target) => {
                Box::pin(grpc_web::call(
                    table, target, request, captures, trace, deadline,
                ))
                .await
            }
        }
    };
    match cached {
        // Boxed too: the cache's state (and the target it holds) would otherwise make every
        // request's state as large, cached route or not.
        Some((policy, cache, lookup)) => Box::pin(cache.serve(policy, lookup, target)).await,
        None => target.await,
    }
}

/// A refusal after phase 7 still reports the client's rate-limit counters.
fn with_limit_headers(mut error: GatewayError, outcome: &Outcome) -> GatewayError {
    if let Some(decision) = &outcome.rate_limit {
        ratelimit::add_headers(decision, error.headers_mut());
    }
    error
}

/// The route's own deadline; `None` for targets that have none (static, WebSocket).
fn route_timeout(route: &Route) -> Option<std::time::Duration> {
    match &route.target {
        Target::Grpc(target) => Some(target.timeout),
        Target::Amqp(target) => Some(target.timeout),
        Target::Compose(target) => Some(target.timeout),
        Target::GrpcWeb(target) => Some(target.timeout),
        Target::Static(_) | Target::WebSocket(_) => None,
    }
}

fn check_uri_length(table: &RouteTable, request: &Request<Body>) -> Result<(), GatewayError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len as u64 > table.limits.max_uri.0 {
        return Err(GatewayError::invalid_argument(format!(
            "request URI longer than {} bytes",
            table.limits.max_uri.0
        ))
        .with_status(StatusCode::URI_TOO_LONG));
    }
    Ok(())
}

/// The matching route's index, or 404 / 405 (with `Allow`).
fn lookup(
    table: &RouteTable,
    request: &Request<Body>,
    path: &RequestPath<'_>,
) -> Result<usize, GatewayError> {
    match table.lookup(request.method(), path) {
        Lookup::Matched(index) => Ok(index),
        Lookup::MethodNotAllowed(allowed) => {
            let allow = allowed
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            Err(GatewayError::new(
                tonic::Code::Unimplemented,
                format!("method {} not allowed here", request.method()),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_header(
                header::ALLOW,
                HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
            ))
        }
        Lookup::NotFound => Err(GatewayError::not_found(format!(
            "no route for {} {}",
            request.method(),
            request.uri().path()
        ))),
    }
}

/// The TCP peer (the client address policies start from).
fn peer_ip(request: &Request<Body>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
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
    let mut grpc_web = false;
    let methods = match table.lookup(&requested, path) {
        Lookup::Matched(index) => {
            grpc_web = matches!(table.routes[index].target, Target::GrpcWeb(_));
            vec![table.routes[index].method.clone()]
        }
        Lookup::MethodNotAllowed(allowed) => allowed,
        Lookup::NotFound => {
            return Err(GatewayError::not_found(format!(
                "no route for {}",
                request.uri().path()
            )));
        }
    };
    cors.preflight(request.headers(), &methods, grpc_web)
}
