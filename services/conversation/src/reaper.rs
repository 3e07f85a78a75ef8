//! The reaper: settles messages the pipeline lost.
//!
//! A message normally ends (completed, failed, cancelled) through the generation worker's
//! calls, and a job a worker dropped comes back (the attempt limit is the worker's, see
//! `atelier_events::jobs`). What is left is a job lost outright (a purged stream, an outbox
//! row or a publish lost with a bug): its message would stay QUEUED or PROCESSING, its
//! credits reserved, for good. So every interval each replica claims the unfinished
//! messages unchanged for `stale_after`, far longer than any legitimate run (an image's
//! deadline is 2 minutes across all deliveries, and a job's redeliveries wait about 8
//! minutes in all), and:
//!
//! - the first time, publishes the message's job again. Every step of a job is idempotent,
//!   so if the job was only slow, the second one finds it finished (or makes its images
//!   again: time lost, never credits);
//! - a PROCESSING message still stale one period later has its unfinished images failed
//!   and refunded, as FailGeneration does. A QUEUED one may be waiting its turn behind a
//!   long queue, so it is never failed; its one republished job is enough.
//!
//! Claiming marks the rows (`reap_count`, `reaped_at`, `updated_at`) under `FOR UPDATE
//! SKIP LOCKED`, so replicas never act on one message twice in a period. Counted on
//! `/metrics` as `atelier_conversation_reaped_total{action}`.

use std::sync::Arc;
use std::time::Duration;

use crate::db::pipeline::{Ending, ReapedRow};
use crate::error::ServiceError;
use crate::{State, db, outbox, pipeline};

/// The most messages one run acts on; the rest wait for the next run.
const MAX_PER_RUN: i64 = 100;

/// What the user reads on a message the reaper failed.
pub const REAPED_REASON: &str = "the image could not be made in time; your credits were refunded";

/// What the reaper did, per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Republished,
    Failed,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Republished, Action::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Republished => "republished",
            Action::Failed => "failed",
        }
    }
}

/// Runs the reaper every `interval` until `stopped`.
pub async fn run_until(
    state: Arc<State>,
    interval: Duration,
    stale_after: Duration,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = ticks.tick() => {
                if let Err(err) = run_once(&state, stale_after).await {
                    tracing::warn!(error = %err, "reaper run failed; the next one tries again");
                }
            }
        }
    }
}

/// One run: claims the stale messages and acts on each. Returns what it did.
pub async fn run_once(
    state: &State,
    stale_after: Duration,
) -> Result<Vec<(uuid::Uuid, Action)>, ServiceError> {
    let now = db::now();
    let cutoff = now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let claimed = db::pipeline::claim_stale(&state.pool, cutoff, now, MAX_PER_RUN).await?;
    let mut done = Vec::with_capacity(claimed.len());
    for message in claimed {
        let action = if message.status == "processing" && message.reap_count >= 2 {
            fail(state, &message).await?;
            Action::Failed
        } else if message.reap_count == 1 {
            republish(state, &message).await?;
            Action::Republished
        } else {
            // A QUEUED message already republished once: it waits its turn.
            continue;
        };
        tracing::warn!(
            message_id = %message.id,
            status = %message.status,
            action = action.as_str(),
            "reaped a message the pipeline lost"
        );
        state.metrics.reaped(action);
        done.push((message.id, action));
    }
    Ok(done)
}

/// Publishes the message's job again, through the outbox like any job.
async fn republish(state: &State, message: &ReapedRow) -> Result<(), ServiceError> {
    let job = outbox::generate_job(&message.owner_id, message.conversation_id, message.id);
    let mut tx = state.pool.begin().await?;
    let earlier = db::outbox::insert(&mut tx, std::slice::from_ref(&job), db::now()).await?;
    tx.commit().await?;
    // A failed publish is left to the sweeper, like every outbox row.
    state
        .relay
        .publish_after(earlier, std::slice::from_ref(&job))
        .await;
    Ok(())
}

/// Fails the message's unfinished images and refunds them, with their events.
async fn fail(state: &State, message: &ReapedRow) -> Result<(), ServiceError> {
    let mut tx = state.pool.begin().await?;
    let Some(locked) = db::pipeline::lock_message(&mut tx, &message.owner_id, message.id).await?
    else {
        return Ok(());
    };
    pipeline::end(
        state,
        tx,
        &message.owner_id,
        &locked,
        None,
        Ending::Failed,
        REAPED_REASON,
    )
    .await?;
    Ok(())
}
