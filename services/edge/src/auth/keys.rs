//! Signing keys: a JSON Web Key Set as an identity provider publishes it, and the choice
//! of the key that verifies a token. Pure: no I/O, no clock.
//!
//! Only RSA keys (RS256) and P-256 keys (ES256) meant for signatures are kept. Each key's
//! algorithm comes from its `alg`, or, when the provider leaves it out (Entra ID does),
//! from its `kty` and `crv`; a token must name exactly that algorithm. Symmetric (`oct`)
//! keys are never taken from a key set, so no published value can become an HMAC secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::auth::AuthError;

/// The algorithms a key set's keys verify: RS256 with RSA keys, ES256 with P-256 keys.
pub const KEY_SET_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// The smallest RSA modulus accepted, in bits (aws-lc refuses smaller ones anyway; this
/// says why when the set is read).
const MIN_RSA_BITS: usize = 2048;

/// One public key and the one algorithm it verifies.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The key id (`kid`) tokens name it by; a configured key has none.
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// Why a JWKS document gives no keys at all. The cached keys stay in use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    #[error("not a JSON Web Key Set: {0}")]
    NotAKeySet(String),
    #[error("no usable signing key (RSA for RS256, P-256 for ES256) among its {0} keys")]
    NoUsableKey(usize),
}

/// A key of the document that is not used, and why (for the log).
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub kid: Option<String>,
    pub reason: &'static str,
}

impl KeySet {
    /// The usable keys of a JWKS document, and those skipped. One key the edge cannot use
    /// (an encryption key, another algorithm, a malformed entry) does not spoil the others.
    pub fn parse(json: &[u8]) -> Result<(Self, Vec<Skipped>), KeySetError> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(json).map_err(|err| KeySetError::NotAKeySet(err.to_string()))?;
        let total = document.keys.len();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for value in document.keys {
            let kid = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let usable = serde_json::from_value::<Jwk>(value)
                .map_err(|_| "not a valid JWK")
                .and_then(|jwk| verifying_key(&jwk));
            match usable {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(Skipped { kid, reason }),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey(total));
        }
        Ok((Self { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that verifies a token with header `kid` and `alg`.
    ///
    /// - A `kid` must name a key of the set ([`AuthError::UnknownKey`] otherwise, which
    ///   makes the caller fetch the set again), and that key's algorithm must be `alg`.
    /// - Without a `kid`, the one key of algorithm `alg` is used; with several, the token
    ///   must say which.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyingKey, AuthError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|key| key.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(AuthError::UnknownKey);
                }
                named
                    .find(|key| key.algorithm == alg)
                    .ok_or(AuthError::KeyAlgorithmMismatch)
            }
            None => {
                let mut candidates = self.keys.iter().filter(|key| key.algorithm == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(AuthError::UnknownKey),
                    (Some(_), Some(_)) => Err(AuthError::MissingKeyId),
                }
            }
        }
    }
}

/// The key and algorithm of one JWK, or why it is not used.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, &'static str> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| *usage != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not for verifying (key_ops)");
    }
    let alg = jwk.common.key_algorithm;
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            if !matches!(alg, None | Some(KeyAlgorithm::RS256)) {
                return Err("an RSA key for another algorithm than RS256");
            }
            let modulus = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "a malformed RSA modulus")?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return Err("an RSA key shorter than 2048 bits");
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            if ec.curve != EllipticCurve::P256 {
                return Err("an EC key on another curve than P-256");
            }
            if !matches!(alg, None | Some(KeyAlgorithm::ES256)) {
                return Err("a P-256 key for another algorithm than ES256");
            }
            for coordinate in [&ec.x, &ec.y] {
                let bytes = URL_SAFE_NO_PAD
                    .decode(coordinate.trim_end_matches('='))
                    .map_err(|_| "a malformed EC point")?;
                if bytes.len() != 32 {
                    return Err("a malformed EC point");
                }
            }
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key, never accepted from a key set");
        }
        _ => return Err("a key type other than RSA or EC"),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key material")?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base64url value of `len` bytes, with a leading non-zero byte.
    fn b64_of_len(len: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![0xa5; len])
    }

    fn rsa(kid: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut key = serde_json::json!({
            "kty": "RSA", "kid": kid, "n": b64_of_len(256), "e": "AQAB",
        });
        if let (Some(key), Some(extra)) = (key.as_object_mut(), extra.as_object()) {
            key.extend(extra.clone());
        }
        key
    }

    fn ec(kid: &str, crv: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "kid": kid, "crv": crv, "x": b64_of_len(32), "y": b64_of_len(32),
        })
    }

    fn parse(keys: Vec<serde_json::Value>) -> Result<(KeySet, Vec<Skipped>), KeySetError> {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    fn kids(set: &KeySet) -> Vec<(Option<&str>, Algorithm)> {
        set.keys
            .iter()
            .map(|key| (key.kid.as_deref(), key.algorithm))
            .collect()
    }

    #[test]
    fn a_keycloak_like_set_keeps_the_signing_keys_only() {
        let (set, skipped) = parse(vec![
            rsa("sig", serde_json::json!({ "use": "sig", "alg": "RS256" })),
            rsa("enc", serde_json::json!({ "use": "enc", "alg": "RSA-OAEP" })),
            // Entra ID publishes no alg: RSA means RS256.
            rsa("entra", serde_json::json!({ "use": "sig", "x5t": "abc" })),
            ec("p256", "P-256"),
            ec("p384", "P-384"),
            rsa("rs512", serde_json::json!({ "alg": "RS512" })),
            rsa("verify-only", serde_json::json!({ "key_ops": ["verify"] })),
            rsa("encrypt-only", serde_json::json!({ "key_ops": ["encrypt"] })),
            serde_json::json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" }),
            serde_json::json!({ "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64_of_len(32) }),
            serde_json::json!({ "kty": "RSA", "kid": "short", "n": b64_of_len(128), "e": "AQAB" }),
            serde_json::json!({ "kty": "EC", "kid": "bent", "crv": "P-256", "x": b64_of_len(31), "y": b64_of_len(32) }),
            serde_json::json!({ "kid": "unknown-kty" }),
            serde_json::json!({ "kty": "RSA", "kid": "bad-use", "use": 7, "n": b64_of_len(256), "e": "AQAB" }),
        ])
        .expect("a key set");
        assert_eq!(
            kids(&set),
            [
                (Some("sig"), Algorithm::RS256),
                (Some("entra"), Algorithm::RS256),
                (Some("p256"), Algorithm::ES256),
                (Some("verify-only"), Algorithm::RS256),
            ]
        );
        let reasons: Vec<(&str, &str)> = skipped
            .iter()
            .map(|skip| (skip.kid.as_deref().unwrap_or("-"), skip.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("enc", "not a signing key (use)"),
                ("p384", "an EC key on another curve than P-256"),
                ("rs512", "an RSA key for another algorithm than RS256"),
                ("encrypt-only", "not for verifying (key_ops)"),
                ("hmac", "a symmetric key, never accepted from a key set"),
                ("ed", "a key type other than RSA or EC"),
                ("short", "an RSA key shorter than 2048 bits"),
                ("bent", "a malformed EC point"),
                ("unknown-kty", "a key type other than RSA or EC"),
                ("bad-use", "not a valid JWK"),
            ]
        );
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        assert!(matches!(
            KeySet::parse(b"<html>login</html>"),
            Err(KeySetError::NotAKeySet(_))
        ));
        assert!(matches!(
            KeySet::parse(br#"{"issuer":"https://idp"}"#),
            Err(KeySetError::NotAKeySet(_))
        ));
        assert_eq!(
            parse(vec![serde_json::json!({ "kty": "oct", "k": "c2VjcmV0" })]).err(),
            Some(KeySetError::NoUsableKey(1))
        );
        assert_eq!(parse(vec![]).err(), Some(KeySetError::NoUsableKey(0)));
    }

    #[test]
    fn keys_are_chosen_by_kid_and_must_match_the_tokens_algorithm() {
        let (set, _) =
            parse(vec![rsa("a", serde_json::json!({})), ec("e", "P-256")]).expect("a key set");
        let chosen = |kid, alg| {
            set.select(kid, alg)
                .map(|key| (key.kid.clone(), key.algorithm))
        };
        assert_eq!(
            chosen(Some("a"), Algorithm::RS256),
            Ok((Some("a".to_owned()), Algorithm::RS256))
        );
        assert_eq!(
            chosen(Some("e"), Algorithm::ES256),
            Ok((Some("e".to_owned()), Algorithm::ES256))
        );
        // An ES256 token naming the RSA key, and the reverse.
        assert_eq!(
            chosen(Some("a"), Algorithm::ES256).err(),
            Some(AuthError::KeyAlgorithmMismatch)
        );
        assert_eq!(
            chosen(Some("e"), Algorithm::RS256).err(),
            Some(AuthError::KeyAlgorithmMismatch)
        );
        assert_eq!(
            chosen(Some("b"), Algorithm::RS256).err(),
            Some(AuthError::UnknownKey)
        );
        // Without a kid: the one key of that algorithm.
        assert_eq!(
            chosen(None, Algorithm::ES256),
            Ok((Some("e".to_owned()), Algorithm::ES256))
        );
        let (two, _) = parse(vec![
            rsa("a", serde_json::json!({})),
            rsa("b", serde_json::json!({})),
        ])
        .expect("a key set");
        assert_eq!(
            two.select(None, Algorithm::RS256).err(),
            Some(AuthError::MissingKeyId)
        );
        assert_eq!(
            two.select(None, Algorithm::ES256).err(),
            Some(AuthError::UnknownKey)
        );
    }
}
