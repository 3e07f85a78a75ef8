use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::Subjects;

/// How long a user's events stay replayable.
pub const EVENTS_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the server remembers a `Nats-Msg-Id`, so a republish of the same outbox row
/// (a crash between publish and marking it published) is dropped.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

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
