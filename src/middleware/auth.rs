//! JWT bearer authentication (`auth.jwt`): algorithms pinned by config, keys from a JWKS
//! file or URL (`jwks.rs`: cached; refetched on an unknown `kid`, at most once per
//! `jwks_min_refresh`) or a shared secret for HS*, `iss`/`aud`/`exp`/`nbf` with leeway.
//!
//! Key confusion cannot happen: an HS* token is only ever checked against the secret,
//! an asymmetric one only against JWKS keys of its own family, and only configured
//! algorithms are accepted (`alg: none` does not even parse).

use crate::config::JwtConfig;
use crate::error::GatewayError;
use crate::middleware::jwks::RemoteJwks;
use crate::middleware::token_cache::TokenCache;
use http::{HeaderName, HeaderValue, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Verified tokens remembered by default (`auth.jwt.token_cache`).
const DEFAULT_TOKEN_CACHE: usize = 10_000;
/// The longest a verified token is trusted without checking its signature again: bounds
/// how long a key withdrawn from a JWKS keeps working for tokens already seen.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);

/// The verified claims of a request's token.
pub type Claims = Arc<Map<String, Value>>;

pub struct JwtVerifier {
    /// One validation per accepted algorithm: jsonwebtoken wants every algorithm of a
    /// `Validation` to belong to the key's family.
    validations: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    keys: KeySource,
    /// Tokens that verified, with their claims (see `token_cache`).
    cache: Option<Arc<TokenCache>>,
    /// Claim → header name set for the backend; the same names from clients are stripped.
    pub forward_claims: Vec<(String, HeaderName)>,
}

enum KeySource {
    None,
    /// Keys loaded once from a file at config load.
    Static(
        HashMap<String, (Algorithm, DecodingKey)>,
        Vec<(Algorithm, DecodingKey)>,
    ),
    Remote(Arc<RemoteJwks>),
}

impl JwtVerifier {
    /// Whether the keys come from a URL (refreshed in place), so the verifier can be kept
    /// across reloads; a JWKS file is read again by building a new one.
    pub fn keys_refresh_themselves(&self) -> bool {
        matches!(self.keys, KeySource::Remote(_))
    }
}

impl JwtVerifier {
    /// Builds a verifier; reads a JWKS file now (a URL is fetched on first use).
    pub fn new(config: &JwtConfig, base_dir: &Path) -> Result<Self, String> {
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            let algorithm =
                Algorithm::from_str(name).map_err(|_| format!("unknown JWT algorithm `{name}`"))?;
            algorithms.push(algorithm);
        }
        if algorithms.is_empty() {
            return Err("auth.jwt.algorithms must name at least one algorithm".into());
        }
        // A token minted for another service (or by another issuer the keys also sign
        // for) must not pass by omission: turning a check off takes an explicit key.
        if config.issuer.is_none() && !config.allow_any_issuer {
            return Err(
                "`issuer` is not set, so tokens of any issuer would pass; set it, \
                        or set `allow_any_issuer: true` to accept that"
                    .into(),
            );
        }
        if config.audiences.is_empty() && !config.allow_any_audience {
            return Err(
                "`audiences` is empty, so tokens for any audience would pass; list \
                        them, or set `allow_any_audience: true` to accept that"
                    .into(),
            );
        }
        let wants_secret = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let wants_keys = algorithms
            .iter()
            .any(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let secret = match (&config.secret, wants_secret) {
            (Some(secret), true) if !secret.is_empty() => {
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
            (_, true) => return Err("HS* algorithms need `secret`".into()),
            (_, false) => None,
        };
        let leeway = config.leeway.map(|d| d.0.as_secs()).unwrap_or(0);
        let cache = TokenCache::new(
            config.token_cache.unwrap_or(DEFAULT_TOKEN_CACHE),
            TOKEN_CACHE_TTL,
            leeway,
        )
        .map(Arc::new);
        let keys = match (&config.jwks, wants_keys) {
            (Some(source), true)
                if source.starts_with("http://") || source.starts_with("https://") =>
            {
                KeySource::Remote(Arc::new(RemoteJwks::new(
                    source.clone(),
                    config.jwks_allow_http,
                    config
                        .jwks_ttl
                        .map(|d| d.0)
                        .unwrap_or(Duration::from_secs(300)),
                    config
                        .jwks_min_refresh
                        .map(|d| d.0)
                        .unwrap_or(Duration::from_secs(30)),
                    cache.clone(),
                )?))
            }
            (Some(path), true) => {
                let path = if Path::new(path).is_absolute() {
                    path.into()
                } else {
                    base_dir.join(path)
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
                let (by_kid, without_kid) = parse_jwks(&text)?;
                KeySource::Static(by_kid, without_kid)
            }
            (None, true) => {
                return Err("asymmetric algorithms need `jwks` (a file or an https URL)".into());
            }
            (_, false) => KeySource::None,
        };

        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        if config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audiences);
        }
        let mut forward_claims = Vec::new();
        for (claim, name) in &config.forward_claims {
            let name = HeaderName::from_str(&name.to_ascii_lowercase())
                .map_err(|_| format!("forward_claims: `{name}` is not a valid header name"))?;
            forward_claims.push((claim.clone(), name));
        }
        let validations = algorithms
            .into_iter()
            .map(|algorithm| {
                let mut v = validation.clone();
                v.algorithms = vec![algorithm];
                (algorithm, v)
            })
            .collect();
        Ok(Self {
            validations,
            secret,
            keys,
            cache,
            forward_claims,
        })
    }

    /// Verifies a bearer token: signature, algorithm, `exp`/`nbf`, `iss`, `aud`.
    pub async fn verify(&self, token: &str) -> Result<Claims, GatewayError> {
        if let Some(claims) = self.cache.as_ref().and_then(|c| c.get(token)) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("malformed token: {e}")))?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        };
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self
                .secret
                .clone()
                .ok_or_else(|| invalid("no secret for HS* tokens"))?,
            alg => self.asymmetric_key(alg, header.kid.as_deref()).await?,
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, validation)
            .map_err(|e| invalid(format!("token rejected: {e}")))?;
        let claims = Arc::new(data.claims);
        if let Some(cache) = &self.cache {
            cache.insert(token, &claims);
        }
        Ok(claims)
    }

    async fn asymmetric_key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<DecodingKey, GatewayError> {
        match &self.keys {
            KeySource::None => Err(invalid("no keys configured for this algorithm")),
            KeySource::Static(by_kid, without_kid) => pick(by_kid, without_kid, alg, kid),
            KeySource::Remote(remote) => remote.key(alg, kid).await,
        }
    }
}

/// 401 UNAUTHENTICATED with the RFC 6750 challenge.
pub fn invalid(reason: impl Into<String>) -> GatewayError {
    let reason = reason.into();
    let description = reason.replace(['"', '\\'], "'");
    GatewayError::new(Code::Unauthenticated, reason).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!(
            "Bearer realm=\"switchboard\", error=\"invalid_token\", error_description=\"{description}\""
        ))
        .unwrap_or(HeaderValue::from_static("Bearer error=\"invalid_token\"")),
    )
}

pub(super) type KeyMaps = (
    HashMap<String, (Algorithm, DecodingKey)>,
    Vec<(Algorithm, DecodingKey)>,
);

/// Usable keys of a JWKS document, by `kid` (keys without one are tried in order).
pub(super) fn parse_jwks(text: &str) -> Result<KeyMaps, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut without_kid = Vec::new();
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
            .unwrap_or(match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => Algorithm::RS256,
            });
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), (alg, key));
            }
            None => without_kid.push((alg, key)),
        }
    }
    Ok((by_kid, without_kid))
}

/// The key for `kid` (or the first key-id-less key of the right family).
pub(super) fn pick(
    by_kid: &HashMap<String, (Algorithm, DecodingKey)>,
    without_kid: &[(Algorithm, DecodingKey)],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<DecodingKey, GatewayError> {
    let same_family = |a: &Algorithm| family(*a) == family(alg);
    let found = match kid {
        Some(kid) => by_kid
            .get(kid)
            .filter(|(a, _)| same_family(a))
            .map(|(_, k)| k.clone()),
        None => without_kid
            .iter()
            .find(|(a, _)| same_family(a))
            .map(|(_, k)| k.clone()),
    };
    found.ok_or_else(|| invalid(format!("no key for kid {kid:?}")))
}

fn family(alg: Algorithm) -> u8 {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => 0,
        Algorithm::ES256 | Algorithm::ES384 => 1,
        Algorithm::EdDSA => 2,
        _ => 3,
    }
}

/// The scopes a token carries: `scope` (space-separated) and/or `scp` (array or string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim as a header value: strings as they are, scope arrays space-joined, numbers
/// and booleans as text.
pub fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn config(algorithms: &[&str]) -> JwtConfig {
        JwtConfig {
            issuer: Some("https://auth.test".into()),
            audiences: vec!["api".into()],
            allow_any_issuer: false,
            allow_any_audience: false,
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            jwks: None,
            secret: Some("s3cret-s3cret-s3cret-s3cret-s3cret".into()),
            leeway: None,
            forward_claims: Default::default(),
            jwks_ttl: None,
            jwks_min_refresh: None,
            jwks_allow_http: false,
            token_cache: None,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn hs256_checks_claims() {
        let verifier = JwtVerifier::new(&config(&["HS256"]), Path::new(".")).unwrap();
        let good =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});
        assert_eq!(
            verifier.verify(&hs256(good.clone())).await.unwrap()["sub"],
            "u1"
        );
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 120);
        assert!(verifier.verify(&hs256(expired)).await.is_err());
        let mut early = good.clone();
        early["nbf"] = json!(now() + 120);
        assert!(verifier.verify(&hs256(early)).await.is_err());
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil");
        assert!(verifier.verify(&hs256(wrong_iss)).await.is_err());
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("other");
        assert!(verifier.verify(&hs256(wrong_aud)).await.is_err());
        let mut no_exp = good;
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(verifier.verify(&hs256(no_exp)).await.is_err());
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_but_only_byte_for_byte() {
        let verifier = JwtVerifier::new(&config(&["HS256"]), Path::new(".")).unwrap();
        let claims =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});
        let token = hs256(claims);
        assert_eq!(verifier.verify(&token).await.unwrap()["sub"], "u1");
        let cache = verifier.cache.as_ref().unwrap();
        assert!(cache.get(&token).is_some());
        assert_eq!(verifier.verify(&token).await.unwrap()["sub"], "u1");
        // Another signature over the same claims is not the cached token.
        let (body, _) = token.rsplit_once('.').unwrap();
        assert!(verifier.verify(&format!("{body}.AAAA")).await.is_err());

        let mut off = config(&["HS256"]);
        off.token_cache = Some(0);
        assert!(
            JwtVerifier::new(&off, Path::new("."))
                .unwrap()
                .cache
                .is_none()
        );
    }

    #[test]
    fn unchecked_issuer_or_audience_needs_an_explicit_opt_out() {
        let dir = Path::new(".");
        let mut no_issuer = config(&["HS256"]);
        no_issuer.issuer = None;
        let error = JwtVerifier::new(&no_issuer, dir).err().unwrap();
        assert!(error.contains("allow_any_issuer"), "{error}");
        no_issuer.allow_any_issuer = true;
        assert!(JwtVerifier::new(&no_issuer, dir).is_ok());

        let mut no_audience = config(&["HS256"]);
        no_audience.audiences.clear();
        let error = JwtVerifier::new(&no_audience, dir).err().unwrap();
        assert!(error.contains("allow_any_audience"), "{error}");
        no_audience.allow_any_audience = true;
        assert!(JwtVerifier::new(&no_audience, dir).is_ok());
    }

    #[tokio::test]
    async fn alg_none_and_unlisted_algorithms_are_refused() {
        let verifier = JwtVerifier::new(&config(&["HS256"]), Path::new(".")).unwrap();
        let b64 = |v: Value| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                v.to_string(),
            )
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "x", "exp": now() + 60}))
        );
        let err = verifier.verify(&none).await.unwrap_err();
        assert_eq!(err.code, Code::Unauthenticated);
        assert!(
            err.headers.as_ref().unwrap()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": now() + 60}),
            &EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
        )
        .unwrap();
        assert!(verifier.verify(&hs512).await.is_err());
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let claims = json!({"scope": "a b", "scp": ["c"]});
        assert_eq!(scopes(claims.as_object().unwrap()), vec!["a", "b", "c"]);
    }
}
