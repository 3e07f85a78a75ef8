//! One generation job, start to finish.
//!
//! GetGenerationContext first (a read: the prompt, its settings, the previous message;
//! a message already ended stops the job here). Then steps 1-2 and step 3 run at the same
//! time, so the LLMs do not wait for a commit:
//! 1. Listen for a cancellation of this message (the live copy of the user's events),
//!    before StartGeneration, so a cancel sent at any moment is seen.
//! 2. StartGeneration: the images to make and the provider.
//! 3. Intent and enhancement at the same time (one `join`), each with a deadline and a
//!    fallback, so neither an LLM outage nor a slow service stops the picture; an edit
//!    resolved to another prompt is enhanced once more (cached, so cheap).
//! 4. RecordIntent, and at the same time the images: the provider (retries, backoff,
//!    Retry-After) with progress events and keep-alives, the store, CompleteGeneration.
//!    One call per image, or per batch of images with consecutive seeds where the
//!    provider and the model render several at once; each image is still stored and
//!    completed on its own. An image's events wait for RecordIntent, so the user's stream
//!    stays in causal order while the recording costs the picture no time.
//! 5. Images that cannot be made are failed (their credits released); a cancel aborts
//!    the provider call at once, or, for a batch, once all its images are cancelled.
//!
//! Every state change goes through the conversation service's idempotent RPCs, so a job
//! redelivered after a crash repeats steps safely and credits move exactly once.
//!
//! By concern: `prepare` (intent, enhancement, the init image), `batch` (which images
//! share a provider call), `images` (one call's images: the call, the store, completion
//! or failure), `cancellation` (the watch of the user's cancels) and `progress`
//! (`generation_progress` events); this module orchestrates the job and decides what
//! becomes of its delivery.

mod batch;
mod cancellation;
mod images;
mod metrics;
mod prepare;
mod progress;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use atelier_events::jobs::Job;
use atelier_events::{Publisher, Subjects};
use atelier_images::ImageStore;
use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::enhancement::v1::enhancement_service_client::EnhancementServiceClient;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_proto::jobs::v1::GenerateJob;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{OutgoingCall, on_behalf_of};
use prost::Message as _;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::Config;
use crate::providers::{self, ImageProvider, ImageRequest, ProviderKind};

use self::cancellation::watch_cancellation;
use self::images::{ImageSignals, IntentRecorded, fail, image_deadline, make_images};
pub use self::metrics::WorkerMetrics;
use self::prepare::{Prepared, prepare};

pub type ConversationClient = ConversationServiceClient<InterceptedService<Channel, OutgoingCall>>;
pub type IntentClient = IntentServiceClient<InterceptedService<Channel, OutgoingCall>>;
pub type EnhancementClient = EnhancementServiceClient<InterceptedService<Channel, OutgoingCall>>;

/// Everything a job needs; shared by all the jobs of a process.
pub struct Worker {
    pub conversation: ConversationClient,
    pub intent: IntentClient,
    pub enhancement: EnhancementClient,
    pub providers: Providers,
    pub store: ImageStore,
    pub nats: async_nats::Client,
    pub publisher: Publisher,
    pub subjects: Subjects,
    pub config: Config,
    pub metrics: WorkerMetrics,
}

/// The providers this process can reach, by kind.
pub struct Providers {
    pub builtin: Arc<dyn ImageProvider>,
    pub openai: Option<Arc<dyn ImageProvider>>,
    pub automatic1111: Option<Arc<dyn ImageProvider>>,
    pub comfyui: Option<Arc<dyn ImageProvider>>,
}

impl Providers {
    pub fn from_config(config: &providers::ProvidersConfig) -> anyhow::Result<Self> {
        let optional =
            |kind, url: &Option<String>| -> anyhow::Result<Option<Arc<dyn ImageProvider>>> {
                url.as_ref()
                    .map(|_| providers::from_config(kind, config))
                    .transpose()
            };
        Ok(Self {
            builtin: providers::from_config(ProviderKind::Builtin, config)?,
            openai: optional(ProviderKind::Openai, &config.openai_base_url)?,
            automatic1111: optional(ProviderKind::Automatic1111, &config.automatic1111_url)?,
            comfyui: optional(ProviderKind::Comfyui, &config.comfyui_url)?,
        })
    }

    fn get(&self, name: &str) -> Option<(ProviderKind, Arc<dyn ImageProvider>)> {
        let kind = name.parse::<ProviderKind>().ok()?;
        let provider = match kind {
            ProviderKind::Builtin => Some(Arc::clone(&self.builtin)),
            ProviderKind::Openai => self.openai.clone(),
            ProviderKind::Automatic1111 => self.automatic1111.clone(),
            ProviderKind::Comfyui => self.comfyui.clone(),
        }?;
        Some((kind, provider))
    }
}

/// What went wrong with a job as a whole.
enum JobError {
    /// The conversation service (or NATS) is unreachable: try the job again later.
    Transient(String),
    /// The job itself is wrong (its message is gone or not its user's): retrying cannot help.
    Permanent(String),
}

/// Handles one delivery of a generation job, and acknowledges it unless it must be
/// retried.
pub async fn handle(worker: Arc<Worker>, job: Job) {
    let parsed = GenerateJob::decode(job.payload());
    let Ok(generate) = parsed else {
        // A payload no version of Atelier wrote: retrying cannot help.
        tracing::error!("undecodable generation job dropped");
        job.ack().await;
        return;
    };
    tracing::info!(message_id = %generate.message_id, delivered = job.delivered(), "generation job");
    let _alive = job.keep_alive();
    let redelivery = (!job.is_last_attempt()).then(|| redelivery_delay(job.delivered()));
    match run_job(&worker, &generate, redelivery).await {
        Ok(()) => job.ack().await,
        Err(JobError::Permanent(reason)) => {
            tracing::error!(%reason, "generation job dropped");
            job.ack().await;
        }
        Err(JobError::Transient(reason)) if !job.is_last_attempt() => {
            tracing::warn!(%reason, "generation job will be retried");
            job.retry_after(redelivery_delay(job.delivered())).await;
        }
        Err(JobError::Transient(reason)) => {
            tracing::error!(%reason, "generation job failed on its last attempt");
            // Fails what is unfinished and refunds it; acknowledged only once that is done.
            let failed = fail_unfinished(
                &worker,
                &generate,
                "the image could not be made; your credits were refunded",
            )
            .await;
            if failed {
                job.ack().await;
            } else {
                // The conversation service is out of reach: the job comes back (JetStream
                // redelivers without limit) and its next delivery, past the limit too,
                // tries to settle it again.
                job.retry_after(redelivery_delay(job.delivered())).await;
            }
        }
    }
}

/// 2 s, 8 s, 32 s, 2 min, then 5 min: an outage of the conversation service of several
/// minutes costs time, not the message.
fn redelivery_delay(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 8) - 1).unwrap_or(0);
    Duration::from_secs(2)
        .saturating_mul(4u32.saturating_pow(exponent))
        .min(Duration::from_secs(300))
}

/// `redelivery` is the wait before the job's next delivery, `None` on its last one.
async fn run_job(
    worker: &Worker,
    job: &GenerateJob,
    redelivery: Option<Duration>,
) -> Result<(), JobError> {
    // The read first: it is on the picture's critical path, the start is not. Done before
    // the start's transaction, it does not queue behind it in PostgreSQL.
    let context = worker
        .conversation
        .clone()
        .get_generation_context(as_user(
            internal::GetGenerationContextRequest {
                message_id: job.message_id.clone(),
            },
            &job.user_id,
        )?)
        .await
        .map_err(|status| transient("GetGenerationContext", &status))?
        .into_inner();
    if matches!(
        context.status(),
        proto::MessageStatus::Completed
            | proto::MessageStatus::Failed
            | proto::MessageStatus::Cancelled
    ) {
        // A redelivered job, or a cancel before the worker came: an end is final.
        tracing::info!("nothing to generate (finished or cancelled)");
        return Ok(());
    }
    // The LLMs are asked while the start commits: neither waits for the other. A failed
    // start drops the LLM calls at once, and the job is retried.
    let ((cancelled, started), prepared) = tokio::try_join!(start(worker, job), async {
        Ok(prepare(worker, job, context).await)
    })?;
    if started.generation_ids.is_empty() {
        tracing::info!("nothing to generate (finished or cancelled)");
        return Ok(());
    }
    let Prepared {
        resolved,
        enhanced,
        init,
        inherits,
    } = prepared;
    // A model whose API takes no image draws an edit from scratch (its resolved prompt).
    let text_only = |settings: Option<&internal::ModelSettings>| {
        settings.is_some_and(|settings| settings.text_to_image_only)
    };
    let init = init.filter(|_| !text_only(started.model_settings.as_ref()));
    let intent = as_user(
        internal::RecordIntentRequest {
            message_id: job.message_id.clone(),
            intent: Some(resolved.clone()),
            enhanced_prompt: enhanced.prompt.clone(),
            negative_prompt: enhanced.negative_prompt.clone(),
            init_generation_id: init
                .as_ref()
                .map(|init| init.generation_id.clone())
                .unwrap_or_default(),
            inherit_settings: inherits,
        },
        &job.user_id,
    )?;
    let (recorded, intent_recorded) = watch::channel(false);
    // An edit or re-roll that takes the previous message's model, size or seed is made
    // with what RecordIntent settled (and priced): its images wait for the answer. Every
    // other message's images start at once, while the intent is recorded.
    let (work, intent) = if inherits {
        let answer = worker
            .conversation
            .clone()
            .record_intent(intent)
            .await
            .map_err(|status| transient("RecordIntent", &status))?
            .into_inner();
        let _ = recorded.send(true);
        (
            Work {
                message: answer.message.unwrap_or_default(),
                provider: answer.provider,
                model_settings: answer.model_settings,
            },
            None,
        )
    } else {
        (
            Work {
                message: started.message.clone().unwrap_or_default(),
                provider: started.provider.clone(),
                model_settings: started.model_settings.clone(),
            },
            Some(intent),
        )
    };
    let init = init.filter(|_| !text_only(work.model_settings.as_ref()));
    let message = work.message;
    let settings = providers::ModelSettings::from(work.model_settings.unwrap_or_default());
    let Some((kind, provider)) = worker.providers.get(&work.provider) else {
        fail(
            worker,
            job,
            &started.generation_ids,
            "this model is not available right now; your credits were refunded",
        )
        .await?;
        return Ok(());
    };
    let record = async move {
        let Some(intent) = intent else {
            return Ok(());
        };
        worker
            .conversation
            .clone()
            .record_intent(intent)
            .await
            .map_err(|status| transient("RecordIntent", &status))?;
        let _ = recorded.send(true);
        Ok(())
    };

    // 4. The images, while the intent is recorded: one provider call per batch, which
    // is one image unless the provider renders several of consecutive seeds at once.
    let images = message
        .generations
        .iter()
        .filter(|generation| started.generation_ids.contains(&generation.id))
        .map(|generation| batch::Image {
            generation_id: generation.id.clone(),
            request: ImageRequest {
                model: generation.model.clone(),
                prompt: enhanced.prompt.clone(),
                negative_prompt: enhanced.negative_prompt.clone(),
                width: generation.width,
                height: generation.height,
                seed: u32::try_from(generation.seed).unwrap_or(u32::MAX),
                init_image: init.as_ref().map(|init| init.png.clone()),
                strength: if init.is_some() {
                    resolved.strength
                } else {
                    1.0
                },
                settings: settings.clone(),
            },
            deadline: image_deadline(
                generation.started_at.as_ref(),
                worker.config.provider_retries.deadline,
            ),
        })
        .collect();
    let images = batch::batches(images, |request| provider.max_batch(request))
        .into_iter()
        .map(|batch| {
            make_images(
                worker,
                job,
                (kind, Arc::clone(&provider)),
                batch,
                ImageSignals {
                    cancelled: cancelled.clone(),
                    intent_recorded: IntentRecorded(intent_recorded.clone()),
                },
                redelivery,
            )
        });
    let images = async {
        futures::future::join_all(images)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, JobError>>()
    };
    // A failed RecordIntent drops the image calls: the job is retried whole.
    tokio::try_join!(record, images)?;
    Ok(())
}

/// Steps 1 and 2: the cancellation watch, then StartGeneration.
async fn start(
    worker: &Worker,
    job: &GenerateJob,
) -> Result<
    (
        watch::Receiver<HashSet<String>>,
        internal::StartGenerationResponse,
    ),
    JobError,
> {
    let cancelled = watch_cancellation(worker, job).await?;
    let started = worker
        .conversation
        .clone()
        .start_generation(as_user(
            internal::StartGenerationRequest {
                message_id: job.message_id.clone(),
            },
            &job.user_id,
        )?)
        .await
        .map_err(|status| transient("StartGeneration", &status))?
        .into_inner();
    Ok((cancelled, started))
}

/// The message and its model's provider, as the images are to be made.
struct Work {
    message: proto::Message,
    provider: String,
    model_settings: Option<internal::ModelSettings>,
}

/// On the last attempt: fails whatever the message still has unfinished. False when even
/// that could not reach the conversation service.
async fn fail_unfinished(worker: &Worker, job: &GenerateJob, reason: &str) -> bool {
    let Ok(request) = as_user(
        proto::GetMessageRequest {
            message_id: job.message_id.clone(),
        },
        &job.user_id,
    ) else {
        return false;
    };
    let Ok(message) = worker.conversation.clone().get_message(request).await else {
        return false;
    };
    let unfinished: Vec<String> = message
        .into_inner()
        .message
        .map(|message| message.generations)
        .unwrap_or_default()
        .into_iter()
        .filter(|generation| {
            matches!(
                generation.status(),
                proto::GenerationStatus::Queued | proto::GenerationStatus::Running
            )
        })
        .map(|generation| generation.id)
        .collect();
    unfinished.is_empty() || fail(worker, job, &unfinished, reason).await.is_ok()
}

fn as_user<T>(message: T, user_id: &str) -> Result<tonic::Request<T>, JobError> {
    let mut request = tonic::Request::new(message);
    on_behalf_of(&mut request, user_id)
        .map_err(|status| JobError::Transient(status.message().to_owned()))?;
    Ok(request)
}

/// A failed call to another service: worth retrying unless the answer says the job
/// itself is wrong.
fn transient(call: &str, status: &tonic::Status) -> JobError {
    let reason = format!("{call}: {:?} {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::FailedPrecondition
        | tonic::Code::PermissionDenied => JobError::Permanent(reason),
        _ => JobError::Transient(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_back_off_to_five_minutes() {
        let delays: Vec<u64> = (1..=7).map(|n| redelivery_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 8, 32, 128, 300, 300, 300]);
    }

    #[test]
    fn only_failures_of_the_job_itself_are_permanent() {
        for code in [tonic::Code::NotFound, tonic::Code::InvalidArgument] {
            assert!(matches!(
                transient("x", &tonic::Status::new(code, "")),
                JobError::Permanent(_)
            ));
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Internal,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(matches!(
                transient("x", &tonic::Status::new(code, "")),
                JobError::Transient(_)
            ));
        }
    }
}
