//! The conversation service's settings, from the environment (see the README's table).

use std::str::FromStr;

use atelier_runtime::config::{ConfigError, optional_var, positive_var, var_or};
use atelier_runtime::internal_call::ServiceToken;
use sqlx::postgres::PgConnectOptions;

use crate::catalog::Catalog;

#[derive(Clone, Debug)]
pub struct Config {
    pub database: PgConnectOptions,
    /// Connections this process may hold; PostgreSQL's own limit is shared by all replicas.
    pub max_connections: u32,
    /// Apply `migrations/` at start-up (under sqlx's advisory lock, so replicas may race).
    pub run_migrations: bool,
    pub service_token: ServiceToken,
    /// Credits a new account starts with.
    pub starting_credits: i64,
    /// The largest image budget a conversation may have.
    pub max_generations_per_conversation: u32,
    pub catalog: Catalog,
    /// NATS, for the outbox relay. Unreachable NATS delays jobs and events; it never fails
    /// a call.
    pub nats_url: String,
    /// The prefix of every subject and stream name.
    pub subject_prefix: String,
    /// Servers of the JetStream cluster that keep each stream (`ATELIER_NATS_STREAM_REPLICAS`).
    pub stream_replicas: usize,
    /// How often the sweeper looks for rows a crash or an outage left unpublished.
    pub sweep_interval: std::time::Duration,
    /// How often the queue reporter looks at the queue while it is not empty, and the
    /// shortest time between two generation_queued events of one message.
    pub queue_report_interval: std::time::Duration,
    /// How often the reaper looks for messages the pipeline lost ([`crate::reaper`]).
    pub reaper_interval: std::time::Duration,
    /// How long an unfinished message must go unchanged before the reaper acts on it.
    pub reaper_stale_after: std::time::Duration,
    /// Where Prometheus scrapes `/metrics`; `None` serves no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/atelier";

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let url: String = var_or("ATELIER_DATABASE_URL", DEFAULT_DATABASE_URL.to_owned())?;
        let database = PgConnectOptions::from_str(&url)
            .map_err(|err| ConfigError::new("ATELIER_DATABASE_URL", "<hidden>", err))?;
        let catalog = match optional_var::<String>("ATELIER_MODEL_CATALOG_FILE")? {
            None => Catalog::embedded(),
            Some(path) => {
                let json = std::fs::read_to_string(&path)
                    .map_err(|err| ConfigError::new("ATELIER_MODEL_CATALOG_FILE", &path, err))?;
                Catalog::from_json(&json)
                    .map_err(|err| ConfigError::new("ATELIER_MODEL_CATALOG_FILE", &path, err))?
            }
        };
        let starting_credits = var_or("ATELIER_STARTING_CREDITS", 100)?;
        if starting_credits < 0 {
            Err(ConfigError::new(
                "ATELIER_STARTING_CREDITS",
                starting_credits.to_string(),
                "must not be negative",
            ))?;
        }
        let max_generations_per_conversation: u32 =
            var_or("ATELIER_MAX_GENERATIONS_PER_CONVERSATION", 200)?;
        if !(1..=i32::MAX as u32).contains(&max_generations_per_conversation) {
            Err(ConfigError::new(
                "ATELIER_MAX_GENERATIONS_PER_CONVERSATION",
                max_generations_per_conversation.to_string(),
                "must be at least 1",
            ))?;
        }
        let sweep_ms: u64 = var_or("ATELIER_OUTBOX_SWEEP_MS", 1000)?;
        if sweep_ms < 10 {
            Err(ConfigError::new(
                "ATELIER_OUTBOX_SWEEP_MS",
                sweep_ms.to_string(),
                "must be at least 10",
            ))?;
        }
        let environment = atelier_runtime::config::Environment::from_env()?;
        let metrics_addr = environment.metrics_addr()?;
        Ok(Self {
            database,
            max_connections: var_or("ATELIER_DATABASE_MAX_CONNECTIONS", 16)?,
            run_migrations: var_or("ATELIER_DATABASE_MIGRATE", true)?,
            service_token: ServiceToken::from_env(environment)?,
            starting_credits,
            max_generations_per_conversation,
            catalog,
            nats_url: var_or("ATELIER_NATS_URL", "nats://127.0.0.1:4222".to_owned())?,
            subject_prefix: var_or("ATELIER_SUBJECT_PREFIX", "atelier".to_owned())?,
            stream_replicas: atelier_events::stream_replicas_from_env()?,
            sweep_interval: std::time::Duration::from_millis(sweep_ms),
            queue_report_interval: std::time::Duration::from_millis(positive_var(
                "ATELIER_QUEUE_REPORT_MS",
                1000,
            )?),
            reaper_interval: std::time::Duration::from_secs(positive_var(
                "ATELIER_REAPER_INTERVAL_SECS",
                60,
            )?),
            reaper_stale_after: std::time::Duration::from_secs(positive_var(
                "ATELIER_REAPER_STALE_SECS",
                1800,
            )?),
            metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "ATELIER_CONVERSATION_FROM_ENV_PROBE";

    /// The queue report interval `from_env` reads with exactly `vars` set (of the queue's
    /// variables), or its error.
    fn queue_report_interval_with(vars: &[(&str, &str)]) -> String {
        let token = atelier_testkit::random_secret();
        let mut set = vec![("ATELIER_SERVICE_TOKEN", token.as_str())];
        set.extend_from_slice(vars);
        atelier_testkit::rerun_with_env(
            "config::tests::print_from_env",
            PROBE,
            &["ATELIER_QUEUE_", "ATELIER_ENV"],
            &set,
        )
    }

    #[test]
    fn print_from_env() {
        if std::env::var_os(PROBE).is_none() {
            return;
        }
        let printed = match Config::from_env() {
            Ok(config) => format!("{:?}", config.queue_report_interval),
            Err(err) => format!("error: {err}"),
        };
        println!("from_env: {printed}");
    }

    #[test]
    fn the_queue_is_reported_every_second_by_default() {
        assert_eq!(queue_report_interval_with(&[]), "1s");
        assert_eq!(
            queue_report_interval_with(&[("ATELIER_QUEUE_REPORT_MS", "250")]),
            "250ms"
        );
    }

    #[test]
    fn a_queue_report_interval_must_be_a_positive_number() {
        for bad in ["0", "-5", "soon"] {
            let printed = queue_report_interval_with(&[("ATELIER_QUEUE_REPORT_MS", bad)]);
            assert!(
                printed.starts_with("error:") && printed.contains("ATELIER_QUEUE_REPORT_MS"),
                "{bad}: {printed}"
            );
        }
    }
}
