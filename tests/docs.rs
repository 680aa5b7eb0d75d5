//! The documentation cannot rot: every YAML example in `docs/*.md` and `README.md` marked
//! with a first line `# check: config` or `# check: routes` is run through
//! `switchboard check` (the binary), with the demo shop's descriptors.
//!
//! - `# check: config`: the block is a whole `switchboard.yaml`. It is written into a
//!   folder that also holds `descriptors/` (the demo's) and an empty `mappings/`.
//! - `# check: routes`: the block is a route file, loaded with the demo's upstreams plus an
//!   `auth:` and the rate-limit policies `per_ip` and `per_user`, so routes may use them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::gateway::{TempDir, repo};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

#[derive(Debug)]
struct Example {
    file: PathBuf,
    line: usize,
    kind: String,
    text: String,
}

/// Fenced ```yaml blocks whose first line is `# check: <kind>`.
fn examples(file: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        if line.trim() != "```yaml" {
            continue;
        }
        let mut block = Vec::new();
        for (_, line) in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            block.push(line);
        }
        let Some(kind) = block
            .first()
            .and_then(|first| first.trim().strip_prefix("# check:"))
        else {
            continue;
        };
        out.push(Example {
            file: file.to_path_buf(),
            line: number + 2,
            kind: kind.trim().to_string(),
            text: block.join("\n") + "\n",
        });
    }
    out
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The demo's upstreams (from the shipped `switchboard.yaml`), for route examples.
fn demo_upstreams() -> String {
    let text = std::fs::read_to_string(repo().join("switchboard.yaml")).expect("demo config");
    let start = text
        .find("\nupstreams:")
        .expect("demo config has upstreams");
    text[start + 1..].to_string()
}

fn check(config: &Path) -> Result<(), String> {
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchboard check");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn run(example: &Example) -> Result<(), String> {
    let dir = TempDir::new("docs");
    std::os::unix::fs::symlink(repo().join("descriptors"), dir.path().join("descriptors"))
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.path().join("mappings")).map_err(|e| e.to_string())?;
    let config = match example.kind.as_str() {
        "config" => dir.write("switchboard.yaml", &example.text),
        "routes" => {
            dir.write("routes.yaml", &example.text);
            dir.write(
                "switchboard.yaml",
                &format!(
                    "listen: 127.0.0.1:0\ndescriptors: [descriptors/]\nmappings: [routes.yaml]\n\
                     auth:\n  jwt: {{ issuer: https://auth.docs.example, audiences: [docs], algorithms: [HS256], secret: docs-example }}\n\
                     rate_limits:\n  policies:\n    per_ip: {{ algorithm: fixed_window, rate: 600, per: 1m }}\n    \
                     per_user: {{ algorithm: token_bucket, rate: 20, per: 1s, key: claims.sub }}\n{}",
                    demo_upstreams()
                ),
            )
        }
        other => return Err(format!("unknown `# check: {other}` (config | routes)")),
    };
    check(&config)
}

#[test]
fn every_marked_example_passes_check() {
    let examples: Vec<Example> = documents().iter().flat_map(|f| examples(f)).collect();
    // The reference has many checked examples; finding few means the markers broke.
    assert!(
        examples.len() >= 10,
        "only {} checked examples found",
        examples.len()
    );
    let mut failures = Vec::new();
    for example in &examples {
        if let Err(output) = run(example) {
            failures.push(format!(
                "{}:{} (# check: {}):\n{output}",
                example.file.display(),
                example.line,
                example.kind
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for kind in ["config", "routes"] {
        assert!(
            examples.iter().any(|e| e.kind == kind),
            "no `# check: {kind}` example"
        );
    }
}

#[test]
fn a_broken_example_is_caught() {
    // The harness itself must be able to fail: a route onto a method that does not exist.
    let example = Example {
        file: PathBuf::from("inline"),
        line: 1,
        kind: "routes".into(),
        text: "# check: routes\nroutes:\n  - http: { get: \"/v1/x\" }\n    grpc: { upstream: catalog, method: shop.catalog.v1.CatalogService/Nope }\n".into(),
    };
    let error = run(&example).expect_err("must be refused");
    assert!(error.contains("routes.yaml:3"), "{error}");
}

#[test]
fn the_docs_stand_on_their_own() {
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("read");
        for (number, line) in text.lines().enumerate() {
            assert!(
                !line.contains("../shared") && !line.contains("PRODUCT.md"),
                "{}:{}: points outside the repository: {line}",
                file.display(),
                number + 1
            );
        }
    }
    let index = std::fs::read_to_string(repo().join("docs/README.md")).expect("docs index");
    for page in ["configuration.md", "routes.md", "http.md", "operations.md"] {
        assert!(index.contains(page), "docs/README.md does not link {page}");
        assert!(
            repo().join("docs").join(page).is_file(),
            "docs/{page} missing"
        );
    }
}
