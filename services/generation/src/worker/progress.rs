//! `generation_progress` events, published by the worker straight to the user's event
//! stream, best effort: unlike every other event they have no outbox row, since a
//! progress report is only worth something live.

use std::time::Duration;

use atelier_proto::jobs::v1::GenerateJob;
use atelier_proto::v1 as proto;
use prost::Message as _;
use uuid::Uuid;

use super::Worker;

/// One `generation_progress` event's content.
#[derive(Clone, Debug, Default)]
pub(super) struct Step {
    pub(super) stage: &'static str,
    pub(super) percent: u32,
    /// The provider attempt, 1 for the first; 0 where attempts do not apply (storing).
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    /// For "retrying": why, in words fit for the user.
    pub(super) detail: String,
    pub(super) retry_in: Duration,
}

pub(super) async fn publish_progress(
    worker: &Worker,
    job: &GenerateJob,
    generation_id: &str,
    step: &Step,
) {
    let event = proto::Event {
        id: Uuid::now_v7().to_string(),
        occurred_at: Some(now_timestamp()),
        user_id: job.user_id.clone(),
        conversation_id: job.conversation_id.clone(),
        message_id: job.message_id.clone(),
        payload: Some(proto::event::Payload::GenerationProgress(
            proto::GenerationProgress {
                generation_id: generation_id.to_owned(),
                stage: step.stage.to_owned(),
                percent: step.percent,
                attempt: step.attempt,
                max_attempts: step.max_attempts,
                detail: step.detail.clone(),
                retry_in_ms: u32::try_from(step.retry_in.as_millis()).unwrap_or(u32::MAX),
            },
        )),
    };
    // Progress is only useful live: a lost one is not worth retrying.
    if let Err(err) = worker
        .publisher
        .publish(
            worker.subjects.user_events(&job.user_id),
            &event.id,
            event.encode_to_vec().into(),
        )
        .await
    {
        tracing::debug!(error = %err, "progress event not published");
    }
}

/// The same step for every image of one provider call, one event each.
pub(super) async fn publish_progress_of_each(
    worker: &Worker,
    job: &GenerateJob,
    generation_ids: &[String],
    step: &Step,
) {
    for generation_id in generation_ids {
        publish_progress(worker, job, generation_id, step).await;
    }
}

pub(super) fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    }
}
