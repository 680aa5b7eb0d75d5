//! Config and mapping files: `${ENV}` expansion, then YAML into the gateway config and
//! into a route file, then every HttpRule template in it. Errors are fine (they carry a
//! line); panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::mapping::RouteFile;
use switchboard::config::{GatewayConfig, SourceText, expand_env};
use switchboard::routing::template::PathTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(text) = expand_env(raw, |name| (name == "SET").then(|| "value".to_string())) else {
        return;
    };
    let source = SourceText {
        path: "fuzz.yaml".into(),
        text,
    };
    let _ = source.parse::<GatewayConfig>();
    if let Ok(routes) = source.parse::<RouteFile>() {
        for route in routes.routes {
            if let Some(http) = &route.value.http {
                for (_, template) in http.patterns() {
                    let _ = PathTemplate::parse(&template);
                }
            }
        }
    }
});
