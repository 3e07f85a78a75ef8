//! Reading the stored events back: the bounds of the events stream, and a replay of one
//! user's events after a cursor (for a resume, or to fill a gap seen live).
//!
//! A replay is an ordered consumer (ephemeral, no acks, recreated by the client library
//! if a message goes missing) filtered to the user's subject and starting right after
//! the cursor. It ends at the message the server reports nothing pending after: what is
//! stored later arrives live, and the stream's position drops the overlap.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::{self, stream};
use atelier_events::{Subjects, TraceContext};
use atelier_proto::v1 as proto;
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tokio::sync::OnceCell;
use tonic::Status;

use super::cursor::Bounds;

/// The events stream, as WatchEvents reads it.
pub struct EventLog {
    js: jetstream::Context,
    subjects: Subjects,
    /// The streams exist: made sure once per process, retried until NATS answers, so a
    /// watcher of a fresh deployment does not wait for the first event to be published.
    ensured: OnceCell<()>,
}

/// How long a replay may wait for the next stored message before the stream gives up
/// (the client resumes from its cursor).
const REPLAY_STALL: Duration = Duration::from_secs(10);

impl EventLog {
    pub fn new(js: jetstream::Context, subjects: Subjects) -> Self {
        Self {
            js,
            subjects,
            ensured: OnceCell::new(),
        }
    }

    async fn stream(&self) -> Result<stream::Stream, Status> {
        let name = self.subjects.events_stream();
        let found = async {
            self.ensured
                .get_or_try_init(|| atelier_events::ensure_streams(&self.js, &self.subjects))
                .await?;
            anyhow::Ok(self.js.get_stream(&name).await?)
        };
        found.await.map_err(|err| {
            tracing::warn!(error = %err, stream = %name, "events stream unavailable");
            unavailable()
        })
    }

    /// The sequences the stream holds now.
    pub async fn bounds(&self) -> Result<Bounds, Status> {
        let stream = self.stream().await?;
        let state = &stream.cached_info().state;
        Ok(Bounds {
            first: state.first_sequence,
            last: state.last_sequence,
        })
    }

    /// The events stored on `subject` after `after`, up to the newest.
    pub async fn replay(&self, subject: &str, after: u64) -> Result<Replay, Status> {
        let stream = self.stream().await?;
        let name = format!("watch-{}", uuid::Uuid::now_v7().simple());
        let consumer = stream
            .create_consumer(OrderedConfig {
                name: Some(name.clone()),
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "cannot create a replay consumer");
                unavailable()
            })?;
        let cleanup = Cleanup {
            stream: Some(stream),
            name,
        };
        if consumer.cached_info().num_pending == 0 {
            return Ok(Replay {
                messages: None,
                _cleanup: cleanup,
            });
        }
        let messages = consumer.messages().await.map_err(|err| {
            tracing::warn!(error = %err, "cannot read the replay");
            unavailable()
        })?;
        Ok(Replay {
            messages: Some(Box::pin(
                messages.map(|message| message.map_err(|err| err.to_string())),
            )),
            _cleanup: cleanup,
        })
    }
}

/// One stored event.
pub struct Stored {
    pub sequence: u64,
    pub event: proto::Event,
    /// Its publisher's trace context, from the stored message's headers.
    pub trace: TraceContext,
}

type Messages = Pin<Box<dyn Stream<Item = Result<jetstream::Message, String>> + Send>>;

/// A replay in progress: yields the stored events in order, then `None`.
pub struct Replay {
    /// `None` once the newest stored event was read (or there was none).
    messages: Option<Messages>,
    _cleanup: Cleanup,
}

impl Replay {
    /// The next stored event, or `None` when the replay has caught up.
    pub async fn next(&mut self) -> Result<Option<Stored>, Status> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            let message = match tokio::time::timeout(REPLAY_STALL, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(err))) => {
                    tracing::warn!(error = %err, "replay failed");
                    return Err(unavailable());
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("replay stalled");
                    return Err(unavailable());
                }
            };
            let (sequence, caught_up) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending == 0),
                Err(err) => {
                    tracing::warn!(error = %err, "replayed message without its metadata");
                    return Err(unavailable());
                }
            };
            if caught_up {
                self.messages = None;
            }
            match proto::Event::decode(message.payload.clone()) {
                Ok(event) => {
                    return Ok(Some(Stored {
                        sequence,
                        event,
                        trace: TraceContext::from_headers(message.headers.as_ref()),
                    }));
                }
                // Not an event of any Atelier version: skip it (its sequence is then
                // simply never delivered).
                Err(err) => tracing::warn!(error = %err, sequence, "undecodable event skipped"),
            }
        }
    }
}

/// Deletes the replay's consumer when the replay is dropped, rather than leaving it to
/// the server's inactivity timeout: a reconnect storm must not pile up consumers.
struct Cleanup {
    stream: Option<stream::Stream>,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (Some(stream), name) = (self.stream.take(), std::mem::take(&mut self.name)) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = stream.delete_consumer(&name).await {
                    tracing::debug!(error = %err, consumer = %name, "replay consumer left to expire");
                }
            });
        }
    }
}

fn unavailable() -> Status {
    Status::unavailable("the event log is unavailable; retry with resume_after")
}
