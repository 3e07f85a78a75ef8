//! Who is calling: the JWT in `authorization: Bearer <token>`, verified here and nowhere else.
//!
//! Tokens are verified with one of three key sources ([`JwtVerifier`]):
//!
//! - HS256 with a shared secret, for local use;
//! - RS256 with one configured public key;
//! - the JSON Web Key Set of an identity provider (Keycloak, Auth0, Cognito, Entra ID),
//!   RS256 and ES256, kept in memory and refreshed in the background ([`jwks`]).
//!
//! A token's `alg` must be the algorithm of the key that verifies it, so `alg: none` and
//! algorithm confusion (an HS256 token "signed" with a public key) fail before any
//! signature is checked. After the signature come the claims, against the edge's clock
//! with 30 s of leeway: `exp` and `sub` are required, `nbf` is honoured, `iss` and `aud`
//! must match when configured (a token carrying an `aud` is refused when no audience is
//! configured), and with a maximum age `iat` is required and must be recent enough. The
//! user is the token's `sub`.
//!
//! [`verify`] is pure (the time is passed in), and so are the key set and its refresh
//! schedule ([`keys`], [`refresh`]); [`Authenticator`] adds the live key cache.

pub mod jwks;
pub mod keys;
pub mod refresh;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::jwks::JwksCache;
pub use self::jwks::JwksConfig;
use self::keys::{KEY_SET_ALGORITHMS, KeySet, VerifyingKey};

/// Why a call is not authenticated. Every message is safe to show the caller: it names
/// what is wrong with the token, never a key, a configured value or an internal address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing authorization: send `authorization: Bearer <JWT>`")]
    Missing,
    #[error("send exactly one authorization header")]
    Multiple,
    #[error("authorization must be `Bearer <JWT>`")]
    NotBearer,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    /// `alg` is the token's algorithm when it is one jsonwebtoken knows.
    #[error("tokens signed with {} are not accepted", .0.map_or("this algorithm".to_owned(), |alg| format!("{alg:?}")))]
    AlgorithmNotAccepted(Option<Algorithm>),
    #[error("the token uses a critical header extension (crit) this server does not support")]
    CriticalHeader,
    #[error("unknown signing key (kid)")]
    UnknownKey,
    #[error("the token names no signing key (kid), and several could sign it")]
    MissingKeyId,
    #[error("the token's algorithm (alg) is not the algorithm of its signing key")]
    KeyAlgorithmMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token is too old (iat): get a new one")]
    TooOld,
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    #[error("sub must be 1 to 255 printable ASCII characters")]
    BadSubject,
    /// The identity provider's keys could not be fetched yet: the edge's trouble, not the
    /// caller's (UNAVAILABLE, not UNAUTHENTICATED; see `error.rs`).
    #[error("the identity provider's signing keys are not available yet; retry shortly")]
    KeysUnavailable,
}

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// The longest token read. Identity providers' tokens with many roles reach a few KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a token must say, besides being signed by a known key.
#[derive(Clone, Debug, Default)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// When set, `iat` is required and may be at most this old.
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
enum KeySource {
    Static(VerifyingKey),
    Jwks(JwksConfig),
}

/// How tokens are verified: the key source and the claim rules. A description, cheap to
/// clone; [`JwtVerifier::start`] makes the [`Authenticator`] that does the work.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: KeySource,
    rules: ClaimRules,
}

impl JwtVerifier {
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(VerifyingKey {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        })
    }

    pub fn rs256(public_key_pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self::with_key(VerifyingKey {
            kid: None,
            algorithm: Algorithm::RS256,
            key: DecodingKey::from_rsa_pem(public_key_pem)?,
        }))
    }

    /// RS256 and ES256 tokens, with the keys of an identity provider's key set.
    pub fn jwks(config: JwksConfig) -> Self {
        Self {
            keys: KeySource::Jwks(config),
            rules: ClaimRules::default(),
        }
    }

    fn with_key(key: VerifyingKey) -> Self {
        Self {
            keys: KeySource::Static(key),
            rules: ClaimRules::default(),
        }
    }

    /// Also require this `iss`, when set.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.rules.issuer = issuer;
        self
    }

    /// Also require this `aud`, when set.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.rules.audience = audience;
        self
    }

    /// Also require an `iat` at most this old, when set.
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.rules.max_age = max_age;
        self
    }

    /// The key set URL, when tokens are verified against one.
    pub fn jwks_url(&self) -> Option<&str> {
        match &self.keys {
            KeySource::Static(_) => None,
            KeySource::Jwks(config) => Some(config.url.as_str()),
        }
    }

    /// The authenticator for these settings. For a key set this spawns the task that
    /// fetches and refreshes it (on the current Tokio runtime) until `stop` is cancelled;
    /// it fetches at once, and calls meanwhile wait for that fetch.
    pub fn start(&self, stop: CancellationToken) -> anyhow::Result<Authenticator> {
        let keys = match &self.keys {
            KeySource::Static(key) => LiveKeys::Static(Arc::new(key.clone())),
            KeySource::Jwks(config) => {
                let cache = Arc::new(JwksCache::new(config.clone()));
                let client = jwks::http_client(config)?;
                tokio::spawn(Arc::clone(&cache).refresh_until(client, stop));
                LiveKeys::Jwks(cache)
            }
        };
        Ok(Authenticator {
            keys,
            rules: Arc::new(self.rules.clone()),
        })
    }
}

/// Verifies tokens: from memory, synchronously, on the common path; a token naming a key
/// the cached set lacks waits (boundedly) for a fetch of the set, at most one per
/// `unknown_key_interval`.
#[derive(Clone)]
pub struct Authenticator {
    keys: LiveKeys,
    rules: Arc<ClaimRules>,
}

#[derive(Clone)]
enum LiveKeys {
    Static(Arc<VerifyingKey>),
    Jwks(Arc<JwksCache>),
}

impl Authenticator {
    /// The user (`sub`) of a bearer token.
    pub async fn user_of(&self, token: &str) -> Result<String, AuthError> {
        match &self.keys {
            LiveKeys::Static(key) => verify(token, Keys::One(key), &self.rules, unix_now()),
            LiveKeys::Jwks(cache) => {
                let cached = cache.snapshot();
                match verify(token, Keys::Set(&cached.keys), &self.rules, unix_now()) {
                    Err(AuthError::UnknownKey) => {}
                    verdict => return verdict,
                }
                // A key the set lacks: the provider may have rotated. Look again (or wait
                // for the fetch under way), then decide with whatever set is current.
                let current = cache.refreshed().await;
                match verify(token, Keys::Set(&current.keys), &self.rules, unix_now()) {
                    Err(AuthError::UnknownKey) if !current.loaded => {
                        Err(AuthError::KeysUnavailable)
                    }
                    verdict => verdict,
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The keys a token may be verified with.
#[derive(Clone, Copy)]
pub enum Keys<'a> {
    /// A configured key: its algorithm only, whatever `kid` the token names.
    One(&'a VerifyingKey),
    /// An identity provider's set: RS256 or ES256, chosen by `kid`.
    Set(&'a KeySet),
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims the edge reads. NumericDates may be fractional (RFC 7519), hence `f64`.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    iss: Option<String>,
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The user (`sub`) of `token`, verified with `keys` against `rules` at `now` (seconds
/// since the Unix epoch).
///
/// The order matters: the header and algorithm first (cheap, and no key is touched for
/// `alg: none` or a foreign algorithm), then the key, then the signature, and the claims
/// only of a token whose signature holds.
pub fn verify(
    token: &str,
    keys: Keys<'_>,
    rules: &ClaimRules,
    now: u64,
) -> Result<String, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
    let alg = header.alg.ok_or(AuthError::Malformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Unsigned);
    }
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| AuthError::AlgorithmNotAccepted(None))?;
    // RFC 7515: a recipient must refuse critical extensions it does not understand, and
    // this one understands none.
    if header.crit.is_some() {
        return Err(AuthError::CriticalHeader);
    }
    let key = match keys {
        Keys::One(key) if key.algorithm == alg => key,
        Keys::Set(set) if KEY_SET_ALGORITHMS.contains(&alg) => {
            set.select(header.kid.as_deref(), alg)?
        }
        Keys::One(_) | Keys::Set(_) => return Err(AuthError::AlgorithmNotAccepted(Some(alg))),
    };
    let claims = jsonwebtoken::decode::<RawClaims>(token, &key.key, &signature_only(alg))
        .map_err(|err| match err.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed,
            // A key the crypto library refuses (a malformed point or modulus from the
            // provider) verifies nothing.
            _ => {
                tracing::debug!(error = %err, kid = ?key.kid, "token verification failed");
                AuthError::BadSignature
            }
        })?
        .claims;
    check_claims(&claims, rules, now)
}

/// jsonwebtoken checks the algorithm and the signature; [`check_claims`] does the rest
/// with the caller's clock.
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation
}

fn check_claims(claims: &RawClaims, rules: &ClaimRules, now: u64) -> Result<String, AuthError> {
    let now = now as f64;
    let leeway = LEEWAY_SECS as f64;
    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if exp + leeway < now {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(AuthError::NotYetValid);
    }
    if let Some(max_age) = rules.max_age {
        let iat = claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
        if iat > now + leeway {
            return Err(AuthError::IssuedInFuture);
        }
        if now - iat > max_age.as_secs_f64() + leeway {
            return Err(AuthError::TooOld);
        }
    }
    if let Some(issuer) = &rules.issuer {
        let iss = claims.iss.as_ref().ok_or(AuthError::MissingClaim("iss"))?;
        if iss != issuer {
            return Err(AuthError::WrongIssuer);
        }
    }
    // RFC 7519 4.1.3: a recipient that does not find itself in a present `aud` must refuse
    // the token, so a token for another audience is refused even when none is configured.
    match (&claims.aud, &rules.audience) {
        (None, None) => {}
        (None, Some(_)) => return Err(AuthError::MissingClaim("aud")),
        (Some(aud), audience) => {
            let ours = |candidate: &String| audience.as_ref() == Some(candidate);
            let accepted = match aud {
                Audience::One(one) => ours(one),
                // An empty list names nobody: it neither includes nor excludes this edge.
                Audience::Many(many) if many.is_empty() => audience.is_none(),
                Audience::Many(many) => many.iter().any(ours),
            };
            if !accepted {
                return Err(AuthError::WrongAudience);
            }
        }
    }
    let sub = claims.sub.as_ref().ok_or(AuthError::MissingClaim("sub"))?;
    // The user id travels in gRPC metadata and keys every row: printable ASCII only.
    if sub.is_empty() || sub.len() > 255 || !sub.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::BadSubject);
    }
    Ok(sub.clone())
}

#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// Signs an HS256 token for `subject`, valid for `ttl_seconds`: for local use and tests
/// (`atelier-mint-token`). Production tokens come from the identity provider.
pub fn mint_hs256(secret: &[u8], subject: &str, ttl_seconds: i64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = MintedClaims {
        sub: subject,
        exp: now.saturating_add_signed(ttl_seconds),
        iat: now,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}
