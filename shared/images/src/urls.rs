//! Signed, time-limited image URLs: what a client puts in an `<img src>`.
//!
//! A URL is a capability: whoever holds it may fetch that one image until it expires, with
//! no `authorization` header (a browser cannot add one to an image request). Two kinds:
//!
//! - **Local storage**: the edge serves the image itself, at
//!   `<base>/images/<owner>/<generation>.png?expires=<unix seconds>&signature=<base64url>`.
//!   The path is the storage key ([`crate::key_for`]), so the signature (HMAC-SHA256 over
//!   the method, the key and the expiry) binds the owner, the image and the time at once:
//!   changing any of them, for example to another user's folder, breaks it.
//! - **S3**: the bucket's own presigned URL (SigV4), made by `object_store`; the bucket
//!   serves it and the edge never sees the request.
//!
//! Expiry times are rounded up to a step of a quarter of the lifetime, so every request for
//! an image within that step gets the same URL: browsers and CDNs cache it, and a page that
//! reloads its messages does not download every image again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use object_store::path::Path;
use object_store::signer::Signer;

use crate::key_for;

/// A URL and the moment it stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: SystemTime,
}

/// Why a URL could not be made. Only S3 can fail (its credentials are fetched lazily).
#[derive(Debug, thiserror::Error)]
#[error("cannot presign the image URL: {0}")]
pub struct SigningError(#[from] object_store::Error);

/// Why a request for a local image is refused. Deliberately uninformative on the wire:
/// every variant is answered the same `403`, so a prober learns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the URL has no valid expiry or signature")]
    Malformed,
    #[error("the URL has expired")]
    Expired,
    #[error("the signature does not match")]
    BadSignature,
}

/// Makes (and, for local storage, checks) image URLs.
#[derive(Clone)]
pub struct ImageUrls {
    backend: Backend,
    lifetime: Duration,
}

#[derive(Clone)]
enum Backend {
    /// The edge serves the images: `base` is its public HTTP root.
    Local {
        base: String,
        key: Arc<hmac::Key>,
    },
    Presigned(Arc<dyn Signer>),
}

impl std::fmt::Debug for ImageUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Local { base, .. } => format!("local at {base} (key <redacted>)"),
            Backend::Presigned(signer) => format!("presigned by {signer:?}"),
        };
        f.debug_struct("ImageUrls")
            .field("backend", &backend)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl ImageUrls {
    /// URLs of images the edge serves from local storage, under `base` (its public HTTP
    /// root, e.g. `http://127.0.0.1:50080`), signed with `secret`.
    pub fn local(base: &str, secret: &[u8], lifetime: Duration) -> Self {
        Self {
            backend: Backend::Local {
                base: base.trim_end_matches('/').to_owned(),
                key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret)),
            },
            lifetime: lifetime.max(Duration::from_secs(4)),
        }
    }

    /// URLs presigned by the bucket's own signer.
    pub fn presigned(signer: Arc<dyn Signer>, lifetime: Duration) -> Self {
        Self {
            backend: Backend::Presigned(signer),
            lifetime: lifetime.max(Duration::from_secs(4)),
        }
    }

    /// Whether the edge must serve the images itself.
    pub fn served_locally(&self) -> bool {
        matches!(self.backend, Backend::Local { .. })
    }

    /// The URL of `generation_id`'s image, owned by `user_id`, valid at least the
    /// configured lifetime from `now`.
    pub async fn url_for(
        &self,
        user_id: &str,
        generation_id: &str,
        now: SystemTime,
    ) -> Result<SignedUrl, SigningError> {
        let key = key_for(user_id, generation_id);
        let expires = rounded_expiry(now, self.lifetime);
        let expires_at = UNIX_EPOCH + Duration::from_secs(expires);
        let url = match &self.backend {
            Backend::Local { base, key: secret } => {
                let signature = URL_SAFE_NO_PAD.encode(sign(secret, &key, expires));
                format!("{base}/{key}?expires={expires}&signature={signature}")
            }
            Backend::Presigned(signer) => {
                let valid_for = expires_at.duration_since(now).unwrap_or(self.lifetime);
                signer
                    .signed_url(http::Method::GET, &Path::from(key), valid_for)
                    .await?
                    .to_string()
            }
        };
        Ok(SignedUrl { url, expires_at })
    }

    /// Checks a request for `key` (the URL path without its leading `/`) with the query
    /// values `expires` and `signature`, at `now`. Only for local storage: a presigned URL
    /// is checked by the bucket.
    pub fn verify(
        &self,
        key: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let Backend::Local { key: secret, .. } = &self.backend else {
            return Err(Refusal::BadSignature);
        };
        let expires: u64 = expires
            .and_then(|value| value.parse().ok())
            .ok_or(Refusal::Malformed)?;
        let signature = signature
            .and_then(|value| URL_SAFE_NO_PAD.decode(value).ok())
            .ok_or(Refusal::Malformed)?;
        // The signature first, so an expired URL and a forged one take the same path.
        hmac::verify(secret, &message(key, expires), &signature)
            .map_err(|_| Refusal::BadSignature)?;
        if UNIX_EPOCH + Duration::from_secs(expires) <= now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

fn message(key: &str, expires: u64) -> Vec<u8> {
    format!("GET\n{key}\n{expires}").into_bytes()
}

fn sign(secret: &hmac::Key, key: &str, expires: u64) -> hmac::Tag {
    hmac::sign(secret, &message(key, expires))
}

/// `now + lifetime` in unix seconds, rounded up to a multiple of a quarter of `lifetime`:
/// at least `lifetime` left, at most a quarter more, and the same value for a quarter of
/// the lifetime at a time.
fn rounded_expiry(now: SystemTime, lifetime: Duration) -> u64 {
    let step = (lifetime.as_secs() / 4).max(1);
    let earliest = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_add(lifetime.as_secs());
    earliest.div_ceil(step).saturating_mul(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn urls() -> ImageUrls {
        ImageUrls::local(
            "http://127.0.0.1:50080/",
            b"a test secret of 32 bytes or more",
            HOUR,
        )
    }

    /// The path (the key) and the query values of a local URL.
    fn parts(url: &str) -> (String, String, String) {
        let rest = url
            .strip_prefix("http://127.0.0.1:50080/")
            .expect("under the base");
        let (key, query) = rest.split_once('?').expect("a query");
        let mut expires = String::new();
        let mut signature = String::new();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').expect("name=value");
            match name {
                "expires" => expires = value.to_owned(),
                "signature" => signature = value.to_owned(),
                other => panic!("unexpected parameter {other}"),
            }
        }
        (key.to_owned(), expires, signature)
    }

    #[tokio::test]
    async fn a_url_names_the_storage_key_and_verifies_until_it_expires() {
        let urls = urls();
        let signed = urls
            .url_for(
                "alice",
                "0190f0c4-9a5b-7cde-8f00-000000000001",
                at(1_000_000),
            )
            .await
            .expect("local signing cannot fail");
        let (key, expires, signature) = parts(&signed.url);
        assert_eq!(
            key,
            key_for("alice", "0190f0c4-9a5b-7cde-8f00-000000000001")
        );
        assert_eq!(
            signed.expires_at,
            at(expires.parse().expect("unix seconds"))
        );
        let check = |now| urls.verify(&key, Some(&expires), Some(&signature), now);
        assert_eq!(check(at(1_000_000)), Ok(()));
        assert_eq!(check(signed.expires_at - Duration::from_secs(1)), Ok(()));
        assert_eq!(check(signed.expires_at), Err(Refusal::Expired));
    }

    #[tokio::test]
    async fn tampering_with_any_part_breaks_the_signature() {
        let urls = urls();
        let signed = urls
            .url_for("alice", "gen-1", at(1_000_000))
            .await
            .expect("signed");
        let (key, expires, signature) = parts(&signed.url);
        let now = at(1_000_000);
        let bob = key_for("bob", "gen-1");
        let other_image = key_for("alice", "gen-2");
        let later = (expires.parse::<u64>().expect("seconds") + 3600).to_string();
        for (key, expires, signature) in [
            (bob.as_str(), expires.as_str(), signature.as_str()),
            (other_image.as_str(), expires.as_str(), signature.as_str()),
            (key.as_str(), later.as_str(), signature.as_str()),
        ] {
            assert_eq!(
                urls.verify(key, Some(expires), Some(signature), now),
                Err(Refusal::BadSignature),
                "{key} {expires}"
            );
        }
        assert_eq!(
            urls.verify(&key, None, Some(&signature), now),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            urls.verify(&key, Some(&expires), Some("not base64!"), now),
            Err(Refusal::Malformed)
        );
        // Another deployment's secret signs other URLs.
        let other = ImageUrls::local("http://127.0.0.1:50080", b"another secret", HOUR);
        assert_eq!(
            other.verify(&key, Some(&expires), Some(&signature), now),
            Err(Refusal::BadSignature)
        );
    }

    #[tokio::test]
    async fn urls_stay_the_same_for_a_quarter_of_their_lifetime() {
        let urls = urls();
        let start = 3600 * 100 + 1;
        let first = urls.url_for("alice", "g", at(start)).await.expect("url");
        let same = urls
            .url_for("alice", "g", at(start + 899))
            .await
            .expect("url");
        let next = urls
            .url_for("alice", "g", at(start + 900))
            .await
            .expect("url");
        assert_eq!(first, same);
        assert_ne!(first, next);
    }

    #[test]
    fn expiry_leaves_at_least_the_lifetime_and_at_most_a_quarter_more() {
        for now in [0, 1, 899, 900, 901, 1_700_000_123] {
            let expires = rounded_expiry(at(now), HOUR);
            assert!(expires >= now + 3600, "{now}: {expires}");
            assert!(expires <= now + 3600 + 900, "{now}: {expires}");
            assert_eq!(expires % 900, 0);
        }
    }

    #[tokio::test]
    async fn s3_urls_are_presigned_by_the_bucket_for_the_same_key() {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("atelier-images")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_access_key_id("test-access-key")
            .with_secret_access_key("test-secret-key")
            .build()
            .expect("an S3 client");
        let urls = ImageUrls::presigned(Arc::new(s3), HOUR);
        assert!(!urls.served_locally());
        let now = SystemTime::now();
        let signed = urls
            .url_for("alice", "gen-1", now)
            .await
            .expect("presigned");
        assert!(
            signed
                .url
                .starts_with("http://127.0.0.1:9/atelier-images/images/YWxpY2U/gen-1.png?"),
            "{}",
            signed.url
        );
        assert!(signed.url.contains("X-Amz-Signature="), "{}", signed.url);
        assert!(!signed.url.contains("test-secret-key"), "{}", signed.url);
        let left = signed
            .expires_at
            .duration_since(now)
            .expect("in the future");
        assert!(left >= HOUR - Duration::from_secs(1) && left <= HOUR + HOUR / 4);
        // The bucket checks its own URLs; the edge serves none.
        assert_eq!(
            urls.verify("images/YWxpY2U/gen-1.png", Some("1"), Some("x"), now),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let debug = format!("{:?}", urls());
        assert!(!debug.contains("a test secret"), "{debug}");
    }
}
