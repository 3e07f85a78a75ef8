//! The queue reporter: tells the owner of each queued message how many messages are ahead
//! of it (`generation_queued`), and tells again while that number moves.
//!
//! The queue is every message with status 'queued', in `(created_at, id)` order across all
//! users: the order of the job stream. A message's position is the number of queued
//! messages before it, 0 when it is next.
//!
//! One background task per replica runs the reporter. Each run is one transaction:
//!
//! 1. `pg_try_advisory_xact_lock`: one replica reports at a time; the others skip the run.
//! 2. The head of the queue ([`REPORTED_DEPTH`] messages) is ranked; those whose rank is
//!    not the position last reported are read, except those whose SendMessage outbox rows
//!    are not all published yet (so a generation_queued never precedes its
//!    message_created).
//! 3. [`worth_reporting`] picks the ones to report now, head of the queue first, at most
//!    [`MAX_EVENTS_PER_RUN`] (the next run, shortly after, takes the rest).
//! 4. They are locked `FOR UPDATE SKIP LOCKED` where still queued and not reported since
//!    step 2: a message that StartGeneration or CancelGeneration holds is skipped.
//! 5. Their events are published on each owner's subject and the acks awaited **before the
//!    commit, while the row locks are held**. StartGeneration, CancelGeneration and
//!    FailGeneration lock the message row, commit, then publish; so their event can only
//!    enter the stream after this run's, and a message's generation_queued never follows its
//!    generation_started or generation_cancelled. If a publish fails, the run rolls back
//!    and the next one tries again.
//! 6. The positions are recorded with the time, and the transaction commits.
//!
//! A run happens shortly after a nudge ([`Nudge`]: SendMessage, StartGeneration,
//! CancelGeneration, FailGeneration and CompleteGeneration changing the queue, and the
//! relay once it marked rows published), so a burst of nudges is one run; and every
//! interval while the last run saw a non-empty queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atelier_proto::v1 as proto;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::db;
use crate::db::queue::Changed;
use crate::outbox::EventContext;
use crate::relay::Relay;

/// The key of the reporter's advisory lock, the same in every replica ("atelierQ").
pub const REPORTER_LOCK_KEY: i64 = 0x6174_656c_6965_7251;
/// How deep into the queue a run ranks messages: a run's cost stays bounded (a few
/// milliseconds) however long the queue grows while the workers are down; a message
/// further back is first reported once it comes within this depth.
pub const REPORTED_DEPTH: i64 = 2_000;
/// The most generation_queued events one run publishes; the rest wait for the next run,
/// which comes shortly after.
pub const MAX_EVENTS_PER_RUN: usize = 500;
/// Near the head of the queue, every move is reported.
pub const NEAR_HEAD: u32 = 10;
/// Further back, a move is reported once it is at least this percentage of the position
/// last reported.
pub const SIGNIFICANT_MOVE_PERCENT: u64 = 10;
/// How long a nudge waits for more nudges before the run: a burst of sends is one run.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How soon a run that found another replica's run under way is tried again (bounded by
/// the interval).
const RETRY_AFTER_SKIP: Duration = Duration::from_millis(100);

/// The position last published for a message, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastReport {
    pub position: u32,
    pub at: DateTime<Utc>,
}

/// Whether a queued message now at `position` gets a generation_queued at `now`:
///
/// - never reported: yes;
/// - the same position as last reported: no;
/// - reported less than `interval` ago: not yet;
/// - near the head (`position < NEAR_HEAD`): yes, every move counts there;
/// - further back: only a move of at least [`SIGNIFICANT_MOVE_PERCENT`] % of the position
///   last reported, so a long queue does not send every waiting user an event each time
///   its head moves.
pub fn worth_reporting(
    position: u32,
    last: Option<LastReport>,
    now: DateTime<Utc>,
    interval: Duration,
) -> bool {
    let Some(last) = last else { return true };
    if position == last.position {
        return false;
    }
    let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    if now.signed_duration_since(last.at) < interval {
        return false;
    }
    position < NEAR_HEAD
        || u64::from(position.abs_diff(last.position)) * 100
            >= u64::from(last.position) * SIGNIFICANT_MOVE_PERCENT
}

/// Asks the reporter for a run soon. Cheap, never waits; nudges made while a run is under
/// way give one more run after it.
#[derive(Clone, Debug, Default)]
pub struct Nudge(Arc<Notify>);

impl Nudge {
    pub fn nudge(&self) {
        self.0.notify_one();
    }
}

/// What one run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Another replica's run held the lock: nothing read, nothing published.
    Skipped,
    Done {
        /// Messages in the queue.
        queued: u64,
        /// generation_queued events published.
        reported: usize,
        /// More were worth reporting than one run publishes.
        more: bool,
    },
}

pub struct Reporter {
    pool: PgPool,
    relay: Arc<Relay>,
    interval: Duration,
    nudges: Nudge,
}

impl Reporter {
    /// A reporter that runs when `nudges` is nudged, and every `interval` while the queue
    /// is not empty.
    pub fn new(pool: PgPool, relay: Arc<Relay>, interval: Duration, nudges: Nudge) -> Self {
        Self {
            pool,
            relay,
            interval,
            nudges,
        }
    }

    /// Runs until `shutdown` resolves. The first run comes at once: a restart may find a
    /// queue.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut next = Some(Instant::now());
        loop {
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = self.nudges.0.notified() => {
                    let soon = Instant::now() + DEBOUNCE;
                    next = Some(next.map_or(soon, |at| at.min(soon)));
                    continue;
                }
                () = due => {}
            }
            let outcome = self.report_once().await;
            let now = Instant::now();
            next = match outcome {
                Ok(Run::Skipped) => Some(now + self.interval.min(RETRY_AFTER_SKIP)),
                Ok(Run::Done { more: true, .. }) => Some(now + DEBOUNCE),
                Ok(Run::Done { queued: 0, .. }) => None,
                Ok(Run::Done { .. }) => Some(now + self.interval),
                Err(err) => {
                    tracing::warn!(error = %err, "queue report failed; the next run retries");
                    Some(now + self.interval)
                }
            };
        }
    }

    /// One run (see the module's doc).
    #[tracing::instrument(name = "queue_report", skip(self))]
    pub async fn report_once(&self) -> anyhow::Result<Run> {
        let mut tx = self.pool.begin().await?;
        if !db::queue::try_lock_reporter(&mut tx, REPORTER_LOCK_KEY).await? {
            tx.rollback().await?;
            return Ok(Run::Skipped);
        }
        let queue = db::queue::changed_positions(&mut tx, REPORTED_DEPTH).await?;
        let mut due: Vec<&Changed> = queue
            .changed
            .iter()
            .filter(|changed| {
                let last = changed
                    .reported
                    .map(|(position, at)| LastReport { position, at });
                worth_reporting(changed.position, last, queue.now, self.interval)
            })
            .collect();
        let more = due.len() > MAX_EVENTS_PER_RUN;
        due.truncate(MAX_EVENTS_PER_RUN);
        let done = |reported| Run::Done {
            queued: queue.length,
            reported,
            more,
        };
        if due.is_empty() {
            tx.commit().await?;
            return Ok(done(0));
        }

        let ids: Vec<Uuid> = due.iter().map(|changed| changed.message_id).collect();
        let seen: Vec<Option<DateTime<Utc>>> = due
            .iter()
            .map(|changed| changed.reported.map(|(_, at)| at))
            .collect();
        let locked = db::queue::lock_still_queued(&mut tx, &ids, &seen).await?;
        let locked_ids: Vec<Uuid> = locked.iter().map(|message| message.id).collect();
        let mut waiting: HashMap<Uuid, Vec<Uuid>> =
            db::queue::queued_generations(&mut tx, &locked_ids)
                .await?
                .into_iter()
                .collect();
        let positions: HashMap<Uuid, u32> = due
            .iter()
            .map(|changed| (changed.message_id, changed.position))
            .collect();

        let at = db::now();
        let mut events = Vec::with_capacity(locked.len());
        let (mut reported_ids, mut reported_positions) = (Vec::new(), Vec::new());
        for message in &locked {
            let (Some(&position), Some(generation_ids)) =
                (positions.get(&message.id), waiting.remove(&message.id))
            else {
                // A queued message without a queued image has nothing to report.
                continue;
            };
            let context = EventContext {
                user_id: &message.owner_id,
                conversation_id: Some(message.conversation_id),
                message_id: Some(message.id),
                at,
            };
            let mut event = context.event(queued_payload(position, &generation_ids));
            // A run reports many messages: each event joins its own message's trace (its
            // outbox.publish span is a child of the SendMessage), not the run's.
            if message.traceparent.is_some() {
                event.traceparent.clone_from(&message.traceparent);
            }
            events.push(event);
            reported_ids.push(message.id);
            reported_positions.push(i32::try_from(position).unwrap_or(i32::MAX));
        }
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(done(0));
        }
        // While the rows are locked: see the module's doc, step 5.
        if !self.relay.publish_unrecorded(&events).await {
            tx.rollback().await?;
            anyhow::bail!("the queue's events were not all published");
        }
        db::queue::record(&mut tx, &reported_ids, &reported_positions).await?;
        tx.commit().await?;
        Ok(done(events.len()))
    }
}

/// The generation_queued payload; the deprecated `generation_id` is still filled for the
/// clients that read it.
#[allow(deprecated)]
fn queued_payload(position: u32, generation_ids: &[Uuid]) -> proto::event::Payload {
    let generation_ids: Vec<String> = generation_ids.iter().map(Uuid::to_string).collect();
    proto::event::Payload::GenerationQueued(proto::GenerationQueued {
        generation_id: generation_ids.first().cloned().unwrap_or_default(),
        position,
        generation_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
    }

    fn reported(position: u32, at: DateTime<Utc>) -> Option<LastReport> {
        Some(LastReport { position, at })
    }

    fn later(millis: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::milliseconds(millis)
    }

    #[test]
    fn a_message_never_reported_is_reported_wherever_it_stands() {
        for position in [0, 1, 9, 10, 5_000, u32::MAX] {
            assert!(
                worth_reporting(position, None, t0(), INTERVAL),
                "{position}"
            );
        }
    }

    #[test]
    fn an_unchanged_position_is_never_reported_again() {
        for position in [0, 3, 500] {
            let last = reported(position, t0());
            assert!(!worth_reporting(position, last, later(3_600_000), INTERVAL));
        }
    }

    #[test]
    fn a_move_waits_until_the_last_report_is_an_interval_old() {
        let last = reported(5, t0());
        assert!(!worth_reporting(4, last, t0(), INTERVAL));
        assert!(!worth_reporting(4, last, later(999), INTERVAL));
        assert!(worth_reporting(4, last, later(1_000), INTERVAL));
        // A clock that went back does not make the report due.
        assert!(!worth_reporting(4, last, later(-5_000), INTERVAL));
    }

    #[test]
    fn near_the_head_every_move_is_reported() {
        for (from, to) in [(1, 0), (9, 8), (10, 9), (40, 9), (3, 4)] {
            assert!(
                worth_reporting(to, reported(from, t0()), later(1_000), INTERVAL),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn further_back_only_a_tenth_of_the_position_counts() {
        let due = |from, to| worth_reporting(to, reported(from, t0()), later(1_000), INTERVAL);
        // From 100, 90 is the first position worth a report.
        assert!(!due(100, 99));
        assert!(!due(100, 91));
        assert!(due(100, 90));
        assert!(due(100, 40));
        // From 11, one step back is 9 % and one step forward is past the head's rule.
        assert!(!due(11, 10));
        assert!(due(11, 9));
        // From 5000, 500 places.
        assert!(!due(5_000, 4_501));
        assert!(due(5_000, 4_500));
        // A message can move back (an earlier one committed late): the same rule.
        assert!(!due(100, 105));
        assert!(due(100, 110));
    }

    #[test]
    fn extreme_positions_do_not_overflow() {
        assert!(worth_reporting(
            0,
            reported(u32::MAX, t0()),
            later(1_000),
            INTERVAL
        ));
        assert!(!worth_reporting(
            u32::MAX - 1,
            reported(u32::MAX, t0()),
            later(1_000),
            INTERVAL
        ));
        assert!(!worth_reporting(
            u32::MAX,
            reported(10, t0()),
            later(1_000),
            Duration::MAX
        ));
    }
}
