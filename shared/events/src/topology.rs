use std::time::Duration;

use async_nats::jetstream::{self, stream};

use atelier_runtime::config::{ConfigError, var_or};

use crate::Subjects;

/// How long a user's events stay replayable.
pub const EVENTS_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the server remembers a `Nats-Msg-Id`, so a republish of the same outbox row
/// (a crash between publish and marking it published) is dropped.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Copies of each stream's data the JetStream cluster keeps, by default: one server.
pub const DEFAULT_STREAM_REPLICAS: usize = 1;
/// The most replicas JetStream allows a stream.
pub const MAX_STREAM_REPLICAS: usize = 5;

/// `ATELIER_NATS_STREAM_REPLICAS`: how many servers of a JetStream cluster keep each
/// stream (1 to 5; [`DEFAULT_STREAM_REPLICAS`] when unset). On a single server only 1
/// works: the server refuses more when the streams are created.
pub fn stream_replicas_from_env() -> Result<usize, ConfigError> {
    checked_replicas(var_or(
        "ATELIER_NATS_STREAM_REPLICAS",
        DEFAULT_STREAM_REPLICAS,
    )?)
}

fn checked_replicas(replicas: usize) -> Result<usize, ConfigError> {
    if !(1..=MAX_STREAM_REPLICAS).contains(&replicas) {
        return Err(ConfigError::new(
            "ATELIER_NATS_STREAM_REPLICAS",
            replicas.to_string(),
            format!("must be 1 to {MAX_STREAM_REPLICAS}"),
        ));
    }
    Ok(replicas)
}

/// Creates both streams, or updates them to this configuration, each kept by
/// [`Subjects::stream_replicas`] servers: safe to call from every replica at every start.
/// A stream created with another replica count is scaled to it by the update (a
/// clustered JetStream moves the data).
pub async fn ensure_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    let prefix = subjects.prefix();
    let replicas = subjects.stream_replicas();
    js.create_or_update_stream(stream::Config {
        name: subjects.jobs_stream(),
        subjects: vec![format!("{prefix}.jobs.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|err| anyhow::anyhow!("cannot create stream {}: {err}", subjects.jobs_stream()))?;
    js.create_or_update_stream(stream::Config {
        name: subjects.events_stream(),
        subjects: vec![format!("{prefix}.events.user.*")],
        retention: stream::RetentionPolicy::Limits,
        max_age: EVENTS_RETENTION,
        duplicate_window: DUPLICATE_WINDOW,
        republish: Some(stream::Republish {
            source: format!("{prefix}.events.user.*"),
            destination: format!("{prefix}.live.user.{{{{wildcard(1)}}}}"),
            headers_only: false,
        }),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|err| anyhow::anyhow!("cannot create stream {}: {err}", subjects.events_stream()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_one_to_five() {
        for ok in 1..=5 {
            assert_eq!(checked_replicas(ok).expect("allowed"), ok);
        }
        for refused in [0, 6, 7] {
            let err = checked_replicas(refused).expect_err("refused");
            assert!(
                err.to_string().contains("ATELIER_NATS_STREAM_REPLICAS"),
                "{err}"
            );
        }
    }
}
