//! Span export over OTLP/HTTP with protobuf bodies (`telemetry: { otlp: { endpoint } }`).
//!
//! Finished spans go into a bounded queue with `try_send`: a full queue drops the span
//! (counted), so exporting never blocks or fails a request. One task per exporter drains
//! the queue in batches and posts them to the collector; its failures go to the log at
//! most once per [`WARN_EVERY`], with how many were not logged.

use crate::config::OtlpConfig;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Spans waiting for export; beyond it new spans are dropped.
const QUEUE: usize = 4096;
/// Spans in one export request.
const MAX_BATCH: usize = 512;
/// How long a batch may wait to fill before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request's deadline (connect included).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about failed exports or dropped spans per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The OTLP exporter of one configuration: the queue in front of it, and the task behind
/// it once started. Kept across reloads while `telemetry.otlp` does not change.
pub struct SpanExport {
    config: OtlpConfig,
    queue: mpsc::Sender<SpanData>,
    /// The receiving end and the exporter, until [`SpanExport::start`] spawns the task.
    pending: Mutex<Option<(mpsc::Receiver<SpanData>, opentelemetry_otlp::SpanExporter)>>,
    scope: InstrumentationScope,
    warnings: Warnings,
}

impl SpanExport {
    /// The exporter for `config`: the previous one when the config is the same (its
    /// queue and task go on), else a new one. Builds a client; connects nothing.
    pub fn build(
        config: Option<&OtlpConfig>,
        previous: Option<&std::sync::Arc<SpanExport>>,
    ) -> Result<Option<std::sync::Arc<SpanExport>>, String> {
        let Some(config) = config else {
            return Ok(None);
        };
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return Ok(Some(previous.clone()));
        }
        let endpoint = traces_url(&config.endpoint)?;
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("telemetry.otlp: http client: {e}"))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| format!("telemetry.otlp: {e}"))?;
        exporter.set_resource(&resource());
        let (queue, receiver) = mpsc::channel(QUEUE);
        Ok(Some(std::sync::Arc::new(SpanExport {
            config: config.clone(),
            queue,
            pending: Mutex::new(Some((receiver, exporter))),
            scope: InstrumentationScope::builder("switchboard")
                .with_version(super::VERSION)
                .build(),
            warnings: Warnings::default(),
        })))
    }

    /// Starts the export task (once; later calls do nothing). Needs a tokio runtime. The
    /// task ends when the last handle on the queue is gone and the queue is drained.
    pub fn start(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((receiver, exporter)) = pending {
            let endpoint = self.config.endpoint.clone();
            tokio::spawn(export_loop(receiver, exporter, endpoint));
        }
    }

    /// Queues a finished span; drops it when the queue is full.
    pub fn send(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            metrics::counter!("switchboard_otlp_spans_dropped_total").increment(1);
            self.warnings.warn(|suppressed| {
                tracing::warn!(
                    endpoint = %self.config.endpoint,
                    suppressed,
                    "OTLP span queue full: spans are dropped (is the collector keeping up?)"
                )
            });
        }
    }

    /// The instrumentation scope every span of this gateway names.
    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }
}

/// The URL spans are posted to: the configured endpoint, with the standard
/// `/v1/traces` path when it names none (as `OTEL_EXPORTER_OTLP_ENDPOINT` works).
fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("telemetry.otlp.endpoint `{endpoint}`: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "telemetry.otlp.endpoint `{endpoint}`: an http:// or https:// URL is needed \
             (OTLP over HTTP, e.g. http://127.0.0.1:4318)"
        ));
    }
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    })
}

/// `service.name` is `switchboard` unless `OTEL_SERVICE_NAME` says otherwise;
/// `OTEL_RESOURCE_ATTRIBUTES` adds attributes (the SDK's environment detectors).
fn resource() -> Resource {
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        super::VERSION,
    ));
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("switchboard").build()
    }
}

/// Drains the queue: batches of up to [`MAX_BATCH`] spans, sent at most
/// [`BATCH_DELAY`] after their first span arrived.
async fn export_loop(
    mut receiver: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    endpoint: String,
) {
    let warnings = Warnings::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let flush_at = Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(flush_at, receiver.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let spans = batch.len();
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let result = tokio::time::timeout(EXPORT_TIMEOUT * 2, exporter.export(sent)).await;
        let error = match result {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        metrics::counter!("switchboard_otlp_export_failures_total").increment(1);
        warnings.warn(|suppressed| {
            tracing::warn!(%endpoint, spans, %error, suppressed, "OTLP span export failed; the spans are dropped")
        });
    }
}

/// Rate-limits one kind of warning: at most one per [`WARN_EVERY`], reporting how many
/// were suppressed in between.
#[derive(Default)]
struct Warnings {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Warnings {
    fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        log(self.suppressed.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_endpoint() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector/otlp/v1/traces").unwrap(),
            "https://collector/otlp/v1/traces"
        );
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("grpc://127.0.0.1:4317").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_are_rate_limited() {
        let warnings = Warnings::default();
        let logged = std::sync::Mutex::new(Vec::new());
        for _ in 0..5 {
            warnings.warn(|suppressed| logged.lock().unwrap().push(suppressed));
        }
        tokio::time::advance(WARN_EVERY).await;
        warnings.warn(|suppressed| logged.lock().unwrap().push(suppressed));
        assert_eq!(*logged.lock().unwrap(), vec![0, 4]);
    }
}
