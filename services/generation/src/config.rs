//! The generation worker's settings, from the environment (see the README's table).

use std::time::Duration;

use atelier_runtime::config::var_or;
use atelier_runtime::mesh::{MeshConfig, ServiceInstances};

use crate::providers::{ProvidersConfig, RetryPolicy};

#[derive(Clone, Debug)]
pub struct Config {
    /// The service credential, NATS (where the jobs wait) and the conversation service's
    /// instances.
    pub mesh: MeshConfig,
    /// The intent and enhancement services' instances, balanced like the conversation
    /// service's.
    pub intent: ServiceInstances,
    pub enhancement: ServiceInstances,
    pub providers: ProvidersConfig,
    pub provider_retries: RetryPolicy,
    /// Where images go: `ATELIER_S3_BUCKET` for S3, else `ATELIER_STORAGE_DIR`.
    pub storage: atelier_images::Storage,
    /// Jobs handled at once by this process (they wait on providers, not on this CPU).
    pub concurrency: usize,
    /// Attempts at a job before the worker gives up, fails its images and refunds (the
    /// worker's limit: JetStream redelivers without one, see `atelier_events::jobs`).
    pub max_deliver: i64,
    /// How long a job may go silent before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Deadlines of the intent and enhancement calls; past them the worker falls back.
    pub intent_deadline: Duration,
    pub enhancement_deadline: Duration,
    pub drain_timeout: Duration,
    /// Where Prometheus scrapes `/metrics`; `None` serves no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    /// The local mesh: every service on its default loopback port, the builtin renderer.
    fn default() -> Self {
        Self {
            mesh: MeshConfig::default(),
            intent: ServiceInstances::at("http://127.0.0.1:50053"),
            enhancement: ServiceInstances::at("http://127.0.0.1:50054"),
            providers: ProvidersConfig::default(),
            provider_retries: RetryPolicy::default(),
            storage: atelier_images::Storage::default(),
            concurrency: 16,
            max_deliver: 6,
            ack_wait: Duration::from_secs(30),
            // Longer than the LLM client's own deadline (4 s by default), so an LLM that
            // hangs is cut by the client and counted by its circuit breaker.
            intent_deadline: Duration::from_secs(6),
            enhancement_deadline: Duration::from_secs(6),
            drain_timeout: Duration::from_secs(20),
            metrics_addr: None,
        }
    }
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        let millis = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
            Ok(Duration::from_millis(var_or(name, default)?))
        };
        let environment = atelier_runtime::config::Environment::from_env()?;
        let storage = atelier_images::Storage::from_env()?;
        // A worker that cannot store what it renders must not start (and report healthy).
        storage.check_writable()?;
        Ok(Self {
            mesh: MeshConfig::from_env(environment)?,
            intent: ServiceInstances::from_var("ATELIER_INTENT_URL", "http://127.0.0.1:50053")?,
            enhancement: ServiceInstances::from_var(
                "ATELIER_ENHANCEMENT_URL",
                "http://127.0.0.1:50054",
            )?,
            metrics_addr: environment.metrics_addr()?,
            providers: ProvidersConfig::from_env()?,
            provider_retries: RetryPolicy {
                max_attempts: var_or("ATELIER_PROVIDER_ATTEMPTS", 3)?,
                deadline: Duration::from_secs(atelier_runtime::config::positive_var(
                    "ATELIER_PROVIDER_DEADLINE_SECS",
                    RetryPolicy::DEFAULT_DEADLINE.as_secs(),
                )?),
                ..RetryPolicy::default()
            },
            storage,
            concurrency: var_or("ATELIER_GENERATION_CONCURRENCY", defaults.concurrency)?,
            max_deliver: var_or("ATELIER_GENERATION_MAX_DELIVER", defaults.max_deliver)?,
            ack_wait: millis("ATELIER_GENERATION_ACK_WAIT_MS", defaults.ack_wait)?,
            intent_deadline: millis("ATELIER_INTENT_DEADLINE_MS", defaults.intent_deadline)?,
            enhancement_deadline: millis(
                "ATELIER_ENHANCEMENT_DEADLINE_MS",
                defaults.enhancement_deadline,
            )?,
            drain_timeout: defaults.drain_timeout,
        })
    }
}
