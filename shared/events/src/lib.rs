//! The NATS JetStream side of Atelier: the stream topology, subject names, and one way to
//! publish.
//!
//! Two streams, both named from a configurable prefix so tests (and tenants) run side by
//! side on one server:
//!
//! - `<PREFIX>_JOBS`, work-queue retention, subjects `<prefix>.jobs.>`: each job is
//!   delivered to one worker and removed once acknowledged.
//! - `<PREFIX>_EVENTS`, limits retention (24 h), subjects `<prefix>.events.user.*`: every
//!   user's events, replayable from a cursor; RePublished to `<prefix>.live.user.*` for
//!   the edges' core subscriptions.
//!
//! Every publish carries `Nats-Msg-Id` (the outbox row id: a republish inside the
//! duplicate window is dropped by the server) and the W3C trace context ([`trace`]: the
//! consumer's span is the publisher's span's child), and awaits the
//! stream's acknowledgement before the next, so one producer's messages enter the stream
//! in order.

pub mod jobs;
mod publish;
pub mod subjects;
mod topology;
pub mod trace;

pub use publish::{PublishError, Publisher};
pub use subjects::Subjects;
pub use topology::ensure_streams;
pub use trace::{TraceContext, current_traceparent};

use atelier_runtime::mesh::{NatsAuth, NatsConfig};

/// Connects to NATS (with the configured credentials) in the background: the caller gets a client at once, and publishes
/// fail (to be retried) until the server is reachable. A service must start, and its
/// fast path must answer, while NATS is down.
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = config.servers().map_err(anyhow::Error::msg)?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(2));
    let options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::CredsFile(path) => options
            .credentials_file(path)
            .await
            .map_err(|err| anyhow::anyhow!("NATS credentials {}: {err}", path.display()))?,
    };
    let client = options.connect(servers.as_slice()).await?;
    tokio::spawn(warn_if_unsafe_server(client.clone()));
    Ok(client)
}

/// The oldest nats-server the job pipeline is safe on. Before 2.10.16 a pull request of a
/// worker that died could swallow a redelivery and still count it against `max_deliver`
/// (nats-server PR #5338): a job could use up its deliveries with no worker seeing the
/// last one.
pub const OLDEST_SAFE_SERVER: (u64, u64, u64) = (2, 10, 16);

/// Once connected, warns when the server is older than [`OLDEST_SAFE_SERVER`]. Gives up
/// quietly after a minute without a connection (the service logs its NATS trouble
/// elsewhere).
async fn warn_if_unsafe_server(client: async_nats::Client) {
    for _ in 0..600 {
        if client.connection_state() == async_nats::connection::State::Connected {
            let version = client.server_info().version;
            if older_than_safe(&version) {
                let (major, minor, patch) = OLDEST_SAFE_SERVER;
                tracing::warn!(
                    server_version = %version,
                    "nats-server {version} is older than {major}.{minor}.{patch}: after \
                     repeated worker crashes a job can exhaust its deliveries unseen; run a \
                     newer server (deploy/local/ensure-deps.sh installs one)"
                );
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether `version` ("2.9.10", "v2.10.16-RC.1") is older than [`OLDEST_SAFE_SERVER`]; an
/// unreadable version is not (no warning on a guess).
fn older_than_safe(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) => {
            (major, minor, patch) < OLDEST_SAFE_SERVER
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_before_2_10_16_are_unsafe() {
        for old in ["2.9.10", "2.10.15", "v2.10.14-RC.2", "1.4.1"] {
            assert!(older_than_safe(old), "{old}");
        }
        for safe in [
            "2.10.16", "2.11.0", "v2.15.1", "3.0.0", "", "unknown", "2.10",
        ] {
            assert!(!older_than_safe(safe), "{safe}");
        }
    }
}
