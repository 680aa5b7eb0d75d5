//! `google.api.HttpRule` path templates, parsed once at load time and matched per request.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//! `**` matches zero or more segments and may only be the last segment. `{x}` is `{x=*}`.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: the rest of the path, zero or more segments.
    Multi,
}

/// A `{field.path=…}` capture over `segments[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: String,
    pub start: usize,
    /// Exclusive; for a variable ending in `**`, the path's segment count at match time.
    pub end: usize,
    /// Spans more than one segment (or `**`): its value keeps `%2F` escaped.
    pub multi_segment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub text: String,
    pub segments: Vec<Segment>,
    pub verb: Option<String>,
    pub variables: Vec<Variable>,
}

/// The request path split once per request, shared by every template tried against it.
pub struct RequestPath<'a> {
    segments: Vec<&'a str>,
    decoded: Vec<Cow<'a, str>>,
    /// Text after the last `:` of the last segment, if any.
    verb: Option<&'a str>,
    /// The last segment without `:verb`, raw and decoded.
    last_without_verb: Option<(&'a str, Cow<'a, str>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    BadEncoding,
    NotUtf8,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::BadEncoding => f.write_str("malformed percent-encoding in path"),
            PathError::NotUtf8 => f.write_str("path is not valid UTF-8 once decoded"),
        }
    }
}

impl<'a> RequestPath<'a> {
    /// Splits a raw (still percent-encoded) path. Malformed escapes are refused up front.
    pub fn parse(path: &'a str) -> Result<Self, PathError> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let segments: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        let decoded = segments
            .iter()
            .map(|s| decode(s, false))
            .collect::<Result<Vec<_>, _>>()?;
        let (verb, last_without_verb) = match segments
            .last()
            .and_then(|s| s.rfind(':').map(|i| (&s[..i], &s[i + 1..])))
        {
            Some((head, verb)) => (Some(verb), Some((head, decode(head, false)?))),
            None => (None, None),
        };
        Ok(Self {
            segments,
            decoded,
            verb,
            last_without_verb,
        })
    }

    /// Decoded segment `i`; with `strip_verb`, the last one loses its `:verb`.
    fn decoded_segment(&self, i: usize, strip_verb: bool) -> &str {
        match &self.last_without_verb {
            Some((_, stripped)) if strip_verb && i + 1 == self.segments.len() => stripped,
            _ => &self.decoded[i],
        }
    }

    /// How many segments the path has (`/` has none).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Decoded segment `i`, as it is (a last segment keeps its `:verb`).
    pub fn decoded(&self, i: usize) -> &str {
        &self.decoded[i]
    }

    /// The last segment decoded without its `:verb`, if it has one.
    pub fn last_without_verb(&self) -> Option<&str> {
        self.last_without_verb
            .as_ref()
            .map(|(_, stripped)| stripped.as_ref())
    }
}

/// Percent-decodes one piece of path. With `keep_slash`, `%2F` stays escaped.
fn decode(raw: &str, keep_slash: bool) -> Result<Cow<'_, str>, PathError> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::BadEncoding)?;
            if keep_slash && value == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::NotUtf8)
}

impl PathTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| format!("path template `{text}` must start with `/`"))?;
        // The verb is a `:` outside braces after the last top-level `/`.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                '/' if depth == 0 => verb_at = None,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
            if !(0..=1).contains(&depth) {
                return Err(format!("unbalanced or nested braces in `{text}`"));
            }
        }
        if depth != 0 {
            return Err(format!("unbalanced braces in `{text}`"));
        }
        let (body, verb) = match verb_at {
            Some(i) => {
                let verb = &body[i + 1..];
                check_literal(verb, text)?;
                (&body[..i], Some(verb.to_string()))
            }
            None => (body, None),
        };

        let mut template = PathTemplate {
            text: text.to_string(),
            segments: Vec::new(),
            verb,
            variables: Vec::new(),
        };
        if body.is_empty() {
            return Ok(template);
        }
        for piece in split_top_level(body) {
            if let Some(inner) = piece.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("malformed variable `{piece}` in `{text}`"))?;
                let (field_path, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (inner, "*"),
                };
                check_field_path(field_path, text)?;
                if template
                    .variables
                    .iter()
                    .any(|v| v.field_path == field_path)
                {
                    return Err(format!("variable `{field_path}` appears twice in `{text}`"));
                }
                let start = template.segments.len();
                for sub in pattern.split('/') {
                    template.segments.push(parse_segment(sub, text)?);
                }
                let end = template.segments.len();
                let multi_segment =
                    end - start > 1 || template.segments[start..end].contains(&Segment::Multi);
                template.variables.push(Variable {
                    field_path: field_path.to_string(),
                    start,
                    end,
                    multi_segment,
                });
            } else {
                template.segments.push(parse_segment(piece, text)?);
            }
        }
        if let Some(i) = template.segments.iter().position(|s| *s == Segment::Multi)
            && i + 1 != template.segments.len()
        {
            return Err(format!("`**` must be the last segment in `{text}`"));
        }
        Ok(template)
    }

    /// Whether the request path fits this template (literals, counts, verb).
    pub fn matches(&self, path: &RequestPath<'_>) -> bool {
        let strip_verb = match &self.verb {
            Some(verb) if path.verb == Some(verb.as_str()) => true,
            Some(_) => return false,
            None => false,
        };
        let count = path.segments.len();
        let ends_multi = self.segments.last() == Some(&Segment::Multi);
        let fixed = if ends_multi {
            self.segments.len() - 1
        } else {
            self.segments.len()
        };
        if count < fixed || (!ends_multi && count != fixed) {
            return false;
        }
        self.segments[..fixed]
            .iter()
            .enumerate()
            .all(|(i, segment)| {
                let decoded = path.decoded_segment(i, strip_verb);
                match segment {
                    Segment::Literal(literal) => decoded == literal,
                    Segment::Single => !decoded.is_empty(),
                    Segment::Multi => true,
                }
            })
    }

    /// The values of the variables, for a path that `matches`. Single-segment values are
    /// fully unescaped; multi-segment ones keep `%2F` (contract §4).
    pub fn captures(&self, path: &RequestPath<'_>) -> Result<Vec<String>, PathError> {
        let raw_last = match (&self.verb, &path.last_without_verb) {
            (Some(_), Some((raw, _))) => Some(*raw),
            _ => None,
        };
        let last = path.segments.len().saturating_sub(1);
        let raw = |i: usize| -> &str {
            match raw_last {
                Some(stripped) if i == last => stripped,
                _ => path.segments[i],
            }
        };
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let end = if self.segments.get(variable.end - 1) == Some(&Segment::Multi) {
                path.segments.len()
            } else {
                variable.end
            };
            if variable.multi_segment {
                let joined = (variable.start..end).map(raw).collect::<Vec<_>>().join("/");
                values.push(decode(&joined, true)?.into_owned());
            } else {
                values.push(decode(raw(variable.start), false)?.into_owned());
            }
        }
        Ok(values)
    }

    /// Orders templates from most to least specific: literals before `*` before `**`,
    /// segment by segment, then a verb before none.
    pub fn specificity(&self) -> (Vec<u8>, bool) {
        let ranks = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Single => 1,
                Segment::Multi => 2,
            })
            .collect();
        (ranks, self.verb.is_none())
    }

    /// The shape two templates share when they match exactly the same paths.
    pub fn shape(&self) -> String {
        let mut shape = String::new();
        for segment in &self.segments {
            shape.push('/');
            match segment {
                Segment::Literal(l) => shape.push_str(l),
                Segment::Single => shape.push('*'),
                Segment::Multi => shape.push_str("**"),
            }
        }
        if let Some(verb) = &self.verb {
            shape.push(':');
            shape.push_str(verb);
        }
        shape
    }

    /// OpenAPI form: each variable becomes `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&v.field_path);
                out.push('}');
                i = v.end;
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(l) => out.push_str(l),
                Segment::Single => out.push('*'),
                Segment::Multi => out.push_str("**"),
            }
            i += 1;
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn split_top_level(body: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                pieces.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&body[start..]);
    pieces
}

fn parse_segment(piece: &str, text: &str) -> Result<Segment, String> {
    match piece {
        "*" => Ok(Segment::Single),
        "**" => Ok(Segment::Multi),
        _ => {
            check_literal(piece, text)?;
            Ok(Segment::Literal(piece.to_string()))
        }
    }
}

fn check_literal(literal: &str, text: &str) -> Result<(), String> {
    if literal.is_empty() {
        return Err(format!("empty segment in `{text}`"));
    }
    let ok = literal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()+,;@%".contains(c) || (c as u32) > 127);
    if !ok {
        return Err(format!(
            "invalid character in segment `{literal}` of `{text}`"
        ));
    }
    Ok(())
}

fn check_field_path(path: &str, text: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.split('.').all(|ident| {
            !ident.is_empty()
                && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !ident.starts_with(|c: char| c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid field path `{path}` in `{text}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(template: &str, path: &str) -> Option<Vec<String>> {
        let t = PathTemplate::parse(template).unwrap();
        let p = RequestPath::parse(path).unwrap();
        t.matches(&p).then(|| t.captures(&p).unwrap())
    }

    #[test]
    fn simple_variable() {
        assert_eq!(
            matches("/v1/products/{id}", "/v1/products/42"),
            Some(vec!["42".into()])
        );
        assert_eq!(matches("/v1/products/{id}", "/v1/products/42/x"), None);
        assert_eq!(matches("/v1/products/{id}", "/v1/products/"), None);
        assert_eq!(matches("/v1/products/{id}", "/v1/product/42"), None);
    }

    #[test]
    fn multi_segment_variable_keeps_slash_escaped() {
        let t = "/v1/{name=shelves/*/books/*}";
        assert_eq!(
            matches(t, "/v1/shelves/1/books/2"),
            Some(vec!["shelves/1/books/2".into()])
        );
        assert_eq!(
            matches(t, "/v1/shelves/a%2Fb/books/c%20d"),
            Some(vec!["shelves/a%2Fb/books/c d".into()])
        );
        assert_eq!(matches(t, "/v1/shelves/1/books"), None);
        assert_eq!(matches(t, "/v1/shelves/1/magazines/2"), None);
    }

    #[test]
    fn single_segment_fully_unescaped() {
        assert_eq!(
            matches("/v1/echo/{id}", "/v1/echo/a%2Fb%20c"),
            Some(vec!["a/b c".into()])
        );
        assert_eq!(
            matches("/v1/echo/{id}", "/v1/echo/%E2%82%AC"),
            Some(vec!["€".into()])
        );
    }

    #[test]
    fn double_wildcard() {
        let t = "/v1/files/{id}/{rest=**}";
        assert_eq!(
            matches(t, "/v1/files/7/a/b/c"),
            Some(vec!["7".into(), "a/b/c".into()])
        );
        assert_eq!(matches(t, "/v1/files/7"), Some(vec!["7".into(), "".into()]));
        assert!(matches("/static/**", "/static/x/y").is_some());
        assert!(PathTemplate::parse("/a/**/b").is_err());
    }

    #[test]
    fn verbs() {
        let t = "/v1/echo/{id}:cancel";
        assert_eq!(matches(t, "/v1/echo/9:cancel"), Some(vec!["9".into()]));
        assert_eq!(matches(t, "/v1/echo/9"), None);
        assert_eq!(matches(t, "/v1/echo/9:undo"), None);
        // Without a verb in the template, a colon is part of the value.
        assert_eq!(
            matches("/v1/echo/{id}", "/v1/echo/9:cancel"),
            Some(vec!["9:cancel".into()])
        );
        let t = PathTemplate::parse("/v1/{name=messages/*}:cancel").unwrap();
        assert_eq!(t.verb.as_deref(), Some("cancel"));
        assert_eq!(t.variables[0].field_path, "name");
    }

    #[test]
    fn nested_field_paths() {
        let t =
            PathTemplate::parse("/v1/nested/{nested.name}/children/{nested.child.name}").unwrap();
        assert_eq!(t.variables[0].field_path, "nested.name");
        assert_eq!(t.variables[1].field_path, "nested.child.name");
        assert_eq!(
            t.openapi_path(),
            "/v1/nested/{nested.name}/children/{nested.child.name}"
        );
    }

    #[test]
    fn bad_templates() {
        for bad in [
            "v1/x",
            "/v1/{id",
            "/v1/{a{b}}",
            "/v1/{1x}",
            "/v1//x",
            "/v1/{id}/{id}",
            "/v1/a b",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_encoding_is_refused() {
        assert_eq!(
            RequestPath::parse("/v1/%zz").err(),
            Some(PathError::BadEncoding)
        );
        assert_eq!(
            RequestPath::parse("/v1/%4").err(),
            Some(PathError::BadEncoding)
        );
        assert_eq!(
            RequestPath::parse("/v1/%ff%fe").err(),
            Some(PathError::NotUtf8)
        );
    }

    #[test]
    fn specificity_orders_literals_first() {
        let lit = PathTemplate::parse("/v1/products/search").unwrap();
        let var = PathTemplate::parse("/v1/products/{id}").unwrap();
        let rest = PathTemplate::parse("/v1/{x=**}").unwrap();
        assert!(lit.specificity() < var.specificity());
        assert!(var.specificity() < rest.specificity());
        assert_eq!(
            var.shape(),
            PathTemplate::parse("/v1/products/{other}").unwrap().shape()
        );
    }

    /// Generated templates against paths built to fit them: every such path matches and
    /// gives back the values it was built from; arbitrary input never panics.
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Piece {
            Literal(String),
            Star(String),
            Variable(String),
            /// `{m=*/*…}` over these segment values.
            MultiVariable(Vec<String>),
        }

        fn segment_value() -> impl Strategy<Value = String> {
            "\\PC{1,6}"
        }

        fn piece() -> impl Strategy<Value = Piece> {
            prop_oneof![
                "[a-z0-9._~-]{1,6}".prop_map(Piece::Literal),
                segment_value().prop_map(Piece::Star),
                segment_value().prop_map(Piece::Variable),
                prop::collection::vec(segment_value(), 2..4).prop_map(Piece::MultiVariable),
            ]
        }

        /// Everything but unreserved characters percent-encoded (`/` as `%2F`, `:` too).
        fn encode(value: &str) -> String {
            let mut out = String::new();
            for byte in value.bytes() {
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(byte as char);
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
            out
        }

        #[derive(Debug)]
        struct Case {
            template: String,
            path: String,
            captures: Vec<String>,
        }

        fn case(pieces: Vec<Piece>, rest: Option<Vec<String>>, verb: Option<String>) -> Case {
            let (mut template, mut path, mut captures) = (String::new(), String::new(), vec![]);
            let multi = |segments: &[String]| -> String {
                // A multi-segment value keeps `/` inside a segment escaped (`%2F`).
                segments
                    .iter()
                    .map(|s| s.replace('/', "%2F"))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let encoded = |segments: &[String]| -> String {
                segments
                    .iter()
                    .map(|s| encode(s))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            for (i, piece) in pieces.iter().enumerate() {
                template.push('/');
                path.push('/');
                match piece {
                    Piece::Literal(literal) => {
                        template.push_str(literal);
                        path.push_str(literal);
                    }
                    Piece::Star(value) => {
                        template.push('*');
                        path.push_str(&encode(value));
                    }
                    Piece::Variable(value) => {
                        template.push_str(&format!("{{f{i}}}"));
                        path.push_str(&encode(value));
                        captures.push(value.clone());
                    }
                    Piece::MultiVariable(segments) => {
                        let stars = vec!["*"; segments.len()].join("/");
                        template.push_str(&format!("{{m{i}={stars}}}"));
                        path.push_str(&encoded(segments));
                        captures.push(multi(segments));
                    }
                }
            }
            if let Some(rest) = rest {
                template.push_str("/{rest=**}");
                if !rest.is_empty() {
                    path.push('/');
                    path.push_str(&encoded(&rest));
                }
                captures.push(multi(&rest));
            }
            if let Some(verb) = verb {
                template.push(':');
                template.push_str(&verb);
                path.push(':');
                path.push_str(&verb);
            }
            Case {
                template,
                path,
                captures,
            }
        }

        fn cases() -> impl Strategy<Value = Case> {
            (
                prop::collection::vec(piece(), 1..6),
                prop::option::of(prop::collection::vec(segment_value(), 0..3)),
                prop::option::of("[a-z]{1,5}"),
            )
                .prop_map(|(pieces, rest, verb)| case(pieces, rest, verb))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn built_paths_match_and_give_their_values_back(case in cases()) {
                let template = PathTemplate::parse(&case.template)
                    .map_err(TestCaseError::fail)?;
                let path = RequestPath::parse(&case.path).unwrap();
                prop_assert!(template.matches(&path), "{} !~ {}", case.template, case.path);
                prop_assert_eq!(template.captures(&path).unwrap(), case.captures);
            }

            #[test]
            fn a_changed_literal_or_verb_does_not_match(case in cases(), extra in "[A-Z]{1,3}") {
                let template = PathTemplate::parse(&case.template).unwrap();
                // Upper case never appears in generated literals or verbs.
                if let Some(Segment::Literal(literal)) = template.segments.first() {
                    let changed = case.path.replacen(&format!("/{literal}"), &format!("/{literal}{extra}"), 1);
                    prop_assert!(!template.matches(&RequestPath::parse(&changed).unwrap()), "{changed}");
                }
                if template.verb.is_some() {
                    let changed = format!("{}{extra}", case.path);
                    prop_assert!(!template.matches(&RequestPath::parse(&changed).unwrap()), "{changed}");
                }
            }

            #[test]
            fn arbitrary_input_never_panics(template in "\\PC{0,24}", path in "\\PC{0,40}") {
                if let (Ok(template), Ok(path)) =
                    (PathTemplate::parse(&template), RequestPath::parse(&path))
                    && template.matches(&path)
                {
                    // A path that matches always yields its captures.
                    prop_assert_eq!(template.captures(&path).map(|c| c.len()), Ok(template.variables.len()));
                }
            }
        }
    }
}
