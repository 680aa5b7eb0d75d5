//! Query parameters → request fields (HttpRule: "any fields in the request message which
//! are not bound by the path template or the body become HTTP query parameters").
//! Keys are field paths (`a.b=…`, proto or JSON names); repeated fields take every
//! occurrence (`tag=a&tag=b`).

use super::field_path::{FieldPath, MAX_FIELD_PATH_DEPTH, set_field_from_str, settable_from_text};
use crate::error::GatewayError;
use percent_encoding::percent_decode_str;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use std::borrow::Cow;

/// How one route binds its query string, decided at load time.
#[derive(Clone, Debug)]
pub struct QueryBinding {
    /// Fields already bound by the path or the body; query keys under them are skipped.
    pub bound: Vec<FieldPath>,
    /// The body is `*`: no field is left for the query.
    pub body_is_whole: bool,
    /// Unknown keys are 400 instead of ignored.
    pub strict: bool,
}

/// Splits `a=1&b=x+y` into decoded pairs (`+` is a space). Bad escapes or invalid UTF-8
/// are 400.
/// A decoded query parameter.
pub(super) type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

pub fn parse_query(query: &str) -> Result<Vec<QueryPair<'_>>, GatewayError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// One key or value: `+` → space, then percent-decoding.
fn decode(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    check_escapes(raw)?;
    let invalid = || GatewayError::invalid_argument("query string is not valid UTF-8 once decoded");
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        let decoded = percent_decode_str(&spaced)
            .decode_utf8()
            .map_err(|_| invalid())?;
        return Ok(Cow::Owned(decoded.into_owned()));
    }
    percent_decode_str(raw).decode_utf8().map_err(|_| invalid())
}

/// `percent_decode_str` passes malformed escapes through; the contract wants a 400.
fn check_escapes(text: &str) -> Result<(), GatewayError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err(GatewayError::invalid_argument(
                    "malformed percent-encoding in query string",
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

impl QueryBinding {
    /// Sets the fields named by `query` on `message`.
    pub fn apply(
        &self,
        desc: &MessageDescriptor,
        message: &mut DynamicMessage,
        query: &str,
    ) -> Result<(), GatewayError> {
        for (key, value) in parse_query(query)? {
            if self.body_is_whole {
                if self.strict {
                    return Err(GatewayError::invalid_argument(format!(
                        "query parameter `{key}` not allowed: the body carries the whole message"
                    )));
                }
                continue;
            }
            // Too deep is refused even where unknown keys are ignored: it is never a typo.
            if key.bytes().filter(|b| *b == b'.').count() >= MAX_FIELD_PATH_DEPTH {
                return Err(GatewayError::invalid_argument(format!(
                    "query parameter name is deeper than {MAX_FIELD_PATH_DEPTH} fields"
                )));
            }
            let path = match FieldPath::resolve(desc, &key) {
                Ok(path) => path,
                Err(reason) if self.strict => {
                    return Err(GatewayError::invalid_argument(format!(
                        "unknown query parameter `{key}`: {reason}"
                    )));
                }
                Err(_) => continue,
            };
            if self.bound.iter().any(|b| b.covers(&path)) {
                continue;
            }
            if !settable_from_text(path.last()) {
                return Err(GatewayError::invalid_argument(format!(
                    "query parameter `{key}` names a field that cannot be set from text"
                )));
            }
            set_field_from_str(message, &path, &value).map_err(GatewayError::invalid_argument)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `message Node { Node c = 1; string n = 2; }`, the shape of the crash.
    fn node() -> MessageDescriptor {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-query-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let proto =
            "syntax = \"proto3\";\npackage q;\nmessage Node { Node c = 1; string n = 2; }\n";
        std::fs::write(dir.join("q.proto"), proto).unwrap();
        let schema = crate::schema::Schema::load(std::slice::from_ref(&dir), &[]).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        schema.pool.get_message_by_name("q.Node").unwrap()
    }

    #[test]
    fn field_paths_deeper_than_the_bound_are_400_strict_or_not() {
        let desc = node();
        for strict in [false, true] {
            let binding = QueryBinding {
                bound: Vec::new(),
                body_is_whole: false,
                strict,
            };
            let mut message = DynamicMessage::new(desc.clone());
            let deep = format!("{}n=x", "c.".repeat(4000));
            let error = binding.apply(&desc, &mut message, &deep).unwrap_err();
            assert_eq!(error.code, tonic::Code::InvalidArgument);
            assert!(error.message.contains("deeper than"), "{}", error.message);
            let edge = format!("{}n=x", "c.".repeat(MAX_FIELD_PATH_DEPTH - 1));
            binding.apply(&desc, &mut message, &edge).unwrap();
            let over = format!("{}n=x", "c.".repeat(MAX_FIELD_PATH_DEPTH));
            assert!(binding.apply(&desc, &mut message, &over).is_err());
        }
        assert!(FieldPath::resolve(&desc, &format!("{}n", "c.".repeat(100))).is_err());
    }

    #[test]
    fn pairs_are_decoded() {
        let pairs = parse_query("a=1&b=x+y&c=%E2%82%AC&d&&e=").unwrap();
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "€".into()),
                ("d".into(), "".into()),
                ("e".into(), "".into())
            ]
        );
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%ff").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Form encoding as browsers write it: space as `+`, the rest percent-encoded.
        fn form(text: &str) -> String {
            let mut out = String::new();
            for byte in text.bytes() {
                match byte {
                    b' ' => out.push('+'),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(b as char),
                    b => out.push_str(&format!("%{b:02X}")),
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn encoded_pairs_decode_to_themselves(pairs in prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..6)) {
                let query = pairs
                    .iter()
                    .map(|(k, v)| format!("{}={}", form(k), form(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let decoded: Vec<(String, String)> = parse_query(&query)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                prop_assert_eq!(decoded, pairs);
            }

            #[test]
            fn a_string_field_gets_exactly_the_value(value in "\\PC{0,16}", depth in 0usize..4) {
                let desc = node();
                let key = format!("{}n", "c.".repeat(depth));
                let mut message = DynamicMessage::new(desc.clone());
                let binding = QueryBinding { bound: Vec::new(), body_is_whole: false, strict: true };
                binding.apply(&desc, &mut message, &format!("{key}={}", form(&value))).unwrap();
                let mut at = message;
                for _ in 0..depth {
                    let child = at.get_field_by_name("c").unwrap().as_message().unwrap().clone();
                    at = child;
                }
                let n = at.get_field_by_name("n").unwrap();
                prop_assert_eq!(n.as_str().unwrap(), value.as_str());
            }

            #[test]
            fn any_query_is_bound_or_refused_as_the_client_s_error(query in "[a-z.=&%+0-9A-F]{0,48}|\\PC{0,48}", strict in any::<bool>()) {
                let desc = node();
                let mut message = DynamicMessage::new(desc.clone());
                let binding = QueryBinding { bound: Vec::new(), body_is_whole: false, strict };
                if let Err(error) = binding.apply(&desc, &mut message, &query) {
                    prop_assert_eq!(error.code, tonic::Code::InvalidArgument);
                }
            }
        }
    }
}
