//! JWT signature keys in the form `ring` verifies with, prepared once when a JWKS (file or
//! URL) or the HS* secret is loaded, and the check of one signature.
//!
//! `ring` is already in the tree (rustls' crypto provider); its RSA and ECDSA checks cost
//! tens of microseconds where jsonwebtoken's pure-Rust backend took ≈ 250 µs for RS256.
//!
//! A key only verifies algorithms of its own type: RS*/PS* an RSA key (2048 to 8192 bits,
//! `ring`'s range), ES256 a P-256 key, ES384 a P-384 key, EdDSA an Ed25519 key, HS* the
//! configured secret. Anything else is a failed check, never a fallback to another key type.

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use ring::{hmac, signature};

/// One verification key.
pub enum VerifyingKey {
    /// The HS* secret, keyed for each digest once (boxed: large next to the others).
    Hmac(Box<HmacKeys>),
    /// Big-endian modulus and exponent, without leading zero bytes.
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// Uncompressed SEC1 points (`04 ‖ x ‖ y`).
    P256(Box<[u8]>),
    P384(Box<[u8]>),
    Ed25519(Box<[u8]>),
}

pub struct HmacKeys {
    sha256: hmac::Key,
    sha384: hmac::Key,
    sha512: hmac::Key,
}

impl VerifyingKey {
    pub fn secret(secret: &[u8]) -> Self {
        Self::Hmac(Box::new(HmacKeys {
            sha256: hmac::Key::new(hmac::HMAC_SHA256, secret),
            sha384: hmac::Key::new(hmac::HMAC_SHA384, secret),
            sha512: hmac::Key::new(hmac::HMAC_SHA512, secret),
        }))
    }

    /// The public key of a JWK, or `None` for a key this gateway does not verify with:
    /// symmetric (`oct`: a JWKS never supplies the HS* secret), P-521, or malformed.
    pub fn from_jwk(jwk: &Jwk) -> Option<Self> {
        match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => Some(Self::Rsa {
                n: unsigned(&b64(&rsa.n)?)?,
                e: unsigned(&b64(&rsa.e)?)?,
            }),
            AlgorithmParameters::EllipticCurve(ec) => {
                let (x, y) = (b64(&ec.x)?, b64(&ec.y)?);
                let size = match ec.curve {
                    EllipticCurve::P256 => 32,
                    EllipticCurve::P384 => 48,
                    _ => return None,
                };
                if x.len() != size || y.len() != size {
                    return None;
                }
                let point = [&[4u8][..], &x, &y].concat().into_boxed_slice();
                Some(if size == 32 {
                    Self::P256(point)
                } else {
                    Self::P384(point)
                })
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                let x = b64(&okp.x)?;
                (x.len() == 32).then(|| Self::Ed25519(x.into_boxed_slice()))
            }
            _ => None,
        }
    }

    /// The algorithm a JWK without `alg` is taken to be for.
    pub fn default_algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(_) => Algorithm::HS256,
            Self::Rsa { .. } => Algorithm::RS256,
            Self::P256(_) => Algorithm::ES256,
            Self::P384(_) => Algorithm::ES384,
            Self::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    /// Whether this key's type verifies `alg` at all.
    pub fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Hmac(_), HS256 | HS384 | HS512)
                | (
                    Self::Rsa { .. },
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512
                )
                | (Self::P256(_), ES256)
                | (Self::P384(_), ES384)
                | (Self::Ed25519(_), EdDSA)
        )
    }

    /// Whether `signature` is a valid `alg` signature of `message` by this key. An `alg`
    /// that does not fit the key's type is `false`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        use signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256,
            RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256,
            RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512, RsaPublicKeyComponents,
            UnparsedPublicKey,
        };
        let rsa = |n: &[u8], e: &[u8], params| {
            RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        };
        let point = |params, key: &[u8]| {
            UnparsedPublicKey::new(params, key)
                .verify(message, sig)
                .is_ok()
        };
        match (self, alg) {
            (Self::Hmac(keys), Algorithm::HS256) => {
                hmac::verify(&keys.sha256, message, sig).is_ok()
            }
            (Self::Hmac(keys), Algorithm::HS384) => {
                hmac::verify(&keys.sha384, message, sig).is_ok()
            }
            (Self::Hmac(keys), Algorithm::HS512) => {
                hmac::verify(&keys.sha512, message, sig).is_ok()
            }
            (Self::Rsa { n, e }, Algorithm::RS256) => rsa(n, e, &RSA_PKCS1_2048_8192_SHA256),
            (Self::Rsa { n, e }, Algorithm::RS384) => rsa(n, e, &RSA_PKCS1_2048_8192_SHA384),
            (Self::Rsa { n, e }, Algorithm::RS512) => rsa(n, e, &RSA_PKCS1_2048_8192_SHA512),
            (Self::Rsa { n, e }, Algorithm::PS256) => rsa(n, e, &RSA_PSS_2048_8192_SHA256),
            (Self::Rsa { n, e }, Algorithm::PS384) => rsa(n, e, &RSA_PSS_2048_8192_SHA384),
            (Self::Rsa { n, e }, Algorithm::PS512) => rsa(n, e, &RSA_PSS_2048_8192_SHA512),
            (Self::P256(key), Algorithm::ES256) => point(&ECDSA_P256_SHA256_FIXED, key),
            (Self::P384(key), Algorithm::ES384) => point(&ECDSA_P384_SHA384_FIXED, key),
            (Self::Ed25519(key), Algorithm::EdDSA) => point(&ED25519, key),
            _ => false,
        }
    }
}

fn b64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// A big-endian unsigned integer without leading zero bytes (as `ring` wants it).
fn unsigned(bytes: &[u8]) -> Option<Box<[u8]>> {
    let start = bytes.iter().position(|b| *b != 0)?;
    Some(bytes[start..].into())
}
