//! Listeners: the client listener (every request through `proxy::handle`) and the admin
//! listener. Shutdown drains in-flight requests for a bounded grace period.

use crate::gateway::Gateway;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

pub struct Server {
    gateway: Arc<Gateway>,
    http: TcpListener,
    admin: Option<TcpListener>,
}

impl Server {
    /// Binds the listeners named in the configuration.
    pub async fn bind(gateway: Arc<Gateway>) -> std::io::Result<Self> {
        let config = gateway.table().config.clone();
        let http = TcpListener::bind(config.listen).await?;
        let admin = match config.admin {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            gateway,
            http,
            admin,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish for at most
    /// the configured grace period.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = self.gateway.table().config.shutdown_grace();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let handler = {
            let gateway = self.gateway.clone();
            move |request| crate::proxy::handle(gateway.clone(), request)
        };
        // Our own accept loop: `axum::serve` sets no header-read timer, idle limit or
        // connection cap (see `listener`).
        let limits = {
            let gateway = self.gateway.clone();
            move || gateway.table().limits
        };
        let tls = match &self.gateway.server_cert {
            Some(cert) => {
                Some(crate::tls::server::acceptor(cert.clone()).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let main = tokio::spawn(crate::listener::serve(
            self.http,
            handler,
            limits,
            tls,
            stop_rx.clone(),
        ));
        let admin = self.admin.map(|listener| {
            // Host / Origin / form checks and the optional token (`admin::guard`).
            let router = crate::admin::router(self.gateway.clone()).layer(
                axum::middleware::from_fn_with_state(
                    self.gateway.clone(),
                    crate::admin::guard::check,
                ),
            );
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            )
        });
        self.gateway.ready.store(true, Ordering::Release);
        tracing::info!("switchboard ready");

        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        self.gateway.ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        // Upgraded sockets are not the listener's to drain: tell them to close (1001).
        self.gateway.ws.shut_down();
        let drained = async {
            let result = main.await.map(|()| Ok(()));
            if let Some(admin) = admin {
                let _ = admin.await;
            }
            self.gateway.ws.all_closed().await;
            result
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!("grace period over; closing remaining connections");
                Ok(())
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Reloads on every SIGHUP, for the life of the process.
pub fn spawn_sighup_reload(gateway: Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = gateway.reload().await;
        }
    });
}
