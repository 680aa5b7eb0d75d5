//! The registered-claim checks of a JWT whose signature verified: `exp` (required), `nbf`,
//! `iss`, `aud`, with the configured leeway.
//!
//! These are jsonwebtoken's `Validation` rules as the gateway configured them before the
//! signature check moved to `ring` (`jwt_keys`): the registered claims are read with the
//! same serde shapes (a duplicated `exp`, `nbf`, `iss`, `aud` or `sub` is refused; an `exp`
//! or `nbf` that is not a non-negative number is refused), and the reasons read as
//! jsonwebtoken's did. One rule is stricter, as docs/configuration.md always said: when an
//! issuer (audiences) is configured, a token without `iss` (`aud`), or with one that is
//! neither a string nor a list of strings, is refused; jsonwebtoken let those through.

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::HashSet;

/// What the claims of an accepted token must satisfy.
#[derive(Clone, Debug)]
pub(super) struct ClaimRules {
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// Accepted issuers; `None`: any.
    pub issuers: Option<HashSet<String>>,
    /// Accepted audiences; `None`: `aud` is not checked.
    pub audiences: Option<HashSet<String>>,
}

impl ClaimRules {
    /// Checks the decoded claims (`payload`: the JSON of the token's middle part) at `now`
    /// (Unix seconds). The error is the reason given to the client.
    pub(super) fn check(&self, payload: &[u8], now: u64) -> Result<(), String> {
        let claims: Registered =
            serde_json::from_slice(payload).map_err(|e| format!("JSON error: {e}"))?;
        // Required: absent and malformed alike are "missing" (jsonwebtoken's order).
        let TryParse::Parsed(exp) = claims.exp else {
            return Err("Missing required claim: exp".into());
        };
        if matches!(claims.nbf, TryParse::FailedToParse) {
            return Err("Invalid format for claim: nbf".into());
        }
        if exp < now.saturating_sub(self.leeway) {
            return Err("ExpiredSignature".into());
        }
        if matches!(claims.nbf, TryParse::Parsed(nbf) if nbf > now.saturating_add(self.leeway)) {
            return Err("ImmatureSignature".into());
        }
        if let Some(accepted) = &self.issuers {
            names_check(&claims.iss, accepted, "iss", "InvalidIssuer")?;
        }
        if let Some(accepted) = &self.audiences {
            names_check(&claims.aud, accepted, "aud", "InvalidAudience")?;
        }
        Ok(())
    }
}

/// A configured `iss` / `aud` check: the claim must be there and name an accepted value.
fn names_check(
    claim: &TryParse<Names<'_>>,
    accepted: &HashSet<String>,
    name: &str,
    invalid: &str,
) -> Result<(), String> {
    match claim {
        TryParse::Parsed(names) if names.any_in(accepted) => Ok(()),
        TryParse::NotPresent => Err(format!("Missing required claim: {name}")),
        _ => Err(invalid.into()),
    }
}

/// The registered claims, in the shapes jsonwebtoken read them (other claims are skipped).
#[derive(Deserialize)]
struct Registered<'a> {
    #[serde(deserialize_with = "numeric", default)]
    exp: TryParse<u64>,
    #[serde(deserialize_with = "numeric", default)]
    nbf: TryParse<u64>,
    // Not checked, but read as before: a duplicated `sub` is refused.
    #[serde(borrow, default)]
    #[allow(dead_code)]
    sub: TryParse<Cow<'a, str>>,
    #[serde(borrow, default)]
    iss: TryParse<Names<'a>>,
    #[serde(borrow, default)]
    aud: TryParse<Names<'a>>,
}

#[derive(Default)]
enum TryParse<T> {
    Parsed(T),
    FailedToParse,
    #[default]
    NotPresent,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TryParse<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer) {
            Ok(Some(value)) => TryParse::Parsed(value),
            Ok(None) => TryParse::NotPresent,
            Err(_) => TryParse::FailedToParse,
        })
    }
}

/// `iss` or `aud`: one name or a set of names.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names<'a> {
    Single(#[serde(borrow)] Cow<'a, str>),
    Multiple(#[serde(borrow)] HashSet<Name<'a>>),
}

#[derive(Deserialize, PartialEq, Eq, Hash)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl Names<'_> {
    /// Whether one of the names is accepted (an empty list never is).
    fn any_in(&self, accepted: &HashSet<String>) -> bool {
        match self {
            Names::Single(name) => accepted.contains(&**name),
            Names::Multiple(names) => names.iter().any(|n| accepted.contains(&*n.0)),
        }
    }
}

/// A NumericDate: a non-negative integer, or a finite non-negative float (rounded).
fn numeric<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TryParse<u64>, D::Error> {
    struct Numeric;

    impl serde::de::Visitor<'_> for Numeric {
        type Value = TryParse<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a NumericDate")
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(TryParse::Parsed(value))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
            if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
                Ok(TryParse::Parsed(value.round() as u64))
            } else {
                Err(E::custom("NumericDate out of range"))
            }
        }
    }

    Ok(deserializer
        .deserialize_any(Numeric)
        .unwrap_or(TryParse::FailedToParse))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 5,
            issuers: Some(HashSet::from(["https://auth.test".to_string()])),
            audiences: Some(HashSet::from(["api".to_string(), "web".to_string()])),
        }
    }

    fn check(payload: &str) -> Result<(), String> {
        rules().check(payload.as_bytes(), 1_000)
    }

    #[test]
    fn time_claims_with_leeway() {
        let rules = ClaimRules {
            leeway: 5,
            issuers: None,
            audiences: None,
        };
        let check = |payload: &str| rules.check(payload.as_bytes(), 1_000);
        assert!(check(r#"{"exp": 996}"#).is_ok());
        assert_eq!(check(r#"{"exp": 994}"#).unwrap_err(), "ExpiredSignature");
        assert!(check(r#"{"exp": 2000, "nbf": 1004}"#).is_ok());
        assert_eq!(
            check(r#"{"exp": 2000, "nbf": 1006}"#).unwrap_err(),
            "ImmatureSignature"
        );
        assert!(check(r#"{"exp": 1999.6}"#).is_ok());
        assert_eq!(check(r#"{}"#).unwrap_err(), "Missing required claim: exp");
        for bad in [r#"{"exp": -1}"#, r#"{"exp": "2000"}"#, r#"{"exp": null}"#] {
            assert_eq!(
                check(bad).unwrap_err(),
                "Missing required claim: exp",
                "{bad}"
            );
        }
        assert_eq!(
            check(r#"{"exp": 2000, "nbf": "soon"}"#).unwrap_err(),
            "Invalid format for claim: nbf"
        );
    }

    #[test]
    fn issuer_and_audience() {
        assert!(check(r#"{"exp": 2000, "iss": "https://auth.test", "aud": "api"}"#).is_ok());
        assert!(
            check(r#"{"exp": 2000, "iss": "https://auth.test", "aud": ["other", "web"]}"#).is_ok()
        );
        let wrong_iss = r#"{"exp": 2000, "iss": "https://evil", "aud": "api"}"#;
        assert_eq!(check(wrong_iss).unwrap_err(), "InvalidIssuer");
        let iss = r#""iss": "https://auth.test""#;
        assert_eq!(
            check(&format!(r#"{{"exp": 2000, {iss}, "aud": "other"}}"#)).unwrap_err(),
            "InvalidAudience"
        );
        assert_eq!(
            check(&format!(r#"{{"exp": 2000, {iss}, "aud": []}}"#)).unwrap_err(),
            "InvalidAudience"
        );
        let any = ClaimRules {
            leeway: 0,
            issuers: None,
            audiences: None,
        };
        assert!(
            any.check(br#"{"exp": 2000, "aud": "x", "iss": "y"}"#, 1000)
                .is_ok()
        );
        assert!(any.check(br#"{"exp": 2000}"#, 1000).is_ok());
        // Configured checks need the claim, in a usable shape.
        let iss_and_aud = r#""iss": "https://auth.test", "aud": "api""#;
        assert!(check(&format!(r#"{{"exp": 2000, {iss_and_aud}}}"#)).is_ok());
        assert_eq!(
            check(r#"{"exp": 2000, "aud": "api"}"#).unwrap_err(),
            "Missing required claim: iss"
        );
        assert_eq!(
            check(r#"{"exp": 2000, "iss": "https://auth.test"}"#).unwrap_err(),
            "Missing required claim: aud"
        );
        let numeric = r#"{"exp": 2000, "iss": "https://auth.test", "aud": 7}"#;
        assert_eq!(check(numeric).unwrap_err(), "InvalidAudience");
    }

    #[test]
    fn duplicated_registered_claims_and_garbage_are_refused() {
        assert!(check(r#"{"exp": 2000, "exp": 2001}"#).is_err());
        assert!(check(r#"{"exp": 2000, "iss": "https://auth.test", "iss": "x"}"#).is_err());
        assert!(check("not json").is_err());
    }
}
