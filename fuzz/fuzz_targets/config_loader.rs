//! Config and mapping files: `${ENV}` expansion in values (which must keep every line where
//! it was), then YAML into the gateway config and into a route file, then every HttpRule
//! template in it. Errors are fine (they carry a line); panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::mapping::RouteFile;
use switchboard::config::{GatewayConfig, SourceText, expand_yaml};
use switchboard::routing::template::PathTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| (name == "SET").then(|| "a #value: [x".to_string());
    let Ok(text) = expand_yaml(raw, lookup) else {
        return;
    };
    assert_eq!(text.lines().count(), raw.lines().count(), "expansion moved lines");
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
