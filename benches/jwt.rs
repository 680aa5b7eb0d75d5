//! A cold JWT check (issue 14, item 5): one token verified from scratch (token cache off)
//! by the gateway's verifier (`ring` signatures, `src/middleware/jwt_*.rs`), against
//! jsonwebtoken's `decode` with its RustCrypto backend, which is what the gateway ran
//! before. Same token, same key, same claim rules.
//!
//! `cargo bench --bench jwt`

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::path::Path;
use switchboard::config::JwtConfig;
use switchboard::middleware::auth::JwtVerifier;

fn keys(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let config = JwtConfig {
        issuer: Some("https://auth.bench".into()),
        audiences: vec!["bench".into()],
        allow_any_issuer: false,
        allow_any_audience: false,
        algorithms: vec!["RS256".into(), "ES256".into()],
        jwks: Some(keys("jwks.json").display().to_string()),
        secret: None,
        leeway: None,
        forward_claims: Default::default(),
        jwks_ttl: None,
        jwks_min_refresh: None,
        jwks_allow_http: false,
        token_cache: Some(0),
    };
    let verifier = JwtVerifier::new(&config, Path::new(".")).expect("verifier");
    let jwks: JwkSet =
        serde_json::from_str(&std::fs::read_to_string(keys("jwks.json")).expect("jwks"))
            .expect("jwks");
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({"sub": "bench-user", "scope": "products:read",
        "iss": "https://auth.bench", "aud": "bench", "exp": exp});

    for (alg, kid, pem) in [
        (Algorithm::RS256, "rsa-1", "rsa.pem"),
        (Algorithm::ES256, "ec-1", "ec.pem"),
    ] {
        let pem = std::fs::read(keys(pem)).expect("pem");
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("key");
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &signing).expect("token");

        let jwk = jwks.find(kid).expect("jwk");
        let key = DecodingKey::from_jwk(jwk).expect("key");
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_issuer(&["https://auth.bench"]);
        validation.set_audience(&["bench"]);

        let mut group = c.benchmark_group(format!("cold_check/{alg:?}"));
        group.bench_function("gateway_ring", |b| {
            b.iter(|| {
                let claims = runtime
                    .block_on(verifier.verify(black_box(&token)))
                    .expect("verifies");
                black_box(claims)
            })
        });
        group.bench_function("jsonwebtoken_rust_crypto", |b| {
            b.iter(|| {
                let data = jsonwebtoken::decode::<Map<String, Value>>(
                    black_box(&token),
                    &key,
                    &validation,
                )
                .expect("verifies");
                black_box(data)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
