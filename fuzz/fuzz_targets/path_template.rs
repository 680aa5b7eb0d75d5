//! HttpRule path templates and request paths: `template\npath`. Parsing either must never
//! panic; a template that parses must match and capture without panicking, and a path it
//! matches must capture one value per variable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::routing::template::{PathTemplate, RequestPath};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, path) = text.split_once('\n').unwrap_or((text, "/"));
    let Ok(template) = PathTemplate::parse(template) else {
        return;
    };
    let _ = (
        template.shape(),
        template.specificity(),
        template.openapi_path(),
    );
    let Ok(path) = RequestPath::parse(path) else {
        return;
    };
    if template.matches(&path)
        && let Ok(values) = template.captures(&path)
    {
        assert_eq!(values.len(), template.variables.len());
    }
});
