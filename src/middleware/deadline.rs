//! Client-supplied deadlines: a smaller `grpc-timeout` or `x-request-timeout` than the
//! route's timeout shortens the backend call (never lengthens it).

use http::HeaderMap;
use std::time::Duration;

/// The effective deadline of a call: the route's, or the client's if smaller.
pub fn effective_timeout(route_timeout: Duration, headers: &HeaderMap) -> Duration {
    let client = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .into_iter()
        .chain(
            headers
                .get("x-request-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_request_timeout),
        )
        .min();
    match client {
        Some(client) => client.min(route_timeout),
        None => route_timeout,
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
}
