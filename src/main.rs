//! The `switchboard` command line (contract §2).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use switchboard::routing::Target;
use switchboard::telemetry::{self, LogFormat};
use switchboard::{Gateway, Server};

/// mimalloc instead of the system allocator: a proxied request allocates and frees a few
/// dozen small buffers, and glibc's malloc spent ~10% of the gateway's CPU on them
/// (perf, bench/run); mimalloc's thread-local free lists take less (BENCHMARKS.md). Built
/// without transparent huge pages (Cargo.toml): they doubled the resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SWITCHBOARD_REVISION"), ")"),
    about = "Protocol-translating API gateway: REST/JSON in front, gRPC behind"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Gateway configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "switchboard.yaml",
        env = "SWITCHBOARD_CONFIG"
    )]
    config: PathBuf,
    /// Log format (filtering with RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (default).
    Serve,
    /// Validate config, descriptors and mappings; print `path:line: message` per error.
    Check,
    /// Print the compiled route table.
    Routes,
    /// Print an OpenAPI 3.1 document (JSON).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Dropped when `main` returns: the log lines still queued are written then.
    let _log = telemetry::init_logging(cli.common.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    // Not dropped: dropping the runtime cancels the tasks still in it, and lapin's I/O
    // thread panics ("task was cancelled") when a broker connection was still opening,
    // e.g. when the port was taken. What must finish has finished (the drain in `serve`,
    // the log flush when `main` returns); the process exit ends the rest.
    std::mem::forget(runtime);
    code
}

async fn run(cli: Cli) -> ExitCode {
    let config = cli.common.config;
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve) {
        telemetry::prometheus();
    }
    let print_errors = |errors: switchboard::config::LoadErrors| {
        for error in &errors.0 {
            eprintln!("{error}");
        }
        ExitCode::FAILURE
    };
    if let Command::Serve = command {
        return match Gateway::load(&config).await {
            Ok(gateway) => serve(Arc::new(gateway)).await,
            Err(errors) => print_errors(errors),
        };
    }
    // The offline commands compile the configuration and start nothing: no broker
    // connection, no health check (only `reflection: true` upstreams are asked for
    // their descriptors, which compiling needs).
    let table = match switchboard::gateway::build_table(&config, None).await {
        Ok(table) => table,
        Err(errors) => return print_errors(errors),
    };
    match command {
        Command::Check => {
            println!("{}: ok, {} routes", config.display(), table.routes.len());
        }
        Command::Routes => print_routes(&table),
        Command::Openapi => {
            let document = switchboard::openapi::document(&table);
            println!(
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            );
        }
        Command::Serve => {}
    }
    ExitCode::SUCCESS
}

async fn serve(gateway: Arc<Gateway>) -> ExitCode {
    let server = match Server::bind(gateway.clone()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = server.local_addr() {
        tracing::info!(%addr, routes = gateway.table().routes.len(), "listening");
    }
    if let Some(addr) = server.admin_addr() {
        tracing::info!(%addr, "admin listening");
    }
    switchboard::server::spawn_sighup_reload(gateway.clone());
    // Lives as long as the server: dropping it would stop watching.
    let _watch = switchboard::gateway::watch::spawn(gateway);
    match server.run(switchboard::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_routes(table: &switchboard::routing::RouteTable) {
    for route in &table.routes {
        let target = match &route.target {
            Target::Grpc(grpc) => format!(
                "grpc{} {} {}",
                if grpc.server_streaming { "-stream" } else { "" },
                grpc.upstream.name,
                grpc.method.full_name()
            ),
            Target::Static(s) => format!("static {}", s.status.as_u16()),
            Target::Amqp(amqp) => format!(
                "amqp-{} {} {}",
                if amqp.reply { "rpc" } else { "publish" },
                amqp.upstream.name,
                amqp.routing_key.text
            ),
            Target::WebSocket(ws) => ws.describe().summary(),
            Target::Compose(compose) => compose.summary(),
            Target::GrpcWeb(web) => {
                format!("{} {} {}", web.kind(), web.upstream.name, web.method_name())
            }
        };
        println!(
            "{:<7} {:<48} {:<60} {}",
            route.method.as_str(),
            route.template.text,
            target,
            route.location
        );
    }
}
