//! One core NATS subscription per connected user, fanned out to every open stream of that
//! user on this edge.
//!
//! The events stream RePublishes each stored event on `<prefix>.live.user.<user>`, so
//! NATS sends an edge only the events of the users connected to it. The first stream of a
//! user subscribes; the others join the same [`Feed`]; the last one to leave unsubscribes.
//! Each event is decoded and its image URLs signed once per user, then handed to every
//! stream as an `Arc`, in an `events.receive` span joined to the publisher's trace.
//!
//! A stream's queue is bounded. The feed never waits for a stream: a full queue marks the
//! stream overflowed and drops it from the feed, so a client that cannot keep up loses its
//! own stream (it resumes from its cursor) and costs the others nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use atelier_events::{Subjects, TraceContext};
use atelier_proto::v1 as proto;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::Instrument as _;

use crate::error::EdgeError;
use crate::links::ImageLinks;

/// How long joining may wait for the server to confirm a new subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An event as it arrived live, decoded and with its image URLs signed.
#[derive(Debug)]
pub struct LiveEvent {
    /// Its sequence in the events stream: the client's cursor.
    pub sequence: u64,
    /// The sequence of the user's previous event (`Nats-Last-Sequence`).
    pub previous: Option<u64>,
    pub event: proto::Event,
    /// Where it was received (`events.receive`): the parent of its delivery to each
    /// stream.
    pub trace: TraceContext,
}

/// Every user's feed on this edge.
pub struct Hub {
    client: async_nats::Client,
    subjects: Subjects,
    links: ImageLinks,
    /// Events one stream may have waiting.
    buffer: usize,
    /// Streams one user may have in the feed.
    max_members: usize,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    next_member: AtomicU64,
}

/// One user's subscription and the streams it feeds.
struct Feed {
    members: Arc<Members>,
    /// `None` while subscribing, then whether the subscription is in place.
    ready: watch::Receiver<Option<bool>>,
    task: JoinHandle<()>,
}

type Members = Mutex<Vec<Member>>;

struct Member {
    id: u64,
    queue: mpsc::Sender<Arc<LiveEvent>>,
    overflowed: Arc<AtomicBool>,
}

/// A stream's place in its user's feed; leaving is dropping it.
pub struct Membership {
    hub: Arc<Hub>,
    user_id: String,
    feed: Arc<Feed>,
    id: u64,
    queue: mpsc::Receiver<Arc<LiveEvent>>,
    overflowed: Arc<AtomicBool>,
}

impl Hub {
    pub fn new(
        client: async_nats::Client,
        subjects: Subjects,
        links: ImageLinks,
        buffer: usize,
        max_members: usize,
    ) -> Self {
        Self {
            client,
            subjects,
            links,
            buffer: buffer.max(1),
            max_members: max_members.max(1),
            feeds: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(0),
        }
    }

    /// Joins `user_id`'s feed, subscribing first if this is the user's first stream here.
    /// Returns once the subscription is in place at the server: every event stored from
    /// then on reaches the membership. Refused (RESOURCE_EXHAUSTED) when the user has the
    /// most streams a feed takes; a stream dropped for falling behind no longer counts.
    pub async fn join(self: &Arc<Self>, user_id: &str) -> Result<Membership, Status> {
        let (queue, receiver) = mpsc::channel(self.buffer);
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let feed = {
            let mut feeds = lock(&self.feeds);
            let feed = match feeds.get(user_id) {
                // A feed whose subscription ended (NATS closed it) is replaced.
                Some(feed) if !feed.task.is_finished() => {
                    if lock(&feed.members).len() >= self.max_members {
                        return Err(EdgeError::TooManyStreams {
                            limit: self.max_members,
                        }
                        .into());
                    }
                    Arc::clone(feed)
                }
                _ => {
                    let feed = Arc::new(self.subscribe(user_id));
                    feeds.insert(user_id.to_owned(), Arc::clone(&feed));
                    feed
                }
            };
            lock(&feed.members).push(Member {
                id,
                queue,
                overflowed: Arc::clone(&overflowed),
            });
            feed
        };
        let membership = Membership {
            hub: Arc::clone(self),
            user_id: user_id.to_owned(),
            feed: Arc::clone(&feed),
            id,
            queue: receiver,
            overflowed,
        };
        let mut ready = feed.ready.clone();
        let subscribed =
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready.wait_for(|ready| ready.is_some())).await;
        match subscribed {
            Ok(Ok(ready)) if *ready == Some(true) => Ok(membership),
            // Dropping the membership leaves the feed, and a failed feed with it.
            _ => Err(Status::unavailable(
                "live events are unavailable right now; retry shortly",
            )),
        }
    }

    fn subscribe(&self, user_id: &str) -> Feed {
        let members: Arc<Members> = Arc::default();
        let (ready_tx, ready) = watch::channel(None);
        let client = self.client.clone();
        let subject = self.subjects.live_user_events(user_id);
        let links = self.links.clone();
        let user = user_id.to_owned();
        let fed = Arc::clone(&members);
        // The task lives as long as the user is connected, mostly waiting for the next
        // message: the one-off and rare steps are boxed, so its state is the loop's alone.
        let task = tokio::spawn(async move {
            let subscribed = Box::pin(async {
                let subscriber = client.subscribe(subject).await?;
                // The server has the interest once it answers a ping sent after it.
                client.flush().await?;
                anyhow::Ok(subscriber)
            });
            let mut subscriber = match subscribed.await {
                Ok(subscriber) => {
                    ready_tx.send_replace(Some(true));
                    subscriber
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot subscribe to live events");
                    ready_tx.send_replace(Some(false));
                    return;
                }
            };
            while let Some(message) = subscriber.next().await {
                // The edge's side of the publish: a child of the publisher's span (the
                // RePublished message keeps the stored one's headers), around the decode,
                // the signing and the hand-off to every stream of the user.
                let span = tracing::info_span!(
                    "events.receive",
                    otel.kind = "consumer",
                    sequence = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                );
                TraceContext::from_headers(message.headers.as_ref()).adopt(&span);
                let received = async {
                    let Some(mut live) = LiveEvent::parse(&message, TraceContext::of(&span)) else {
                        return;
                    };
                    span.record("sequence", live.sequence);
                    links.sign_event(&user, &mut live.event).await;
                    fan_out(&fed, &Arc::new(live));
                };
                Box::pin(received.instrument(span.clone())).await;
            }
            // The subscription is gone for good (the client closed): end every stream, so
            // clients reconnect (here, after a new subscription, or elsewhere).
            lock(&fed).clear();
        });
        Feed {
            members,
            ready,
            task,
        }
    }

    fn leave(&self, user_id: &str, feed: &Arc<Feed>, id: u64) {
        let mut feeds = lock(&self.feeds);
        let empty = {
            let mut members = lock(&feed.members);
            members.retain(|member| member.id != id);
            members.is_empty()
        };
        if empty
            && feeds
                .get(user_id)
                .is_some_and(|current| Arc::ptr_eq(current, feed))
        {
            feeds.remove(user_id);
            // Dropping the subscriber unsubscribes.
            feed.task.abort();
        }
    }
}

/// Hands `event` to every member without waiting: a member whose queue is full is marked
/// overflowed and dropped from the feed (its receiver then ends), a closed one dropped.
fn fan_out(members: &Members, event: &Arc<LiveEvent>) {
    lock(members).retain(|member| match member.queue.try_send(Arc::clone(event)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            member.overflowed.store(true, Ordering::Release);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

impl LiveEvent {
    /// Reads a republished message; `None` (logged) for one that is not an event.
    fn parse(message: &async_nats::Message, trace: TraceContext) -> Option<Self> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .and_then(|value| value.as_str().parse::<u64>().ok())
        };
        let Some(sequence) = header("Nats-Sequence") else {
            tracing::warn!(subject = %message.subject, "live event without Nats-Sequence skipped");
            return None;
        };
        match proto::Event::decode(message.payload.clone()) {
            Ok(event) => Some(Self {
                sequence,
                previous: header("Nats-Last-Sequence"),
                event,
                trace,
            }),
            Err(err) => {
                tracing::warn!(error = %err, sequence, "undecodable live event skipped");
                None
            }
        }
    }
}

impl Membership {
    /// The next live event; `None` once the feed dropped this stream (see
    /// [`Membership::overflowed`]) or ended.
    pub async fn recv(&mut self) -> Option<Arc<LiveEvent>> {
        self.queue.recv().await
    }

    /// The stream fell behind and was dropped from the feed.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.user_id, &self.feed, self.id);
    }
}

/// The lock, even if a panic poisoned it: the data are plain lists a panic cannot leave
/// half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
