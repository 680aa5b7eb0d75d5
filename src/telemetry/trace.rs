//! Trace ids (contract §5, §9): `x-trace-id` when well formed, else the trace id of a
//! valid W3C `traceparent`, else a new one. `traceparent` is forwarded with the same
//! trace id and a new parent id (the gateway's own span).

use http::{HeaderMap, HeaderValue};

pub struct TraceContext {
    /// Sent back as `x-trace-id`, forwarded as metadata / AMQP header.
    pub trace_id: HeaderValue,
    /// The `traceparent` to send to backends.
    pub traceparent: HeaderValue,
}

impl TraceContext {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let explicit = headers
            .get("x-trace-id")
            .filter(|v| is_valid_trace_id(v.as_bytes()))
            .cloned();
        // `00-<trace>-<parent>-<flags>`, written in place: no intermediate strings on the
        // hot path.
        let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-01";
        match parent {
            Some((trace, flags)) => {
                traceparent[3..35].copy_from_slice(trace.as_bytes());
                traceparent[53..55].copy_from_slice(flags.as_bytes());
            }
            None => random_hex(&mut traceparent[3..35]),
        }
        random_hex(&mut traceparent[36..52]);
        let trace_id = explicit.unwrap_or_else(|| {
            HeaderValue::from_bytes(&traceparent[3..35]).expect("hex is a valid header")
        });
        Self {
            trace_id,
            traceparent: HeaderValue::from_bytes(&traceparent).expect("hex is a valid header"),
        }
    }

    pub fn id(&self) -> &str {
        self.trace_id.to_str().unwrap_or_default()
    }
}

/// 1–128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_trace_id(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids → (trace id, flags).
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some((trace, flags))
}

/// Fills `out` (an even length, at most 32) with random lowercase hex, never all zeros.
fn random_hex(out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    let bytes = &mut bytes[..out.len() / 2];
    fastrand::fill(bytes);
    if bytes.iter().all(|b| *b == 0) {
        bytes[bytes.len() - 1] = 1;
    }
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes.iter()) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 15) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&'static str, &'static str)]) -> TraceContext {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        TraceContext::from_headers(&headers)
    }

    #[test]
    fn explicit_id_wins() {
        assert_eq!(ctx(&[("x-trace-id", "order-42.a_b")]).id(), "order-42.a_b");
    }

    #[test]
    fn malformed_id_is_replaced() {
        let c = ctx(&[("x-trace-id", "bad id!")]);
        assert_eq!(c.id().len(), 32);
        assert_ne!(c.id(), "bad id!");
    }

    #[test]
    fn traceparent_supplies_the_id_and_is_propagated() {
        let c = ctx(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(c.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let tp = c.traceparent.to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert!(!tp.contains("00f067aa0ba902b7"), "a new parent id: {tp}");
    }

    #[test]
    fn a_new_trace_is_forwarded_as_a_sampled_traceparent() {
        let c = ctx(&[]);
        let tp = c.traceparent.to_str().unwrap();
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with(&format!("00-{}-", c.id())), "{tp}");
        assert!(tp.ends_with("-01"));
        assert!(parse_traceparent(tp).is_some(), "{tp}");
    }

    #[test]
    fn invalid_traceparent_is_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf9-01",
        ] {
            let c = ctx(&[("traceparent", bad)]);
            assert_eq!(c.id().len(), 32);
            assert!(!c.id().starts_with("4bf9"));
        }
    }
}
