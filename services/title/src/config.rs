//! The title worker's settings, from the environment with local defaults.
//!
//! Everything is parsed and checked here, before a port is bound, so a typo stops the
//! process with a message naming the variable (exit 64) instead of a worker that starts
//! and then fails every job.

use std::time::Duration;

use atelier_llm::LlmConfig;
use atelier_runtime::config::{ConfigError, var_or};
use atelier_runtime::internal_call::{DEVELOPMENT_SERVICE_TOKEN, OutgoingCall, ServiceToken};

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_SUBJECT_PREFIX: &str = "atelier";
pub const DEFAULT_CONVERSATION_URL: &str = "http://127.0.0.1:50052";
pub const DEFAULT_TITLE_DEADLINE_MS: u64 = 5000;
pub const DEFAULT_CONCURRENCY: usize = 16;

#[derive(Clone, Debug)]
pub struct Config {
    /// NATS, where the title jobs wait. Unreachable NATS delays titles; it never stops the
    /// process from starting or answering health checks.
    pub nats_url: String,
    /// The prefix of every subject and stream name (one per test, `atelier` in production).
    pub subject_prefix: String,
    /// Servers of the JetStream cluster that keep each stream (`ATELIER_NATS_STREAM_REPLICAS`).
    pub stream_replicas: usize,
    /// The conversation service, which applies the titles.
    pub conversation_url: String,
    /// The credential internal calls carry.
    pub service_token: ServiceToken,
    /// The OpenAI-compatible endpoint; `None` is heuristic mode: conversations keep the
    /// automatic title SendMessage gave them, and title jobs are simply acknowledged.
    pub llm: Option<LlmConfig>,
    /// The most one title may wait for the LLM, on top of the client's own deadline: a
    /// title is a nicety, so a slow model must not hold a job (and its permit) for long.
    pub title_deadline: Duration,
    /// Jobs handled at once: they wait on the LLM and the network, not on this CPU.
    pub concurrency: usize,
    /// Deliveries of one job before JetStream gives up on it.
    pub max_deliver: i64,
    /// How long a delivered job may go without an ack or a keep-alive before JetStream
    /// hands it to another worker.
    pub ack_wait: Duration,
    /// How long a shutdown waits for running jobs before leaving them to redelivery.
    pub drain_timeout: Duration,
    /// Where Prometheus scrapes `/metrics`; `None` serves no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Heuristic mode (no LLM) against the local mesh's NATS and conversation service: what
/// the end-to-end harness and the local run script start without any settings.
impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            stream_replicas: atelier_events::DEFAULT_STREAM_REPLICAS,
            conversation_url: DEFAULT_CONVERSATION_URL.to_owned(),
            service_token: ServiceToken::new(DEVELOPMENT_SERVICE_TOKEN),
            llm: None,
            title_deadline: Duration::from_millis(DEFAULT_TITLE_DEADLINE_MS),
            concurrency: DEFAULT_CONCURRENCY,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            metrics_addr: None,
        }
    }
}

impl Config {
    /// Reads `ATELIER_NATS_URL`, `ATELIER_SUBJECT_PREFIX`, `ATELIER_NATS_STREAM_REPLICAS`,
    /// `ATELIER_CONVERSATION_URL`, `ATELIER_SERVICE_TOKEN`, `ATELIER_TITLE_DEADLINE_MS`,
    /// `ATELIER_TITLE_CONCURRENCY` and the `ATELIER_LLM_*` variables (see [`LlmConfig::from_env`]).
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        let nats_url: String = var_or("ATELIER_NATS_URL", defaults.nats_url)?;
        if let Err(err) = nats_url.parse::<async_nats::ServerAddr>() {
            Err(ConfigError::new("ATELIER_NATS_URL", &nats_url, err))?;
        }
        let subject_prefix: String = var_or("ATELIER_SUBJECT_PREFIX", defaults.subject_prefix)?;
        if let Err(err) = atelier_events::Subjects::new(&subject_prefix) {
            Err(ConfigError::new(
                "ATELIER_SUBJECT_PREFIX",
                &subject_prefix,
                err,
            ))?;
        }
        let conversation_url: String =
            var_or("ATELIER_CONVERSATION_URL", defaults.conversation_url)?;
        if let Err(err) = tonic::transport::Endpoint::from_shared(conversation_url.clone()) {
            Err(ConfigError::new(
                "ATELIER_CONVERSATION_URL",
                &conversation_url,
                err,
            ))?;
        }
        let environment = atelier_runtime::config::Environment::from_env()?;
        let service_token = ServiceToken::from_env(environment)?;
        if let Err(err) = OutgoingCall::new(&service_token) {
            Err(ConfigError::new("ATELIER_SERVICE_TOKEN", "<hidden>", err))?;
        }
        let deadline_ms: u64 = var_or("ATELIER_TITLE_DEADLINE_MS", DEFAULT_TITLE_DEADLINE_MS)?;
        if deadline_ms == 0 {
            Err(ConfigError::new(
                "ATELIER_TITLE_DEADLINE_MS",
                "0",
                "must be positive",
            ))?;
        }
        let concurrency: usize = var_or("ATELIER_TITLE_CONCURRENCY", DEFAULT_CONCURRENCY)?;
        if concurrency == 0 {
            Err(ConfigError::new(
                "ATELIER_TITLE_CONCURRENCY",
                "0",
                "must be at least 1",
            ))?;
        }
        Ok(Self {
            nats_url,
            subject_prefix,
            stream_replicas: atelier_events::stream_replicas_from_env()?,
            conversation_url,
            service_token,
            llm: LlmConfig::from_env()?,
            title_deadline: Duration::from_millis(deadline_ms),
            concurrency,
            metrics_addr: environment.metrics_addr()?,
            ..defaults
        })
    }
}
