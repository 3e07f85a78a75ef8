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
//! 4. RecordIntent, and at the same time each image: the provider (retries, backoff,
//!    Retry-After) with progress events and keep-alives, the store, CompleteGeneration.
//!    An image's events wait for RecordIntent, so the user's stream stays in causal order
//!    while the recording costs the picture no time.
//! 5. Images that cannot be made are failed (their credits released); a cancel aborts
//!    the provider call at once.
//!
//! Every state change goes through the conversation service's idempotent RPCs, so a job
//! redelivered after a crash repeats steps safely and credits move exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use atelier_events::jobs::Job;
use atelier_events::{Publisher, Subjects};
use atelier_images::ImageStore;
use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::enhancement::v1 as enhancement;
use atelier_proto::enhancement::v1::enhancement_service_client::EnhancementServiceClient;
use atelier_proto::intent::v1 as intent;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_proto::jobs::v1::GenerateJob;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{OutgoingCall, on_behalf_of};
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::config::Config;
use crate::providers::{self, ImageProvider, ImageRequest, ProviderError, ProviderKind};

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

    fn get(&self, name: &str) -> Option<Arc<dyn ImageProvider>> {
        match name.parse::<ProviderKind>().ok()? {
            ProviderKind::Builtin => Some(Arc::clone(&self.builtin)),
            ProviderKind::Openai => self.openai.clone(),
            ProviderKind::Automatic1111 => self.automatic1111.clone(),
            ProviderKind::Comfyui => self.comfyui.clone(),
        }
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
            }
            // Not acknowledged: with deliveries exhausted JetStream keeps it for
            // inspection, and the message stays running until an operator acts.
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
    let message = work.message;
    let settings = providers::ModelSettings::from(work.model_settings.unwrap_or_default());
    let Some(provider) = worker.providers.get(&work.provider) else {
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

    // 4. The images, while the intent is recorded.
    let images = message
        .generations
        .iter()
        .filter(|generation| started.generation_ids.contains(&generation.id))
        .map(|generation| {
            let request = ImageRequest {
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
            };
            make_image(
                worker,
                job,
                Arc::clone(&provider),
                generation.id.clone(),
                request,
                ImageSignals {
                    cancelled: cancelled.clone(),
                    intent_recorded: IntentRecorded(intent_recorded.clone()),
                },
                Patience {
                    deadline: image_deadline(
                        generation.started_at.as_ref(),
                        worker.config.provider_retries.deadline,
                    ),
                    redelivery,
                },
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

/// What the images are made from.
struct Prepared {
    resolved: proto::ResolvedIntent,
    enhanced: Enhanced,
    /// The previous image to edit (img2img), when the intent is an edit of it.
    init: Option<InitImage>,
    /// The message follows the previous one and takes settings from it (see
    /// GetGenerationContext's inherited_settings): RecordIntent applies them.
    inherits: bool,
}

/// The message and its model's provider, as the images are to be made.
struct Work {
    message: proto::Message,
    provider: String,
    model_settings: Option<internal::ModelSettings>,
}

struct InitImage {
    generation_id: String,
    png: Bytes,
}

/// Step 3: intent and enhancement of the message's prompt, and the image an edit starts
/// from.
async fn prepare(
    worker: &Worker,
    job: &GenerateJob,
    context: internal::GetGenerationContextResponse,
) -> Prepared {
    let settings = context.settings.unwrap_or_default();
    let previous = context.previous;
    let prompt = context.prompt;
    let (resolved, enhanced) = tokio::join!(
        analyze_intent(worker, job, &prompt, previous.as_ref()),
        enhance(worker, job, &prompt, &settings),
    );
    let edit = resolved.kind() == proto::IntentKind::Edit;
    // A re-roll is a new picture of the previous prompt: the resolved prompt, not the
    // user's "another one", is what to draw (from scratch: no init image below).
    let reroll = resolved.kind() == proto::IntentKind::New && resolved.edit_type == "reroll";
    // Following the previous message, it takes that message's style and negative prompt
    // where its own are unset: the enhancement must be made with those.
    let inherited = context.inherited_settings.filter(|_| edit || reroll);
    let restyled = inherited.as_ref().is_some_and(|inherited| {
        inherited.style_preset != settings.style_preset
            || inherited.negative_prompt != settings.negative_prompt
    });
    let reprompted = (edit || reroll)
        && !resolved.resolved_prompt.is_empty()
        && resolved.resolved_prompt != prompt;
    let enhanced = if reprompted || restyled {
        let prompt = if reprompted {
            &resolved.resolved_prompt
        } else {
            &prompt
        };
        enhance(worker, job, prompt, inherited.as_ref().unwrap_or(&settings)).await
    } else {
        enhanced
    };
    let edit_from = previous.filter(|previous| edit && !previous.image_key.is_empty());
    let init = match edit_from {
        Some(previous) => match worker.store.get(&previous.image_key).await {
            Ok(png) => Some(InitImage {
                generation_id: previous.generation_id,
                png,
            }),
            Err(err) => {
                // The edit becomes a fresh picture of the resolved prompt.
                tracing::warn!(error = %err, "previous image unreadable; generating from scratch");
                None
            }
        },
        None => None,
    };
    Prepared {
        resolved,
        enhanced,
        init,
        inherits: inherited.is_some(),
    }
}

/// What an image's calls wait for: a cancel aborts them; and none of their events may
/// overtake the job's intent_resolved.
struct ImageSignals {
    cancelled: watch::Receiver<HashSet<String>>,
    intent_recorded: IntentRecorded,
}

/// Resolves once RecordIntent has answered, so no progress, completion or failure of an
/// image reaches the user's stream before the intent it was made from. The image itself
/// does not wait: the provider call starts at once.
#[derive(Clone)]
struct IntentRecorded(watch::Receiver<bool>);

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
fn image_deadline(
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

/// Makes, stores and reports one image; a permanent provider failure fails it, and so
/// does a retryable one once its patience is exhausted.
async fn make_image(
    worker: &Worker,
    job: &GenerateJob,
    provider: Arc<dyn ImageProvider>,
    generation_id: String,
    request: ImageRequest,
    signals: ImageSignals,
    patience: Patience,
) -> Result<(), JobError> {
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
    let rendering = providers::generate_until(
        provider.as_ref(),
        &request,
        &progress,
        policy,
        patience.deadline,
        &on_retry,
    );
    // Runs beside the provider call and never finishes on its own: the select below ends
    // it with the call.
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
                        publish_progress(worker, job, &generation_id, &rendering).await;
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
                    publish_progress(worker, job, &generation_id, &retrying).await;
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
        () = cancellation_of(&mut cancelled, &generation_id) => {
            tracing::info!(%generation_id, "cancelled: provider call aborted");
            return Ok(());
        }
    };
    intent_recorded.wait().await?;
    match outcome {
        Ok(png) => store_and_complete(worker, job, &generation_id, png).await,
        Err(err @ ProviderError::Permanent { .. }) => {
            fail(
                worker,
                job,
                std::slice::from_ref(&generation_id),
                &user_reason(&err),
            )
            .await
        }
        Err(err @ ProviderError::Retryable { .. }) if patience.exhausted() => {
            fail(
                worker,
                job,
                std::slice::from_ref(&generation_id),
                &user_reason(&err),
            )
            .await
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
    worker
        .conversation
        .clone()
        .complete_generation(as_user(
            internal::CompleteGenerationRequest {
                generation_id: generation_id.to_owned(),
                image_key: key,
            },
            &job.user_id,
        )?)
        .await
        .map_err(|status| transient("CompleteGeneration", &status))?;
    Ok(())
}

/// Fails images (releasing their credits) with a reason for the user.
async fn fail(
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

async fn analyze_intent(
    worker: &Worker,
    job: &GenerateJob,
    prompt: &str,
    previous: Option<&internal::PreviousMessage>,
) -> proto::ResolvedIntent {
    let new = proto::ResolvedIntent {
        kind: proto::IntentKind::New.into(),
        resolved_prompt: prompt.to_owned(),
        edit_type: String::new(),
        strength: 0.0,
    };
    let Some(previous) = previous else {
        // Nothing to edit: no need to ask.
        return new;
    };
    let Ok(request) = as_user(
        intent::AnalyzeIntentRequest {
            prompt: prompt.to_owned(),
            previous_prompt: previous.prompt.clone(),
            has_previous_image: !previous.image_key.is_empty(),
        },
        &job.user_id,
    ) else {
        return new;
    };
    let mut client = worker.intent.clone();
    match tokio::time::timeout(
        worker.config.intent_deadline,
        client.analyze_intent(request),
    )
    .await
    {
        Ok(Ok(answer)) => answer.into_inner().intent.unwrap_or(new),
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "intent service failed; treating the prompt as new");
            new
        }
        Err(_) => {
            tracing::warn!("intent service too slow; treating the prompt as new");
            new
        }
    }
}

struct Enhanced {
    prompt: String,
    negative_prompt: String,
}

async fn enhance(
    worker: &Worker,
    job: &GenerateJob,
    prompt: &str,
    settings: &proto::GenerationSettings,
) -> Enhanced {
    let plain = Enhanced {
        prompt: prompt.to_owned(),
        negative_prompt: settings.negative_prompt.clone(),
    };
    let Ok(request) = as_user(
        enhancement::EnhancePromptRequest {
            prompt: prompt.to_owned(),
            style_preset: settings.style_preset.clone(),
            negative_prompt: settings.negative_prompt.clone(),
        },
        &job.user_id,
    ) else {
        return plain;
    };
    let mut client = worker.enhancement.clone();
    match tokio::time::timeout(
        worker.config.enhancement_deadline,
        client.enhance_prompt(request),
    )
    .await
    {
        Ok(Ok(answer)) => {
            let answer = answer.into_inner();
            Enhanced {
                prompt: answer.prompt,
                negative_prompt: answer.negative_prompt,
            }
        }
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "enhancement failed; using the prompt as written");
            plain
        }
        Err(_) => {
            tracing::warn!("enhancement too slow; using the prompt as written");
            plain
        }
    }
}

/// Resolves when `generation_id` is cancelled; never, if the watcher is gone (a lost
/// watcher must not abort a render: a late cancel is still safe, CompleteGeneration then
/// changes nothing).
async fn cancellation_of(cancelled: &mut watch::Receiver<HashSet<String>>, generation_id: &str) {
    if cancelled
        .wait_for(|ids| ids.contains(generation_id))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// Subscribes to the user's live events and collects the ids of this message's cancelled
/// generations. Subscribed before StartGeneration, so no cancel slips between the two.
async fn watch_cancellation(
    worker: &Worker,
    job: &GenerateJob,
) -> Result<watch::Receiver<HashSet<String>>, JobError> {
    let mut live = worker
        .nats
        .subscribe(worker.subjects.live_user_events(&job.user_id))
        .await
        .map_err(|err| JobError::Transient(format!("subscribing to cancellations: {err}")))?;
    // The subscription must be registered with the server before StartGeneration.
    worker
        .nats
        .flush()
        .await
        .map_err(|err| JobError::Transient(format!("flushing the subscription: {err}")))?;
    let (cancel, cancelled) = watch::channel(HashSet::new());
    let message_id = job.message_id.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Every job's receiver gone: the job is over.
                () = cancel.closed() => return,
                event = live.next() => {
                    let Some(event) = event else { return };
                    let Ok(event) = proto::Event::decode(event.payload) else { continue };
                    if event.message_id != message_id {
                        continue;
                    }
                    if let Some(proto::event::Payload::GenerationCancelled(ended)) = event.payload {
                        cancel.send_modify(|ids| ids.extend(ended.generation_ids));
                    }
                }
            }
        }
    });
    Ok(cancelled)
}

/// One `generation_progress` event's content.
#[derive(Clone, Debug, Default)]
struct Step {
    stage: &'static str,
    percent: u32,
    /// The provider attempt, 1 for the first; 0 where attempts do not apply (storing).
    attempt: u32,
    max_attempts: u32,
    /// For "retrying": why, in words fit for the user.
    detail: String,
    retry_in: Duration,
}

async fn publish_progress(worker: &Worker, job: &GenerateJob, generation_id: &str, step: &Step) {
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

fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    }
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
