//! The load generator of `bench/websocket`: the demo chat (`shop.chat.v1.ChatService/
//! Converse`, a bidi stream) through the gateway's WebSocket bridge or directly over gRPC,
//! and many idle sockets for the memory measurement.
//!
//! ```text
//! cargo run --release --example ws_loadgen -- <mode> [options]
//!
//! modes:
//!   ws-bidi URL        one WebSocket (ws://host:port/ws/chat), WINDOW messages in flight
//!   grpc-bidi ADDR     one gRPC bidi stream to the chat service at ADDR (host:port), same
//!   ws-idle URL        opens --connections sockets, prints `open=N`, holds them --hold secs
//! options:
//!   --window N        messages in flight (default 64)
//!   --duration SECS   measured time (default 10)
//!   --warmup SECS     unmeasured time before it (default 1)
//!   --connections N   ws-idle: sockets to open (default 10000)
//!   --hold SECS       ws-idle: how long to keep them open (default 10)
//! ```
//!
//! The bidi modes keep WINDOW messages in flight on one stream: a new one goes out as soon
//! as a reply comes back (replies are counted). The result is one line on stdout:
//!
//! ```text
//! msgs_per_s=123456.7 messages=1234567 window=64 duration_s=10
//! ```
//!
//! Everything runs on one thread (a current-thread runtime), so the generator uses one core
//! and can be pinned with `taskset`. Every connection goes where the URL/ADDR says; a run
//! stops by itself. A failure is described on stderr and the exit status is 1.

#[path = "shop/mod.rs"]
mod shop;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tonic::transport::Endpoint;

use shop::pb::shop::chat::v1::ChatMessage;
use shop::pb::shop::chat::v1::chat_service_client::ChatServiceClient;

const USAGE: &str = "usage: ws_loadgen ws-bidi URL | grpc-bidi ADDR | ws-idle URL
  options: --window N (64)  --duration SECS (10)  --warmup SECS (1)
           --connections N (10000)  --hold SECS (10)";

/// Longest wait for one reply (or one connection) before the run is abandoned.
const STALL: Duration = Duration::from_secs(5);
/// Sockets being opened at once in `ws-idle`.
const OPENING: usize = 200;

enum Mode {
    WsBidi(String),
    GrpcBidi(String),
    WsIdle(String),
}

struct Args {
    mode: Mode,
    window: usize,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    hold: Duration,
}

/// Hand-rolled parsing, like `loadgen`: a handful of flags need no CLI framework.
fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut window, mut connections) = (64, 10_000);
    let (mut duration, mut warmup, mut hold) = (10.0, 1.0, 10.0);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        let value = argv
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let number = || -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("{arg} {value}: expected a number"))
        };
        match arg.as_str() {
            "--window" => window = number()? as usize,
            "--connections" => connections = number()? as usize,
            "--duration" => duration = number()?,
            "--warmup" => warmup = number()?,
            "--hold" => hold = number()?,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let mode = match positional.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ws-bidi", url] => Mode::WsBidi(url.to_owned()),
        ["grpc-bidi", addr] => Mode::GrpcBidi(addr.to_owned()),
        ["ws-idle", url] => Mode::WsIdle(url.to_owned()),
        _ => return Err(USAGE.to_owned()),
    };
    if window == 0 || duration <= 0.0 {
        return Err("--window and --duration must be positive".to_owned());
    }
    Ok(Args {
        mode,
        window,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        connections,
        hold: Duration::from_secs_f64(hold),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match &args.mode {
            Mode::WsBidi(url) => ws_bidi(url, &args).await,
            Mode::GrpcBidi(addr) => grpc_bidi(addr, &args).await,
            Mode::WsIdle(url) => ws_idle(url, &args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ws_loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Counts replies that arrive inside the measured window.
struct Meter {
    start: Instant,
    warmup: Duration,
    end: Duration,
    counted: AtomicU64,
}

impl Meter {
    fn new(args: &Args) -> Self {
        Self {
            start: Instant::now(),
            warmup: args.warmup,
            end: args.warmup + args.duration,
            counted: AtomicU64::new(0),
        }
    }

    /// Records one reply; false once the run is over.
    fn reply(&self) -> bool {
        let at = self.start.elapsed();
        if at >= self.warmup && at < self.end {
            self.counted.fetch_add(1, Ordering::Relaxed);
        }
        at < self.end
    }

    fn running(&self) -> bool {
        self.start.elapsed() < self.end
    }

    fn report(&self, args: &Args) {
        let messages = self.counted.load(Ordering::Relaxed);
        println!(
            "msgs_per_s={:.1} messages={messages} window={} duration_s={}",
            messages as f64 / args.duration.as_secs_f64(),
            args.window,
            args.duration.as_secs_f64()
        );
    }
}

fn chat_json(sequence: u64) -> String {
    format!(r#"{{"user":"bench","text":"hello over a websocket","sequence":"{sequence}"}}"#)
}

/// One socket, `window` messages in flight: each reply lets the next message go.
async fn ws_bidi(url: &str, args: &Args) -> Result<(), String> {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let (mut sink, mut stream) = socket.split();
    let credits = Arc::new(Semaphore::new(args.window));
    let meter = Meter::new(args);
    let send = async {
        let mut sequence = 0u64;
        while meter.running() {
            // Everything the replies allowed goes out in one flush.
            let first = credits.acquire().await.map_err(|e| e.to_string())?;
            first.forget();
            let mut batch = 1 + credits.available_permits();
            if let Ok(more) = credits.try_acquire_many(batch as u32 - 1) {
                more.forget();
            } else {
                batch = 1;
            }
            for _ in 0..batch {
                sequence += 1;
                sink.feed(Message::text(chat_json(sequence)))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
            }
            sink.flush().await.map_err(|e| format!("send: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let receive = async {
        loop {
            match tokio::time::timeout(STALL, stream.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => {
                    if !meter.reply() {
                        return Ok::<(), String>(());
                    }
                    credits.add_permits(1);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
                Ok(None) => return Err("the gateway closed the socket".to_owned()),
                Err(_) => return Err(format!("no reply within {STALL:?}")),
            }
        }
    };
    tokio::select! {
        sent = send => sent?,
        received = receive => received?,
    }
    meter.report(args);
    Ok(())
}

/// One gRPC bidi stream, `window` messages in flight.
async fn grpc_bidi(addr: &str, args: &Args) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (requests, outgoing) = mpsc::channel(args.window);
    let mut replies = ChatServiceClient::new(channel)
        .converse(ReceiverStream::new(outgoing))
        .await
        .map_err(|e| format!("open the stream: {e}"))?
        .into_inner();
    let credits = Arc::new(Semaphore::new(args.window));
    let meter = Meter::new(args);
    let send = async {
        let mut sequence = 0i64;
        while meter.running() {
            credits.acquire().await.map_err(|e| e.to_string())?.forget();
            sequence += 1;
            let message = ChatMessage {
                user: "bench".to_owned(),
                text: "hello over a websocket".to_owned(),
                sequence,
            };
            requests
                .send(message)
                .await
                .map_err(|_| "the stream closed".to_owned())?;
        }
        Ok::<(), String>(())
    };
    let receive = async {
        loop {
            match tokio::time::timeout(STALL, replies.message()).await {
                Ok(Ok(Some(_))) => {
                    if !meter.reply() {
                        return Ok::<(), String>(());
                    }
                    credits.add_permits(1);
                }
                Ok(Ok(None)) => return Err("the stream ended".to_owned()),
                Ok(Err(status)) => return Err(format!("receive: {status}")),
                Err(_) => return Err(format!("no reply within {STALL:?}")),
            }
        }
    };
    tokio::select! {
        sent = send => sent?,
        received = receive => received?,
    }
    meter.report(args);
    Ok(())
}

/// Opens `connections` sockets (at most `OPENING` handshakes at a time), prints `open=N`,
/// keeps them (answering the gateway's pings) for `hold`, then closes them all.
async fn ws_idle(url: &str, args: &Args) -> Result<(), String> {
    // Small read buffers: the point is the gateway's memory, not ours.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let opened = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pending = FuturesUnordered::new();
    let mut started = 0;
    let mut readers = Vec::with_capacity(args.connections);
    while started < args.connections || !pending.is_empty() {
        while started < args.connections && pending.len() < OPENING {
            started += 1;
            pending.push(tokio::time::timeout(
                STALL,
                tokio_tungstenite::connect_async_with_config(url, Some(config), false),
            ));
        }
        let socket = match pending.next().await {
            Some(Ok(Ok((socket, _)))) => socket,
            Some(Ok(Err(e))) => return Err(format!("connect {url}: {e}")),
            Some(Err(_)) => return Err(format!("connect {url}: no answer within {STALL:?}")),
            None => break,
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            // Reading answers pings; the socket stays until told to stop.
            tokio::select! {
                _ = async { while let Some(Ok(_)) = stream.next().await {} } => {}
                _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => {
                    let _ = sink.close().await;
                }
            }
        }));
    }
    println!("open={}", opened.load(Ordering::Relaxed));
    tokio::time::sleep(args.hold).await;
    let still_open = readers.iter().filter(|r| !r.is_finished()).count();
    let _ = stop_tx.send(true);
    for reader in readers {
        let _ = tokio::time::timeout(STALL, reader).await;
    }
    println!("still_open_at_end={still_open}");
    Ok(())
}
