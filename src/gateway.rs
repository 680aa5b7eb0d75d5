//! The running gateway's state: the current route table behind an `ArcSwap`, and reload.
//! A reload compiles a whole new table first; only a table that compiled is swapped in,
//! so a bad config is refused and the old one keeps serving (contract §7).

pub mod watch;

use crate::config::{LoadErrors, Location, load_gateway_config};
use crate::middleware::Middleware;
use crate::routing::{RouteTable, compile};
use crate::schema::{Schema, reflection};
use crate::tls::server::ServerCert;
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

pub struct Gateway {
    table: ArcSwap<RouteTable>,
    config_path: PathBuf,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The errors of the last failed reload (cleared by a good one).
    pub last_error: Mutex<Option<Vec<String>>>,
    pub loaded_at: Mutex<SystemTime>,
    /// Listeners are up and serving.
    pub ready: AtomicBool,
    /// Open WebSockets (counted against `limits.max_ws_connections`) and their
    /// shutdown signal; shared by every table, so it outlives reloads.
    pub ws: Arc<crate::ws::Hub>,
    /// The listener's certificate when it started with `tls:`; reloads replace the pair
    /// in it (TLS itself is switched on or off only by a restart).
    pub server_cert: Option<Arc<ServerCert>>,
}

impl Gateway {
    /// Loads and compiles the configuration at `config_path`, and starts its upstreams'
    /// background work (connections, health checks): the gateway that will serve it.
    pub async fn load(config_path: &Path) -> Result<Self, LoadErrors> {
        let table = build_table(config_path, None).await?;
        let server_cert = table.tls.clone().map(ServerCert::new);
        table.start();
        crate::telemetry::record_config_loaded();
        Ok(Self {
            table: ArcSwap::from_pointee(table),
            config_path: config_path.to_path_buf(),
            reload_lock: tokio::sync::Mutex::new(()),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            loaded_at: Mutex::new(SystemTime::now()),
            ready: AtomicBool::new(false),
            ws: Arc::default(),
            server_cert,
        })
    }

    /// The table new requests are served with.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Recompiles everything from disk and swaps the table in when it compiled.
    pub async fn reload(&self) -> Result<(), LoadErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let previous = self.table();
        let result = build_table(&self.config_path, Some(&previous)).await;
        crate::telemetry::record_reload(result.is_ok());
        match result {
            Ok(table) => {
                if table.config.listen != previous.config.listen
                    || table.config.admin != previous.config.admin
                {
                    tracing::warn!(
                        "listen/admin addresses changed: they take effect after a restart"
                    );
                }
                match (&self.server_cert, &table.tls) {
                    (Some(serving), Some(loaded)) => {
                        if serving.current().cert != loaded.cert {
                            serving.replace(loaded.clone());
                            tracing::info!("TLS certificate reloaded: new handshakes use it");
                        }
                    }
                    (None, None) => {}
                    _ => tracing::warn!(
                        "`tls` was switched on or off: that takes effect after a restart"
                    ),
                }
                let routes = table.routes.len();
                table.start();
                self.table.store(Arc::new(table));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
                tracing::info!(routes, "configuration reloaded");
                Ok(())
            }
            Err(errors) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                for error in &errors.0 {
                    tracing::error!(%error, "reload refused; the previous configuration keeps serving");
                }
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(errors.0.iter().map(ToString::to_string).collect());
                Err(errors)
            }
        }
    }
}

/// Config → upstreams → descriptors (files and reflection) → route table. Pure but for
/// reflection (`reflection: true` upstreams are asked for their descriptors): it opens
/// no other connection and spawns nothing; [`Upstreams::start`] does that for a table
/// that goes live.
pub async fn build_table(
    config_path: &Path,
    previous: Option<&RouteTable>,
) -> Result<RouteTable, LoadErrors> {
    let path = config_path.to_path_buf();
    let config = tokio::task::spawn_blocking(move || load_gateway_config(&path))
        .await
        .map_err(|e| {
            LoadErrors::from(crate::config::LoadError::new(
                Location::new(config_path, 0),
                e.to_string(),
            ))
        })??;
    // Every stage runs, so one `check` reports the errors of all of them; the route
    // compile needs working upstreams and middleware, so it waits for them.
    let mut errors = LoadErrors::default();
    let upstreams = Upstreams::build(&config, previous.map(|t| &*t.upstreams))
        .map_err(|e| errors.0.extend(e.0))
        .unwrap_or_default();
    let middleware = Middleware::build(&config, previous.map(|t| &*t.middleware))
        .map_err(|e| errors.0.extend(e.0))
        .unwrap_or_default();
    let cache = crate::cache::ResponseCache::build(
        config.cache.as_ref(),
        previous.and_then(|t| t.cache.as_ref()),
    )
    .map_err(|e| errors.push(Location::new(&config.path, config.lines.cache), e))
    .ok();
    let tracing = crate::telemetry::otlp::SpanExport::build(
        config.telemetry.otlp.as_ref(),
        previous.and_then(|t| t.tracing.as_ref()),
    )
    .map_err(|e| errors.push(Location::new(&config.path, 0), e))
    .ok()
    .flatten();
    let tls = config.tls.as_ref().and_then(|tls| {
        crate::tls::server::load(tls)
            .map_err(|e| errors.push(Location::new(&config.path, 0), e))
            .ok()
    });

    let mut reflected = Vec::new();
    for (name, spanned) in &config.upstreams {
        let wants_reflection = spanned.value.grpc.as_ref().is_some_and(|g| g.reflection);
        if let (true, Some(upstream)) = (wants_reflection, upstreams.grpc.get(name)) {
            let fetched = match upstream.any_connection().await {
                Ok(connection) => reflection::fetch_descriptors(connection).await,
                Err(e) => Err(e),
            };
            match fetched {
                Ok(files) => reflected.extend(files),
                Err(e) => errors.push(
                    Location::new(&config.path, spanned.referenced.line()),
                    format!("upstream `{name}`: {e}"),
                ),
            }
        }
    }
    errors.into_result(())?;

    tokio::task::spawn_blocking(move || {
        let schema = Schema::load(&config.descriptors, &reflected)?;
        let mut table = compile(
            Arc::new(config),
            schema,
            Arc::new(upstreams),
            Arc::new(middleware),
        )?;
        table.cache = cache;
        table.tracing = tracing;
        table.tls = tls;
        Ok(table)
    })
    .await
    .map_err(|e| {
        LoadErrors::from(crate::config::LoadError::new(
            Location::new(config_path, 0),
            e.to_string(),
        ))
    })?
}
