//! JWT bearer authentication (`auth.jwt`): algorithms pinned by config, keys from a JWKS
//! file or URL (`jwks.rs`: cached; refetched on an unknown `kid`, at most once per
//! `jwks_min_refresh`) or a shared secret for HS*, `iss`/`aud`/`exp`/`nbf` with leeway.
//! Signatures are checked with `ring` (`jwt_keys.rs`), claims by `jwt_claims.rs`.
//!
//! Key confusion cannot happen: an HS* token is only ever checked against the secret,
//! an asymmetric one only against JWKS keys of its own family (and of the key's own type:
//! ES384 never with a P-256 key), and only configured algorithms are accepted (`alg: none`
//! does not even parse).

use crate::config::JwtConfig;
use crate::error::GatewayError;
use crate::middleware::jwks::RemoteJwks;
use crate::middleware::jwt_claims::ClaimRules;
use crate::middleware::jwt_keys::VerifyingKey;
use crate::middleware::token_cache::TokenCache;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue, header};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
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
    /// The accepted algorithms (a token's `alg` must be one).
    algorithms: Vec<Algorithm>,
    rules: ClaimRules,
    secret: Option<Arc<VerifyingKey>>,
    keys: KeySource,
    /// Tokens that verified, with their claims (see `token_cache`).
    cache: Option<Arc<TokenCache>>,
    /// Claim → header name set for the backend; the same names from clients are stripped.
    pub forward_claims: Vec<(String, HeaderName)>,
}

enum KeySource {
    None,
    /// Keys loaded once from a file at config load.
    Static(KeyMaps),
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
                Some(Arc::new(VerifyingKey::secret(secret.as_bytes())))
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
                KeySource::Static(parse_jwks(&text)?)
            }
            (None, true) => {
                return Err("asymmetric algorithms need `jwks` (a file or an https URL)".into());
            }
            (_, false) => KeySource::None,
        };

        let rules = ClaimRules {
            leeway,
            issuers: config.issuer.as_ref().map(|i| HashSet::from([i.clone()])),
            audiences: (!config.audiences.is_empty())
                .then(|| config.audiences.iter().cloned().collect()),
        };
        let mut forward_claims = Vec::new();
        for (claim, name) in &config.forward_claims {
            let name = HeaderName::from_str(&name.to_ascii_lowercase())
                .map_err(|_| format!("forward_claims: `{name}` is not a valid header name"))?;
            forward_claims.push((claim.clone(), name));
        }
        Ok(Self {
            algorithms,
            rules,
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
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self
                .secret
                .clone()
                .ok_or_else(|| invalid("no secret for HS* tokens"))?,
            alg => self.asymmetric_key(alg, header.kid.as_deref()).await?,
        };
        let claims = Arc::new(self.check(token, header.alg, &key)?);
        if let Some(cache) = &self.cache {
            cache.insert(token, &claims);
        }
        Ok(claims)
    }

    /// The signature, then the claims (jsonwebtoken's order, and its reasons).
    fn check(
        &self,
        token: &str,
        alg: Algorithm,
        key: &VerifyingKey,
    ) -> Result<Map<String, Value>, GatewayError> {
        let rejected = |reason: String| invalid(format!("token rejected: {reason}"));
        let b64 = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| rejected(format!("Base64 error: {e}")))
        };
        // `decode_header` accepted the token, so it has these parts.
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| invalid("malformed token"))?;
        let (_, payload) = message
            .rsplit_once('.')
            .ok_or_else(|| invalid("malformed token"))?;
        if !key.fits(alg) {
            return Err(rejected("InvalidAlgorithm".into()));
        }
        if !key.verify(alg, message.as_bytes(), &b64(signature)?) {
            return Err(rejected("InvalidSignature".into()));
        }
        let payload = b64(payload)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|e| rejected(format!("JSON error: {e}")))?;
        self.rules
            .check(&payload, jsonwebtoken::get_current_timestamp())
            .map_err(rejected)?;
        Ok(claims)
    }

    async fn asymmetric_key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Arc<VerifyingKey>, GatewayError> {
        match &self.keys {
            KeySource::None => Err(invalid("no keys configured for this algorithm")),
            KeySource::Static((by_kid, without_kid)) => pick(by_kid, without_kid, alg, kid),
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

/// A key set: keys by `kid`, and the keys without one (tried in order).
pub(super) type KeyMaps = (
    HashMap<String, (Algorithm, Arc<VerifyingKey>)>,
    Vec<(Algorithm, Arc<VerifyingKey>)>,
);

/// Usable keys of a JWKS document, by `kid` (keys without one are tried in order). Keys
/// are decoded into `ring`'s form here, once; symmetric (`oct`) keys are ignored.
pub(super) fn parse_jwks(text: &str) -> Result<KeyMaps, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut without_kid = Vec::new();
    for jwk in &set.keys {
        let Some(key) = VerifyingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
            .unwrap_or(key.default_algorithm());
        let key = Arc::new(key);
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
    by_kid: &HashMap<String, (Algorithm, Arc<VerifyingKey>)>,
    without_kid: &[(Algorithm, Arc<VerifyingKey>)],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Arc<VerifyingKey>, GatewayError> {
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

    fn key_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    /// A token signed with the test key that `jwks-all.json` publishes for `alg`.
    fn signed(alg: Algorithm, claims: &Value) -> String {
        let pem = |name: &str| std::fs::read(key_file(name)).unwrap();
        let (key, kid) = match alg {
            Algorithm::ES256 => (EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap(), "ec-1"),
            Algorithm::ES384 => (
                EncodingKey::from_ec_pem(&pem("ec384.pem")).unwrap(),
                "ec384-1",
            ),
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
                "ed-1",
            ),
            _ => (
                EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
                "rsa-any",
            ),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, claims, &key).unwrap()
    }

    fn b64(v: &Value) -> String {
        base64::Engine::encode(&URL_SAFE_NO_PAD, v.to_string())
    }

    /// `token` with its header replaced by `header` (payload and signature kept).
    fn with_header(token: &str, header: Value) -> String {
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64(&header))
    }

    const ASYMMETRIC: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    fn all_keys_verifier(algorithms: &[&str]) -> JwtVerifier {
        let mut config = config(algorithms);
        config.jwks = Some(key_file("jwks-all.json").display().to_string());
        config.token_cache = Some(0);
        JwtVerifier::new(&config, Path::new(".")).unwrap()
    }

    fn reason(error: GatewayError) -> String {
        assert_eq!(error.code, Code::Unauthenticated);
        error.message
    }

    #[tokio::test]
    async fn every_algorithm_verifies_and_refuses_tampering() {
        let names: Vec<String> = ASYMMETRIC.iter().map(|a| format!("{a:?}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let verifier = all_keys_verifier(&names);
        let good =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});
        let other =
            json!({"sub": "admin", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});
        for alg in ASYMMETRIC {
            let token = signed(alg, &good);
            assert_eq!(
                verifier.verify(&token).await.unwrap()["sub"],
                "u1",
                "{alg:?}"
            );

            // One signature byte changed (a middle character: all its bits are used).
            let (message, signature) = token.rsplit_once('.').unwrap();
            let mut flipped = signature.as_bytes().to_vec();
            let middle = flipped.len() / 2;
            flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{message}.{}", String::from_utf8(flipped).unwrap());
            let why = reason(verifier.verify(&tampered).await.unwrap_err());
            assert!(why.contains("InvalidSignature"), "{alg:?}: {why}");

            // Another payload under this signature.
            let other_token = signed(alg, &other);
            let other_payload = other_token.split('.').nth(1).unwrap();
            let header = token.split('.').next().unwrap();
            let forged = format!("{header}.{other_payload}.{signature}");
            assert!(verifier.verify(&forged).await.is_err(), "{alg:?}");

            // An empty signature.
            assert!(
                verifier.verify(&format!("{message}.")).await.is_err(),
                "{alg:?}"
            );
        }
        // Expired and wrong-audience tokens with valid signatures.
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 120);
        let why = reason(
            verifier
                .verify(&signed(Algorithm::ES256, &expired))
                .await
                .unwrap_err(),
        );
        assert!(why.contains("ExpiredSignature"), "{why}");
        let mut wrong_aud = good;
        wrong_aud["aud"] = json!(["other"]);
        let why = reason(
            verifier
                .verify(&signed(Algorithm::RS256, &wrong_aud))
                .await
                .unwrap_err(),
        );
        assert!(why.contains("InvalidAudience"), "{why}");
    }

    #[tokio::test]
    async fn the_alg_must_fit_the_key_and_be_configured() {
        let verifier = all_keys_verifier(&["RS256", "ES256", "ES384", "EdDSA", "HS256"]);
        let claims =
            json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": now() + 60});

        // ES384 claimed for the P-256 key (same family, other curve).
        let es256 = signed(Algorithm::ES256, &claims);
        let lie = with_header(&es256, json!({"alg": "ES384", "kid": "ec-1"}));
        let why = reason(verifier.verify(&lie).await.unwrap_err());
        assert!(why.contains("InvalidAlgorithm"), "{why}");
        // An RSA-family alg for an EC key: no such key in that family.
        let lie = with_header(&es256, json!({"alg": "RS256", "kid": "ec-1"}));
        assert!(reason(verifier.verify(&lie).await.unwrap_err()).contains("no key"));
        // A PS256 signature presented as RS256 (same key, other padding).
        let mut config = config(&["RS256", "PS256"]);
        config.jwks = Some(key_file("jwks-all.json").display().to_string());
        let rsa = JwtVerifier::new(&config, Path::new(".")).unwrap();
        let ps256 = signed(Algorithm::PS256, &claims);
        let lie = with_header(&ps256, json!({"alg": "RS256", "kid": "rsa-any"}));
        assert!(reason(rsa.verify(&lie).await.unwrap_err()).contains("InvalidSignature"));
        // A valid token whose alg is not configured.
        let rs512 = signed(Algorithm::RS512, &claims);
        assert!(reason(verifier.verify(&rs512).await.unwrap_err()).contains("not accepted"));
        // HS256 signed with the RSA key's public JWK as the secret: checked against the
        // configured secret only, never a JWKS key.
        let n = serde_json::from_str::<Value>(
            &std::fs::read_to_string(key_file("jwks-all.json")).unwrap(),
        )
        .unwrap()["keys"][0]["n"]
            .as_str()
            .unwrap()
            .to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-any".into());
        let confused = encode(&header, &claims, &EncodingKey::from_secret(n.as_bytes())).unwrap();
        assert!(reason(verifier.verify(&confused).await.unwrap_err()).contains("InvalidSignature"));
        // `none`, with and without a kid, signature or not.
        for header in [
            json!({"alg": "none"}),
            json!({"alg": "none", "kid": "rsa-any"}),
        ] {
            for sig in ["", "AAAA"] {
                let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
                assert!(reason(verifier.verify(&token).await.unwrap_err()).contains("malformed"));
            }
        }
    }

    #[test]
    fn jwks_keys_are_decoded_once_and_symmetric_ones_ignored() {
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AA", "y": "AA"},
        ]});
        let (by_kid, without_kid) = parse_jwks(&jwks.to_string()).unwrap();
        assert!(by_kid.is_empty() && without_kid.is_empty());
        let all = std::fs::read_to_string(key_file("jwks-all.json")).unwrap();
        let (by_kid, _) = parse_jwks(&all).unwrap();
        let algs: HashMap<&str, Algorithm> =
            by_kid.iter().map(|(k, (a, _))| (k.as_str(), *a)).collect();
        assert_eq!(algs["rsa-any"], Algorithm::RS256);
        assert_eq!(algs["ec384-1"], Algorithm::ES384);
        assert_eq!(algs["ed-1"], Algorithm::EdDSA);
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let claims = json!({"scope": "a b", "scp": ["c"]});
        assert_eq!(scopes(claims.as_object().unwrap()), vec!["a", "b", "c"]);
    }
}
