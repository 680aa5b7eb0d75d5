//! Logs, trace ids and metrics. Metric handles are created once per route at load time,
//! so recording on the hot path is an atomic add, not a registry look-up.

pub(crate) mod access;
mod fields;
pub mod log_writer;
pub mod otlp;
pub mod spans;
pub mod trace;

use http::StatusCode;
use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Log output format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the tracing subscriber: `RUST_LOG` filtering (default `info`), to stderr
/// through the buffered writer of [`log_writer`]. Keep the guard until the process ends:
/// dropping it writes the lines still queued.
pub fn init_logging(format: LogFormat) -> Option<log_writer::LogGuard> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, direct, guard) = match log_writer::stderr() {
        Some((writer, guard)) => (
            BoxMakeWriter::new(writer.clone()),
            Some(writer),
            Some(guard),
        ),
        None => (BoxMakeWriter::new(std::io::stderr), None, None),
    };
    // Colours only for a person at a terminal: a log file or collector would get the
    // escape codes as text (and writing them costs a few % of a proxied request).
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(writer);
    let result = match format {
        LogFormat::Pretty => builder.fmt_fields(fields::PlainFields).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // The access line, written as the format installed would write it (access.rs).
    if let (Ok(()), Some(writer)) = (&result, direct)
        && !(colours && format == LogFormat::Pretty)
    {
        access::write_directly(writer, format);
    }
    // A second init (tests start several gateways in one process) keeps the first.
    result.ok().and(guard)
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; ours then stays unused but valid.
        let _ = metrics::set_global_recorder(recorder);
        spawn_upkeep(handle.clone());
        metrics::gauge!("switchboard_build_info", "version" => VERSION, "revision" => REVISION)
            .set(1.0);
        handle
    })
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until upkeep folds it into the buckets, which
/// otherwise happens only when `/metrics` is scraped: a gateway nobody scrapes grew by
/// about 85 bytes per request (bench/soak). Upkeep runs on its own thread so that it
/// outlives any runtime (tests start several).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                // This thread's own timer; no runtime runs here.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the metrics upkeep thread; histograms grow until scraped");
    }
}

/// The gateway's version (Cargo.toml) and the git revision it was built from (`unknown`
/// outside a git checkout; `SWITCHBOARD_REVISION` at build time overrides).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("SWITCHBOARD_REVISION");

/// Distinct status codes a route keeps ready-made counters for; a route answering with
/// more than this many different codes looks the rest up in the registry.
const CODE_SLOTS: usize = 8;

/// RED metrics of one route: requests by status code, and latency. Labels are the route's
/// template as written and its method, never the request's raw path, so the number of
/// series is bounded by the configuration.
pub struct RouteMetrics {
    route: String,
    method: String,
    /// Filled on first use of each code, so recording stays an atomic add.
    by_code: [OnceLock<(u16, Counter)>; CODE_SLOTS],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str, method: &str) -> Self {
        Self {
            route: route.to_string(),
            method: method.to_string(),
            by_code: Default::default(),
            duration: histogram!("switchboard_http_request_duration_seconds", "route" => route.to_string(), "method" => method.to_string()),
        }
    }

    fn requests(&self, code: u16) -> Counter {
        counter!("switchboard_http_requests_total", "route" => self.route.clone(), "method" => self.method.clone(), "code" => code.to_string())
    }

    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let code = status.as_u16();
        self.duration.record(elapsed.as_secs_f64());
        for slot in &self.by_code {
            let (slot_code, counter) = slot.get_or_init(|| (code, self.requests(code)));
            if *slot_code == code {
                counter.increment(1);
                return;
            }
        }
        self.requests(code).increment(1);
    }
}

/// The method label of a request that matched no route: the standard methods by name,
/// anything else `OTHER` (a client must not be able to mint label values).
fn method_label(method: &http::Method) -> (usize, &'static str) {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .position(|m| *m == method.as_str())
        .map(|i| (i, KNOWN[i]))
        .unwrap_or((KNOWN.len(), "OTHER"))
}

/// Requests that matched no route (`route="unmatched"`).
pub fn record_unmatched(method: &http::Method, status: StatusCode, elapsed: Duration) {
    static UNMATCHED: [OnceLock<RouteMetrics>; 10] = [const { OnceLock::new() }; 10];
    let (index, label) = method_label(method);
    UNMATCHED[index]
        .get_or_init(|| RouteMetrics::new("unmatched", label))
        .record(status, elapsed);
}

/// Upstream call outcomes by gRPC code, and latency.
#[derive(Debug)]
pub struct UpstreamMetrics {
    by_code: Vec<Counter>,
    duration: Histogram,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> Self {
        let by_code = (0..=16)
            .map(|n| {
                let code = format!("{:?}", tonic::Code::from_i32(n));
                counter!("switchboard_upstream_requests_total", "upstream" => upstream.to_string(), "code" => code)
            })
            .collect();
        Self {
            by_code,
            duration: histogram!("switchboard_upstream_duration_seconds", "upstream" => upstream.to_string()),
        }
    }

    pub fn record(&self, code: tonic::Code, elapsed: Duration) {
        if let Some(counter) = self.by_code.get(code as usize) {
            counter.increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// One TLS handshake on the client listener: `ok`, `error` (the client gave up, spoke
/// plaintext or rejected the certificate) or `timeout`.
pub fn record_tls_handshake(result: &'static str) {
    counter!("switchboard_tls_handshakes_total", "result" => result).increment(1);
}

/// Reload outcomes (`result` = `ok` | `error`).
pub fn record_reload(ok: bool) {
    counter!("switchboard_config_reloads_total", "result" => if ok { "ok" } else { "error" })
        .increment(1);
    metrics::gauge!("switchboard_config_last_reload_ok").set(if ok { 1.0 } else { 0.0 });
    if ok {
        record_config_loaded();
    }
}

/// The time a configuration last went live (start-up or reload), in Unix seconds.
pub fn record_config_loaded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!("switchboard_config_last_reload_success_timestamp_seconds").set(now);
}

/// WebSocket metrics of one route: open sockets, and data frames each way.
#[derive(Clone)]
pub struct WsMetrics {
    pub connections: metrics::Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
}

impl WsMetrics {
    pub fn new(route: &str) -> Self {
        let frames = |direction: &'static str| counter!("switchboard_ws_frames_total", "route" => route.to_string(), "direction" => direction);
        Self {
            connections: metrics::gauge!("switchboard_ws_connections", "route" => route.to_string()),
            frames_in: frames("in"),
            frames_out: frames("out"),
        }
    }
}

/// Appends the per-endpoint series of gRPC upstreams, `(upstream, endpoints)`, in the
/// Prometheus text format. Labels are the upstream and endpoint names (from config or a
/// DNS answer, so bounded), plus the fixed `state` values.
pub fn render_endpoints(
    out: &mut String,
    upstreams: &[(&str, Vec<crate::upstream::grpc::EndpointView>)],
) {
    use crate::upstream::grpc::balancer::State;
    use std::fmt::Write;
    let samples =
        |out: &mut String, f: &dyn Fn(&mut String, &str, &crate::upstream::grpc::EndpointView)| {
            for (upstream, views) in upstreams {
                for view in views {
                    f(out, upstream, view);
                }
            }
        };
    let labels = |upstream: &str, endpoint: &str| {
        format!(
            "upstream=\"{}\",endpoint=\"{}\"",
            escape_label(upstream),
            escape_label(endpoint)
        )
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP switchboard_upstream_endpoint_state 1 for the state each endpoint is in (healthy, unhealthy, ejected, draining).\n# TYPE switchboard_upstream_endpoint_state gauge"
    );
    samples(out, &|out, upstream, view| {
        let labels = labels(upstream, &view.name);
        for state in State::ALL {
            let _ = writeln!(
                out,
                "switchboard_upstream_endpoint_state{{{labels},state=\"{}\"}} {}",
                state.as_str(),
                u8::from(view.state == state)
            );
        }
    });
    // One series per endpoint each: (name, type, help, value).
    type Read = fn(&crate::upstream::grpc::EndpointView) -> u64;
    let series: [(&str, &str, &str, Read); 3] = [
        (
            "switchboard_upstream_endpoint_healthy",
            "gauge",
            "1 when the endpoint passes active health checks (always without health_check).",
            |view| u64::from(view.healthy),
        ),
        (
            "switchboard_upstream_endpoint_in_flight",
            "gauge",
            "Calls in flight on the endpoint.",
            |view| view.in_flight as u64,
        ),
        (
            "switchboard_upstream_endpoint_ejections_total",
            "counter",
            "Times the endpoint was ejected as an outlier.",
            |view| view.ejections,
        ),
    ];
    for (name, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        samples(out, &|out, upstream, view| {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                labels(upstream, &view.name),
                read(view)
            );
        });
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// A log writer that keeps what is written: tests compare log lines with it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
