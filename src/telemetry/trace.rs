//! Trace ids (contract §5, §9): `x-trace-id` when well formed, else the trace id of a
//! valid W3C `traceparent`, else a new one. `traceparent` is forwarded with the same
//! trace id and a new parent id (the gateway's own span).
//!
//! With `telemetry.otlp` set, the request and each backend call are also spans, exported
//! by [`super::otlp`]: the request span's id is the parent id of the `traceparent` built
//! here, each backend call is a child span whose own id is the parent id of the
//! `traceparent` that backend receives. A client's `traceparent` whose sampled flag is
//! off is honoured: nothing is exported for that request. Without `telemetry.otlp`
//! (the default) no span is built: [`TraceContext::backend`] is a branch on `None`.

use super::otlp::SpanExport;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Arc;
use std::time::SystemTime;

// Constants: a `&str` name is parsed and validated on every look-up.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");

pub struct TraceContext {
    /// Sent back as `x-trace-id`, forwarded as metadata / AMQP header.
    pub trace_id: HeaderValue,
    /// The `traceparent` to send to backends.
    pub traceparent: HeaderValue,
    /// The request's span, when spans are exported and this trace is sampled.
    span: Option<Box<Pending>>,
}

impl TraceContext {
    /// The trace of a request, with no span export.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::parse(headers, None)
    }

    /// The trace of the request `method uri` with `headers`; its span starts now when
    /// `export` is set and the client did not ask for the trace to go unsampled.
    pub fn start(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        export: Option<&Arc<SpanExport>>,
    ) -> Self {
        let mut trace = Self::parse(headers, export);
        if let Some(span) = &mut trace.span {
            span.name = Cow::Owned(method.as_str().to_owned());
            span.attributes.extend([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", uri.path().to_owned()),
            ]);
            // An `x-trace-id` of the client's own is kept on the span (the W3C id differs).
            if trace.trace_id.as_bytes() != &trace.traceparent.as_bytes()[3..35] {
                span.attributes.push(KeyValue::new(
                    "switchboard.trace_id",
                    trace.trace_id.to_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        trace
    }

    fn parse(headers: &HeaderMap, export: Option<&Arc<SpanExport>>) -> Self {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let explicit = headers
            .get(&X_TRACE_ID)
            .filter(|v| is_valid_trace_id(v.as_bytes()))
            .cloned();
        // `00-<trace id>-<the gateway's span id>-<flags>`, written in place.
        let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-01";
        match parent {
            Some(parent) => {
                traceparent[3..35].copy_from_slice(parent.trace.as_bytes());
                traceparent[53..].copy_from_slice(parent.flags.as_bytes());
            }
            None => random_hex(&mut traceparent[3..35]),
        }
        random_hex(&mut traceparent[36..52]);
        let traceparent = trace_header(&traceparent);
        let flags = &traceparent.as_bytes()[53..];
        // Parent-based sampling: a client that traces unsampled gets no spans exported.
        let span = export
            .filter(|_| sampled(flags))
            .map(|export| Box::new(Pending::request(export, traceparent.as_bytes(), parent)));
        let trace_id = match explicit {
            Some(mut explicit) => {
                explicit.set_sensitive(true);
                explicit
            }
            None => trace_header(&traceparent.as_bytes()[3..35]),
        };
        Self {
            trace_id,
            traceparent,
            span,
        }
    }

    pub fn id(&self) -> &str {
        self.trace_id.to_str().unwrap_or_default()
    }

    /// A backend call: a child span of the request when spans are exported. `describe`
    /// (name, kind, attributes) runs only then.
    pub fn backend(
        &self,
        describe: impl FnOnce() -> (String, SpanKind, Vec<KeyValue>),
    ) -> BackendSpan<'_> {
        let span = self.span.as_ref().map(|request| {
            let (name, kind, attributes) = describe();
            request.child(name, kind, attributes, &self.traceparent)
        });
        BackendSpan { trace: self, span }
    }

    /// Ends the request's span with the route that served it (`(template, name)`, absent
    /// when none matched) and the final status; exports it.
    pub fn end(&mut self, route: Option<(&str, &str)>, status: StatusCode) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        if let Some((template, name)) = route {
            span.name = Cow::Owned(format!("{} {template}", span.name));
            span.attributes.extend([
                KeyValue::new("http.route", template.to_owned()),
                KeyValue::new("switchboard.route", name.to_owned()),
            ]);
        }
        span.attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        // Server spans: a 4xx is the client's doing, not an error of the gateway.
        if status.is_server_error() {
            span.status = Status::error(status.as_str().to_owned());
        }
        span.export();
    }
}

/// One backend call (a gRPC call, an AMQP message, a composed step). Its span, when
/// exported, ends when this is dropped or [`BackendSpan::finish`]ed: dropped unfinished,
/// the call was cancelled and the span says so.
pub struct BackendSpan<'a> {
    trace: &'a TraceContext,
    span: Option<Pending>,
}

impl BackendSpan<'_> {
    /// The `traceparent` this call sends: the call's own span id as parent id when spans
    /// are exported, else the request's.
    pub fn traceparent(&self) -> &HeaderValue {
        match &self.span {
            Some(span) => &span.traceparent,
            None => &self.trace.traceparent,
        }
    }

    /// The call's own `traceparent`, when it differs from the request's (spans are
    /// exported): headers built from the request's trace need it put in.
    pub fn own_traceparent(&self) -> Option<&HeaderValue> {
        self.span.as_ref().map(|span| &span.traceparent)
    }

    /// Adds an attribute (built only when the span is exported).
    pub fn attribute(&mut self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(span) = &mut self.span {
            span.attributes.push(attribute());
        }
    }

    /// Ends the span with the call's outcome.
    pub fn finish<T, E: Display>(mut self, result: &Result<T, E>) {
        if let Some(mut span) = self.span.take() {
            if let Err(error) = result {
                span.status = Status::error(error.to_string());
            } else {
                span.status = Status::Ok;
            }
            span.export();
        }
    }
}

impl Drop for BackendSpan<'_> {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.status = Status::error("cancelled");
            span.export();
        }
    }
}

/// A span being recorded.
struct Pending {
    export: Arc<SpanExport>,
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
    /// The `traceparent` naming this span as parent (backend calls).
    traceparent: HeaderValue,
}

impl Pending {
    /// The request's span: ids from `traceparent` (the one backends get), its parent
    /// the client's span when the client sent a `traceparent`.
    fn request(
        export: &Arc<SpanExport>,
        traceparent: &[u8],
        client: Option<TraceParent<'_>>,
    ) -> Self {
        let hex = |range: std::ops::Range<usize>| std::str::from_utf8(&traceparent[range]);
        let trace_id = hex(3..35)
            .ok()
            .and_then(|hex| TraceId::from_hex(hex).ok())
            .unwrap_or(TraceId::INVALID);
        let span_id = hex(36..52)
            .ok()
            .and_then(|hex| SpanId::from_hex(hex).ok())
            .unwrap_or(SpanId::INVALID);
        let parent = client
            .and_then(|c| SpanId::from_hex(c.parent).ok())
            .unwrap_or(SpanId::INVALID);
        Pending {
            export: export.clone(),
            context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent,
            parent_is_remote: client.is_some(),
            kind: SpanKind::Server,
            name: Cow::Borrowed("request"),
            start: SystemTime::now(),
            attributes: Vec::with_capacity(6),
            status: Status::Unset,
            traceparent: HeaderValue::from_static(""),
        }
    }

    /// A child of this span, with a new span id, and the `traceparent` naming it.
    fn child(
        &self,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent_traceparent: &HeaderValue,
    ) -> Pending {
        let id = loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        // `00-<trace>-` + the child's id + `-<flags>`: the request's own header is valid.
        let mut traceparent: [u8; 55] = parent_traceparent
            .as_bytes()
            .try_into()
            .unwrap_or(*b"00-00000000000000000000000000000000-0000000000000000-00");
        traceparent[36..52].copy_from_slice(&hex_u64(id));
        Pending {
            export: self.export.clone(),
            context: SpanContext::new(
                self.context.trace_id(),
                SpanId::from_bytes(id.to_be_bytes()),
                self.context.trace_flags(),
                false,
                TraceState::NONE,
            ),
            parent: self.context.span_id(),
            parent_is_remote: false,
            kind,
            name: Cow::Owned(name),
            start: SystemTime::now(),
            attributes,
            status: Status::Unset,
            traceparent: trace_header(&traceparent),
        }
    }

    fn export(self) {
        let scope = self.export.scope().clone();
        self.export.send(SpanData {
            span_context: self.context,
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.status,
            instrumentation_scope: scope,
        });
    }
}

impl Drop for TraceContext {
    fn drop(&mut self) {
        // The client went away before the answer: the request's span still ends.
        if let Some(mut span) = self.span.take() {
            span.status = Status::error("the client went away");
            span.export();
        }
    }
}

/// The W3C sampled flag (bit 0 of the flags byte).
fn sampled(flags: &[u8]) -> bool {
    // Two lowercase hex digits (checked by `parse_traceparent`): bit 0 is in the second.
    matches!(
        flags,
        [_, b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f']
    )
}

/// 1–128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_trace_id(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A valid client `traceparent`, in parts.
#[derive(Clone, Copy)]
struct TraceParent<'a> {
    trace: &'a str,
    parent: &'a str,
    flags: &'a str,
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids.
fn parse_traceparent(value: &str) -> Option<TraceParent<'_>> {
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
    valid.then_some(TraceParent {
        trace,
        parent,
        flags,
    })
}

/// Random lowercase hex into `out` (an id: never all zeros).
fn random_hex(out: &mut [u8]) {
    for chunk in out.chunks_mut(16) {
        chunk.copy_from_slice(&hex_u64(fastrand::u64(..))[..chunk.len()]);
    }
    if out.iter().all(|b| *b == b'0')
        && let Some(last) = out.last_mut()
    {
        *last = b'1';
    }
}

/// `id` as 16 lowercase hex digits.
fn hex_u64(id: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| HEX[(id >> (60 - 4 * i) & 15) as usize])
}

/// A trace header value. Marked sensitive, which HPACK encodes as "never indexed": the
/// value is new on every request, so adding it to the upstream connection's header
/// table would only evict the entries that do repeat (and cost both sides a table
/// search and insert per request).
fn trace_header(hex: &[u8]) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(hex).expect("hex is a valid header");
    value.set_sensitive(true);
    value
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
    fn new_traces_are_well_formed_and_never_indexed() {
        let c = ctx(&[]);
        let tp = c.traceparent.to_str().unwrap();
        let parsed = parse_traceparent(tp).expect(tp);
        assert_eq!(parsed.trace, c.id());
        assert_eq!(parsed.flags, "01");
        assert_ne!(ctx(&[]).id(), c.id());
        assert!(c.trace_id.is_sensitive() && c.traceparent.is_sensitive());
        assert!(ctx(&[("x-trace-id", "order-42")]).trace_id.is_sensitive());
        let unsampled = ctx(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert!(unsampled.traceparent.to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn ids_are_lowercase_hex() {
        let mut id = [0u8; 32];
        random_hex(&mut id);
        assert!(id.iter().all(|b| b"0123456789abcdef".contains(b)), "{id:?}");
        assert_eq!(&hex_u64(0x00f0_67aa_0ba9_02b7), b"00f067aa0ba902b7");
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
