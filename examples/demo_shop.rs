//! Runs the demo shop backends for trying the gateway by hand.
//!
//! ```text
//! cargo run --example demo_shop -- [--host 127.0.0.1] [--base-port 50051]
//! ```
//!
//! The services listen on `base-port` + 0..4: catalog, reviews, inventory, orders, chat.
//! Each also serves gRPC reflection and health, so `grpcurl -plaintext 127.0.0.1:50051 list`
//! works. Stops on Ctrl-C or SIGTERM.

mod shop;

use std::net::IpAddr;
use std::process::ExitCode;

struct Args {
    host: IpAddr,
    base_port: u16,
}

const USAGE: &str = "usage: demo_shop [--host <ip>] [--base-port <port>]";

/// Hand-rolled parsing: two flags do not justify a CLI framework here.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: IpAddr::from([127, 0, 0, 1]),
        base_port: shop::DEFAULT_PORTS[0],
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--host" => {
                let v = value()?;
                args.host = v.parse().map_err(|e| format!("--host {v}: {e}"))?;
            }
            "--base-port" => {
                let v = value()?;
                args.base_port = v.parse().map_err(|e| format!("--base-port {v}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.base_port > u16::MAX - 4 {
        return Err(format!(
            "--base-port {} leaves no room for 5 ports",
            args.base_port
        ));
    }
    Ok(args)
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (what `docker stop` and `kill` send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let base = args.base_port;
    let ports = [base, base + 1, base + 2, base + 3, base + 4];
    let shop = match shop::start(args.host, Some(ports)).await {
        Ok(shop) => shop,
        Err(error) => {
            eprintln!("demo_shop: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("demo shop running (reflection + health on every port):");
    println!("  catalog    {}  {}", shop.catalog, shop::catalog::SERVICE);
    println!("  reviews    {}  {}", shop.reviews, shop::reviews::SERVICE);
    println!(
        "  inventory  {}  {}",
        shop.inventory,
        shop::inventory::SERVICE
    );
    println!("  orders     {}  {}", shop.orders, shop::orders::SERVICE);
    println!("  chat       {}  {}", shop.chat, shop::chat::SERVICE);
    println!("Ctrl-C to stop");

    shutdown_signal().await;
    drop(shop);
    println!("demo shop stopped");
    ExitCode::SUCCESS
}
