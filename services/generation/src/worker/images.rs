//! The images of one provider call (one image, or a batch): the call (retries, backoff
//! and the images' deadline), its progress and retry notices, a cancel that aborts it,
//! then for each image the store and CompleteGeneration, or FailGeneration with a reason
//! fit for the user.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::jobs::v1::GenerateJob;
use bytes::Bytes;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::batch::Batch;
use super::cancellation::cancellation_of_all;
use super::progress::{Step, publish_progress, publish_progress_of_each};
use super::{JobError, Worker, as_user, transient};
use crate::providers::{self, ImageProvider, ProviderError, ProviderKind};

/// What an image's calls wait for: a cancel aborts them; and none of their events may
/// overtake the job's intent_resolved.
pub(super) struct ImageSignals {
    pub(super) cancelled: watch::Receiver<HashSet<String>>,
    pub(super) intent_recorded: IntentRecorded,
}

/// Resolves once RecordIntent has answered, so no progress, completion or failure of an
/// image reaches the user's stream before the intent it was made from. The image itself
/// does not wait: the provider call starts at once.
#[derive(Clone)]
pub(super) struct IntentRecorded(pub(super) watch::Receiver<bool>);

impl IntentRecorded {
    async fn wait(&mut self) -> Result<(), JobError> {
        self.0
            .wait_for(|recorded| *recorded)
            .await
            .map(drop)
            .map_err(|_| JobError::Transient("the intent was not recorded".to_owned()))
    }
}

/// How long an image may keep failing before it is failed and refunded.
#[derive(Clone, Copy)]
struct Patience {
    /// The image's total deadline, from its first start (see [`image_deadline`]).
    deadline: tokio::time::Instant,
    /// The wait before the job's next delivery; `None` on its last one.
    redelivery: Option<Duration>,
}

impl Patience {
    /// Whether a retryable failure now ends the image: no delivery is left, or the next
    /// one would start past the deadline.
    fn exhausted(self) -> bool {
        self.redelivery
            .is_none_or(|wait| tokio::time::Instant::now() + wait >= self.deadline)
    }
}

/// The deadline of an image first started at `started_at`: measured from that start, not
/// from this delivery, so redeliveries do not extend it. A start in the future (clock
/// skew between hosts) counts as now.
pub(super) fn image_deadline(
    started_at: Option<&prost_types::Timestamp>,
    deadline: Duration,
) -> tokio::time::Instant {
    let elapsed = started_at
        .and_then(|at| {
            let seconds = u64::try_from(at.seconds).ok()?;
            let nanos = u32::try_from(at.nanos).ok()?;
            let started = std::time::UNIX_EPOCH + Duration::new(seconds, nanos);
            std::time::SystemTime::now().duration_since(started).ok()
        })
        .unwrap_or_default();
    tokio::time::Instant::now() + deadline.saturating_sub(elapsed)
}

/// Makes, stores and reports the images of one provider call: one image, or a [`Batch`]
/// of several with consecutive seeds. A permanent provider failure fails every image of
/// the call, and so does a retryable one once their patience is exhausted.
///
/// A cancel aborts the call only once every image of it is cancelled: until then the
/// others are still wanted, so the call goes on and the cancelled images are just not
/// stored or completed.
pub(super) async fn make_images(
    worker: &Worker,
    job: &GenerateJob,
    (kind, provider): (ProviderKind, Arc<dyn ImageProvider>),
    batch: Batch,
    signals: ImageSignals,
    redelivery: Option<Duration>,
) -> Result<(), JobError> {
    let Batch {
        generation_ids,
        request,
        deadline,
    } = batch;
    let patience = Patience {
        deadline,
        redelivery,
    };
    let ImageSignals {
        mut cancelled,
        mut intent_recorded,
    } = signals;
    let (progress, mut progress_seen) = watch::channel(0u32);
    let (retries, mut retries_seen) = watch::channel(None::<providers::Retrying>);
    let policy = &worker.config.provider_retries;
    let on_retry = |retry| {
        retries.send_replace(Some(retry));
    };
    let started = std::time::Instant::now();
    // The provider call, retries included, as one span of the job's trace. Its progress
    // and retry events are published by `reporting`, beside it, in the job's span.
    let render = tracing::info_span!(
        "provider.render",
        provider = %kind,
        images = generation_ids.len(),
    );
    let rendering = async {
        let rendered = match u32::try_from(generation_ids.len()).unwrap_or(u32::MAX) {
            1 => providers::generate_until(
                provider.as_ref(),
                &request,
                &progress,
                policy,
                patience.deadline,
                &on_retry,
            )
            .await
            .map(|png| vec![png]),
            count => {
                providers::generate_batch_until(
                    provider.as_ref(),
                    &request,
                    count,
                    &progress,
                    policy,
                    patience.deadline,
                    &on_retry,
                )
                .await
            }
        };
        worker.metrics.provider_call(kind, started, &rendered);
        rendered
    }
    .instrument(render);
    // Runs beside the provider call and never finishes on its own: the select below ends
    // it with the call. A batch's progress is each of its images' progress.
    let mut reporting_order = intent_recorded.clone();
    let reporting = async {
        if reporting_order.wait().await.is_err() {
            // The job is failing; its image calls are about to be dropped.
            std::future::pending::<()>().await;
        }
        let mut step = Step {
            attempt: 1,
            max_attempts: policy.max_attempts.max(1),
            ..Step::default()
        };
        let mut last_sent: Option<u32> = None;
        loop {
            tokio::select! {
                changed = progress_seen.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let percent = *progress_seen.borrow_and_update();
                    // Every tenth of the way: enough for a progress bar, few events.
                    if last_sent.is_none_or(|last| percent >= last + 10) && percent < 100 {
                        let rendering = Step { stage: "rendering", percent, ..step.clone() };
                        publish_progress_of_each(worker, job, &generation_ids, &rendering).await;
                        last_sent = Some(percent);
                    }
                }
                changed = retries_seen.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(retry) = retries_seen.borrow_and_update().clone() else { continue };
                    step.attempt = retry.next_attempt;
                    let retrying = Step {
                        stage: "retrying",
                        percent: 0,
                        detail: retry.trouble.to_string(),
                        retry_in: retry.wait,
                        ..step.clone()
                    };
                    publish_progress_of_each(worker, job, &generation_ids, &retrying).await;
                    // The next attempt's bar starts again from its first report.
                    last_sent = None;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let outcome = tokio::select! {
        outcome = rendering => outcome,
        () = reporting => unreachable!("progress reporting never finishes"),
        () = cancellation_of_all(&mut cancelled, &generation_ids) => {
            tracing::info!(?generation_ids, "cancelled: provider call aborted");
            return Ok(());
        }
    };
    intent_recorded.wait().await?;
    match outcome {
        Ok(pngs) => {
            // Cloned, so that no borrow of the watch is held across the awaits below. A
            // cancel not seen yet is still safe: CompleteGeneration then changes nothing.
            let cancelled = cancelled.borrow().clone();
            let completions = generation_ids
                .iter()
                .zip(pngs)
                .filter(|(generation_id, _)| !cancelled.contains(*generation_id))
                .map(|(generation_id, png)| store_and_complete(worker, job, generation_id, png));
            futures::future::join_all(completions)
                .await
                .into_iter()
                .collect()
        }
        Err(err @ ProviderError::Permanent { .. }) => {
            fail(worker, job, &generation_ids, &user_reason(&err)).await
        }
        Err(err @ ProviderError::Retryable { .. }) if patience.exhausted() => {
            fail(worker, job, &generation_ids, &user_reason(&err)).await
        }
        Err(err) => Err(JobError::Transient(err.to_string())),
    }
}

async fn store_and_complete(
    worker: &Worker,
    job: &GenerateJob,
    generation_id: &str,
    png: Bytes,
) -> Result<(), JobError> {
    let key = atelier_images::key_for(&job.user_id, generation_id);
    // The "storing" event goes out while the image is written; both precede the
    // completion.
    let storing = Step {
        stage: "storing",
        percent: 100,
        ..Step::default()
    };
    let ((), stored) = tokio::join!(
        publish_progress(worker, job, generation_id, &storing),
        worker.store.put(&key, png),
    );
    stored.map_err(|err| JobError::Transient(format!("storing the image: {err}")))?;
    let answer = worker
        .conversation
        .clone()
        .complete_generation(as_user(
            internal::CompleteGenerationRequest {
                generation_id: generation_id.to_owned(),
                image_key: key.clone(),
            },
            &job.user_id,
        )?)
        .await
        .map_err(|status| transient("CompleteGeneration", &status))?
        .into_inner();
    if ended_without_this_image(&answer) {
        // Cancelled (or failed) after the worker last looked: nothing will ever refer to
        // the image just stored. An image completed before (a redelivered job) has this
        // same key and is kept.
        if let Err(err) = worker.store.delete(&key).await {
            tracing::warn!(error = %err, %key, "an image nobody refers to stays in the store");
        }
    }
    Ok(())
}

/// CompleteGeneration found the image ended otherwise than completed.
fn ended_without_this_image(answer: &internal::CompleteGenerationResponse) -> bool {
    !answer.completed
        && answer.generation.as_ref().is_some_and(|generation| {
            generation.status() != atelier_proto::v1::GenerationStatus::Completed
        })
}

/// Fails images (releasing their credits) with a reason for the user.
pub(super) async fn fail(
    worker: &Worker,
    job: &GenerateJob,
    generation_ids: &[String],
    reason: &str,
) -> Result<(), JobError> {
    worker
        .conversation
        .clone()
        .fail_generation(as_user(
            internal::FailGenerationRequest {
                generation_ids: generation_ids.to_vec(),
                reason: reason.to_owned(),
            },
            &job.user_id,
        )?)
        .await
        .map_err(|status| transient("FailGeneration", &status))?;
    Ok(())
}

/// Why an image failed, for the user: a refusal keeps the provider's own words (its API
/// writes them for callers, and the provider module has scrubbed any key from them),
/// shortened; an outage is said plainly.
fn user_reason(error: &ProviderError) -> String {
    tracing::warn!(reason = error.reason(), "image generation failed");
    match error {
        ProviderError::Permanent { reason } => {
            let reason: String = reason.chars().take(200).collect();
            format!("the image provider refused this image ({reason}); your credits were refunded")
        }
        ProviderError::Retryable { .. } => {
            "the image provider is unavailable right now; your credits were refunded".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::progress::now_timestamp;
    use atelier_proto::v1::GenerationStatus;

    fn answer(completed: bool, status: GenerationStatus) -> internal::CompleteGenerationResponse {
        internal::CompleteGenerationResponse {
            generation: Some(atelier_proto::v1::Generation {
                status: status.into(),
                ..Default::default()
            }),
            completed,
        }
    }

    #[test]
    fn only_an_image_that_ended_otherwise_is_left_without_a_reference() {
        use GenerationStatus::{Cancelled, Completed, Failed};
        assert!(!ended_without_this_image(&answer(true, Completed)));
        // Completed before, by an earlier delivery: the same key, still referred to.
        assert!(!ended_without_this_image(&answer(false, Completed)));
        assert!(ended_without_this_image(&answer(false, Cancelled)));
        assert!(ended_without_this_image(&answer(false, Failed)));
    }

    #[tokio::test]
    async fn an_image_deadline_counts_from_its_first_start() {
        let deadline = Duration::from_secs(120);
        let now = tokio::time::Instant::now();
        let fresh = image_deadline(None, deadline);
        assert!(fresh >= now + deadline);

        let started = now_timestamp();
        let a_minute_ago = prost_types::Timestamp {
            seconds: started.seconds - 60,
            ..started
        };
        let left = image_deadline(Some(&a_minute_ago), deadline) - now;
        assert!(
            left <= Duration::from_secs(61) && left >= Duration::from_secs(55),
            "{left:?}"
        );

        let long_ago = prost_types::Timestamp {
            seconds: started.seconds - 3600,
            ..started
        };
        assert!(image_deadline(Some(&long_ago), deadline) <= tokio::time::Instant::now());

        let patience = |redelivery| Patience {
            deadline: now + Duration::from_secs(30),
            redelivery,
        };
        assert!(patience(None).exhausted(), "the last delivery");
        assert!(
            patience(Some(Duration::from_secs(60))).exhausted(),
            "past it"
        );
        assert!(!patience(Some(Duration::from_secs(2))).exhausted());
    }
}
