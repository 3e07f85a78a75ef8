//! WatchEvents: every event of the caller, live, resumable from a cursor with no gap and
//! no duplicate.
//!
//! A stream is, in order:
//!
//! 1. a [`Membership`] in its user's feed ([`hub`]): from then on every event stored for
//!    the user reaches this stream live;
//! 2. a start: with `resume_after`, the events stored after it are replayed from the
//!    stream ([`log`]) first, or `resync_required` is sent when they may be gone; without,
//!    the stream starts at the newest sequence;
//! 3. live events, each checked against the stream's [`Position`]: duplicates of the
//!    replay are dropped, and a missed predecessor sends the stream back to the log to
//!    fill the gap before anything newer;
//! 4. heartbeats when nothing was sent for the configured interval.
//!
//! It ends with RESOURCE_EXHAUSTED when the client fell behind (its queue overflowed) and
//! with UNAVAILABLE when the edge drains or NATS cannot serve it; both carry the cursor to
//! resume from. Nothing in a stream grows without bound: one queue of `buffer` events,
//! one event read ahead.

mod cursor;
mod hub;
mod log;

use atelier_runtime::metrics::{Counter, Gauge, Registry};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atelier_events::{Subjects, TraceContext};
use atelier_proto::error_reason;
use atelier_proto::v1 as proto;
use futures::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use self::cursor::{Live, Position, Resume};
use self::hub::{Hub, Membership};
use self::log::{EventLog, Replay};
use crate::config::WatchConfig;
use crate::links::ImageLinks;

pub use self::hub::LiveEvent;

/// What every stream of this edge shares.
pub struct Watch {
    hub: Arc<Hub>,
    log: EventLog,
    links: ImageLinks,
    subjects: Subjects,
    config: WatchConfig,
    /// Cancelled when the edge drains: every stream ends with UNAVAILABLE.
    draining: CancellationToken,
    metrics: WatchMetrics,
}

/// A stream of WatchEvents responses.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<proto::WatchEventsResponse, Status>> + Send>>;

impl Watch {
    pub fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        links: ImageLinks,
        config: WatchConfig,
        draining: CancellationToken,
        metrics: WatchMetrics,
    ) -> Self {
        let log = EventLog::new(async_nats::jetstream::new(nats.clone()), subjects.clone());
        Self {
            hub: Arc::new(Hub::new(
                nats,
                subjects.clone(),
                links.clone(),
                config.buffer,
                config.max_streams_per_user,
            )),
            log,
            links,
            subjects,
            config,
            draining,
            metrics,
        }
    }

    /// Opens a stream for `user_id`. When this returns, the live subscription is in place
    /// and the stream's start is fixed: everything stored from now on reaches it (the
    /// client may act on the answer's headers at once), and with `resume_after`, what was
    /// stored after that cursor is replayed first as the client reads.
    pub async fn open(
        self: &Arc<Self>,
        user_id: &str,
        resume_after: Option<u64>,
        conversation_id: Option<String>,
    ) -> Result<EventStream, Status> {
        if self.draining.is_cancelled() {
            return Err(draining(None));
        }
        let membership = self.hub.join(user_id).await?;
        // After the subscription: an event stored between the two is both at or below
        // `bounds.last` and delivered live, and the position drops the live copy.
        let bounds = self.log.bounds().await?;
        let mut stream = WatchStream {
            watch: Arc::clone(self),
            user_id: user_id.to_owned(),
            subject: self.subjects.user_events(user_id),
            conversation_id,
            membership,
            position: Position::new(bounds.last),
            delivered: resume_after,
            phase: Phase::Live,
            ready: None,
            delivering: None,
            heartbeat: Box::pin(tokio::time::sleep(self.config.heartbeat)),
            ended: false,
            _open: OpenStream::new(&self.metrics),
        };
        match resume_after.map(|cursor| cursor::resume(cursor, bounds)) {
            // Live only: what is stored from now on. A heartbeat first, so the client
            // holds a cursor at once and a reconnect before its first event misses nothing.
            None => stream.ready = Some(stream.notice(bounds.last, heartbeat())),
            Some(Resume::Stale) => {
                stream.ready = Some(stream.notice(
                    bounds.last,
                    proto::event::Payload::ResyncRequired(proto::ResyncRequired {}),
                ));
            }
            Some(Resume::After(cursor)) => {
                stream.position = Position::new(cursor);
                stream.phase = Phase::Starting { after: cursor };
            }
        }
        Ok(Box::pin(futures::stream::unfold(
            stream,
            |mut stream| async move { stream.next().await.map(|item| (item, stream)) },
        )))
    }
}

/// The span of one published event's delivery to one stream, in the event's trace: a
/// child of its `events.receive` span (live), or of its publisher's span (replayed from
/// the log).
fn deliver_span(
    cursor: u64,
    event: &proto::Event,
    parent: &TraceContext,
    replayed: bool,
) -> tracing::Span {
    let span = tracing::info_span!(
        "watch.deliver",
        cursor,
        event = event_kind(event),
        message_id = %event.message_id,
        replayed,
        trace_id = tracing::field::Empty,
    );
    parent.adopt(&span);
    span
}

/// The name of an event's payload, for the delivery span.
fn event_kind(event: &proto::Event) -> &'static str {
    use proto::event::Payload;
    match &event.payload {
        Some(Payload::MessageCreated(_)) => "message_created",
        Some(Payload::GenerationQueued(_)) => "generation_queued",
        Some(Payload::GenerationStarted(_)) => "generation_started",
        Some(Payload::IntentResolved(_)) => "intent_resolved",
        Some(Payload::GenerationProgress(_)) => "generation_progress",
        Some(Payload::GenerationCompleted(_)) => "generation_completed",
        Some(Payload::GenerationFailed(_)) => "generation_failed",
        Some(Payload::GenerationCancelled(_)) => "generation_cancelled",
        Some(Payload::TitleUpdated(_)) => "title_updated",
        Some(Payload::CreditsChanged(_)) => "credits_changed",
        Some(Payload::ResyncRequired(_)) => "resync_required",
        Some(Payload::Heartbeat(_)) => "heartbeat",
        None => "unknown",
    }
}

fn heartbeat() -> proto::event::Payload {
    proto::event::Payload::Heartbeat(proto::Heartbeat {})
}

enum Phase {
    /// About to replay what follows a cursor (the replay starts on the first read).
    Starting {
        after: u64,
    },
    /// Reading stored events (a resume, or a gap) before going back to live ones.
    Replaying(Box<Replay>),
    Live,
}

struct WatchStream {
    watch: Arc<Watch>,
    user_id: String,
    /// The user's subject in the events stream.
    subject: String,
    /// Only this conversation's events, when set.
    conversation_id: Option<String>,
    membership: Membership,
    position: Position,
    /// The last cursor sent to the client (or the one it resumed from): where it must
    /// resume if this stream ends.
    delivered: Option<u64>,
    phase: Phase,
    /// The next response, once decided: at most one is held.
    ready: Option<proto::WatchEventsResponse>,
    /// The `watch.deliver` span of `ready`, when it is a published event: it ends when
    /// the response is handed to the stream.
    delivering: Option<tracing::Span>,
    heartbeat: Pin<Box<Sleep>>,
    ended: bool,
    /// Counts the stream open until it is dropped.
    _open: OpenStream,
}

/// What Prometheus sees of the streams: how many are open, and how many were closed
/// because their client fell behind. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    open: Gauge,
    slow_consumers: Counter,
}

impl WatchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "watch_streams_open",
            "WatchEvents streams open on this edge.",
            self.open.clone(),
        );
        registry.register(
            "watch_slow_consumers",
            "WatchEvents streams closed (RESOURCE_EXHAUSTED) because their client fell behind.",
            self.slow_consumers.clone(),
        );
    }
}

/// One open stream, counted in [`WatchMetrics`] from its creation to its drop.
struct OpenStream(Gauge);

impl OpenStream {
    fn new(metrics: &WatchMetrics) -> Self {
        metrics.open.inc();
        Self(metrics.open.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WatchStream {
    async fn next(&mut self) -> Option<Result<proto::WatchEventsResponse, Status>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(response) = self.ready.take() {
                self.delivered = Some(response.cursor);
                let next_heartbeat = Instant::now() + self.watch.config.heartbeat;
                self.heartbeat.as_mut().reset(next_heartbeat);
                // Handed to the stream: the delivery span ends here.
                self.delivering = None;
                return Some(Ok(response));
            }
            let step = match &mut self.phase {
                Phase::Starting { after } => {
                    let after = *after;
                    // Boxed, here and on every rarely taken await: an idle stream's state
                    // is this future, so it stays as small as the live path's.
                    Box::pin(self.watch.log.replay(&self.subject, after))
                        .await
                        .map(|replay| self.phase = Phase::Replaying(Box::new(replay)))
                }
                Phase::Replaying(_) => self.replay_next().await,
                Phase::Live => self.live_next().await,
            };
            if let Err(status) = step {
                self.ended = true;
                return Some(Err(status));
            }
        }
    }

    async fn replay_next(&mut self) -> Result<(), Status> {
        let Phase::Replaying(replay) = &mut self.phase else {
            return Ok(());
        };
        let stored = tokio::select! {
            biased;
            () = self.watch.draining.cancelled() => return Err(draining(self.delivered)),
            stored = Box::pin(replay.next()) => stored?,
        };
        match stored {
            Some(mut stored) => {
                if stored.sequence > self.position.sequence() {
                    self.position.advance(stored.sequence);
                    if self.wants(&stored.event) {
                        self.delivering = Some(deliver_span(
                            stored.sequence,
                            &stored.event,
                            &stored.trace,
                            true,
                        ));
                        Box::pin(
                            self.watch
                                .links
                                .sign_event(&self.user_id, &mut stored.event),
                        )
                        .await;
                        self.ready = Some(proto::WatchEventsResponse {
                            cursor: stored.sequence,
                            event: Some(stored.event),
                        });
                    }
                }
            }
            None => self.phase = Phase::Live,
        }
        Ok(())
    }

    async fn live_next(&mut self) -> Result<(), Status> {
        if self.membership.overflowed() {
            return Err(self.slow_consumer());
        }
        tokio::select! {
            biased;
            () = self.watch.draining.cancelled() => Err(draining(self.delivered)),
            live = self.membership.recv() => match live {
                Some(live) => self.on_live(&live).await,
                None if self.membership.overflowed() => Err(self.slow_consumer()),
                None => Err(draining(self.delivered)),
            },
            () = &mut self.heartbeat => {
                let cursor = self.position.sequence();
                self.ready = Some(self.notice(cursor, heartbeat()));
                Ok(())
            }
        }
    }

    async fn on_live(&mut self, live: &LiveEvent) -> Result<(), Status> {
        match self.position.classify(live.sequence, live.previous) {
            Live::Duplicate => {}
            Live::Gap => {
                tracing::info!(
                    after = self.position.sequence(),
                    sequence = live.sequence,
                    "live event gap; reading it from the stream"
                );
                let replay = Box::pin(
                    self.watch
                        .log
                        .replay(&self.subject, self.position.sequence()),
                )
                .await?;
                self.phase = Phase::Replaying(Box::new(replay));
            }
            Live::Next => {
                self.position.advance(live.sequence);
                if self.wants(&live.event) {
                    self.delivering =
                        Some(deliver_span(live.sequence, &live.event, &live.trace, false));
                    self.ready = Some(proto::WatchEventsResponse {
                        cursor: live.sequence,
                        event: Some(live.event.clone()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Ends the stream of a client that fell behind, counted.
    fn slow_consumer(&self) -> Status {
        self.watch.metrics.slow_consumers.inc();
        slow_consumer(self.delivered)
    }

    fn wants(&self, event: &proto::Event) -> bool {
        self.conversation_id
            .as_deref()
            .is_none_or(|conversation| event.conversation_id == conversation)
    }

    /// An event of the edge's own (a heartbeat, resync_required) at `cursor`.
    fn notice(&self, cursor: u64, payload: proto::event::Payload) -> proto::WatchEventsResponse {
        proto::WatchEventsResponse {
            cursor,
            event: Some(proto::Event {
                id: uuid::Uuid::now_v7().to_string(),
                occurred_at: Some(SystemTime::now().into()),
                user_id: self.user_id.clone(),
                conversation_id: self.conversation_id.clone().unwrap_or_default(),
                message_id: String::new(),
                payload: Some(payload),
            }),
        }
    }
}

/// The status that ends a stream whose client fell behind.
fn slow_consumer(delivered: Option<u64>) -> Status {
    ended(
        Code::ResourceExhausted,
        error_reason::SLOW_CONSUMER,
        "this stream fell behind and was closed",
        delivered,
    )
}

/// The status that ends a stream when the edge drains (or loses its event feed).
fn draining(delivered: Option<u64>) -> Status {
    ended(
        Code::Unavailable,
        error_reason::STREAM_CLOSED,
        "this server is closing the stream",
        delivered,
    )
}

/// A stream's end, telling the client where to resume: in the message for people, and as
/// ErrorInfo metadata `resume_after` for code.
fn ended(code: Code, reason: &str, what: &str, delivered: Option<u64>) -> Status {
    let (message, metadata) = match delivered {
        Some(cursor) => (
            format!("{what}; reconnect with resume_after={cursor}"),
            HashMap::from([("resume_after".to_owned(), cursor.to_string())]),
        ),
        None => (format!("{what}; reconnect"), HashMap::new()),
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, error_reason::DOMAIN, metadata);
    if code == Code::Unavailable {
        details.set_retry_info(Some(Duration::from_millis(100)));
    }
    Status::with_error_details(code, message, details)
}
