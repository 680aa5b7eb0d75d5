//! Compiles the demo-shop and echo-test protos in-process with protox (no system `protoc`)
//! and generates prost + tonic client/server code for the examples and integration tests.
//!
//! Besides the Rust code, OUT_DIR receives encoded `FileDescriptorSet`s with imports and
//! source info, which the reflection servers serve verbatim:
//! - `shop_descriptor.bin`: the shop protos (+ google.rpc status/error_details)
//! - `echo_descriptor.bin`: echo.proto (+ google.rpc status/error_details)
//! - `descriptor_set.bin`: everything above in one set
//!
//! They are encoded straight from protox's pool, not via `prost_types`, because decoding into
//! `prost_types` silently drops custom options such as `google.api.http`.

use std::path::PathBuf;

const INCLUDES: [&str; 3] = ["descriptors", "tests/fixtures/protos", "proto"];

const SHOP_PROTOS: [&str; 6] = [
    "shop/catalog/v1/catalog.proto",
    "shop/reviews/v1/reviews.proto",
    "shop/inventory/v1/inventory.proto",
    "shop/orders/v1/orders.proto",
    "shop/chat/v1/chat.proto",
    "shop/shipping/v1/shipping.proto",
];

const ECHO_PROTOS: [&str; 1] = ["echo/v1/echo.proto"];

const RPC_PROTOS: [&str; 2] = ["google/rpc/status.proto", "google/rpc/error_details.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for dir in INCLUDES {
        println!("cargo:rerun-if-changed={dir}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    revision();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let shop: Vec<&str> = SHOP_PROTOS.iter().chain(&RPC_PROTOS).copied().collect();
    let echo: Vec<&str> = ECHO_PROTOS.iter().chain(&RPC_PROTOS).copied().collect();
    let all: Vec<&str> = SHOP_PROTOS
        .iter()
        .chain(&ECHO_PROTOS)
        .chain(&RPC_PROTOS)
        .copied()
        .collect();

    std::fs::write(
        out_dir.join("shop_descriptor.bin"),
        compile(&shop)?.encode_file_descriptor_set(),
    )?;
    std::fs::write(
        out_dir.join("echo_descriptor.bin"),
        compile(&echo)?.encode_file_descriptor_set(),
    )?;

    let all = compile(&all)?;
    std::fs::write(
        out_dir.join("descriptor_set.bin"),
        all.encode_file_descriptor_set(),
    )?;

    // Type names (`prost::Name`) let the servers pack details with `prost_types::Any::from_msg`
    // and clients unpack them with `Any::to_msg`, using the standard type URL prefix.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");

    // One code-generation pass over every file (imports included) so each package's
    // `<package>.rs` is written exactly once; google.protobuf maps to prost_types.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(all.file_descriptor_set(), config)?;
    Ok(())
}

/// Parses `files` with imports and source info (comments become doc comments, and the
/// encoded set is served as-is by reflection).
fn compile(files: &[&str]) -> Result<protox::Compiler, protox::Error> {
    let mut compiler = protox::Compiler::new(INCLUDES)?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    Ok(compiler)
}

/// `SWITCHBOARD_REVISION` for `--version` and `switchboard_build_info`: the environment
/// variable when set (image builds without `.git`), else `git rev-parse`, else `unknown`.
fn revision() {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = std::env::var("SWITCHBOARD_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD (branch switches), its reflog (every commit and
    // checkout), the branch it points to. Only files that exist: cargo treats a missing
    // one as changed and would rerun this script, and rebuild the crate, every time.
    let mut watched = vec!["HEAD".to_string(), "logs/HEAD".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for file in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &file])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=SWITCHBOARD_REVISION={revision}");
}
