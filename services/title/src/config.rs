//! The title worker's settings, from the environment with local defaults.
//!
//! Everything is parsed and checked here, before a port is bound, so a typo stops the
//! process with a message naming the variable (exit 64) instead of a worker that starts
//! and then fails every job.

use std::time::Duration;

use atelier_llm::LlmConfig;
use atelier_runtime::config::{ConfigError, var_or};
use atelier_runtime::mesh::MeshConfig;

pub const DEFAULT_TITLE_DEADLINE_MS: u64 = 5000;
pub const DEFAULT_CONCURRENCY: usize = 16;

#[derive(Clone, Debug)]
pub struct Config {
    /// The service credential, NATS (where the title jobs wait: unreachable NATS delays
    /// titles, it never stops the process from starting or answering health checks) and
    /// the conversation service's instances, which apply the titles.
    pub mesh: MeshConfig,
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
            mesh: MeshConfig::default(),
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
    /// Reads the mesh's shared settings ([`MeshConfig::from_env`]),
    /// `ATELIER_TITLE_DEADLINE_MS`, `ATELIER_TITLE_CONCURRENCY` and the `ATELIER_LLM_*`
    /// variables (see [`LlmConfig::from_env`]).
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        let environment = atelier_runtime::config::Environment::from_env()?;
        let mesh = MeshConfig::from_env(environment)?;
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
            mesh,
            llm: LlmConfig::from_env()?,
            title_deadline: Duration::from_millis(deadline_ms),
            concurrency,
            metrics_addr: environment.metrics_addr()?,
            ..defaults
        })
    }
}
