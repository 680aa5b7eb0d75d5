//! The deadline of a request: the route's timeout, or the client's `grpc-timeout` /
//! `x-request-timeout` when that is shorter (never longer). It is fixed once, at
//! admission ([`Deadline::admit`]), and every later phase spends from the same budget:
//! reading the body, each backend attempt, a composed step.
//!
//! A deadline the client shortened is the client's choice: when it runs out, the failure
//! is the client's ([`Origin::Client`]) and never counts against the backend (so a
//! client cannot open a circuit breaker for everyone with `x-request-timeout: 0`).

use crate::error::{GatewayError, Origin};
use http::{HeaderMap, HeaderName};
use std::time::Duration;
use tokio::time::Instant;

/// Client deadlines below this are refused with 400: no backend can answer in less, and
/// they would only turn into guaranteed DEADLINE_EXCEEDED answers.
pub const MIN_CLIENT_DEADLINE: Duration = Duration::from_millis(1);

/// When a request must be answered by, fixed at admission.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    /// The whole budget, as granted at admission.
    pub budget: Duration,
    /// The client's own deadline, shorter than the route's, set this one.
    pub client_set: bool,
}

impl Deadline {
    /// The request's deadline from the route's timeout and the client's headers. A
    /// malformed, zero or too-short client deadline is a 400.
    pub fn admit(route_timeout: Duration, headers: &HeaderMap) -> Result<Self, GatewayError> {
        let client = client_deadline(headers)?;
        let (budget, client_set) = match client {
            Some(client) if client < route_timeout => (client, true),
            _ => (route_timeout, false),
        };
        Ok(Self {
            at: Instant::now() + budget,
            budget,
            client_set,
        })
    }

    /// A deadline `budget` from now that no client chose (a step, a background call).
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
            client_set: false,
        }
    }

    pub fn instant(&self) -> Instant {
        self.at
    }

    /// What is left of the budget (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The DEADLINE_EXCEEDED error for `what` running out of this deadline: the
    /// client's own when the client shortened it.
    pub fn exceeded(&self, what: impl Into<String>) -> GatewayError {
        let error = GatewayError::deadline_exceeded(what);
        if self.client_set {
            error.with_origin(Origin::Client)
        } else {
            error.with_origin(Origin::Upstream)
        }
    }
}

/// The shorter of the client's `grpc-timeout` and `x-request-timeout`, if any.
fn client_deadline(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let mut shortest: Option<Duration> = None;
    // Named by constants: a `&str` name is parsed and validated on every look-up.
    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    static REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");
    for (name, parse) in [
        (
            &GRPC_TIMEOUT,
            parse_grpc_timeout as fn(&str) -> Option<Duration>,
        ),
        (&REQUEST_TIMEOUT, parse_request_timeout),
    ] {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let parsed =
            value.to_str().ok().and_then(parse).ok_or_else(|| {
                GatewayError::invalid_argument(format!("malformed `{name}` header"))
            })?;
        if parsed < MIN_CLIENT_DEADLINE {
            return Err(GatewayError::invalid_argument(format!(
                "`{name}` must be at least {MIN_CLIENT_DEADLINE:?}"
            )));
        }
        shortest = Some(shortest.map_or(parsed, |s| s.min(parsed)));
    }
    Ok(shortest)
}

/// The effective deadline of a call: the route's, or the client's if smaller. Malformed
/// client values are ignored here (WebSocket streams, which have no request deadline).
pub fn effective_timeout(route_timeout: Duration, headers: &HeaderMap) -> Duration {
    match client_deadline(headers) {
        Ok(Some(client)) => client.min(route_timeout),
        _ => route_timeout,
    }
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `x-request-timeout`: a duration (`250ms`, `2s`) or plain seconds (`1.5`).
fn parse_request_timeout(text: &str) -> Option<Duration> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(1e9)));
    }
    crate::config::ConfigDuration::parse(text).ok().map(|d| d.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_client_deadline_wins() {
        let route = Duration::from_secs(2);
        let mut headers = HeaderMap::new();
        assert_eq!(effective_timeout(route, &headers), route);
        headers.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(
            effective_timeout(route, &headers),
            Duration::from_millis(500)
        );
        headers.insert("x-request-timeout", "0.2".parse().unwrap());
        assert_eq!(
            effective_timeout(route, &headers),
            Duration::from_millis(200)
        );
        let mut longer = HeaderMap::new();
        longer.insert("x-request-timeout", "10s".parse().unwrap());
        assert_eq!(effective_timeout(route, &longer), route, "never lengthens");
        let mut junk = HeaderMap::new();
        junk.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(effective_timeout(route, &junk), route);
    }

    #[tokio::test(start_paused = true)]
    async fn admission_fixes_one_budget() {
        let route = Duration::from_secs(2);
        let deadline = Deadline::admit(route, &HeaderMap::new()).unwrap();
        assert!(!deadline.client_set);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(deadline.remaining(), Duration::from_millis(1500));
        assert_eq!(deadline.exceeded("x").origin, Origin::Upstream);

        let mut headers = HeaderMap::new();
        headers.insert("x-request-timeout", "250ms".parse().unwrap());
        let shortened = Deadline::admit(route, &headers).unwrap();
        assert!(shortened.client_set);
        assert_eq!(shortened.budget, Duration::from_millis(250));
        assert_eq!(shortened.exceeded("x").origin, Origin::Client);
    }

    #[test]
    fn zero_tiny_or_malformed_client_deadlines_are_refused() {
        let route = Duration::from_secs(2);
        for (name, value) in [
            ("x-request-timeout", "0"),
            ("grpc-timeout", "1n"),
            ("grpc-timeout", "0S"),
            ("grpc-timeout", "soon"),
            ("x-request-timeout", "-1"),
            ("x-request-timeout", "NaN"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            let error = Deadline::admit(route, &headers).unwrap_err();
            assert_eq!(error.code, tonic::Code::InvalidArgument, "{name}: {value}");
        }
    }
}
