//! TLS end to end, with certificates made here (`rcgen`, ring) and real clients:
//! termination on the listener (HTTP/1.1 and HTTP/2 by ALPN, WebSocket over `wss://`,
//! certificate rotation without a restart, bad pairs refused, clients that cannot speak
//! to it refused cleanly) and TLS to backends (gRPC over TLS and mTLS through a small TLS
//! terminator in front of the demo shop; `amqps://` through one in front of the local
//! RabbitMQ).

mod support;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::gateway::{self, TestGateway, client, repo};
use support::shop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------
// Certificates

/// A test CA that issues leaf certificates.
struct Pki {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A certificate chain (leaf, then the CA) and its key, as PEM.
struct Leaf {
    chain: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("leaf {}", fastrand::u64(..)));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.pem),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.issue(&["gateway.test"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }

    fn reqwest_root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()
    }
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// Clients

/// A tokio-rustls client trusting `pki`, offering `alpn`.
fn connector(pki: &Pki, alpn: &[&[u8]]) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    pki: &Pki,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        connector(pki, alpn).connect(name, tcp),
    )
    .await
    .expect("TLS handshake within 5s")
}

/// The leaf certificate the gateway presents to a new handshake.
async fn presented(addr: SocketAddr, pki: &Pki) -> CertificateDer<'static> {
    let stream = tls_connect(addr, pki, "localhost", &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A reqwest client that trusts only `pki`.
fn https_client(pki: &Pki, http1_only: bool) -> reqwest::Client {
    switchboard::tls::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .tls_certs_only([pki.reqwest_root()]);
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

fn https_url(gw: &TestGateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr.port())
}

/// One HTTP/1.1 GET on an open connection: (status, body).
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("request");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------
// Gateways

const STATUS_ROUTE: &str =
    "routes:\n  - http: { get: \"/v1/status\" }\n    static: { status: 200, body: { ok: true } }\n";

/// A gateway with `tls: { cert: gw.pem, key: gw.key }` (relative paths) serving
/// `/v1/status` statically, with `extra` config lines.
async fn tls_gateway(leaf: &Leaf, extra: &str) -> TestGateway {
    let config = format!("tls: {{ cert: gw.pem, key: gw.key }}\nmappings: [m.yaml]\n{extra}");
    gateway::start(
        &config,
        &[
            ("gw.pem", &leaf.chain),
            ("gw.key", &leaf.key),
            ("m.yaml", STATUS_ROUTE),
        ],
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Termination

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http2_and_http1_by_alpn() {
    let pki = Pki::new("test ca");
    let gw = tls_gateway(&pki.server(), "").await;

    let h2 = https_client(&pki, false)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .expect("HTTPS request (h2)");
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.json::<Value>().await.unwrap(), json!({"ok": true}));

    let h1 = https_client(&pki, true)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .expect("HTTPS request (http/1.1)");
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.json::<Value>().await.unwrap(), json!({"ok": true}));

    // The negotiated protocol is TLS 1.2 or 1.3, and ALPN chose what was offered.
    let stream = tls_connect(gw.addr, &pki, "localhost", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let stream = tls_connect(gw.addr, &pki, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_and_older_are_refused() {
    let pki = Pki::new("test ca");
    let gw = tls_gateway(&pki.server(), "").await;
    // rustls cannot speak TLS 1.1: a hand-made TLS 1.1 ClientHello stands in for one.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&client_hello_tls11()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    // An alert record (type 21), never a ServerHello (handshake record, type 22).
    assert!(
        answer.first() != Some(&22),
        "the gateway answered a TLS 1.1 hello with a handshake: {answer:?}"
    );
    let ok = https_client(&pki, false)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A minimal TLS 1.1 ClientHello (one cipher suite, no extensions).
fn client_hello_tls11() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend([0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http2_with_prior_knowledge_still_works_without_tls() {
    let gw = gateway::start("mappings: [m.yaml]\n", &[("m.yaml", STATUS_ROUTE)]).await;
    let response = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(gw.url("/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls() {
    let pki = Pki::new("test ca");
    let leaf = pki.server();
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("start shop");
    let config = format!(
        "tls: {{ cert: gw.pem, key: gw.key }}\n{}",
        gateway::demo_config(&shop, "[m.yaml]")
    );
    let routes = "routes:\n  - websocket: \"/ws/chat\"\n    grpc: { upstream: chat, method: shop.chat.v1.ChatService/Converse }\n";
    let gw = gateway::start(
        &config,
        &[
            ("gw.pem", &leaf.chain),
            ("gw.key", &leaf.key),
            ("m.yaml", routes),
        ],
    )
    .await;

    let stream = tls_connect(gw.addr, &pki, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws/chat", gw.addr.port());
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    for i in 1..=3 {
        let message = json!({"user": "ann", "text": format!("hi {i}"), "sequence": i});
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a reply within 5s")
            .expect("socket open")
            .expect("a frame");
        let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(reply["text"], format!("echo: hi {i}"));
    }
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new("test ca");
    let first = pki.server();
    let gw = tls_gateway(&first, "").await;
    let first_der = chain(&first.chain)[0].clone();
    assert_eq!(presented(gw.addr, &pki).await, first_der);

    // A connection opened before the rotation.
    let old = tls_connect(gw.addr, &pki, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(old))
            .await
            .unwrap();
    tokio::spawn(connection);
    assert_eq!(get_on(&mut sender, "/v1/status").await.0, 200);

    // Rotation 1: new files, `POST /admin/reload`.
    let second = pki.server();
    gw.dir.write("gw.pem", &second.chain);
    gw.dir.write("gw.key", &second.key);
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap());
    assert_eq!(presented(gw.addr, &pki).await, chain(&second.chain)[0]);
    // The old connection carries on, on the certificate it negotiated.
    assert_eq!(get_on(&mut sender, "/v1/status").await.0, 200);

    // Rotation 2: the file watch notices the key and certificate files alone changing.
    let _watch = switchboard::gateway::watch::spawn(gw.gateway.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = pki.server();
    // Key first, then the certificate: the watch may see the half-written pair (refused,
    // the second pair keeps serving) before the whole one.
    gw.dir.write("gw.key", &third.key);
    gw.dir.write("gw.pem", &third.chain);
    let third_der = chain(&third.chain)[0].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = presented(gw.addr, &pki).await;
        if now == third_der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watched certificate was not picked up within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_on(&mut sender, "/v1/status").await.0, 200);
    let ok = https_client(&pki, false)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_is_refused_and_the_old_one_keeps_serving() {
    let pki = Pki::new("test ca");
    let first = pki.server();
    let gw = tls_gateway(&first, "").await;
    let first_der = chain(&first.chain)[0].clone();

    // A key that belongs to another certificate.
    let other = pki.server();
    gw.dir.write("gw.key", &other.key);
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 422);
    let report = gateway::get_json(gw.admin_url("/admin/routes")).await;
    let error = report["last_reload_error"].to_string();
    assert!(error.contains("gw.key"), "{error}");
    assert_eq!(presented(gw.addr, &pki).await, first_der);

    // Not PEM at all.
    gw.dir.write("gw.pem", "not a certificate\n");
    gw.dir.write("gw.key", &first.key);
    assert!(gw.gateway.reload().await.is_err());
    let report = gateway::get_json(gw.admin_url("/admin/routes")).await;
    assert!(
        report["last_reload_error"].to_string().contains("gw.pem"),
        "{report}"
    );
    assert_eq!(presented(gw.addr, &pki).await, first_der);
    assert_eq!(gw.gateway.reload_failures.load(Ordering::Relaxed), 2);
    let ok = https_client(&pki, false)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // A config whose pair is bad does not start at all.
    let dir = gateway::TempDir::new("tls-bad");
    dir.write("a.pem", &first.chain);
    dir.write("b.key", &other.key);
    let path = dir.write(
        "switchboard.yaml",
        "listen: 127.0.0.1:0\ntls: { cert: a.pem, key: b.key }\n",
    );
    gateway::assert_refused(&path, &["do not make a usable pair"]).await;
    let path = dir.write(
        "switchboard.yaml",
        "listen: 127.0.0.1:0\ntls: { cert: missing.pem, key: b.key }\n",
    );
    gateway::assert_refused(&path, &["cannot read", "missing.pem"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_name_plaintext_and_silent_clients_are_refused_cleanly() {
    switchboard::telemetry::prometheus();
    let pki = Pki::new("test ca");
    let gw = tls_gateway(
        &pki.server(),
        "limits: { header_read_timeout: 1s, max_connections: 4 }\n",
    )
    .await;

    // A client that asked for another name rejects the certificate.
    let wrong = tls_connect(gw.addr, &pki, "other.example", &[b"h2"]).await;
    let error = wrong.expect_err("a certificate for localhost is not one for other.example");
    assert!(
        error.to_string().contains("certificate"),
        "unexpected error: {error}"
    );

    // Plaintext HTTP on the TLS port: no HTTP answer, the connection is closed.
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("closed within 5s")
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Clients that connect and never start a handshake hold a connection slot only until
    // `header_read_timeout`: more of them than `max_connections` do not lock others out.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let ok = https_client(&pki, false)
        .get(https_url(&gw, "/v1/status"))
        .send()
        .await
        .expect("served once the silent connections timed out");
    assert_eq!(ok.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the silent connections should have held every slot for a while"
    );
    for mut socket in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .expect("a silent connection is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    // Each kind of refusal is counted.
    let metrics = gateway::get_text(gw.admin_url("/metrics")).await;
    for result in ["ok", "error", "timeout"] {
        let line = format!("switchboard_tls_handshakes_total{{result=\"{result}\"}}");
        assert!(
            metrics.lines().any(|l| l.starts_with(&line)),
            "{line} missing:\n{metrics}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// TLS to backends

/// A TLS terminator in front of `backend`: TLS on a free port (certificate `leaf`, ALPN
/// `alpn`, client certificates from `client_ca` required when set), bytes forwarded to
/// `backend` in plaintext. Handshakes that fail are counted.
struct Terminator {
    addr: SocketAddr,
    refused: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn terminator(
    backend: SocketAddr,
    leaf: &Leaf,
    alpn: &[&[u8]],
    client_ca: Option<&Pki>,
) -> Terminator {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain(&leaf.chain), key(&leaf.key))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = refused.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Terminator {
        addr,
        refused,
        task,
    }
}

/// A gateway whose `catalog` upstream is `https://localhost:<port>` with `tls` (a YAML
/// flow mapping body; files relative to the config folder).
async fn catalog_over_tls(port: u16, tls: &str, files: &[(&str, &str)]) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [catalog.yaml]\nupstreams:\n  catalog:\n    grpc: {{ endpoints: [\"https://localhost:{port}\"], tls: {{ {tls} }} }}\n    timeout: 3s\n",
        repo().join("descriptors").display()
    );
    let routes = "routes:\n  - grpc_service: { upstream: catalog, service: shop.catalog.v1.CatalogService }\n";
    let mut files = files.to_vec();
    files.push(("catalog.yaml", routes));
    gateway::start(&config, &files).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_to_an_https_endpoint() {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("start shop");
    let pki = Pki::new("backend ca");
    let front = terminator(shop.catalog, &pki.server(), &[b"h2"], None).await;
    let gw = catalog_over_tls(front.addr.port(), "ca: ca.pem", &[("ca.pem", &pki.pem)]).await;
    let response = client().get(gw.url("/v1/products/1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let product: Value = response.json().await.unwrap();
    assert_eq!(product["id"], "1", "{product}");
    assert!(shop.counters.catalog.load(Ordering::SeqCst) >= 1);

    // `server_name` replaces the host in the check: a name the certificate lacks fails.
    let wrong = catalog_over_tls(
        front.addr.port(),
        "ca: ca.pem, server_name: other.example",
        &[("ca.pem", &pki.pem)],
    )
    .await;
    let response = client()
        .get(wrong.url("/v1/products/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1") && !body.contains("localhost"),
        "{body}"
    );

    // Without `ca:` the system roots are used, which do not know the test CA.
    let untrusted = catalog_over_tls(front.addr.port(), "", &[]).await;
    let response = client()
        .get(untrusted.url("/v1/products/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mtls_needs_the_client_certificate() {
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("start shop");
    let pki = Pki::new("backend ca");
    let client_pki = Pki::new("client ca");
    let front = terminator(shop.catalog, &pki.server(), &[b"h2"], Some(&client_pki)).await;
    let identity = client_pki.client();

    let gw = catalog_over_tls(
        front.addr.port(),
        "ca: ca.pem, cert: client.pem, key: client.key",
        &[
            ("ca.pem", &pki.pem),
            ("client.pem", &identity.chain),
            ("client.key", &identity.key),
        ],
    )
    .await;
    let response = client().get(gw.url("/v1/products/1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(front.refused.load(Ordering::SeqCst), 0);

    // No client certificate: the backend refuses the handshake; the client sees 503 and
    // nothing about where the backend is.
    let anonymous =
        catalog_over_tls(front.addr.port(), "ca: ca.pem", &[("ca.pem", &pki.pem)]).await;
    let response = client()
        .get(anonymous.url("/v1/products/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    let port = front.addr.port().to_string();
    assert!(
        !body.contains("127.0.0.1") && !body.contains("localhost") && !body.contains(&port),
        "{body}"
    );
    assert!(front.refused.load(Ordering::SeqCst) >= 1);

    // A certificate from a CA the backend does not trust fails the same way.
    let stranger = Pki::new("other ca").client();
    let untrusted = catalog_over_tls(
        front.addr.port(),
        "ca: ca.pem, cert: client.pem, key: client.key",
        &[
            ("ca.pem", &pki.pem),
            ("client.pem", &stranger.chain),
            ("client.key", &stranger.key),
        ],
    )
    .await;
    let response = client()
        .get(untrusted.url("/v1/products/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn upstream_tls_settings_are_checked_at_load() {
    let dir = gateway::TempDir::new("tls-upstream-bad");
    let cases = [
        (
            "grpc: { endpoints: [\"http://127.0.0.1:1\"], tls: { ca: ca.pem } }",
            "no endpoint is `https://`",
        ),
        (
            "grpc: { endpoints: [\"https://127.0.0.1:1\"], tls: { ca: missing.pem } }",
            "missing.pem",
        ),
        (
            "grpc: { endpoints: [\"https://127.0.0.1:1\"], tls: { ca: ca.pem, cert: ca.pem } }",
            "`cert` and `key` go together",
        ),
        (
            "amqp: { url: \"amqp://127.0.0.1:1/%2f\", tls: { ca: ca.pem } }",
            "not `amqps://`",
        ),
    ];
    dir.write("ca.pem", &Pki::new("ca").pem);
    for (upstream, expected) in cases {
        let path = dir.write(
            "switchboard.yaml",
            &format!("listen: 127.0.0.1:0\nupstreams:\n  u:\n    {upstream}\n"),
        );
        gateway::assert_refused(&path, &[expected]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_rpc_through_a_tls_terminator() {
    use support::amqp::{BROKER, echo, require_broker, unique, wait_connected, worker};
    require_broker().await;
    let pki = Pki::new("broker ca");
    let broker: SocketAddr = BROKER.parse().unwrap();
    let front = terminator(broker, &pki.server(), &[], None).await;
    let queue = unique("tls");
    let _worker = worker(&queue, echo).await;
    let config = format!(
        "mappings: [m.yaml]\nupstreams:\n  mq:\n    amqp: {{ url: \"amqps://guest:guest@127.0.0.1:{}/%2f\", tls: {{ ca: ca.pem, server_name: localhost }} }}\n    timeout: 3s\n",
        front.addr.port()
    );
    let routes = format!(
        "routes:\n  - http: {{ post: \"/q\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n"
    );
    let gw = gateway::start(&config, &[("ca.pem", &pki.pem), ("m.yaml", &routes)]).await;
    wait_connected(&gw, "mq").await;
    let response = client()
        .post(gw.url("/q"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"tls"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["body"], r#"{"hello":"tls"}"#, "{reply}");
    assert_eq!(front.refused.load(Ordering::SeqCst), 0);
}
