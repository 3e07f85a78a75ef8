//! The intent service's settings, from the environment.
//!
//! `Config::default()` is the local, offline mode: no LLM (every ambiguous prompt gets
//! the heuristic's best guess), the local service token, and the default cache. The mesh
//! test harness starts the service with it.

use std::time::Duration;

use atelier_llm::LlmConfig;
use atelier_runtime::config::positive_var;
use atelier_runtime::internal_call::{DEVELOPMENT_SERVICE_TOKEN, ServiceToken};

/// The service credential of a local mesh; every deployment sets its own.

#[derive(Clone, Debug)]
pub struct Config {
    /// The LLM that settles ambiguous prompts; `None` is heuristic mode.
    pub llm: Option<LlmConfig>,
    /// The credential callers must present: the API is internal.
    pub service_token: ServiceToken,
    /// How long an answer is reused. Long enough to cover the retries and the edit
    /// re-analysis of one message, short enough that a fixed LLM or new heuristics take
    /// effect within minutes.
    pub cache_ttl: Duration,
    /// Answers kept at most; the least useful are evicted first.
    pub cache_capacity: u64,
    /// Where Prometheus scrapes `/metrics`; `None` serves no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
    pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;

    /// Reads the environment:
    ///
    /// - the `ATELIER_LLM_*` variables (see [`LlmConfig::from_env`]); no
    ///   `ATELIER_LLM_BASE_URL` means heuristic mode;
    /// - `ATELIER_SERVICE_TOKEN`, required outside development (`ATELIER_ENV`);
    /// - `ATELIER_INTENT_CACHE_TTL_SECS`, default 600;
    /// - `ATELIER_INTENT_CACHE_CAPACITY`, default 10000.
    pub fn from_env() -> anyhow::Result<Self> {
        let environment = atelier_runtime::config::Environment::from_env()?;
        Ok(Self {
            metrics_addr: environment.metrics_addr()?,
            llm: LlmConfig::from_env()?,
            service_token: ServiceToken::from_env(environment)?,
            cache_ttl: Duration::from_secs(positive_var(
                "ATELIER_INTENT_CACHE_TTL_SECS",
                Self::DEFAULT_CACHE_TTL.as_secs(),
            )?),
            cache_capacity: positive_var(
                "ATELIER_INTENT_CACHE_CAPACITY",
                Self::DEFAULT_CACHE_CAPACITY,
            )?,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            llm: None,
            service_token: ServiceToken::new(DEVELOPMENT_SERVICE_TOKEN),
            cache_ttl: Self::DEFAULT_CACHE_TTL,
            cache_capacity: Self::DEFAULT_CACHE_CAPACITY,
            metrics_addr: None,
        }
    }
}
