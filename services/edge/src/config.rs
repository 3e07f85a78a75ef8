//! The edge's settings, from the environment (see the README's table).

use std::time::Duration;

use atelier_runtime::config::{ConfigError, list_or, optional_var, var_or};
use atelier_runtime::internal_call::ServiceToken;

use crate::auth::JwtVerifier;
use crate::rate_limit::RateLimit;

#[derive(Clone)]
pub struct Config {
    /// Where the conversation service listens, e.g. `http://127.0.0.1:50052`.
    pub conversation_url: String,
    pub service_token: ServiceToken,
    pub jwt: JwtVerifier,
    /// Browser origins allowed to call over grpc-web; no other origin gets CORS headers.
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimit,
}

/// The HS256 secret of the local mesh: fine on a laptop, never in production.
pub const DEFAULT_JWT_SECRET: &str = "atelier-local-jwt-secret";
/// The service credential of the local mesh (the conversation service has the same).
pub const DEFAULT_SERVICE_TOKEN: &str = "atelier-local-service-token";
pub const DEFAULT_CONVERSATION_URL: &str = "http://127.0.0.1:50052";
pub const DEFAULT_CORS_ORIGINS: &[&str] = &["http://localhost:5173", "http://127.0.0.1:5173"];

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let jwt = match optional_var::<String>("ATELIER_JWT_RS256_PUBLIC_KEY_FILE")? {
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|err| {
                    ConfigError::new("ATELIER_JWT_RS256_PUBLIC_KEY_FILE", &path, err)
                })?;
                JwtVerifier::rs256(&pem).map_err(|err| {
                    ConfigError::new("ATELIER_JWT_RS256_PUBLIC_KEY_FILE", &path, err)
                })?
            }
            None => JwtVerifier::hs256(
                var_or::<String>("ATELIER_JWT_HS256_SECRET", DEFAULT_JWT_SECRET.to_owned())?
                    .as_bytes(),
            ),
        };
        let jwt = jwt
            .with_issuer(optional_var("ATELIER_JWT_ISSUER")?)
            .with_audience(optional_var("ATELIER_JWT_AUDIENCE")?);
        let per_second: f64 = var_or("ATELIER_RATE_LIMIT_PER_SECOND", 20.0)?;
        let burst: u32 = var_or("ATELIER_RATE_LIMIT_BURST", 40)?;
        if !(per_second > 0.0 && burst > 0) {
            Err(ConfigError::new(
                "ATELIER_RATE_LIMIT_PER_SECOND",
                per_second.to_string(),
                "the rate and ATELIER_RATE_LIMIT_BURST must be positive",
            ))?;
        }
        Ok(Self {
            conversation_url: var_or(
                "ATELIER_CONVERSATION_URL",
                DEFAULT_CONVERSATION_URL.to_owned(),
            )?,
            service_token: ServiceToken::new(var_or::<String>(
                "ATELIER_SERVICE_TOKEN",
                DEFAULT_SERVICE_TOKEN.to_owned(),
            )?),
            jwt,
            cors_origins: list_or("ATELIER_CORS_ORIGINS", DEFAULT_CORS_ORIGINS)?,
            rate_limit: RateLimit {
                per_second,
                burst,
                idle_eviction: Duration::from_secs(600),
            },
        })
    }
}
