//! A small closed-loop load generator for `bench/run`: the gateway over HTTP/1.1, or the demo
//! shop's gRPC services directly, so the two can be compared on the same machine.
//!
//! ```text
//! cargo run --release --example loadgen -- <mode> [options]
//!
//! modes:
//!   http-get URL                 GET over HTTP/1.1 keep-alive (https:// URLs: over TLS)
//!   http-post URL BODY           POST BODY (application/json) over HTTP/1.1 keep-alive;
//!                                `@PATH` sends the contents of the file PATH
//!   h2-get URL                   GET over HTTP/2: TLS with ALPN h2 for https://, prior
//!                                knowledge (h2c) for http://
//!   grpc-get-product ADDR ID     shop.catalog.v1.CatalogService/GetProduct over HTTP/2
//!   grpc-place-order ADDR        shop.orders.v1.OrderService/PlaceOrder over HTTP/2
//! options:
//!   --concurrency N   requests in flight (default 1)
//!   --connections N   HTTP/1.1: must equal --concurrency (the default), one request per
//!                     connection at a time; gRPC: HTTP/2 connections the calls are spread
//!                     over (default 1)
//!   --duration SECS   measured time (default 10)
//!   --warmup SECS     unmeasured time before it (default 1)
//!   --header 'K: V'   HTTP: an extra request header (repeatable), e.g. an Authorization
//!   --ca FILE         https://: the PEM CA certificate(s) to trust (only these)
//!   --fresh           http-get: a new connection (and full TLS handshake, no session
//!                     resumption) for every request
//! ```
//!
//! Each of the `concurrency` workers sends its next request as soon as the previous one
//! answered. Every latency of a successful request that starts after the warm-up and ends
//! before the deadline goes into an HDR histogram. It all runs on one thread (a
//! current-thread runtime), so the generator uses one core and can be pinned with
//! `taskset`. The result is one line of `key=value` pairs on stdout:
//!
//! ```text
//! rps=31234.5 p50_us=1987.1 p90_us=... p99_us=... p999_us=... max_us=... mean_us=...
//! requests=312345 errors=0 concurrency=64 connections=1 duration_s=10 client_cpu=0.71
//! ```
//!
//! `client_cpu` is the share of one core the generator used while measuring; near 1.0 it
//! may be the bottleneck rather than the server.
//!
//! A non-2xx response, a gRPC error, a transport error or a request taking longer than
//! 5 s counts as an error, during the warm-up too; the first one is described on stderr.
//! The exit status is 1 when there was any error.

#[path = "shop/mod.rs"]
mod shop;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST, HeaderName};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use shop::pb::shop::catalog::v1::GetProductRequest;
use shop::pb::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop::pb::shop::orders::v1::order_service_client::OrderServiceClient;
use shop::pb::shop::orders::v1::{OrderItem, PlaceOrderRequest};

const USAGE: &str = "usage: loadgen <mode> [options]
  modes:   http-get URL | http-post URL BODY|@FILE | h2-get URL | grpc-get-product ADDR ID |
           grpc-place-order ADDR
  options: --concurrency N (1)  --connections N  --duration SECS (10)  --warmup SECS (1)
           --header 'Name: value' (HTTP modes, repeatable)  --ca FILE (https)  --fresh";

/// A request slower than this is given up and counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker's pause after a failed request, so a dead server is not hammered in a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How long the workers may overrun the deadline before the run is abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Mode {
    HttpGet { url: Uri },
    HttpPost { url: Uri, body: Bytes },
    H2Get { url: Uri },
    GrpcGetProduct { addr: String, id: String },
    GrpcPlaceOrder { addr: String },
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    /// Extra headers on every HTTP request (`--header`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// CA certificates for https:// (`--ca`).
    ca: Option<String>,
    /// A new connection for every request (`--fresh`).
    fresh: bool,
}

/// Hand-rolled parsing, like `demo_shop`: a handful of flags do not need a CLI framework.
fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut concurrency = 1;
    let mut connections = None;
    let mut duration = 10.0;
    let mut warmup = 1.0;
    let mut headers = Vec::new();
    let mut ca = None;
    let mut fresh = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if flag == "--help" {
            return Err(USAGE.to_owned());
        }
        if flag == "--fresh" {
            fresh = true;
            continue;
        }
        let value = inline
            .or_else(|| argv.next())
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--concurrency" => concurrency = parse_count(&flag, &value)?,
            "--connections" => connections = Some(parse_count(&flag, &value)?),
            "--duration" => duration = parse_secs(&flag, &value)?,
            "--warmup" => warmup = parse_secs(&flag, &value)?,
            "--header" => headers.push(parse_header(&value)?),
            "--ca" => ca = Some(value),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if duration <= 0.0 {
        return Err("--duration must be positive".to_owned());
    }

    let mode = match positional.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["http-get", url] => Mode::HttpGet {
            url: parse_url(url)?,
        },
        ["http-post", url, body] => Mode::HttpPost {
            url: parse_url(url)?,
            body: match body.strip_prefix('@') {
                // Bodies too large for a command line (bench/scaling's 1 MiB).
                Some(path) => {
                    Bytes::from(std::fs::read(path).map_err(|e| format!("body file {path}: {e}"))?)
                }
                None => Bytes::from(body.to_owned()),
            },
        },
        ["h2-get", url] => Mode::H2Get {
            url: parse_url(url)?,
        },
        ["grpc-get-product", addr, id] => Mode::GrpcGetProduct {
            addr: addr.to_owned(),
            id: id.to_owned(),
        },
        ["grpc-place-order", addr] => Mode::GrpcPlaceOrder {
            addr: addr.to_owned(),
        },
        _ => return Err(USAGE.to_owned()),
    };
    let connections = match (&mode, connections) {
        (Mode::HttpGet { .. } | Mode::HttpPost { .. }, Some(n)) if n != concurrency => {
            return Err(format!(
                "HTTP/1.1 has one request in flight per connection: \
                 --connections {n} must equal --concurrency {concurrency}"
            ));
        }
        (Mode::HttpGet { .. } | Mode::HttpPost { .. }, _) => concurrency,
        (_, n) => n.unwrap_or(1),
    };
    Ok(Args {
        mode,
        concurrency,
        connections,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        headers,
        ca,
        fresh,
    })
}

fn parse_header(value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = value
        .split_once(':')
        .ok_or_else(|| format!("--header {value}: expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("--header name {name}: {e}"))?;
    let value =
        HeaderValue::from_str(value.trim()).map_err(|e| format!("--header value {value}: {e}"))?;
    Ok((name, value))
}

fn parse_count(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} {value}: expected a positive integer")),
    }
}

fn parse_secs(flag: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("{flag} {value}: expected seconds")),
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!("{url}: expected http(s)://host:port/path"));
    }
    Ok(uri)
}

/// One HTTP/1.1 keep-alive connection, reopened after a failure.
struct HttpClient {
    method: Method,
    url: Uri,
    host: HeaderValue,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// For https:// URLs.
    tls: Option<TlsConnector>,
    /// Close the connection after every request.
    fresh: bool,
}

impl HttpClient {
    fn new(
        method: Method,
        url: Uri,
        body: Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
        tls: Option<TlsConnector>,
        fresh: bool,
    ) -> Result<Self, String> {
        let authority = url.authority().expect("checked by parse_url").as_str();
        let host = HeaderValue::from_str(authority).map_err(|e| e.to_string())?;
        Ok(Self {
            method,
            url,
            host,
            body,
            headers,
            sender: None,
            tls,
            fresh,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = open(&self.url, self.tls.as_ref()).await?;
        let addr = self.url.authority().expect("checked by parse_url").as_str();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::task::spawn_local(connection);
        Ok(sender)
    }

    async fn call(&mut self) -> Result<(), String> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, self.host.clone());
        if self.method == Method::POST {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if self.fresh {
            request = request.header(http::header::CONNECTION, "close");
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(self.body.clone()))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the whole body: the connection is reusable only once it is consumed.
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !self.fresh {
            self.sender = Some(sender);
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// A TCP connection to `url`'s authority, with TLS when `tls` is set (https://).
async fn open(url: &Uri, tls: Option<&TlsConnector>) -> Result<Stream, String> {
    let authority = url.authority().expect("checked by parse_url");
    let addr = authority.as_str();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return Ok(Stream::Plain(stream));
    };
    let name = ServerName::try_from(authority.host().to_owned())
        .map_err(|e| format!("{}: {e}", authority.host()))?;
    let stream = tls
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A plain or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The TLS client for https:// URLs: trusts only the certificates in `ca`, offers `alpn`.
/// With `full_handshakes` no session is resumed (each connection costs a full handshake).
fn tls_connector(
    ca: Option<&str>,
    alpn: &[u8],
    full_handshakes: bool,
) -> Result<TlsConnector, String> {
    let ca = ca.ok_or("https:// needs --ca FILE")?;
    let pem = std::fs::read(ca).map_err(|e| format!("--ca {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca {ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("--ca {ca}: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    if full_handshakes {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// HTTP/2 connections shared by the workers (requests multiplexed over them).
async fn h2_senders(
    url: &Uri,
    count: usize,
    tls: Option<&TlsConnector>,
) -> Result<Vec<Http2Sender>, String> {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = open(url, tls).await?;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::task::spawn_local(connection);
        senders.push(sender);
    }
    Ok(senders)
}

type Http2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// One GET over a shared HTTP/2 connection.
async fn h2_get(
    sender: &mut Http2Sender,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<(), String> {
    let mut request = Request::get(url.clone());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::new()))
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
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// What one worker sends, over its own connection (HTTP) or a shared channel (gRPC).
enum Client {
    Http(HttpClient),
    H2(Http2Sender, Uri, Rc<Vec<(HeaderName, HeaderValue)>>),
    GetProduct(CatalogServiceClient<Channel>, GetProductRequest),
    PlaceOrder(OrderServiceClient<Channel>, PlaceOrderRequest),
}

impl Client {
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Self::Http(client) => client.call().await,
            Self::H2(sender, url, headers) => h2_get(sender, url, headers).await,
            Self::GetProduct(client, request) => client
                .get_product(request.clone())
                .await
                .map(drop)
                .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message())),
            Self::PlaceOrder(client, request) => client
                .place_order(request.clone())
                .await
                .map(drop)
                .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message())),
        }
    }
}

/// `count` HTTP/2 connections to `addr`; the workers' calls are spread over them.
async fn grpc_channels(addr: &str, count: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Opens the connections and makes one client per worker.
async fn clients(args: &Args) -> Result<Vec<Client>, String> {
    let workers = 0..args.concurrency;
    let tls = |url: &Uri, alpn: &[u8]| match url.scheme_str() {
        Some("https") => tls_connector(args.ca.as_deref(), alpn, args.fresh).map(Some),
        _ => Ok(None),
    };
    let clients = match &args.mode {
        Mode::HttpGet { url } => {
            let tls = tls(url, b"http/1.1")?;
            workers
                .map(|_| {
                    HttpClient::new(
                        Method::GET,
                        url.clone(),
                        Bytes::new(),
                        args.headers.clone(),
                        tls.clone(),
                        args.fresh,
                    )
                    .map(Client::Http)
                })
                .collect::<Result<_, _>>()?
        }
        Mode::HttpPost { url, body } => {
            let tls = tls(url, b"http/1.1")?;
            workers
                .map(|_| {
                    HttpClient::new(
                        Method::POST,
                        url.clone(),
                        body.clone(),
                        args.headers.clone(),
                        tls.clone(),
                        args.fresh,
                    )
                    .map(Client::Http)
                })
                .collect::<Result<_, _>>()?
        }
        Mode::H2Get { url } => {
            let tls = tls(url, b"h2")?;
            let senders = h2_senders(url, args.connections, tls.as_ref()).await?;
            let headers = Rc::new(args.headers.clone());
            workers
                .map(|i| {
                    Client::H2(
                        senders[i % senders.len()].clone(),
                        url.clone(),
                        headers.clone(),
                    )
                })
                .collect()
        }
        Mode::GrpcGetProduct { addr, id } => {
            let channels = grpc_channels(addr, args.connections).await?;
            let request = GetProductRequest { id: id.clone() };
            workers
                .map(|i| {
                    let client = CatalogServiceClient::new(channels[i % channels.len()].clone());
                    Client::GetProduct(client, request.clone())
                })
                .collect()
        }
        Mode::GrpcPlaceOrder { addr } => {
            let channels = grpc_channels(addr, args.connections).await?;
            // The same order the HTTP scenario posts: {"items":[{"productId":"1","quantity":2}]}.
            let request = PlaceOrderRequest {
                items: vec![OrderItem {
                    product_id: "1".to_owned(),
                    quantity: 2,
                }],
                note: String::new(),
            };
            workers
                .map(|i| {
                    let client = OrderServiceClient::new(channels[i % channels.len()].clone());
                    Client::PlaceOrder(client, request.clone())
                })
                .collect()
        }
    };
    Ok(clients)
}

/// Latencies and errors of all workers; they share one thread, so a `RefCell` suffices.
struct Results {
    /// Nanoseconds, 1 ns to 60 s at 3 significant digits.
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Share of one core this process used while measuring: near 1.0 means the generator,
    /// not the server, may be the bottleneck.
    client_cpu: Option<f64>,
}

/// The closed loop of one worker: send, wait for the answer, repeat until `end`.
async fn work(
    mut client: Client,
    measure_from: Instant,
    end: Instant,
    results: Rc<RefCell<Results>>,
) {
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, client.call())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        let done = Instant::now();
        match outcome {
            Ok(()) if start >= measure_from && done <= end => {
                let nanos = u64::try_from((done - start).as_nanos()).unwrap_or(u64::MAX);
                results.borrow_mut().latencies.saturating_record(nanos);
            }
            Ok(()) => {}
            Err(error) => {
                {
                    let mut results = results.borrow_mut();
                    results.errors += 1;
                    results.first_error.get_or_insert(error);
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

async fn run(args: Args) -> Result<Results, String> {
    let clients = clients(&args).await?;
    let results = Rc::new(RefCell::new(Results {
        latencies: Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?,
        errors: 0,
        first_error: None,
        client_cpu: None,
    }));
    let measure_from = Instant::now() + args.warmup;
    let end = measure_from + args.duration;
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::task::spawn_local(work(client, measure_from, end, results.clone())))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_time();
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = cpu_time();
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        results.borrow_mut().client_cpu =
            Some((after - before).as_secs_f64() / args.duration.as_secs_f64());
    }
    let drained = tokio::time::timeout_at((end + DRAIN_TIMEOUT).into(), async {
        for worker in workers {
            worker.await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    });
    drained
        .await
        .map_err(|_| format!("workers still busy {DRAIN_TIMEOUT:?} after the deadline"))??;
    Rc::try_unwrap(results)
        .map(RefCell::into_inner)
        .map_err(|_| "a worker outlived the run".to_owned())
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (Linux
/// only), at the kernel's 10 ms tick resolution.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; the numbered fields resume after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5), in USER_HZ (100 on Linux).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn micros(nanos: f64) -> f64 {
    nanos / 1_000.0
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
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (concurrency, connections, duration) = (args.concurrency, args.connections, args.duration);
    let local = tokio::task::LocalSet::new();
    let results = match local.block_on(&runtime, run(args)) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };

    let h = &results.latencies;
    let q = |quantile: f64| micros(h.value_at_quantile(quantile) as f64);
    println!(
        "rps={:.1} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} \
         mean_us={:.1} requests={} errors={} concurrency={concurrency} \
         connections={connections} duration_s={} client_cpu={}",
        h.len() as f64 / duration.as_secs_f64(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        micros(h.max() as f64),
        micros(h.mean()),
        h.len(),
        results.errors,
        duration.as_secs_f64(),
        results
            .client_cpu
            .map_or_else(|| "na".to_owned(), |cpu| format!("{cpu:.2}")),
    );
    match results.first_error {
        Some(error) => {
            eprintln!("loadgen: {} errors, the first: {error}", results.errors);
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
