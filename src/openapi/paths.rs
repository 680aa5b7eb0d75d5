//! Document paths from route templates: the plain form, the expanded form for clashes,
//! and parameter names.

use super::*;

/// A `{…}` of a document path: its parameter name and the template variable it fills.
pub(super) struct Slot {
    pub(super) name: String,
    /// Index into `PathTemplate::variables`.
    pub(super) variable: usize,
    /// One wildcard of a multi-segment variable that `expanded_path` split up.
    pub(super) part: bool,
}

/// The path as `PathTemplate::openapi_path` prints it: one slot per variable.
pub(super) fn plain_path(template: &PathTemplate) -> (String, Vec<Slot>) {
    let slots = template
        .variables
        .iter()
        .enumerate()
        .map(|(variable, v)| Slot {
            name: v.field_path.clone(),
            variable,
            part: false,
        })
        .collect();
    (template.openapi_path(), slots)
}

/// `/v1/{name=shelves/*/books/*}` → `/v1/shelves/{shelves}/books/{books}`: the literals
/// of multi-segment variables stay in the path and each wildcard becomes a parameter
/// named after the literal before it. Used when the plain form is already taken for the
/// method (GET `/v1/{name=shelves/*}` and GET `/v1/{name=shelves/*/books/*}` both print
/// `/v1/{name}`).
pub(super) fn expanded_path(template: &PathTemplate) -> (String, Vec<Slot>) {
    let mut path = String::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut push_slot = |path: &mut String, name: &str, variable: usize, part: bool| {
        let name = unique_name(name, &slots);
        path.push_str(&format!("/{{{name}}}"));
        slots.push(Slot {
            name,
            variable,
            part,
        });
    };
    let mut i = 0;
    while i < template.segments.len() {
        let Some(index) = template.variables.iter().position(|v| v.start == i) else {
            path.push('/');
            path.push_str(segment_text(&template.segments[i]));
            i += 1;
            continue;
        };
        let variable = &template.variables[index];
        if variable.multi_segment {
            let mut previous = variable.field_path.as_str();
            for segment in &template.segments[variable.start..variable.end] {
                match segment {
                    Segment::Literal(literal) => {
                        path.push('/');
                        path.push_str(literal);
                        previous = literal;
                    }
                    _ => push_slot(&mut path, previous, index, true),
                }
            }
        } else {
            push_slot(&mut path, &variable.field_path, index, false);
        }
        i = variable.end;
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    (path, slots)
}

/// `path` with its parameter names blanked (`/v1/{name}` → `/v1/{}`): paths that differ
/// only in those are the same path to OpenAPI.
pub(super) fn hierarchy(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// `base`, or `base_2`, `base_3`… when a slot of the path already has that name.
pub(super) fn unique_name(base: &str, slots: &[Slot]) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while slots.iter().any(|slot| slot.name == name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

pub(super) fn segment_text(segment: &Segment) -> &str {
    match segment {
        Segment::Literal(literal) => literal,
        Segment::Single => "*",
        Segment::Multi => "**",
    }
}

/// A template's segments as written in it (`shelves/*/books/*`).
pub(super) fn segments_text(segments: &[Segment]) -> String {
    let parts: Vec<&str> = segments.iter().map(segment_text).collect();
    parts.join("/")
}

/// `static_GET/v1/status` → `static_get_v1_status`: operationIds should be identifiers.
pub(super) fn identifier(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let parts: Vec<&str> = mapped.split('_').filter(|p| !p.is_empty()).collect();
    parts.join("_")
}
