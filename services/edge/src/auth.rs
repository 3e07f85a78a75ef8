//! Who is calling: the JWT in `authorization: Bearer <token>`, verified here and nowhere else.
//!
//! Only the configured algorithm is accepted (HS256 with a shared secret for local use, or
//! RS256 with a public key), so `alg: none` and algorithm-confusion tokens fail. `exp` is
//! required. The user is the token's `sub`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a call is UNAUTHENTICATED. The message is safe to show the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing authorization: send `authorization: Bearer <JWT>`")]
    Missing,
    #[error("authorization must be `Bearer <JWT>`")]
    NotBearer,
    #[error("the token has expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Verifies tokens with one key and one algorithm.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    pub fn rs256(public_key_pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::new(
            DecodingKey::from_rsa_pem(public_key_pem)?,
            Algorithm::RS256,
        ))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        // A token minted for later is not valid yet.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation }
    }

    /// Also require this `iss`, when set.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            self.validation
                .required_spec_claims
                .insert("iss".to_owned());
        }
        self
    }

    /// Also require this `aud`, when set.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation
                .required_spec_claims
                .insert("aud".to_owned());
        }
        self
    }

    /// The user id of an `authorization` header value.
    pub fn user_of(&self, authorization: Option<&str>) -> Result<String, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?
            .trim();
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(err.to_string()),
                }
            })?;
        let sub = data.claims.sub;
        // The user id travels in gRPC metadata and keys every row: printable ASCII only.
        if sub.is_empty() || sub.len() > 255 || !sub.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Invalid(
                "sub must be 1 to 255 printable ASCII characters".to_owned(),
            ));
        }
        Ok(sub)
    }
}

/// Signs an HS256 token for `subject`, valid for `ttl_seconds`: for local use and tests
/// (`atelier-mint-token`). Production tokens come from the identity provider.
pub fn mint_hs256(secret: &[u8], subject: &str, ttl_seconds: i64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = now.saturating_add_signed(ttl_seconds);
    let claims = Claims {
        sub: subject.to_owned(),
        exp,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    const SECRET: &[u8] = b"test-secret";

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn a_valid_token_names_its_subject() {
        let token = mint_hs256(SECRET, "alice", 60).expect("mint");
        let verifier = JwtVerifier::hs256(SECRET);
        assert_eq!(
            verifier.user_of(Some(&bearer(&token))),
            Ok("alice".to_owned())
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let verifier = JwtVerifier::hs256(SECRET);
        let expired = mint_hs256(SECRET, "alice", -3600).expect("mint");
        let wrong_key = mint_hs256(b"another-secret", "alice", 60).expect("mint");
        let far_future = 4_102_444_800u64;
        let unsigned = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{far_future}}}"#))
        );
        let no_exp = {
            let claims = serde_json::json!({ "sub": "alice" });
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .expect("mint")
        };
        assert_eq!(verifier.user_of(None), Err(AuthError::Missing));
        assert_eq!(
            verifier.user_of(Some("Basic abc")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            verifier.user_of(Some(&bearer(&expired))),
            Err(AuthError::Expired)
        );
        for token in [wrong_key, unsigned, no_exp, "garbage".to_owned()] {
            assert!(
                matches!(
                    verifier.user_of(Some(&bearer(&token))),
                    Err(AuthError::Invalid(_))
                ),
                "{token}"
            );
        }
    }

    #[test]
    fn rs256_verifies_with_the_public_key_and_refuses_hs256_tokens() {
        // A key pair made for this test only.
        let private = include_bytes!("../tests/fixtures/rs256-test-private.pem");
        let public = include_bytes!("../tests/fixtures/rs256-test-public.pem");
        let verifier = JwtVerifier::rs256(public).expect("public key");
        let claims = Claims {
            sub: "alice".to_owned(),
            exp: 4_102_444_800,
        };
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(private).expect("private key"),
        )
        .expect("sign");
        assert_eq!(
            verifier.user_of(Some(&bearer(&signed))),
            Ok("alice".to_owned())
        );

        // Algorithm confusion: an HS256 token "signed" with the public key is refused.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public),
        )
        .expect("sign");
        assert!(matches!(
            verifier.user_of(Some(&bearer(&confused))),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn subjects_must_fit_in_metadata() {
        let verifier = JwtVerifier::hs256(SECRET);
        for subject in ["", "has space", "ünïcode"] {
            let token = mint_hs256(SECRET, subject, 60).expect("mint");
            assert!(
                matches!(
                    verifier.user_of(Some(&bearer(&token))),
                    Err(AuthError::Invalid(_))
                ),
                "{subject:?}"
            );
        }
    }
}
