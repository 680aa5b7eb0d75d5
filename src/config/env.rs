//! `${NAME}` expansion in the scalar values of a YAML file.
//!
//! Expansion works on values, not on the raw text: comments are left alone (a `${X}` in a
//! comment needs no `X`), and a value can never change the document's shape. A value that
//! would read differently where it lands (`a #b`, `x: y`, a leading `[`) is written back as
//! a double-quoted string, so `secret: ${S}` with `S="p #1"` gives the string `p #1`. A plain
//! value that is safe stays plain, so `port: ${PORT}` is still a number.
//!
//! The file is rewritten with every expanded scalar in place and the same number of lines,
//! so the parser's errors keep pointing at the lines the operator wrote; the rewrite is then
//! parsed once more and compared event by event with the original, values aside.

use granit_parser::{Event, Parser, ScalarStyle, Span};

/// Expands `${NAME}` in the scalar values of the YAML `text`. `${NAME:-default}` falls back
/// to `default` when `NAME` is unset or empty, `$${` is a literal `${`, and an unset variable
/// is an error `(line, message)`. Text the YAML parser refuses is returned unchanged, for the
/// deserializer to report with its line.
pub fn expand_yaml(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (u64, String)> {
    let events = match scalar_events(text) {
        Ok(events) => events,
        // An unquoted `${X}` inside `{ }` or `[ ]` is not YAML (`{` ends a plain value
        // there): say so; any other syntax error is left to the deserializer's report.
        Err(line)
            if text
                .lines()
                .nth(line.saturating_sub(1))
                .is_some_and(|l| l.contains("${")) =>
        {
            return Err((
                line as u64,
                "invalid YAML; a `${…}` inside `{ }` or `[ ]` must be quoted".into(),
            ));
        }
        Err(_) => return Ok(text.to_string()),
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // bytes of `text` already in `out`
    let mut expected = Vec::with_capacity(events.len());
    for event in events {
        let (value, style, span, in_flow) = match event {
            ShapeEvent::Scalar {
                value,
                style,
                span,
                in_flow,
            } => (value, style, span, in_flow),
            other => {
                expected.push(other);
                continue;
            }
        };
        let line = span.start.line() as u64;
        let range = match span.byte_range() {
            Some(range) if value.contains("${") => range,
            _ => {
                expected.push(ShapeEvent::Scalar {
                    value,
                    style,
                    span,
                    in_flow,
                });
                continue;
            }
        };
        let source = &text[range.clone()];
        let lines_in_source = source.matches('\n').count();
        let (replacement, expanded) = match style {
            // Block scalars keep their header (`|`, `>-`, …), which is outside the span: the
            // content is expanded where it stands, one line per variable.
            ScalarStyle::Literal | ScalarStyle::Folded => {
                let replaced = expand_env(source, &lookup).map_err(|(l, m)| (line + l - 1, m))?;
                if replaced.matches('\n').count() != lines_in_source {
                    return Err((
                        line,
                        "a variable inside a `|` or `>` block must not contain a line break".into(),
                    ));
                }
                let expanded = expand_env(&value, &lookup).map_err(|(_, m)| (line, m))?;
                (replaced, expanded)
            }
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                let expanded = expand_env(&value, &lookup).map_err(|(_, m)| (line, m))?;
                let replacement = if style == ScalarStyle::Plain
                    && lines_in_source == 0
                    && is_plain_safe(&expanded, in_flow)
                {
                    expanded.clone()
                } else {
                    double_quoted(&expanded, source)
                };
                (replacement, expanded)
            }
        };
        out.push_str(&text[copied..range.start]);
        out.push_str(&replacement);
        copied = range.end;
        expected.push(ShapeEvent::Scalar {
            value: expanded,
            style,
            span,
            in_flow,
        });
    }
    out.push_str(&text[copied..]);
    if copied == 0 {
        return Ok(out); // nothing to expand
    }
    // Expansion changes values only: the rewritten file must parse to the same events.
    let rewritten = scalar_events(&out);
    let same_shape = rewritten.as_ref().is_ok_and(|events| {
        events.len() == expected.len() && events.iter().zip(&expected).all(|(a, b)| a.same(b))
    });
    if !same_shape {
        return Err((
            0,
            "a value from `${…}` changes the YAML's structure; quote the value".into(),
        ));
    }
    Ok(out)
}

/// What expansion must preserve: the sequence of YAML events, scalar values aside for the
/// ones expanded (compared after expansion).
#[derive(Debug)]
enum ShapeEvent {
    Scalar {
        value: String,
        style: ScalarStyle,
        span: Span,
        in_flow: bool,
    },
    /// Any other event, by its kind (mapping start, sequence end, alias, …).
    Other(u8),
}

impl ShapeEvent {
    fn same(&self, other: &ShapeEvent) -> bool {
        match (self, other) {
            (ShapeEvent::Scalar { value: a, .. }, ShapeEvent::Scalar { value: b, .. }) => a == b,
            (ShapeEvent::Other(a), ShapeEvent::Other(b)) => a == b,
            _ => false,
        }
    }
}

/// The document's events, or the line of its first syntax error.
fn scalar_events(text: &str) -> Result<Vec<ShapeEvent>, usize> {
    use granit_parser::StructureStyle::Flow;
    let mut events = Vec::new();
    let mut flow_depth = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| e.marker().line())?;
        let kind = match event {
            Event::Scalar(value, style, _, _) => {
                events.push(ShapeEvent::Scalar {
                    value: value.into_owned(),
                    style,
                    span,
                    in_flow: flow_depth > 0,
                });
                continue;
            }
            Event::StreamStart => 0,
            Event::StreamEnd => 1,
            Event::DocumentStart(..) => 2,
            Event::DocumentEnd => 3,
            Event::Alias(..) | Event::UnresolvedAlias(..) => 4,
            Event::Anchor(..) => 5,
            Event::SequenceStart(style, ..) => {
                flow_depth += usize::from(style == Flow);
                6
            }
            Event::MappingStart(style, ..) => {
                flow_depth += usize::from(style == Flow);
                7
            }
            // Block collections cannot sit inside flow ones, so any end inside a flow
            // collection closes a flow collection.
            Event::SequenceEnd => {
                flow_depth = flow_depth.saturating_sub(1);
                8
            }
            Event::MappingEnd => {
                flow_depth = flow_depth.saturating_sub(1);
                9
            }
            // Presentation-only events (comments, with the parser's `comments` feature).
            _ => continue,
        };
        events.push(ShapeEvent::Other(kind));
    }
    Ok(events)
}

/// Whether `value` reads back as the same plain scalar where a plain scalar stood.
fn is_plain_safe(value: &str, in_flow: bool) -> bool {
    let Some(first) = value.chars().next() else {
        return false; // empty: plain would read as null
    };
    let second = value.chars().nth(1);
    let indicator_start = matches!(
        first,
        '[' | ']'
            | '{'
            | '}'
            | ','
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
            | '#'
    ) || (matches!(first, '-' | '?' | ':')
        && second.is_none_or(|c| c == ' '));
    !indicator_start
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
        && !value.ends_with(':')
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.chars().any(char::is_control)
        && !(in_flow && value.contains([',', '[', ']', '{', '}']))
}

/// `value` as a double-quoted YAML scalar that spans as many lines as `source` did (escaped
/// line breaks carry no content), so the lines below keep their numbers.
fn double_quoted(value: &str, source: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    // Each further source line: an escaped line break, then that line's own indentation
    // (continuation lines must stay indented under their key).
    for line in source.split('\n').skip(1) {
        out.push_str("\\\n");
        out.push_str(&line[..line.len() - line.trim_start().len()]);
    }
    out.push('"');
    out
}

/// Expands `${NAME}` in `text`. An unset variable is an error `(line, message)` (1-based
/// within `text`); `$${` is a literal `${`.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (u64, String)> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| (index as u64 + 1, "unterminated `${` in string".to_string()))?;
            // `${NAME:-default}` falls back to `default` when NAME is unset or empty.
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            let value = lookup(name)
                .filter(|v| !v.is_empty() || default.is_none())
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| {
                    (
                        index as u64 + 1,
                        format!("environment variable `{name}` is not set"),
                    )
                })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "PORT" => Some("8080".into()),
            "HASH" => Some("p #1".into()),
            "COLON" => Some("a: b".into()),
            "QUOTE" => Some("say \"hi\" \\ now".into()),
            "LIST" => Some("[1, 2]".into()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("two\nlines".into()),
            _ => None,
        }
    }

    fn expand(text: &str) -> Result<String, (u64, String)> {
        expand_yaml(text, env)
    }

    fn parsed(text: &str) -> serde_json::Value {
        serde_saphyr::from_str(&expand(text).unwrap()).unwrap()
    }

    #[test]
    fn expand_env_replaces_defaults_and_escapes() {
        assert_eq!(
            expand_env("url: ${HOST}:5\n", env).unwrap(),
            "url: db.local:5\n"
        );
        assert_eq!(expand_env("a: $${HOST}", env).unwrap(), "a: ${HOST}");
        assert_eq!(expand_env("a: ${NOPE:-x:1}", env).unwrap(), "a: x:1");
        assert_eq!(expand_env("a: ${HOST:-x}", env).unwrap(), "a: db.local");
        assert_eq!(expand_env("a: ${EMPTY:-d}", env).unwrap(), "a: d");
        let err = expand_env("a: 1\nb: ${MISSING}\n", env).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("MISSING"));
    }

    #[test]
    fn plain_values_stay_plain_and_typed() {
        assert_eq!(expand("port: ${PORT}\n").unwrap(), "port: 8080\n");
        assert_eq!(parsed("port: ${PORT}\n")["port"], 8080);
        assert_eq!(
            parsed("url: http://${HOST}:${PORT}/x\n")["url"],
            "http://db.local:8080/x"
        );
    }

    #[test]
    fn comments_are_not_expanded() {
        let text = "# set ${MISSING} first\na: 1 # or ${ALSO_MISSING}\n";
        assert_eq!(expand(text).unwrap(), text);
    }

    #[test]
    fn values_cannot_change_the_structure() {
        let doc = parsed("secret: ${HASH}\nother: ${COLON}\nlist: ${LIST}\nq: ${QUOTE}\n");
        assert_eq!(doc["secret"], "p #1");
        assert_eq!(doc["other"], "a: b");
        assert_eq!(doc["list"], "[1, 2]");
        assert_eq!(doc["q"], "say \"hi\" \\ now");
        assert_eq!(parsed("a: ${NL}\nb: 1\n")["a"], "two\nlines");
        assert_eq!(parsed("a: x${EMPTY}\n")["a"], "x");
    }

    #[test]
    fn quoted_and_flow_values() {
        let doc = parsed(
            "a: \"http://${HOST}\"\nb: 'x ${HOST}'\nc: [\"${HOST}\", d]\ne: { k: \"${HASH}\" }\n",
        );
        assert_eq!(doc["a"], "http://db.local");
        assert_eq!(doc["b"], "x db.local");
        assert_eq!(doc["c"][0], "db.local");
        assert_eq!(doc["e"]["k"], "p #1");
        // A quoted value stays a string, as written.
        assert_eq!(parsed("p: \"${PORT}\"\n")["p"], "8080");
    }

    #[test]
    fn lines_keep_their_numbers() {
        let text = "a: ${HASH} and\n  more ${HOST}\nb: |\n  x ${HOST}\n  y\nc: 1\n";
        let out = expand(text).unwrap();
        assert_eq!(out.lines().count(), text.lines().count(), "{out}");
        let doc: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(doc["a"], "p #1 and more db.local");
        assert_eq!(doc["b"], "x db.local\ny\n");
        assert_eq!(doc["c"], 1);
        assert!(out.lines().nth(5).unwrap().starts_with("c: 1"), "{out}");
    }

    #[test]
    fn unset_variables_name_their_line() {
        let (line, message) = expand("a: 1\nb:\n  c: ${MISSING}\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("MISSING"), "{message}");
        let (line, _) = expand("a: |\n  x\n  ${MISSING}\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(expand("a: |\n  ${NL}\n").is_err());
    }

    #[test]
    fn text_that_is_not_yaml_is_left_to_the_parser() {
        let text = "b: ${HOST}\na: [unclosed\n";
        assert_eq!(expand(text).unwrap(), text);
        // Unquoted in a flow collection: not YAML, with a hint.
        let (line, message) = expand("a: 1\nb: { k: ${HOST} }\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(message.contains("quoted"), "{message}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever a variable holds, the document keeps its keys and the value reads
            /// back as written (or, plain and safe, as the scalar it spells: `8080`, `true`).
            #[test]
            fn values_never_change_the_structure(value in "\\PC{0,24}", quoted in any::<bool>()) {
                let text = if quoted {
                    "a: \"${V}\" # ${UNSET}\nb:\n  - x\n  - ${V}\nc: { k: \"${V}\" }\n"
                } else {
                    "a: ${V} # ${UNSET}\nb:\n  - x\n  - ${V}\nc: { k: \"${V}\" }\n"
                };
                let lookup = |name: &str| (name == "V").then(|| value.clone());
                let out = expand_yaml(text, lookup).unwrap();
                prop_assert_eq!(out.lines().count(), text.lines().count());
                let doc: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
                let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
                prop_assert_eq!(keys, vec!["a", "b", "c"]);
                prop_assert_eq!(doc["b"].as_array().unwrap().len(), 2);
                prop_assert_eq!(&doc["c"]["k"], &serde_json::Value::from(value.clone()));
                if quoted {
                    prop_assert_eq!(&doc["a"], &serde_json::Value::from(value.clone()));
                }
                for read in [&doc["a"], &doc["b"][1]] {
                    if let Some(text) = read.as_str() {
                        prop_assert_eq!(text, value.as_str());
                    }
                }
            }
        }
    }
}
