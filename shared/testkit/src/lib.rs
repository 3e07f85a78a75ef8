//! Test support shared by the service and end-to-end tests.
//!
//! - [`TestDatabase`]: a fresh, uniquely named PostgreSQL database per test, dropped at
//!   the end, so tests run in parallel against the real server.
//! - [`TestNats`]: a subject prefix of its own on the real NATS, its streams deleted at
//!   the end.
//! - [`TcpProxy`]: a connection a test can cut, to play a broker or service outage.
//! - [`spawn_server`]: runs any service's `run(config, listener, shutdown)` on 127.0.0.1:0;
//!   [`spawn_killable_server`] on a runtime of its own, for a test that kills it.
//! - [`StatementCounter`]: counts the SQL statements sqlx sends, to prove query budgets.
//! - [`rerun_with_env`]: config tests read the environment in a child process.
//! - [`fakes`]: HTTP fakes of the image providers' public APIs.
//! - [`startup`]: what a service binary refuses before it listens (secrets, addresses).
//! - [`init_logging`]: test output stays quiet unless `TEST_LOG` is set.
//! - [`SpanCollector`]: an exporter double that keeps the finished spans, to assert on a
//!   trace.

mod database;
mod env;
pub mod fakes;
mod nats;
mod proxy;
mod server;
mod spans;
pub mod startup;
mod statements;

pub use database::TestDatabase;
pub use env::rerun_with_env;
pub use nats::TestNats;
pub use proxy::TcpProxy;
pub use server::{
    KillableServer, RunningServer, free_local_addr, scrape_metrics, spawn_killable_server,
    spawn_server,
};
pub use spans::SpanCollector;
pub use statements::StatementCounter;

/// A random secret of 64 characters (about 150 random bits), as a test run's service
/// credential or signing key: like `run.sh`, no test relies on a value written in the
/// source.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::now_v7().simple(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Logs to the test's output when `TEST_LOG` is set (its value is the filter, e.g. `debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
