//! What ships beside the binary: the Kubernetes manifests parse, probe the admin API's
//! `/readyz` and `/healthz` on the port the config's `admin:` listens on, mount the
//! ConfigMaps as folders (so edits reach the file watcher), and hold a configuration that
//! passes `switchboard check`; docker-compose publishes only the gateway.

mod support;

use serde_json::Value;
use std::process::Command;
use support::gateway::{TempDir, repo};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The YAML documents of a file (separated by `---` lines).
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---\n")
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|doc| serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn manifests() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| documents(p.strip_prefix(repo()).unwrap().to_str().unwrap()))
        .collect()
}

fn of_kind<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|m| m["kind"] == kind).collect()
}

#[test]
fn the_deployment_probes_readyz_and_healthz_on_the_admin_port() {
    let all = manifests();
    let deployments = of_kind(&all, "Deployment");
    assert_eq!(deployments.len(), 1, "{all:?}");
    let pod = &deployments[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let admin_port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("a port named admin");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}: {container}");
        assert!(
            get["port"] == "admin" || get["port"].as_u64() == Some(admin_port),
            "{probe} must use the admin port: {get}"
        );
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // Config and routes come from ConfigMaps mounted as folders: a subPath mount would
    // never see an update.
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    for mount in mounts {
        assert!(mount.get("subPath").is_none(), "subPath mount: {mount}");
    }
    let config_arg = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.ends_with(".yaml"))
        .expect("--config argument");
    let config_dir = std::path::Path::new(config_arg).parent().unwrap();
    let config_volume = mounts
        .iter()
        .find(|m| m["mountPath"] == config_dir.to_str().unwrap())
        .and_then(|m| m["name"].as_str())
        .expect("the config file's folder is a mounted volume");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == config_volume)
        .expect("volume");
    assert!(volume["configMap"]["name"].is_string(), "{volume}");

    // The Service exposes the HTTP port, not the admin API.
    for service in of_kind(&all, "Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert_ne!(port["targetPort"], "admin", "admin exposed: {service}");
            assert_ne!(port["targetPort"].as_u64(), Some(admin_port));
        }
    }
}

#[test]
fn the_configmaps_hold_a_configuration_that_checks() {
    let all = manifests();
    let maps = of_kind(&all, "ConfigMap");
    let config_map = maps
        .iter()
        .find(|m| m["data"]["switchboard.yaml"].is_string())
        .expect("a ConfigMap with switchboard.yaml");
    let config = config_map["data"]["switchboard.yaml"].as_str().unwrap();
    assert!(
        config.contains("admin: 0.0.0.0:9901"),
        "the probes need admin on the pod's address:\n{config}"
    );
    // Lay the pod's /etc/switchboard out in a temp folder: descriptors from the image
    // (the repository's), routes from the other ConfigMap.
    let dir = TempDir::new("k8s");
    std::os::unix::fs::symlink(repo().join("descriptors"), dir.path().join("descriptors")).unwrap();
    for map in &maps {
        if map["data"]["switchboard.yaml"].is_string() {
            continue;
        }
        for (name, text) in map["data"].as_object().expect("data") {
            dir.write(&format!("routes/{name}"), text.as_str().unwrap());
        }
    }
    let base = dir.path().display().to_string();
    let path = dir.write(
        "config/switchboard.yaml",
        &config.replace("/etc/switchboard", &base),
    );
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_publishes_only_the_gateway() {
    let compose = &documents("docker-compose.yml")[0];
    let services = compose["services"].as_object().expect("services");
    for (name, service) in services {
        let ports: Vec<&str> = service["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if name == "gateway" {
            assert!(ports.contains(&"8080:8080"), "{ports:?}");
            for port in &ports {
                assert!(
                    *port == "8080:8080" || port.starts_with("127.0.0.1:"),
                    "gateway port `{port}` published beyond loopback"
                );
            }
            for dependency in ["shop", "rabbitmq", "redis"] {
                assert_eq!(
                    service["depends_on"][dependency]["condition"], "service_healthy",
                    "gateway must wait for a healthy {dependency}"
                );
            }
        } else {
            assert!(ports.is_empty(), "{name} publishes {ports:?}");
        }
    }
}

#[test]
fn version_names_the_git_revision() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let revision = switchboard::telemetry::REVISION;
    assert_eq!(
        text.trim(),
        format!("switchboard {} ({revision})", env!("CARGO_PKG_VERSION"))
    );
    // In a git checkout (and without an override at build time) it is HEAD.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let (Some(head), None) = (head, option_env!("SWITCHBOARD_REVISION")) {
        assert_eq!(revision, head);
    }
}
