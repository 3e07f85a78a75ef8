//! The job loop: set up the durable consumer (for as long as it takes), then settle every
//! title job.
//!
//! A title job settles in one of three ways, and only one of them asks for a retry:
//!
//! - the job cannot be read, the LLM is not configured, or it gives no usable title in
//!   time: the conversation keeps the automatic title SendMessage gave it, and the job is
//!   acknowledged (a retry would not make the model faster, and a poison message must not
//!   loop);
//! - ApplyTitle answers: acknowledged, whether the title was applied or the user had
//!   renamed the conversation first (their title wins, by the conversation service's
//!   conditional UPDATE, so there is no race to lose here);
//! - ApplyTitle fails in a way that may pass (the conversation service restarting, say):
//!   redelivered after a backoff, until the last attempt, which logs and acknowledges.
//!   The job is idempotent: ApplyTitle changes nothing once the title is set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use atelier_events::Subjects;
use atelier_events::jobs::{self, Job, JobConsumer, JobConsumerConfig, JobMetrics};
use atelier_llm::LlmClient;
use atelier_proto::conversation::v1::ApplyTitleRequest;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::jobs::v1::TitleJob;
use atelier_runtime::internal_call::{OutgoingCall, on_behalf_of};
use prost::Message as _;
use tokio::sync::watch;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::suggest;

pub type ConversationClient = ConversationServiceClient<InterceptedService<Channel, OutgoingCall>>;

/// The durable consumer every replica shares, so they split the title jobs.
pub const DURABLE_NAME: &str = "title";

/// The first wait before setting up the consumer again; it doubles up to the maximum.
const SETUP_BACKOFF_MIN: Duration = Duration::from_millis(250);
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The first redelivery delay after a failed ApplyTitle; it doubles per delivery.
const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What every job shares.
pub struct Worker {
    pub llm: Option<LlmClient>,
    pub conversation: ConversationClient,
    pub title_deadline: Duration,
}

/// Where the jobs come from.
pub struct Source {
    pub nats: atelier_runtime::mesh::NatsConfig,
    pub subjects: Subjects,
    pub jobs: JobConsumerConfig,
    /// The job queue's state, for `/metrics`.
    pub metrics: JobMetrics,
}

/// Consumes title jobs until `stopped` turns true (or its sender is dropped).
///
/// NATS may be down, slow, or missing the streams when this starts: setting up the
/// consumer is retried with backoff, and so is the whole loop if the job stream ever ends
/// before shutdown, so the process never has to be restarted to recover.
pub async fn consume(
    worker: Arc<Worker>,
    source: Source,
    ready: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
) {
    let mut js = None;
    let mut backoff = SETUP_BACKOFF_MIN;
    loop {
        let set_up = tokio::select! {
            () = until_stopped(stopped.clone()) => return,
            set_up = set_up(&mut js, &source) => set_up,
        };
        match set_up {
            Ok(consumer) => {
                tracing::info!(subject = %source.jobs.filter_subject, "consuming title jobs");
                backoff = SETUP_BACKOFF_MIN;
                let worker = Arc::clone(&worker);
                let handle = move |job: Job| Arc::clone(&worker).handle(job);
                let readiness = js
                    .as_ref()
                    .map(|js| jobs::ready_while_connected(js.client(), ready.clone()));
                let outcome = jobs::run(
                    consumer,
                    source.jobs.clone(),
                    source.metrics.clone(),
                    until_stopped(stopped.clone()),
                    handle,
                )
                .await;
                drop(readiness);
                if is_stopping(&stopped) {
                    return;
                }
                match outcome {
                    Ok(()) => tracing::warn!("the title job stream ended; setting it up again"),
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "the title job stream failed");
                    }
                }
            }
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                retry_in = ?backoff,
                "cannot set up the title consumer yet; retrying"
            ),
        }
        tokio::select! {
            () = until_stopped(stopped.clone()) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(SETUP_BACKOFF_MAX);
    }
}

/// Connects (once), creates the streams if they are missing and finds or creates the
/// durable consumer.
async fn set_up(
    js: &mut Option<jetstream::Context>,
    source: &Source,
) -> anyhow::Result<JobConsumer> {
    let js = match js {
        Some(js) => js,
        None => {
            // Returns at once and connects in the background; requests fail until then.
            let client = atelier_events::connect(&source.nats, "atelier-title")
                .await
                .with_context(|| format!("cannot connect to NATS at {}", source.nats.url))?;
            js.insert(jetstream::new(client))
        }
    };
    atelier_events::ensure_streams(js, &source.subjects).await?;
    jobs::consumer(js, &source.subjects.jobs_stream(), &source.jobs).await
}

impl Worker {
    async fn handle(self: Arc<Self>, job: Job) {
        let title_job = match TitleJob::decode(job.payload()) {
            Ok(title_job) => title_job,
            Err(err) => {
                tracing::error!(error = %err, "undecodable title job; dropping it");
                job.ack().await;
                return;
            }
        };
        let span = tracing::info_span!(
            "title_job",
            conversation_id = %title_job.conversation_id,
            user_id = %title_job.user_id,
            delivered = job.delivered(),
        );
        self.settle(job, title_job).instrument(span).await;
    }

    async fn settle(&self, job: Job, title_job: TitleJob) {
        // The LLM deadline is well under the default ack_wait, but a test or an operator
        // may shorten it: keep the job ours while we work on it.
        let _alive = job.keep_alive();
        let Some(title) = self.title_for(&title_job.prompt).await else {
            job.ack().await;
            return;
        };
        match self.apply(&title_job, &title).await {
            Ok(true) => tracing::info!(title, "LLM title applied"),
            Ok(false) => tracing::info!("the conversation has a title of its own; it stays"),
            Err(status) if is_transient(status.code()) && !job.is_last_attempt() => {
                let delay = retry_delay(job.delivered());
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    retry_in = ?delay,
                    "cannot apply the title yet; retrying"
                );
                job.retry_after(delay).await;
                return;
            }
            Err(status) => tracing::error!(
                code = ?status.code(),
                message = status.message(),
                last_attempt = job.is_last_attempt(),
                "cannot apply the title; the automatic title stays"
            ),
        }
        job.ack().await;
    }

    /// The LLM's title, or `None` to keep the automatic one.
    async fn title_for(&self, prompt: &str) -> Option<String> {
        let Some(llm) = &self.llm else {
            tracing::debug!("no LLM configured; the automatic title stays");
            return None;
        };
        if prompt.trim().is_empty() {
            tracing::warn!("title job without a prompt; the automatic title stays");
            return None;
        }
        match suggest::llm_title(llm, prompt, self.title_deadline).await {
            Ok(title) => Some(title),
            Err(err) => {
                tracing::warn!(
                    reason = err.kind(),
                    error = %err,
                    "no LLM title; the automatic title stays"
                );
                None
            }
        }
    }

    /// Whether the conversation took the title (false: the user had renamed it).
    async fn apply(&self, title_job: &TitleJob, title: &str) -> Result<bool, tonic::Status> {
        let mut request = tonic::Request::new(ApplyTitleRequest {
            conversation_id: title_job.conversation_id.clone(),
            title: title.to_owned(),
        });
        on_behalf_of(&mut request, &title_job.user_id)?;
        let response = self.conversation.clone().apply_title(request).await?;
        Ok(response.into_inner().applied)
    }
}

/// Whether a failed ApplyTitle may succeed if tried again later. Exhaustive on purpose: a
/// new code must be classified, not defaulted.
fn is_transient(code: Code) -> bool {
    match code {
        // The service is restarting, overloaded, or being redeployed (a wrong credential
        // or a missing method are what a rolling update looks like from here).
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated
        | Code::Unimplemented => true,
        // The job itself is wrong (a bad id, another user's conversation): it will be
        // wrong again.
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange => false,
    }
}

/// The wait before delivery `delivered + 1`: the minimum, doubling per delivery.
fn retry_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    RETRY_BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(RETRY_BACKOFF_MAX)
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone: the server stopped, so the jobs stop too.
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

fn is_stopping(stopped: &watch::Receiver<bool>) -> bool {
    *stopped.borrow() || stopped.has_changed().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_back_off_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(10), RETRY_BACKOFF_MAX);
        assert_eq!(retry_delay(i64::MAX), RETRY_BACKOFF_MAX);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert!(is_transient(Code::Unavailable));
        assert!(is_transient(Code::DeadlineExceeded));
        assert!(!is_transient(Code::InvalidArgument));
        assert!(!is_transient(Code::NotFound));
    }
}
