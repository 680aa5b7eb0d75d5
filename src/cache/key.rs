//! Cache keys. A key is route + path + query (sorted by parameter name) + the user (`sub`
//! of the verified token, on routes that authenticate) + the `vary` header values, hashed
//! with SHA-256: clients choose most of these bytes, so the key has a fixed size and two
//! different requests cannot be made to collide on purpose.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// One request's place in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheKey {
    /// SHA-256 of every part, length-prefixed so that parts cannot run into each other.
    pub digest: [u8; 32],
    /// The route's name: `DELETE /admin/cache?route=` matches it.
    pub route: Arc<str>,
    /// `path?sorted-query`: `DELETE /admin/cache?key_prefix=` matches its start.
    pub text: Arc<str>,
}

impl CacheKey {
    pub(crate) fn build(
        route: &Arc<str>,
        path: &str,
        query: Option<&str>,
        user: Option<&str>,
        vary: &[http::HeaderName],
        headers: &HeaderMap,
    ) -> Self {
        let query = sorted_query(query.unwrap_or(""));
        let text: Arc<str> = if query.is_empty() {
            path.into()
        } else {
            format!("{path}?{query}").into()
        };
        let mut hash = Sha256::new();
        part(&mut hash, route.as_bytes());
        part(&mut hash, text.as_bytes());
        match user {
            Some(user) => {
                hash.update([1]);
                part(&mut hash, user.as_bytes());
            }
            None => hash.update([0]),
        }
        for name in vary {
            // Every value in order (a header may repeat), and how many there were, so that
            // an absent header differs from an empty one.
            let values = headers.get_all(name);
            let count = values.iter().count() as u64;
            hash.update(count.to_be_bytes());
            for value in values {
                part(&mut hash, value.as_bytes());
            }
        }
        Self {
            digest: hash.finalize().into(),
            route: route.clone(),
            text,
        }
    }
}

fn part(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The query string with its parameters sorted by name. A stable sort: repeated
/// parameters keep their order, since `tags=a&tags=b` and `tags=b&tags=a` are different
/// lists for the backend. Empty pieces (`a=1&&b=2`) do not count.
fn sorted_query(query: &str) -> String {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by_key(|p| p.split_once('=').map_or(*p, |(name, _)| name));
    params.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn key(query: Option<&str>, user: Option<&str>, headers: &HeaderMap) -> CacheKey {
        let vary = [HeaderName::from_static("accept-language")];
        CacheKey::build(&"r".into(), "/v1/p/1", query, user, &vary, headers)
    }

    #[test]
    fn query_order_does_not_matter_but_repeats_keep_their_order() {
        let none = HeaderMap::new();
        assert_eq!(
            key(Some("b=2&a=1"), None, &none),
            key(Some("a=1&b=2"), None, &none)
        );
        assert_eq!(
            key(Some("a=1&b=2"), None, &none).text.as_ref(),
            "/v1/p/1?a=1&b=2"
        );
        assert_eq!(
            key(Some("&a=1&&"), None, &none),
            key(Some("a=1"), None, &none)
        );
        assert_ne!(
            key(Some("t=a&t=b"), None, &none),
            key(Some("t=b&t=a"), None, &none)
        );
        assert_ne!(key(Some("a=1"), None, &none), key(Some("a=2"), None, &none));
        assert_eq!(key(None, None, &none), key(Some(""), None, &none));
    }

    #[test]
    fn user_and_vary_headers_are_part_of_the_key() {
        let none = HeaderMap::new();
        let anonymous = key(None, None, &none);
        let alice = key(None, Some("alice"), &none);
        assert_ne!(anonymous, alice);
        assert_ne!(alice, key(None, Some("bob"), &none));
        // An empty `sub` is not the anonymous key.
        assert_ne!(anonymous, key(None, Some(""), &none));

        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        let mut empty = HeaderMap::new();
        empty.insert("accept-language", HeaderValue::from_static(""));
        let mut other = HeaderMap::new();
        other.insert("x-other", HeaderValue::from_static("fr"));
        assert_ne!(anonymous, key(None, None, &fr));
        assert_ne!(anonymous, key(None, None, &empty));
        // Headers not named in `vary` do not matter.
        assert_eq!(anonymous, key(None, None, &other));
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        let none = HeaderMap::new();
        let a = CacheKey::build(&"ab".into(), "/c", None, None, &[], &none);
        let b = CacheKey::build(&"a".into(), "b/c", None, None, &[], &none);
        assert_ne!(a.digest, b.digest);
        let c = CacheKey::build(&"r".into(), "/p", None, Some("x"), &[], &none);
        let d = CacheKey::build(&"r".into(), "/px", None, None, &[], &none);
        assert_ne!(c.digest, d.digest);
        assert_eq!(hex(&a.digest).len(), 64);
    }
}
