//! JSON templates of `request:` and `response:` (contract §4, §9 "Compose"): parsed once at
//! load into literals and placeholders, filled per request. A string that is exactly one
//! placeholder keeps the value's JSON type; placeholders inside text are formatted into
//! it. A placeholder that resolves to nothing leaves its field out (never the raw text).

use http::HeaderName;
use serde_json::{Map, Value};

/// Where a placeholder reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Index into the route's path captures.
    Path(usize),
    Query(String),
    Body(Vec<String>),
    Header(HeaderName),
    Claims(Vec<String>),
    /// Index of a step, and a path into its result (names as emitted).
    Step(usize, Vec<String>),
    /// The element of a `for_each` step, and a path into it.
    Item(Vec<String>),
}

/// One `{…}` placeholder and its text, for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Ref {
    pub source: Source,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Ref(Ref),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(Value),
    /// A string that is exactly one placeholder.
    Exact(Ref),
    /// Text with placeholders inside.
    Concat(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Deepest template accepted (operators write these by hand; this bounds recursion).
const MAX_DEPTH: usize = 32;

/// What a template may refer to.
pub struct Scope<'a> {
    /// Variable names of the route's path template, in capture order.
    pub path_vars: &'a [String],
    /// Step names, in declaration order.
    pub steps: &'a [String],
    /// `{item}` is allowed (inside a `for_each` step).
    pub item: bool,
}

impl Template {
    pub fn parse(value: &Value, scope: &Scope<'_>) -> Result<Self, String> {
        Self::parse_at(value, scope, 0)
    }

    fn parse_at(value: &Value, scope: &Scope<'_>, depth: usize) -> Result<Self, String> {
        if depth > MAX_DEPTH {
            return Err(format!("template nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(match value {
            Value::String(text) => parse_string(text, scope)?,
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(|v| Self::parse_at(v, scope, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse_at(v, scope, depth + 1)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    /// Visits every placeholder mutably (validation rewrites step paths to emitted names).
    pub fn visit_refs_mut(
        &mut self,
        f: &mut dyn FnMut(&mut Ref) -> Result<(), String>,
    ) -> Result<(), String> {
        match self {
            Template::Literal(_) => Ok(()),
            Template::Exact(r) => f(r),
            Template::Concat(parts) => parts.iter_mut().try_for_each(|p| match p {
                Part::Ref(r) => f(r),
                Part::Text(_) => Ok(()),
            }),
            Template::Array(items) => items.iter_mut().try_for_each(|t| t.visit_refs_mut(f)),
            Template::Object(fields) => {
                fields.iter_mut().try_for_each(|(_, t)| t.visit_refs_mut(f))
            }
        }
    }

    /// Every placeholder.
    pub fn refs(&self) -> Vec<&Ref> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Ref>) {
        match self {
            Template::Literal(_) => {}
            Template::Exact(r) => out.push(r),
            Template::Concat(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Ref(r) => Some(r),
                Part::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// Fills the template; `None` when it resolves to nothing.
    pub fn resolve(&self, inputs: &dyn Resolve) -> Option<Value> {
        match self {
            Template::Literal(v) => Some(v.clone()),
            Template::Exact(r) => inputs.get(&r.source).filter(|v| !v.is_null()),
            Template::Concat(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Ref(r) => match inputs.get(&r.source)? {
                            Value::Null => return None,
                            Value::String(s) => text.push_str(&s),
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Some(Value::String(text))
            }
            Template::Array(items) => Some(Value::Array(
                items.iter().filter_map(|t| t.resolve(inputs)).collect(),
            )),
            Template::Object(fields) => {
                let mut map = Map::new();
                for (key, t) in fields {
                    if let Some(v) = t.resolve(inputs) {
                        map.insert(key.clone(), v);
                    }
                }
                Some(Value::Object(map))
            }
        }
    }
}

/// What a template reads at request time.
pub trait Resolve {
    fn get(&self, source: &Source) -> Option<Value>;
}

fn parse_string(text: &str, scope: &Scope<'_>) -> Result<Template, String> {
    if !text.contains(['{', '}']) {
        return Ok(Template::Literal(Value::String(text.to_string())));
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        if literal.contains('}') {
            return Err(format!("`{text}`: `}}` without `{{`"));
        }
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `{{` without `}}`"))?;
        let inner = &after[1..close];
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_string()));
        }
        parts.push(Part::Ref(parse_ref(inner, scope)?));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("`{text}`: `}}` without `{{`"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    match parts.as_slice() {
        [Part::Ref(r)] => Ok(Template::Exact(r.clone())),
        _ => Ok(Template::Concat(parts)),
    }
}

/// `ns.a.b` → a source. Step paths stay as written here; `plan` checks and normalises them.
pub(crate) fn parse_ref(inner: &str, scope: &Scope<'_>) -> Result<Ref, String> {
    let text = format!("{{{inner}}}");
    let mut segments = inner.split('.').map(str::trim);
    let head = segments.next().unwrap_or_default();
    let rest: Vec<String> = segments.map(str::to_string).collect();
    if head.is_empty() || rest.iter().any(String::is_empty) {
        return Err(format!(
            "placeholder `{text}` is empty or has an empty segment"
        ));
    }
    let one = |what: &str| -> Result<String, String> {
        match rest.as_slice() {
            [name] => Ok(name.clone()),
            _ => Err(format!("placeholder `{text}`: `{what}.` takes one name")),
        }
    };
    let source = match head {
        "path" => {
            let name = one("path")?;
            let index = scope
                .path_vars
                .iter()
                .position(|v| *v == name)
                .ok_or_else(|| {
                    format!("placeholder `{text}`: `{name}` is not a variable of the route's path")
                })?;
            Source::Path(index)
        }
        "query" => Source::Query(one("query")?),
        "header" => {
            let name = one("header")?;
            Source::Header(
                HeaderName::try_from(name.to_ascii_lowercase())
                    .map_err(|_| format!("placeholder `{text}`: invalid header name"))?,
            )
        }
        "body" if !rest.is_empty() => Source::Body(rest),
        "claims" if !rest.is_empty() => Source::Claims(rest),
        "body" | "claims" => return Err(format!("placeholder `{text}` needs a field name")),
        "item" if scope.item => Source::Item(rest),
        "item" => {
            return Err(format!(
                "placeholder `{text}`: `{{item}}` is only defined in a `for_each` step"
            ));
        }
        step => {
            let index = scope
                .steps
                .iter()
                .position(|s| s == step)
                .ok_or_else(|| format!("placeholder `{text}`: unknown step `{step}` (sources are path, query, body, header, claims, item and the steps)"))?;
            Source::Step(index, rest)
        }
    };
    Ok(Ref { source, text })
}

/// The value at `path` inside `value`: object keys by name, array elements by index; a
/// name applied to an array maps over its elements.
pub(crate) fn lookup(value: &Value, path: &[String]) -> Option<Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value.clone());
    };
    match value {
        Value::Object(map) => lookup(map.get(first)?, rest),
        Value::Array(items) => match first.parse::<usize>() {
            Ok(i) => lookup(items.get(i)?, rest),
            Err(_) => Some(Value::Array(
                items.iter().filter_map(|v| lookup(v, path)).collect(),
            )),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(Value);
    impl Resolve for Fixed {
        fn get(&self, source: &Source) -> Option<Value> {
            match source {
                Source::Path(0) => Some(json!("42")),
                Source::Query(q) if q == "n" => Some(json!("7")),
                Source::Step(0, path) => lookup(&self.0, path),
                _ => None,
            }
        }
    }

    fn scope() -> (Vec<String>, Vec<String>) {
        (vec!["id".into()], vec!["product".into()])
    }

    #[test]
    fn exact_placeholders_keep_their_type_and_missing_ones_vanish() {
        let (vars, steps) = scope();
        let scope = Scope {
            path_vars: &vars,
            steps: &steps,
            item: false,
        };
        let t = Template::parse(
            &json!({
                "id": "{path.id}",
                "units": "{product.price.units}",
                "tags": "{product.tags}",
                "label": "shelves/{path.id}/n{query.n}",
                "missing": "{query.nope}",
                "partly": "x{query.nope}",
                "list": ["{query.nope}", 1],
                "fixed": 3
            }),
            &scope,
        )
        .unwrap();
        let product = json!({"price": {"units": "199"}, "tags": ["a", "b"]});
        let out = t.resolve(&Fixed(product)).unwrap();
        assert_eq!(
            out,
            json!({"id": "42", "units": "199", "tags": ["a", "b"], "label": "shelves/42/n7", "list": [1], "fixed": 3})
        );
    }

    #[test]
    fn bad_placeholders_are_refused() {
        let (vars, steps) = scope();
        let scope = Scope {
            path_vars: &vars,
            steps: &steps,
            item: false,
        };
        for (bad, why) in [
            ("{nope.x}", "unknown step `nope`"),
            ("{path.other}", "not a variable"),
            ("{item}", "only defined in a `for_each`"),
            ("{query.a.b}", "takes one name"),
            ("{product..x}", "empty segment"),
            ("x{path.id", "without `}`"),
            ("x}", "without `{`"),
            ("{body}", "needs a field name"),
        ] {
            let error = Template::parse(&json!(bad), &scope).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn lookup_maps_names_over_arrays() {
        let v = json!({"items": [{"r": 1}, {"r": 2}, {"x": 0}]});
        assert_eq!(
            lookup(&v, &["items".into(), "r".into()]),
            Some(json!([1, 2]))
        );
        assert_eq!(
            lookup(&v, &["items".into(), "1".into(), "r".into()]),
            Some(json!(2))
        );
        assert_eq!(lookup(&v, &["nope".into()]), None);
    }
}
