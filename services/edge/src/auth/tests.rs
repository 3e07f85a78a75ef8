//! [`verify`] at a fixed time: every way a token fails, for each key source; and the
//! [`Authenticator`] against a local identity provider whose keys rotate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use serde_json::json;

use super::*;

/// "Now" for every test: 2027-01-15.
const NOW: u64 = 1_800_000_000;
/// As long as a production secret must be (32 bytes).
const SECRET: &[u8] = b"auth-unit-test-secret-of-32-bytes";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rs256-test-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rs256-test-public.pem");

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A private key, its algorithm and the `kid` it is published under.
struct TestKey {
    kid: &'static str,
    alg: Algorithm,
    private: EncodingKey,
}

impl TestKey {
    fn rsa(kid: &'static str) -> Self {
        Self {
            kid,
            alg: Algorithm::RS256,
            private: EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("the fixture"),
        }
    }

    /// A P-256 key made for this test.
    fn ec(kid: &'static str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("a key");
        let pkcs8 = pair.to_pkcs8v1().expect("pkcs8");
        Self {
            kid,
            alg: Algorithm::ES256,
            private: EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.private, self.alg).expect("a JWK");
        jwk.common.key_id = Some(self.kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        serde_json::to_value(jwk).expect("json")
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.private).expect("sign")
    }
}

fn key_set(keys: &[&TestKey]) -> KeySet {
    let document = json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
    KeySet::parse(document.to_string().as_bytes())
        .expect("a key set")
        .0
}

/// Claims valid at [`NOW`].
fn claims() -> serde_json::Value {
    json!({ "sub": "alice", "exp": NOW + 600, "iat": NOW - 60 })
}

fn with(mut claims: serde_json::Value, changes: serde_json::Value) -> serde_json::Value {
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (name, value) in changes {
            if value.is_null() {
                claims.remove(name);
            } else {
                claims.insert(name.clone(), value.clone());
            }
        }
    }
    claims
}

/// A token with this header and these claims, "signed" with garbage.
fn unsigned(header: serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string()),
        b64(claims.to_string()),
        b64("not a signature")
    )
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

#[test]
fn hs256_tokens_name_their_subject_and_minted_ones_verify() {
    let key = VerifyingKey {
        kid: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(SECRET),
    };
    let rules = ClaimRules::default();
    assert_eq!(
        verify(&hs256(&claims(), SECRET), Keys::One(&key), &rules, NOW),
        Ok("alice".to_owned())
    );
    let minted = mint_hs256(SECRET, "bob", 60).expect("mint");
    assert_eq!(
        verify(&minted, Keys::One(&key), &rules, unix_now()),
        Ok("bob".to_owned())
    );
    assert_eq!(
        verify(&hs256(&claims(), b"another"), Keys::One(&key), &rules, NOW),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn a_static_rs256_key_refuses_other_algorithms_and_confusion() {
    let rsa = TestKey::rsa("whatever");
    let JwtVerifier {
        keys: KeySource::Static(key),
        ..
    } = JwtVerifier::rs256(RSA_PUBLIC).expect("public key")
    else {
        panic!("a static key");
    };
    let rules = ClaimRules::default();
    // The configured key verifies whatever kid the token names.
    assert_eq!(
        verify(&rsa.sign(&claims()), Keys::One(&key), &rules, NOW),
        Ok("alice".to_owned())
    );
    // Algorithm confusion: an HS256 token "signed" with the public key.
    assert_eq!(
        verify(&hs256(&claims(), RSA_PUBLIC), Keys::One(&key), &rules, NOW),
        Err(AuthError::AlgorithmNotAccepted(Some(Algorithm::HS256)))
    );
    assert_eq!(
        verify(
            &TestKey::ec("e").sign(&claims()),
            Keys::One(&key),
            &rules,
            NOW
        ),
        Err(AuthError::AlgorithmNotAccepted(Some(Algorithm::ES256)))
    );
}

#[test]
fn a_key_set_verifies_rs256_and_es256_by_kid() {
    let rsa = TestKey::rsa("a");
    let ec = TestKey::ec("e");
    let set = key_set(&[&rsa, &ec]);
    let rules = ClaimRules::default();
    for key in [&rsa, &ec] {
        assert_eq!(
            verify(&key.sign(&claims()), Keys::Set(&set), &rules, NOW),
            Ok("alice".to_owned()),
            "{:?}",
            key.alg
        );
    }
}

#[test]
fn every_token_failure_has_its_own_error() {
    let rsa = TestKey::rsa("a");
    let ec = TestKey::ec("e");
    let stranger = TestKey::ec("e");
    let set = key_set(&[&rsa, &ec]);
    let rules = ClaimRules {
        issuer: Some("https://idp.example/realms/atelier".to_owned()),
        audience: Some("atelier-api".to_owned()),
        max_age: Some(Duration::from_secs(3600)),
    };
    let good = with(
        claims(),
        json!({ "iss": "https://idp.example/realms/atelier", "aud": "atelier-api" }),
    );
    let signed = |changes: serde_json::Value| rsa.sign(&with(good.clone(), changes));
    let tampered = {
        let token = rsa.sign(&good);
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(with(good.clone(), json!({ "sub": "mallory" })).to_string());
        parts[1] = &forged;
        parts.join(".")
    };
    let rsa_header = |extra: serde_json::Value| with(json!({ "typ": "JWT", "kid": "a" }), extra);
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "expired",
            signed(json!({ "exp": NOW - 31 })),
            AuthError::Expired,
        ),
        (
            "not yet valid",
            signed(json!({ "nbf": NOW + 31 })),
            AuthError::NotYetValid,
        ),
        (
            "wrong issuer",
            signed(json!({ "iss": "https://evil.example" })),
            AuthError::WrongIssuer,
        ),
        (
            "no issuer",
            signed(json!({ "iss": null })),
            AuthError::MissingClaim("iss"),
        ),
        (
            "wrong audience",
            signed(json!({ "aud": "another-api" })),
            AuthError::WrongAudience,
        ),
        (
            "wrong audiences",
            signed(json!({ "aud": ["a", "b"] })),
            AuthError::WrongAudience,
        ),
        (
            "no audience",
            signed(json!({ "aud": null })),
            AuthError::MissingClaim("aud"),
        ),
        (
            "too old",
            signed(json!({ "iat": NOW - 3600 - 31 })),
            AuthError::TooOld,
        ),
        (
            "issued in the future",
            signed(json!({ "iat": NOW + 31 })),
            AuthError::IssuedInFuture,
        ),
        (
            "no iat",
            signed(json!({ "iat": null })),
            AuthError::MissingClaim("iat"),
        ),
        (
            "no exp",
            signed(json!({ "exp": null })),
            AuthError::MissingClaim("exp"),
        ),
        (
            "no sub",
            signed(json!({ "sub": null })),
            AuthError::MissingClaim("sub"),
        ),
        (
            "bad sub",
            signed(json!({ "sub": "has space" })),
            AuthError::BadSubject,
        ),
        (
            "empty sub",
            signed(json!({ "sub": "" })),
            AuthError::BadSubject,
        ),
        (
            "unicode sub",
            signed(json!({ "sub": "ünïcode" })),
            AuthError::BadSubject,
        ),
        (
            "string exp",
            signed(json!({ "exp": "tomorrow" })),
            AuthError::Malformed,
        ),
        ("bad signature", tampered, AuthError::BadSignature),
        (
            "another key, same kid",
            stranger.sign(&good),
            AuthError::BadSignature,
        ),
        (
            "unknown kid",
            TestKey::rsa("b").sign(&good),
            AuthError::UnknownKey,
        ),
        (
            "RS256 naming the EC key",
            unsigned(json!({ "alg": "RS256", "kid": "e" }), &good),
            AuthError::KeyAlgorithmMismatch,
        ),
        (
            "HS256 confusion",
            {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some("a".to_owned());
                jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(RSA_PUBLIC))
                    .expect("sign")
            },
            AuthError::AlgorithmNotAccepted(Some(Algorithm::HS256)),
        ),
        (
            "PS256 with an RSA kid",
            unsigned(rsa_header(json!({ "alg": "PS256" })), &good),
            AuthError::AlgorithmNotAccepted(Some(Algorithm::PS256)),
        ),
        (
            "made-up alg",
            unsigned(rsa_header(json!({ "alg": "XX999" })), &good),
            AuthError::AlgorithmNotAccepted(None),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(good.to_string())
            ),
            AuthError::Unsigned,
        ),
        (
            "alg None",
            unsigned(rsa_header(json!({ "alg": "None" })), &good),
            AuthError::Unsigned,
        ),
        (
            "crit",
            unsigned(
                rsa_header(json!({ "alg": "RS256", "crit": ["exp"] })),
                &good,
            ),
            AuthError::CriticalHeader,
        ),
        (
            "no alg",
            unsigned(rsa_header(json!({})), &good),
            AuthError::Malformed,
        ),
        ("garbage", "garbage".to_owned(), AuthError::Malformed),
        ("two parts", "abc.def".to_owned(), AuthError::Malformed),
        ("four parts", "a.b.c.d".to_owned(), AuthError::Malformed),
        (
            "header not base64",
            "!!!.e30.e30".to_owned(),
            AuthError::Malformed,
        ),
        (
            "header not json",
            format!("{}.e30.e30", b64("{")),
            AuthError::Malformed,
        ),
        (
            "oversized",
            format!("{}.e30.e30", "a".repeat(MAX_TOKEN_LEN)),
            AuthError::Malformed,
        ),
    ];
    for (case, token, expected) in cases {
        assert_eq!(
            verify(&token, Keys::Set(&set), &rules, NOW),
            Err(expected),
            "{case}"
        );
    }
    // The same token, inside every limit, passes.
    assert_eq!(
        verify(&rsa.sign(&good), Keys::Set(&set), &rules, NOW),
        Ok("alice".to_owned())
    );
}

#[test]
fn limits_allow_30_seconds_of_clock_skew() {
    let rsa = TestKey::rsa("a");
    let set = key_set(&[&rsa]);
    let rules = ClaimRules {
        max_age: Some(Duration::from_secs(3600)),
        ..ClaimRules::default()
    };
    for changes in [
        json!({ "exp": NOW - 30 }),
        json!({ "nbf": NOW + 30 }),
        json!({ "iat": NOW + 30 }),
        json!({ "iat": NOW - 3630 }),
        json!({ "exp": (NOW - 30) as f64 + 0.5, "iat": NOW as f64 - 0.25 }),
    ] {
        assert_eq!(
            verify(
                &rsa.sign(&with(claims(), changes.clone())),
                Keys::Set(&set),
                &rules,
                NOW
            ),
            Ok("alice".to_owned()),
            "{changes}"
        );
    }
}

#[test]
fn an_audience_is_refused_unless_it_is_ours() {
    let rsa = TestKey::rsa("a");
    let set = key_set(&[&rsa]);
    let none = ClaimRules::default();
    let ours = ClaimRules {
        audience: Some("atelier-api".to_owned()),
        ..ClaimRules::default()
    };
    let token = |aud: serde_json::Value| rsa.sign(&with(claims(), json!({ "aud": aud })));
    // No audience configured: a token for some audience is not for this edge.
    assert_eq!(
        verify(&token(json!("atelier-api")), Keys::Set(&set), &none, NOW),
        Err(AuthError::WrongAudience)
    );
    assert_eq!(
        verify(&token(json!([])), Keys::Set(&set), &none, NOW),
        Ok("alice".to_owned())
    );
    assert_eq!(
        verify(
            &token(json!(["account", "atelier-api"])),
            Keys::Set(&set),
            &ours,
            NOW
        ),
        Ok("alice".to_owned())
    );
    assert_eq!(
        verify(&token(json!([])), Keys::Set(&set), &ours, NOW),
        Err(AuthError::WrongAudience)
    );
}

#[test]
fn messages_name_the_problem_and_nothing_configured() {
    let configured = [
        "https://idp.example/realms/atelier",
        "atelier-api",
        "auth-unit-test-secret",
    ];
    for err in [
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::MissingClaim("iss"),
        AuthError::AlgorithmNotAccepted(Some(Algorithm::HS256)),
        AuthError::AlgorithmNotAccepted(None),
    ] {
        let message = err.to_string();
        assert!(
            configured.iter().all(|value| !message.contains(value)),
            "{message}"
        );
    }
    assert_eq!(
        AuthError::AlgorithmNotAccepted(Some(Algorithm::HS256)).to_string(),
        "tokens signed with HS256 are not accepted"
    );
    assert_eq!(
        AuthError::AlgorithmNotAccepted(None).to_string(),
        "tokens signed with this algorithm are not accepted"
    );
}

/// A local identity provider's JWKS endpoint: its keys can be swapped (rotation), it can
/// go down (HTTP 503), and it counts the fetches it answers.
#[derive(Clone, Default)]
struct Provider {
    document: Arc<Mutex<serde_json::Value>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl wiremock::Respond for Provider {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return wiremock::ResponseTemplate::new(503);
        }
        let document = self.document.lock().expect("lock").clone();
        wiremock::ResponseTemplate::new(200).set_body_json(document)
    }
}

impl Provider {
    /// Serves `keys` at `/certs` on a new local server.
    async fn start(keys: &[&TestKey]) -> (Self, wiremock::MockServer) {
        let provider = Self::default();
        provider.publish(keys);
        let server = wiremock::MockServer::builder().start().await;
        wiremock::Mock::given(wiremock::matchers::path("/certs"))
            .respond_with(provider.clone())
            .mount(&server)
            .await;
        (provider, server)
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.document.lock().expect("lock") =
            json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An authenticator for the key set at `server`, fetching for an unknown key at most once
/// per `unknown_key_interval`.
fn authenticator(
    server: &wiremock::MockServer,
    unknown_key_interval: Duration,
    stop: &CancellationToken,
) -> Authenticator {
    let mut config = JwksConfig::new(&format!("{}/certs", server.uri())).expect("a local URL");
    config.unknown_key_interval = unknown_key_interval;
    config.fetch_timeout = Duration::from_secs(2);
    JwtVerifier::jwks(config)
        .with_issuer(Some("https://idp.test".to_owned()))
        .start(stop.clone())
        .expect("started")
}

/// Claims valid now, from the test issuer.
fn live_claims() -> serde_json::Value {
    let now = unix_now();
    json!({ "sub": "alice", "iss": "https://idp.test", "exp": now + 600, "iat": now })
}

#[tokio::test]
async fn a_rotated_key_verifies_after_the_refresh_and_a_retired_one_fails() {
    let old = TestKey::rsa("2026-01");
    let new = TestKey::ec("2026-02");
    let (provider, server) = Provider::start(&[&old]).await;
    let stop = CancellationToken::new();
    let auth = authenticator(&server, Duration::from_millis(300), &stop);

    // The first call waits for the first fetch.
    assert_eq!(
        auth.user_of(&old.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    assert_eq!(provider.fetches(), 1);
    // The provider has not published the new key yet.
    assert_eq!(
        auth.user_of(&new.sign(&live_claims())).await,
        Err(AuthError::UnknownKey)
    );

    // Rotation: the provider now signs with the new key and has retired the old one.
    provider.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let fetched = provider.fetches();
    assert_eq!(
        auth.user_of(&new.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    assert_eq!(
        provider.fetches(),
        fetched + 1,
        "the unknown kid fetched the set once"
    );
    assert_eq!(
        auth.user_of(&old.sign(&live_claims())).await,
        Err(AuthError::UnknownKey)
    );
    // A token of the new key with a bad claim still fails on the claim.
    let foreign = with(live_claims(), json!({ "iss": "https://evil.test" }));
    assert_eq!(
        auth.user_of(&new.sign(&foreign)).await,
        Err(AuthError::WrongIssuer)
    );
    stop.cancel();
}

#[tokio::test]
async fn a_flood_of_unknown_kids_shares_one_fetch_per_interval() {
    let known = TestKey::rsa("known");
    // The signature does not matter: an unknown kid is refused before it is checked.
    let made_up: Vec<String> = (0..200)
        .map(|n| {
            unsigned(
                json!({ "alg": "RS256", "kid": format!("made-up-{n}") }),
                &live_claims(),
            )
        })
        .collect();
    let (provider, server) = Provider::start(&[&known]).await;
    let stop = CancellationToken::new();
    let auth = authenticator(&server, Duration::from_secs(1), &stop);
    assert_eq!(
        auth.user_of(&known.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    assert_eq!(provider.fetches(), 1);

    let flood = |tokens: &[String]| {
        let auth = auth.clone();
        let tokens = tokens.to_vec();
        async move {
            let verdicts =
                futures::future::join_all(tokens.iter().map(|token| auth.user_of(token))).await;
            assert!(
                verdicts
                    .iter()
                    .all(|verdict| *verdict == Err(AuthError::UnknownKey))
            );
        }
    };
    // Within the interval of the first fetch: no fetch at all.
    flood(&made_up).await;
    assert_eq!(provider.fetches(), 1);
    // Past it: the 200 concurrent misses share one fetch...
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flood(&made_up).await;
    assert_eq!(provider.fetches(), 2);
    // ...and the misses right after it make none.
    flood(&made_up).await;
    assert_eq!(provider.fetches(), 2);
    // Meanwhile the known key verifies without waiting for anything.
    assert_eq!(
        auth.user_of(&known.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    stop.cancel();
}

#[tokio::test]
async fn a_provider_that_is_down_leaves_cached_keys_working_and_unknown_kids_unauthenticated() {
    let known = TestKey::ec("known");
    let (provider, server) = Provider::start(&[&known]).await;
    let stop = CancellationToken::new();
    let auth = authenticator(&server, Duration::from_millis(100), &stop);
    assert_eq!(
        auth.user_of(&known.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );

    provider.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fetched = provider.fetches();
    let unknown = TestKey::ec("unknown").sign(&live_claims());
    let verdict = auth.user_of(&unknown).await;
    assert_eq!(
        provider.fetches(),
        fetched + 1,
        "the unknown kid tried a fetch"
    );
    assert_eq!(verdict, Err(AuthError::UnknownKey));
    assert_eq!(
        tonic::Status::from(crate::error::EdgeError::from(AuthError::UnknownKey)).code(),
        tonic::Code::Unauthenticated
    );
    // The failed fetch kept the cached key.
    assert_eq!(
        auth.user_of(&known.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    stop.cancel();
}

#[tokio::test]
async fn until_the_first_fetch_succeeds_tokens_are_unavailable_not_refused() {
    let key = TestKey::rsa("a");
    let (provider, server) = Provider::start(&[&key]).await;
    provider.down.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let auth = authenticator(&server, Duration::from_millis(100), &stop);
    let verdict = auth.user_of(&key.sign(&live_claims())).await;
    assert_eq!(verdict, Err(AuthError::KeysUnavailable));
    assert_eq!(
        tonic::Status::from(crate::error::EdgeError::from(AuthError::KeysUnavailable)).code(),
        tonic::Code::Unavailable
    );
    // Once the provider answers (the refresher retries after 1 s), the same token passes.
    provider.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        auth.user_of(&key.sign(&live_claims())).await,
        Ok("alice".to_owned())
    );
    stop.cancel();
}
