//! The grpc-go test backend (tests/interop/grpc-go): a plain grpc-go server, built
//! offline from Debian's `golang-go` and `golang-google-grpc-dev`, run as a separate
//! process. It serves test.echo.v1.EchoService (unary methods echo the request; metadata
//! `x-echo-delay-ms`, `x-echo-fail`; `Stream` repeats it `x-echo-count` times every
//! `x-echo-gap-ms`) and grpc.health.v1.

use super::gateway::repo;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// A running grpc-go server; killed on drop.
pub struct GoServer {
    child: Child,
    pub addr: SocketAddr,
}

impl GoServer {
    /// Kills the process at once (SIGKILL): no GOAWAY, connections just die.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds the server (once per test binary; build.sh skips an up-to-date binary) and
/// starts it with `args` (`-addr` defaults to a free port). Fails loudly with how to
/// install Go and grpc-go when they are missing.
pub fn start(args: &[&str]) -> GoServer {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    let binary = BUILT.get_or_init(|| {
        let binary = repo().join("target/interop/grpc-go-echo");
        let build = Command::new(repo().join("tests/interop/grpc-go/build.sh"))
            .arg(&binary)
            .status()
            .expect("run tests/interop/grpc-go/build.sh");
        assert!(
            build.success(),
            "building the grpc-go test server failed: install Go and grpc-go with \
             `apt-get install -y golang-go golang-google-grpc-dev` (see tests/interop/grpc-go/build.sh)"
        );
        binary
    });
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the grpc-go server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the grpc-go server's address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the grpc-go server: {line:?}"));
    GoServer { child, addr }
}

/// Gateway config and mapping for an upstream `echo` at `addr` serving the echo service
/// (`extra`: more upstream settings, indented by four spaces).
pub fn echo_gateway_files(addr: SocketAddr, extra: &str) -> (String, String) {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        super::gateway::echo_protos(),
        super::gateway::grpc_upstream("echo", addr, extra)
    );
    let mappings =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n"
            .to_string();
    (config, mappings)
}
