//! Closed-loop load for `bench/amqp`: request-reply through the gateway's AMQP route (HTTP
//! POST), or straight to the same worker with a lapin RPC client, so the two compare.
//!
//! ```text
//! cargo run --release --example amqp_loadgen -- http URL BODY [options]
//! cargo run --release --example amqp_loadgen -- direct AMQP_URL ROUTING_KEY BODY [options]
//! options:
//!   --concurrency N   requests in flight (default 16); HTTP: one keep-alive connection each
//!   --duration SECS   measured time (default 10)
//!   --warmup SECS     unmeasured time before it (default 1)
//!   --confirms        direct: publisher confirms + mandatory, as the gateway publishes
//!   --as-gateway      direct: the message the gateway would send (mandatory, expiration,
//!                     trace headers), so that only the hop through the gateway differs
//! ```
//!
//! The direct client is what a service would write by hand: one connection, one channel,
//! one consumer on direct reply-to, replies matched by correlation id. Each worker sends
//! its next request when the previous one answered. Everything runs on one thread (lapin
//! adds its I/O thread), so the generator can be pinned with `taskset`. The result is one
//! line on stdout:
//!
//! ```text
//! rps=8123.4 p50_us=1890.2 p99_us=3502.1 errors=0 requests=81234 concurrency=16 mode=http
//! ```
//!
//! A non-2xx answer, a transport error or no answer within 5 s is an error; the first is
//! described on stderr, and the exit status is 1 when there was any.

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const USAGE: &str = "usage: amqp_loadgen http URL BODY | direct AMQP_URL ROUTING_KEY BODY
  options: --concurrency N (16)  --duration SECS (10)  --warmup SECS (1)  --confirms  --as-gateway";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

enum Mode {
    Http {
        url: Uri,
        body: Bytes,
    },
    Direct {
        url: String,
        routing_key: String,
        body: Bytes,
    },
}

struct Args {
    mode: Mode,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    confirms: bool,
    as_gateway: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut concurrency, mut duration, mut warmup, mut confirms) = (16, 10.0, 1.0, false);
    let mut as_gateway = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        if arg == "--confirms" {
            confirms = true;
            continue;
        }
        if arg == "--as-gateway" {
            as_gateway = true;
            continue;
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{arg} {v}: {e}"));
        match arg.as_str() {
            "--concurrency" => concurrency = number(&value)?.max(1.0) as usize,
            "--duration" => duration = number(&value)?,
            "--warmup" => warmup = number(&value)?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    let mode = match positional.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["http", url, body] => Mode::Http {
            url: url.parse().map_err(|e| format!("{url}: {e}"))?,
            body: Bytes::from(body.to_owned()),
        },
        ["direct", url, routing_key, body] => Mode::Direct {
            url: url.to_owned(),
            routing_key: routing_key.to_owned(),
            body: Bytes::from(body.to_owned()),
        },
        _ => return Err(USAGE.to_owned()),
    };
    Ok(Args {
        mode,
        concurrency,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        confirms,
        as_gateway,
    })
}

/// One HTTP/1.1 keep-alive connection to the gateway.
struct HttpClient {
    url: Uri,
    host: HeaderValue,
    body: Bytes,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    async fn call(&mut self) -> Result<(), String> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => {
                let addr = self.host.to_str().map_err(|e| e.to_string())?;
                let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::task::spawn_local(connection);
                sender
            }
        };
        let request = Request::post(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        self.sender = Some(sender);
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body.to_bytes())
            ))
        }
    }
}

/// A hand-written RPC client: one channel, one direct reply-to consumer, a correlation map.
struct DirectClient {
    channel: Channel,
    routing_key: ShortString,
    body: Bytes,
    confirms: bool,
    as_gateway: bool,
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<()>>>,
}

impl DirectClient {
    async fn connect(
        url: &str,
        routing_key: &str,
        body: Bytes,
        confirms: bool,
        as_gateway: bool,
    ) -> Result<Rc<Self>, String> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                ShortString::default(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let client = Rc::new(Self {
            channel,
            routing_key: routing_key.into(),
            body,
            confirms,
            as_gateway,
            next: Cell::new(0),
            waiting: RefCell::new(HashMap::new()),
        });
        let weak = Rc::downgrade(&client);
        tokio::task::spawn_local(async move {
            let _connection = connection; // lives as long as the consumer
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(client) = weak.upgrade() else { break };
                let id = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<u64>().ok());
                if let Some(waiter) = id.and_then(|id| client.waiting.borrow_mut().remove(&id)) {
                    let _ = waiter.send(());
                }
            }
        });
        Ok(client)
    }

    async fn call(&self) -> Result<(), String> {
        let id = self.next.get() + 1;
        self.next.set(id);
        let (sender, reply) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        let mut properties = BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(id.to_string().into())
            .with_content_type("application/json".into());
        if self.as_gateway {
            // What proxy::amqp adds: the trace headers and the route timeout (5 s).
            let mut headers = FieldTable::default();
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let parent = format!("00-{trace}-00f067aa0ba902b7-01");
            headers.insert("x-trace-id".into(), AMQPValue::LongString(trace.into()));
            headers.insert("traceparent".into(), AMQPValue::LongString(parent.into()));
            properties = properties
                .with_headers(headers)
                .with_expiration("5000".into());
        }
        let options = BasicPublishOptions {
            mandatory: self.confirms || self.as_gateway,
            immediate: false,
        };
        let confirm = self
            .channel
            .basic_publish(
                ShortString::default(),
                self.routing_key.clone(),
                options,
                &self.body,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        if self.confirms {
            let confirmation = confirm.await.map_err(|e| e.to_string())?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err("the broker did not take the message".into());
            }
        }
        let outcome = reply.await.map_err(|_| "no reply".to_string());
        self.waiting.borrow_mut().remove(&id);
        outcome
    }
}

enum Client {
    Http(HttpClient),
    Direct(Rc<DirectClient>),
}

impl Client {
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Client::Http(client) => client.call().await,
            Client::Direct(client) => client.call().await,
        }
    }
}

struct Results {
    /// Nanoseconds, 1 ns to 60 s at 3 significant digits.
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// The closed loop of one worker: send, wait for the answer, repeat until `end`.
async fn work(
    mut client: Client,
    measure_from: Instant,
    end: Instant,
    results: Rc<RefCell<Results>>,
) {
    while Instant::now() < end {
        let start = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, client.call())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        let done = Instant::now();
        let mut results = results.borrow_mut();
        match outcome {
            Ok(()) if start >= measure_from && done <= end => {
                let nanos = u64::try_from((done - start).as_nanos()).unwrap_or(u64::MAX);
                results.latencies.saturating_record(nanos);
            }
            Ok(()) => {}
            Err(error) => {
                results.errors += 1;
                results.first_error.get_or_insert(error);
            }
        }
    }
}

async fn run(args: &Args) -> Result<Results, String> {
    let clients: Vec<Client> = match &args.mode {
        Mode::Http { url, body } => {
            let authority = url.authority().ok_or("the URL needs host:port")?.as_str();
            let host = HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
            (0..args.concurrency)
                .map(|_| {
                    Client::Http(HttpClient {
                        url: url.clone(),
                        host: host.clone(),
                        body: body.clone(),
                        sender: None,
                    })
                })
                .collect()
        }
        Mode::Direct {
            url,
            routing_key,
            body,
        } => {
            let client = DirectClient::connect(
                url,
                routing_key,
                body.clone(),
                args.confirms,
                args.as_gateway,
            )
            .await?;
            (0..args.concurrency)
                .map(|_| Client::Direct(client.clone()))
                .collect()
        }
    };
    let results = Rc::new(RefCell::new(Results {
        latencies: Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?,
        errors: 0,
        first_error: None,
    }));
    let measure_from = Instant::now() + args.warmup;
    let end = measure_from + args.duration;
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::task::spawn_local(work(client, measure_from, end, results.clone())))
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    Rc::try_unwrap(results)
        .map(RefCell::into_inner)
        .map_err(|_| "a worker outlived the run".to_owned())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("amqp_loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let results = match local.block_on(&runtime, run(&args)) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("amqp_loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let h = &results.latencies;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let mode = match (&args.mode, args.confirms, args.as_gateway) {
        (Mode::Http { .. }, ..) => "http",
        (Mode::Direct { .. }, true, _) => "direct-confirms",
        (Mode::Direct { .. }, false, true) => "direct-as-gateway",
        (Mode::Direct { .. }, false, false) => "direct",
    };
    println!(
        "rps={:.1} p50_us={:.1} p99_us={:.1} max_us={:.1} errors={} requests={} concurrency={} duration_s={} mode={mode}",
        h.len() as f64 / args.duration.as_secs_f64(),
        us(0.5),
        us(0.99),
        h.max() as f64 / 1_000.0,
        results.errors,
        h.len(),
        args.concurrency,
        args.duration.as_secs_f64(),
    );
    if let Some(error) = &results.first_error {
        eprintln!("amqp_loadgen: first error: {error}");
    }
    if results.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
