//! TLS to backends: gRPC `https://` endpoints and `amqps://` brokers. The backend's
//! certificate is checked against the `ca:` file when set, else against the system's
//! roots (read once per process with `rustls-native-certs`); `cert` + `key` add a client
//! certificate (mTLS); `server_name` replaces the endpoint's host in the check and SNI.

use crate::config::UpstreamTlsConfig;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// A client config built from an upstream's `tls:`, with what it was built from.
#[derive(Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `server_name`, when set; else the endpoint's host is checked.
    pub server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Reads the files `tls` names (none: system roots, no client certificate) and
    /// builds the config, offering `alpn` (`h2` for gRPC, nothing for AMQP).
    pub fn load(tls: Option<&UpstreamTlsConfig>, alpn: &[&[u8]]) -> Result<Self, String> {
        let default = UpstreamTlsConfig::default();
        let tls = tls.unwrap_or(&default);
        let roots = match &tls.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for certificate in
                    super::read_certificates(ca).map_err(|e| format!("tls.ca: {e}"))?
                {
                    roots
                        .add(certificate)
                        .map_err(|e| format!("tls.ca: {}: {e}", ca.display()))?;
                }
                Arc::new(roots)
            }
            None => system_roots()?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let chain = super::read_certificates(cert).map_err(|e| format!("tls.cert: {e}"))?;
                let key = super::read_private_key(key).map_err(|e| format!("tls.key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("tls: client certificate and key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls: `cert` and `key` go together (mTLS)".into()),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = tls
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls.server_name `{name}`: {e}"))
            })
            .transpose()?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name to check the backend's certificate against: `server_name`, else `host`
    /// (a DNS name or an IP address, IPv6 with or without brackets).
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| {
            format!("`{host}` cannot be checked against a certificate: {e}; set tls.server_name")
        })
    }
}

/// A hash of the files `tls` names, so a reload that finds them changed (a rotated client
/// certificate, a new CA) rebuilds the upstream even though its config text is the same.
pub fn fingerprint(tls: Option<&UpstreamTlsConfig>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in tls.into_iter().flat_map(UpstreamTlsConfig::files) {
        file.hash(&mut hasher);
        match std::fs::read(file) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => format!("{:?}", e.kind()).hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// The system's trusted roots, read on first use. Certificates the store holds that
/// rustls cannot use are skipped, as browsers do; none at all is an error.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "system root certificates: skipped");
            }
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system root certificates found: set the upstream's `tls.ca`".to_string(),
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ca() -> (crate::config::UpstreamTlsConfig, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        let path = std::env::temp_dir().join(format!(
            "switchboard-tls-unit-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, pem).unwrap();
        let config = crate::config::UpstreamTlsConfig {
            ca: Some(path.clone()),
            ..Default::default()
        };
        (config, path)
    }

    #[test]
    fn the_endpoint_host_or_server_name_is_checked() {
        let (mut config, path) = with_ca();
        let tls = ClientTls::load(Some(&config), &[b"h2"]).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            tls.name_for("catalog.internal").unwrap().to_str(),
            "catalog.internal"
        );
        assert_eq!(tls.name_for("[::1]").unwrap().to_str(), "::1");
        assert_eq!(tls.name_for("10.0.0.7").unwrap().to_str(), "10.0.0.7");
        assert!(tls.name_for("bad name!").is_err());

        config.server_name = Some("override.internal".into());
        let tls = ClientTls::load(Some(&config), &[]).unwrap();
        assert_eq!(
            tls.name_for("10.0.0.7").unwrap().to_str(),
            "override.internal"
        );

        config.server_name = Some("not a name".into());
        assert!(ClientTls::load(Some(&config), &[]).is_err());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn changed_files_change_the_fingerprint() {
        let (config, path) = with_ca();
        let before = fingerprint(Some(&config));
        assert_eq!(before, fingerprint(Some(&config)));
        std::fs::write(&path, "rotated").unwrap();
        assert_ne!(before, fingerprint(Some(&config)));
        let _ = std::fs::remove_file(path);
        assert_eq!(fingerprint(None), fingerprint(None));
    }
}
