//! The guard in front of every public RPC: refuse an address that failed too often, then
//! authenticate, then rate-limit the user, then hand the handler a [`Caller`].
//!
//! It is a tower service around `ChatServiceServer` rather than a tonic interceptor,
//! because an interceptor cannot wait: a token naming a signing key the edge has not seen
//! yet (the identity provider just rotated) waits for one fetch of the key set instead of
//! failing. Everything else is synchronous and in memory, so a refused call costs no
//! network round trip, and the common path awaits nothing.
//!
//! **Failed authentications are limited per peer address** ([`peer_key`]): every call
//! whose authentication fails (no token, two tokens, a bad one) spends a token of its
//! address's bucket, and an address with an empty bucket is refused every call,
//! valid tokens included, with RESOURCE_EXHAUSTED and `AUTH_RATE_LIMITED`, until one
//! token refilled. The check comes before any parsing or signature check, so a flood of
//! bad tokens costs the edge a hash lookup per call. Behind a proxy or load balancer that
//! does not preserve client addresses (grpc-web through a reverse proxy, typically) the
//! peer is the proxy, and all its clients share one bucket: size
//! `ATELIER_AUTH_FAILURE_LIMIT_*` for that, or terminate connections at the edge.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use crate::auth::{AuthError, Authenticator};
use crate::error::EdgeError;
use crate::rate_limit::{RateLimiter, peer_key};

/// The most addresses whose failures are remembered at once: a few MiB.
pub const MAX_FAILING_ADDRESSES: usize = 100_000;

/// The authenticated user of a call, put in the request's extensions by [`Gatekeeper`].
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// What the gatekeeper checks with, shared by every call.
pub struct Guard {
    pub authenticator: Authenticator,
    /// A bucket per user, taken by every authenticated call.
    pub users: RateLimiter,
    /// A bucket per peer address ([`peer_key`]), spent by every failed authentication.
    pub failures: RateLimiter<IpAddr>,
}

impl Guard {
    /// The caller of a request from `peer` with these headers, or why it is refused.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, EdgeError> {
        let peer = peer.map(peer_key);
        if let Some(peer) = &peer {
            self.failures
                .peek(peer, Instant::now())
                .map_err(EdgeError::AuthRateLimited)?;
        }
        let verdict = match bearer_token(headers) {
            Ok(token) => self.authenticator.user_of(token).await,
            Err(err) => Err(err),
        };
        let user = match verdict {
            Ok(user) => user,
            // Not the caller's failure: nothing to count.
            Err(err @ AuthError::KeysUnavailable) => return Err(err.into()),
            Err(err) => {
                if let Some(peer) = &peer {
                    self.failures.spend(peer, Instant::now());
                }
                return Err(err.into());
            }
        };
        self.users
            .check(&user, Instant::now())
            .map_err(EdgeError::RateLimited)?;
        tracing::Span::current().record("user_id", user.as_str());
        Ok(Caller(user))
    }
}

/// The token of the one `authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        // Two credentials could name two users; the edge will not pick one.
        return Err(AuthError::Multiple);
    }
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    // The scheme is case-insensitive (RFC 9110); one space, as every client sends.
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// [`Guard`] around a gRPC service: refused calls never reach it.
#[derive(Clone)]
pub struct Gatekeeper<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> Gatekeeper<S> {
    pub fn new(inner: S, guard: Arc<Guard>) -> Self {
        Self { inner, guard }
    }
}

impl<S> tower::Service<http::Request<Body>> for Gatekeeper<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone takes this one's place; the one that was polled ready serves the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|addr| addr.ip());
            match guard.admit(request.headers(), peer).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(err) => Ok(tonic::Status::from(err).into_http()),
            }
        })
    }
}

impl<S: NamedService> NamedService for Gatekeeper<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::auth::{JwtVerifier, mint_hs256};
    use crate::rate_limit::RateLimit;

    /// As long as a production secret must be (32 bytes).
    const SECRET: &[u8] = b"gatekeeper-test-secret-of-32-bytes";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn exactly_one_bearer_token_is_read() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            Ok("abc.def.ghi")
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER  abc "])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Multiple)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer a"])),
            Err(AuthError::Multiple)
        );
        for refused in [
            "Basic YWxpY2U6c2VjcmV0",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "abc",
        ] {
            assert_eq!(
                bearer_token(&headers(&[refused])),
                Err(AuthError::NotBearer),
                "{refused:?}"
            );
        }
        let mut opaque = HeaderMap::new();
        opaque.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xffabc").expect("an opaque value"),
        );
        assert_eq!(bearer_token(&opaque), Err(AuthError::NotBearer));
    }

    /// A guard with a generous user limit and 3 failed authentications per address,
    /// refilled too slowly to matter during a test.
    fn guard() -> Guard {
        Guard {
            authenticator: JwtVerifier::hs256(SECRET)
                .start(CancellationToken::new())
                .expect("a static key"),
            users: RateLimiter::new(RateLimit::refilling(1000.0, 1000)),
            failures: RateLimiter::bounded(RateLimit::refilling(0.001, 3), 16),
        }
    }

    fn bearer(user: &str) -> HeaderMap {
        headers(&[&format!(
            "Bearer {}",
            mint_hs256(SECRET, user, 60).expect("mint")
        )])
    }

    #[tokio::test]
    async fn an_address_that_keeps_failing_is_refused_before_any_token_is_read() {
        let guard = guard();
        let attacker = Some(IpAddr::from([203, 0, 113, 7]));
        let neighbour = Some(IpAddr::from([203, 0, 113, 8]));
        let forged = headers(&["Bearer not.a.jwt"]);

        // Valid calls spend nothing.
        for _ in 0..5 {
            assert!(guard.admit(&bearer("alice"), attacker).await.is_ok());
        }
        // Three failures of any kind use the address's budget...
        for bad in [
            forged.clone(),
            headers(&[]),
            headers(&["Bearer a", "Bearer b"]),
        ] {
            assert!(matches!(
                guard.admit(&bad, attacker).await,
                Err(EdgeError::Unauthenticated(_))
            ));
        }
        // ...and the fourth call is refused before its token is looked at: a valid one too.
        for refused in [forged.clone(), bearer("alice")] {
            let Err(EdgeError::AuthRateLimited(wait)) = guard.admit(&refused, attacker).await
            else {
                panic!("the address is over its budget");
            };
            assert!(wait > Duration::from_secs(900), "{wait:?}");
        }
        // Another address is not affected, nor are calls whose peer is unknown.
        assert!(guard.admit(&bearer("bob"), neighbour).await.is_ok());
        assert!(matches!(
            guard.admit(&forged, neighbour).await,
            Err(EdgeError::Unauthenticated(_))
        ));
        assert!(guard.admit(&bearer("carol"), None).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_hosts_of_one_network_share_a_budget() {
        let guard = guard();
        let forged = headers(&["Bearer not.a.jwt"]);
        for host in 1..=3u16 {
            let peer = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host]);
            assert!(matches!(
                guard.admit(&forged, Some(peer)).await,
                Err(EdgeError::Unauthenticated(_))
            ));
        }
        let fourth = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 4]);
        assert!(matches!(
            guard.admit(&bearer("alice"), Some(fourth)).await,
            Err(EdgeError::AuthRateLimited(_))
        ));
        let elsewhere = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(guard.admit(&bearer("alice"), Some(elsewhere)).await.is_ok());
    }
}
