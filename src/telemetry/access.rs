//! The access log: one line per request, at `info` under the target `switchboard::access`,
//! inside the request's span (so it carries the trace id).
//!
//! When the gateway's own log writer is installed (pretty without colours, or JSON) the
//! line is written straight into the writer's buffer, byte for byte what the fmt
//! subscriber would write for the event: formatting it through the subscriber's field
//! visitors and `fmt::Write` layers was about 10% of a proxied request's instructions.
//! `RUST_LOG` decides as for any event (`switchboard::access=off` turns it off). With
//! colours (a terminal) or without the log writer (tests) it is an ordinary `tracing`
//! event. A unit test below keeps the renderings equal.

use super::LogFormat;
use super::log_writer::LogWriter;
use crate::rfc3339;
use http::Method;
use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::SystemTime;

/// One request, as the access log reports it.
pub(crate) struct Access<'a> {
    pub trace_id: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    /// The route's name, `-` when none matched.
    pub route: &'a str,
    pub micros: u64,
    /// Whether the request span is enabled (`RUST_LOG` may turn spans off and keep the
    /// access line): the line names it only then.
    pub in_span: bool,
}

/// The request's span: every log line of the request names its trace id. The access
/// line's direct rendering writes the same fields (`span_prefix`).
pub(crate) fn request_span(trace_id: &str, method: &Method, path: &str) -> tracing::Span {
    tracing::info_span!("request", trace_id = trace_id, method = %method, path = path)
}

/// Where lines are written directly, and in which format; set by `init_logging`.
static DIRECT: OnceLock<(LogWriter, LogFormat)> = OnceLock::new();

/// Called by `init_logging` when it installed `format` (pretty without colours, or JSON)
/// on `writer`.
pub(super) fn write_directly(writer: LogWriter, format: LogFormat) {
    let _ = DIRECT.set((writer, format));
}

/// Logs one request (call it inside the request's span).
pub(crate) fn log(access: &Access<'_>) {
    if !tracing::enabled!(target: "switchboard::access", tracing::Level::INFO) {
        return;
    }
    let Some((writer, format)) = DIRECT.get() else {
        return event(access);
    };
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        match format {
            LogFormat::Pretty => render(&mut line, SystemTime::now(), access),
            LogFormat::Json => render_json(&mut line, SystemTime::now(), access),
        }
        writer.append(&line);
    });
}

/// The access line as an ordinary `tracing` event.
fn event(access: &Access<'_>) {
    tracing::info!(
        target: "switchboard::access",
        method = %access.method,
        status = access.status,
        route = access.route,
        micros = access.micros,
        "request"
    );
}

/// The line the fmt subscriber writes for the access event in the request span:
/// `2026-12-03T13:30:58.455813Z  INFO request{trace_id="…" method=GET path="/nope"}:
/// switchboard::access: request method=GET status=404 route="-" micros=106`.
fn render(out: &mut Vec<u8>, now: SystemTime, access: &Access<'_>) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO ");
    if access.in_span {
        out.extend_from_slice(b"request{trace_id=");
        quoted(out, access.trace_id);
        out.extend_from_slice(b" method=");
        out.extend_from_slice(access.method.as_str().as_bytes());
        out.extend_from_slice(b" path=");
        quoted(out, access.path);
        out.extend_from_slice(b"}: ");
    }
    out.extend_from_slice(b"switchboard::access: request method=");
    out.extend_from_slice(access.method.as_str().as_bytes());
    out.extend_from_slice(b" status=");
    number(out, access.status.into());
    out.extend_from_slice(b" route=");
    quoted(out, access.route);
    out.extend_from_slice(b" micros=");
    number(out, access.micros);
    out.push(b'\n');
}

/// The line the JSON format writes for the access event (flattened event, current span):
/// `{"timestamp":"…","level":"INFO","message":"request","method":"GET","status":200,
/// "route":"-","micros":106,"target":"switchboard::access","span":{"method":"GET",
/// "path":"/nope","trace_id":"…","name":"request"}}` (span fields in key order).
fn render_json(out: &mut Vec<u8>, now: SystemTime, access: &Access<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_str(out, access.method.as_str());
    out.extend_from_slice(b",\"status\":");
    number(out, access.status.into());
    out.extend_from_slice(b",\"route\":");
    json_str(out, access.route);
    out.extend_from_slice(b",\"micros\":");
    number(out, access.micros);
    out.extend_from_slice(b",\"target\":\"switchboard::access\"");
    if access.in_span {
        out.extend_from_slice(b",\"span\":{\"method\":");
        json_str(out, access.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_str(out, access.path);
        out.extend_from_slice(b",\"trace_id\":");
        json_str(out, access.trace_id);
        out.extend_from_slice(b",\"name\":\"request\"}");
    }
    out.extend_from_slice(b"}\n");
}

/// A JSON string, escaped as serde_json escapes it (the JSON format writes with it).
fn json_str(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A string as `{:?}` writes it: as is when nothing in it needs escaping (the common case:
/// printable ASCII without `"` or `\`), else through `Debug`.
fn quoted(out: &mut Vec<u8>, text: &str) {
    if crate::transcode::json_text::is_plain(text) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// UTC, microseconds, as the fmt subscriber's default timer: `2026-12-03T13:30:58.455813Z`.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339::date_time(out, i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
    out.push(b'.');
    rfc3339::padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `n` in decimal.
fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Captured;
    use std::time::Duration;

    /// What the fmt subscriber (as `init_logging` sets it up, colours off) writes for the
    /// access event, without its timestamp.
    fn through_subscriber(access: &Access<'_>, format: LogFormat) -> String {
        let captured = Captured::default();
        // Spans off, the access line on: as `RUST_LOG=warn,switchboard::access=info` does.
        let filter = match access.in_span {
            true => "info",
            false => "warn,switchboard::access=info",
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .without_time()
            .with_writer(captured.clone());
        let emit = || {
            let span = request_span(access.trace_id, access.method, access.path);
            let _entered = span.enter();
            event(access);
        };
        match format {
            LogFormat::Pretty => tracing::subscriber::with_default(builder.finish(), emit),
            // As `init_logging` sets it up.
            LogFormat::Json => tracing::subscriber::with_default(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .finish(),
                emit,
            ),
        }
        captured.text()
    }

    /// The direct line without its timestamp (the subscriber's is turned off).
    fn direct(access: &Access<'_>, format: LogFormat) -> String {
        let mut line = Vec::new();
        match format {
            LogFormat::Pretty => render(&mut line, SystemTime::UNIX_EPOCH, access),
            LogFormat::Json => render_json(&mut line, SystemTime::UNIX_EPOCH, access),
        }
        let line = String::from_utf8(line).unwrap();
        line.replacen("1970-01-01T00:00:00.000000Z ", "", 1)
            .replacen("\"timestamp\":\"1970-01-01T00:00:00.000000Z\",", "", 1)
    }

    #[test]
    fn the_direct_line_is_the_subscribers_line() {
        let cases = [
            (
                Method::GET,
                "/v1/products/1",
                "GET /v1/products/{id}",
                200,
                417,
            ),
            (Method::POST, "/nope", "-", 404, 0),
            (
                Method::DELETE,
                "/a%20b/\"q\"",
                "route \\ with \"quotes\"",
                503,
                99_999_999,
            ),
            (
                Method::from_bytes(b"PURGE").unwrap(),
                "/x",
                "naïve\troute",
                405,
                7,
            ),
        ];
        for in_span in [true, false] {
            for (method, path, route, status, micros) in &cases {
                let access = Access {
                    trace_id: "3068761cb21f434b19f59ddfe7ba6a05",
                    method,
                    path,
                    status: *status,
                    route,
                    micros: *micros,
                    in_span,
                };
                for format in [LogFormat::Pretty, LogFormat::Json] {
                    assert_eq!(direct(&access, format), through_subscriber(&access, format));
                }
            }
        }
    }

    #[test]
    fn timestamps_are_the_subscribers() {
        // 2026-12-03T13:30:58.455813Z, a leap day, the epoch, and far ahead.
        for (secs, micros, text) in [
            (1_796_304_658, 455_813, "2026-12-03T13:30:58.455813Z"),
            (1_709_164_800, 7, "2024-02-29T00:00:00.000007Z"),
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (253_402_300_799, 999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
            let mut out = Vec::new();
            timestamp(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
