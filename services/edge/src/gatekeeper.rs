//! The interceptor in front of every public RPC: authenticate, then rate-limit, then hand
//! the handler a [`Caller`]. Both checks are synchronous and in memory, so a refused call
//! costs no network round trip.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Status};

use crate::auth::JwtVerifier;
use crate::error::EdgeError;
use crate::rate_limit::RateLimiter;

/// The authenticated user of a call, put in the request's extensions by [`Gatekeeper`].
#[derive(Clone, Debug)]
pub struct Caller(pub String);

#[derive(Clone)]
pub struct Gatekeeper {
    pub jwt: Arc<JwtVerifier>,
    pub limiter: Arc<RateLimiter>,
}

impl tonic::service::Interceptor for Gatekeeper {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().unwrap_or_default());
        let user = self.jwt.user_of(authorization).map_err(EdgeError::from)?;
        self.limiter
            .check(&user, Instant::now())
            .map_err(EdgeError::RateLimited)?;
        tracing::Span::current().record("user_id", user.as_str());
        request.extensions_mut().insert(Caller(user));
        Ok(request)
    }
}
