//! TLS termination on the client listener. The certificate is read per handshake from a
//! swappable slot, so a reload that loaded a new pair serves it to the next handshake
//! while open connections carry on with the one they negotiated.

use crate::config::ServerTlsConfig;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// What the listener offers in ALPN, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Loads and checks the pair `tls:` names (a load error when it is not usable).
pub fn load(config: &ServerTlsConfig) -> Result<Arc<CertifiedKey>, String> {
    super::certified_key(&config.cert, &config.key).map_err(|e| format!("tls: {e}"))
}

/// The listener's current certificate and key.
pub struct ServerCert {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl ServerCert {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(key),
        })
    }

    /// Handshakes from now on present `key`.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The pair handshakes present now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

/// One certificate for every server name: a client that asked for another name sees a
/// certificate it does not accept and ends the handshake itself.
impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The acceptor of the client listener: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`,
/// the certificate from `cert` at each handshake.
pub fn acceptor(cert: Arc<ServerCert>) -> Result<tokio_rustls::TlsAcceptor, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
