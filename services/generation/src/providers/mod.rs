//! Image providers: one trait in front of every image model the worker can call, and the
//! one retry policy they all share.
//!
//! Three implementations exist, chosen by config ([`ProviderKind`]):
//!
//! - [`builtin`]: a local renderer that draws a deterministic picture from the prompt and
//!   the seed, so the whole mesh runs (and its tests pass) with no network and no GPU;
//! - [`openai`]: the OpenAI images API, or any server that speaks its shape;
//! - [`automatic1111`]: the AUTOMATIC1111 web UI API, which reports real progress;
//! - [`comfyui`]: a ComfyUI server, driven by workflows in its API format with
//!   placeholders.
//!
//! What a catalog model needs beyond its name (a checkpoint, sampling settings, a
//! workflow, OpenAI's optional fields) arrives with each request as [`ModelSettings`]:
//! the catalog is the conversation service's, and StartGeneration passes it on.
//!
//! Providers make exactly one attempt per call and classify their failures as
//! [`ProviderError::Retryable`] or [`ProviderError::Permanent`]; retrying is the job of
//! one loop alone, behind [`generate_with_retries`], [`generate_until`] and (several
//! images in one call) [`generate_batch_until`]. Keeping the policy in one place means
//! every provider backs off the same way, honours `Retry-After` the same way and logs
//! retries the same way, and a provider's tests need no clock.
//!
//! # Cancellation
//!
//! A generation is cancelled by dropping the future that runs it (the worker drops it
//! when the user cancels or the process drains). Every provider must therefore be
//! cancel-safe: dropping its future at any `.await` must leave nothing to clean up on
//! this side. The only thing a provider may do on drop is a best-effort, fire-and-forget
//! request asking the remote server to stop working on an image nobody will read (the
//! AUTOMATIC1111 provider does; the OpenAI API has no such call).

pub mod automatic1111;
pub mod builtin;
pub mod comfyui;
mod http;
pub mod openai;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atelier_runtime::config::{ConfigError, optional_var, positive_var};
use bytes::Bytes;
use tokio::sync::watch;

pub use automatic1111::Automatic1111Provider;
pub use builtin::BuiltinProvider;
pub use comfyui::{ComfyUiProvider, Workflows};
pub use openai::OpenAiProvider;

/// One image to make: a text-to-image request, or an image-to-image one when
/// `init_image` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    /// The provider's own model name; providers that serve one model ignore it.
    pub model: String,
    pub prompt: String,
    /// What the picture must not show; empty for nothing.
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    /// Makes the result reproducible where the provider supports seeds.
    pub seed: u32,
    /// A PNG to start from (an edit of the previous image).
    pub init_image: Option<Bytes>,
    /// How far an edit may move away from `init_image`: 0 keeps it, 1 ignores it.
    /// Unused without an init image.
    pub strength: f32,
    /// The catalog's settings of the model; each provider reads what it understands.
    pub settings: ModelSettings,
}

/// How the catalog says a model is rendered (the internal proto's `ModelSettings`):
/// empty strings and `None` mean the provider's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSettings {
    pub checkpoint: String,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f32>,
    pub sampler: String,
    pub scheduler: String,
    /// Images of one message one call may render; 0 and 1 mean one per call.
    pub max_batch: u32,
    pub workflow: String,
    pub img2img_workflow: String,
    pub response_format: String,
    pub quality: String,
    pub background: String,
    /// The API takes no image: an edit is drawn from scratch.
    pub text_to_image_only: bool,
}

impl From<atelier_proto::conversation::v1::ModelSettings> for ModelSettings {
    fn from(settings: atelier_proto::conversation::v1::ModelSettings) -> Self {
        Self {
            checkpoint: settings.checkpoint,
            steps: settings.steps,
            cfg_scale: settings.cfg_scale,
            sampler: settings.sampler,
            scheduler: settings.scheduler,
            max_batch: settings.max_batch,
            workflow: settings.workflow,
            img2img_workflow: settings.img2img_workflow,
            response_format: settings.response_format,
            quality: settings.quality,
            background: settings.background,
            text_to_image_only: settings.text_to_image_only,
        }
    }
}

/// Something that turns an [`ImageRequest`] into a PNG.
///
/// Implementations make one attempt per call (see [`generate_with_retries`]) and must be
/// cancel-safe (see the module documentation).
#[tonic::async_trait]
pub trait ImageProvider: Send + Sync {
    /// Makes the image and returns it as PNG bytes.
    ///
    /// `progress` receives percentages, 0 to 100; 100 only once the image is there.
    async fn generate(
        &self,
        request: &ImageRequest,
        progress: &watch::Sender<u32>,
    ) -> Result<Bytes, ProviderError>;

    /// How many images of one request [`generate_batch`](Self::generate_batch) renders
    /// in one call; 1 for a provider that cannot batch.
    fn max_batch(&self, _request: &ImageRequest) -> u32 {
        1
    }

    /// Makes up to `count` images of `request` (never more than
    /// [`max_batch`](Self::max_batch)), image i with seed + i, in as few calls as the
    /// provider allows; one by one unless the provider overrides this.
    async fn generate_batch(
        &self,
        request: &ImageRequest,
        count: u32,
        progress: &watch::Sender<u32>,
    ) -> Result<Vec<Bytes>, ProviderError> {
        let count = count.clamp(1, self.max_batch(request));
        let mut images = Vec::new();
        for index in 0..count {
            let request = ImageRequest {
                seed: request.seed.wrapping_add(index),
                ..request.clone()
            };
            images.push(self.generate(&request, progress).await?);
        }
        Ok(images)
    }
}

/// Why a provider produced no image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The same request may succeed later: a timeout, a refused connection, 429, 5xx.
    #[error("image provider failed, may succeed on retry: {reason}")]
    Retryable {
        reason: String,
        /// How long the provider asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// The kind of trouble, for the user's "retrying" notice (the reason may hold the
        /// provider's own words, which are for the log).
        trouble: Trouble,
    },
    /// The same request will fail the same way: a rejected prompt, a bad key, an unknown
    /// model, a setting the provider cannot take.
    #[error("image provider failed: {reason}")]
    Permanent { reason: String },
}

/// What went wrong in a failure worth retrying, in terms a user can be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// No answer within the request timeout.
    TimedOut,
    /// Refused or reset connections, DNS failures, a body cut short.
    Unreachable,
    /// An HTTP status worth retrying: 408, 429 or 5xx.
    Status(u16),
    /// A 2xx answer that does not parse or holds no image: cut short, or a proxy's page.
    BadAnswer,
    /// The image's deadline passed while the provider was still failing.
    Deadline,
}

impl fmt::Display for Trouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => f.write_str("the image provider took too long to answer"),
            Self::Unreachable => f.write_str("the image provider could not be reached"),
            Self::Status(429) => f.write_str("the image provider is busy (HTTP 429)"),
            Self::Status(status) => write!(f, "the image provider failed (HTTP {status})"),
            Self::BadAnswer => f.write_str("the image provider sent an unreadable answer"),
            Self::Deadline => f.write_str("the image provider did not make it in time"),
        }
    }
}

impl ProviderError {
    /// A retryable failure to reach the provider (see [`Trouble::Unreachable`]).
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self::Retryable {
            reason: reason.into(),
            retry_after: None,
            trouble: Trouble::Unreachable,
        }
    }

    /// A retryable timeout.
    pub fn timed_out(reason: impl Into<String>) -> Self {
        Self::Retryable {
            reason: reason.into(),
            retry_after: None,
            trouble: Trouble::TimedOut,
        }
    }

    /// A retryable 2xx answer that is not what the API promises (see [`Trouble::BadAnswer`]).
    pub fn bad_answer(reason: impl Into<String>) -> Self {
        Self::Retryable {
            reason: reason.into(),
            retry_after: None,
            trouble: Trouble::BadAnswer,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Retryable { reason, .. } | Self::Permanent { reason } => reason,
        }
    }
}

/// How often and how patiently [`generate_with_retries`] tries again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; 0 counts as 1.
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub backoff_base: Duration,
    /// No wait is longer, a server's `Retry-After` included: a job must not sit on a
    /// worker for an hour because a provider said so, it is better failed and refunded.
    pub max_backoff: Duration,
    /// The most time one image may take from its first start, every attempt, wait and
    /// redelivery included: a provider down for good fails the image (and refunds it)
    /// within this, not after every delivery of the job has run out.
    pub deadline: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            deadline: Self::DEFAULT_DEADLINE,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): the server's
    /// `retry_after` when it gave one, else the exponential backoff; capped by
    /// `max_backoff` either way.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after.unwrap_or_else(|| {
            let exponent = attempt.saturating_sub(1);
            self.backoff_base
                .saturating_mul(2u32.checked_pow(exponent).unwrap_or(u32::MAX))
        });
        wait.min(self.max_backoff)
    }
}

/// A failed attempt that is about to be tried again: what the user is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retrying {
    /// The attempt that comes next: 2 for the first retry.
    pub next_attempt: u32,
    pub max_attempts: u32,
    /// How long until it starts.
    pub wait: Duration,
    pub trouble: Trouble,
}

/// Calls `provider` until it succeeds, fails permanently, or `policy` runs out of
/// attempts; the last error is returned as it was. `on_retry` hears of each retry before
/// its wait.
///
/// Each attempt starts its progress from 0 again: a retried image really does start
/// over, and the client is better told so than shown a bar that stalls.
///
/// Dropping the returned future cancels the attempt in flight, or the wait between two.
///
/// The image's deadline is `policy.deadline` from now; see [`generate_until`] for an
/// image that started earlier.
pub async fn generate_with_retries(
    provider: &dyn ImageProvider,
    request: &ImageRequest,
    progress: &watch::Sender<u32>,
    policy: &RetryPolicy,
    on_retry: &(dyn Fn(Retrying) + Send + Sync),
) -> Result<Bytes, ProviderError> {
    let deadline = tokio::time::Instant::now() + policy.deadline;
    generate_until(provider, request, progress, policy, deadline, on_retry).await
}

/// [`generate_with_retries`] with the image's deadline given: no attempt runs past it
/// (one still running then fails as [`Trouble::Deadline`]) and no retry starts whose
/// wait would end past it.
pub async fn generate_until(
    provider: &dyn ImageProvider,
    request: &ImageRequest,
    progress: &watch::Sender<u32>,
    policy: &RetryPolicy,
    deadline: tokio::time::Instant,
    on_retry: &(dyn Fn(Retrying) + Send + Sync),
) -> Result<Bytes, ProviderError> {
    retry_until(policy, deadline, progress, on_retry, || {
        provider.generate(request, progress)
    })
    .await
}

/// [`generate_until`] for a batch: each attempt is one
/// [`generate_batch`](ImageProvider::generate_batch) call for `count` images of
/// `request` (image i with seed + i), so the whole batch is retried or fails together.
/// `count` must not exceed the provider's [`max_batch`](ImageProvider::max_batch); an
/// answer without exactly `count` images is a retryable bad answer, never a short batch.
pub async fn generate_batch_until(
    provider: &dyn ImageProvider,
    request: &ImageRequest,
    count: u32,
    progress: &watch::Sender<u32>,
    policy: &RetryPolicy,
    deadline: tokio::time::Instant,
    on_retry: &(dyn Fn(Retrying) + Send + Sync),
) -> Result<Vec<Bytes>, ProviderError> {
    retry_until(policy, deadline, progress, on_retry, || async {
        let images = provider.generate_batch(request, count, progress).await?;
        if images.len() != usize::try_from(count).unwrap_or(usize::MAX) {
            return Err(ProviderError::bad_answer(format!(
                "a batch of {count} images answered with {}",
                images.len()
            )));
        }
        Ok(images)
    })
    .await
}

/// The one retry loop of [`generate_until`] and [`generate_batch_until`]: `attempt` is
/// called until it succeeds, fails permanently, runs out of attempts or of time.
async fn retry_until<T, Attempt>(
    policy: &RetryPolicy,
    deadline: tokio::time::Instant,
    progress: &watch::Sender<u32>,
    on_retry: &(dyn Fn(Retrying) + Send + Sync),
    mut attempt_once: impl FnMut() -> Attempt,
) -> Result<T, ProviderError>
where
    Attempt: Future<Output = Result<T, ProviderError>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt: u32 = 1;
    loop {
        let attempted = tokio::time::timeout_at(deadline, attempt_once()).await;
        let error = match attempted {
            Ok(Ok(made)) => return Ok(made),
            Ok(Err(error)) => error,
            Err(_elapsed) => {
                return Err(ProviderError::Retryable {
                    reason: format!(
                        "the image deadline ({:?}) passed during attempt {attempt}",
                        policy.deadline
                    ),
                    retry_after: None,
                    trouble: Trouble::Deadline,
                });
            }
        };
        let (retry_after, trouble) = match &error {
            ProviderError::Retryable {
                retry_after,
                trouble,
                ..
            } if attempt < max_attempts => (*retry_after, *trouble),
            _ => return Err(error),
        };
        let wait = policy.delay_after(attempt, retry_after);
        if tokio::time::Instant::now() + wait >= deadline {
            // The next attempt could not start in time: better failed (and refunded) now
            // than after a wait that ends past the deadline anyway.
            return Err(error);
        }
        tracing::warn!(
            attempt,
            max_attempts,
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            reason = error.reason(),
            "image provider attempt failed, retrying"
        );
        on_retry(Retrying {
            next_attempt: attempt.saturating_add(1),
            max_attempts,
            wait,
            trouble,
        });
        report(progress, 0);
        tokio::time::sleep(wait).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Which provider a model is served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Builtin,
    Openai,
    Automatic1111,
    Comfyui,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [
        Self::Builtin,
        Self::Openai,
        Self::Automatic1111,
        Self::Comfyui,
    ];

    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Openai => "openai",
            Self::Automatic1111 => "automatic1111",
            Self::Comfyui => "comfyui",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| {
                format!(
                    "unknown image provider {value:?}: expected builtin, openai, automatic1111 or comfyui"
                )
            })
    }
}

/// Where the remote providers live and how patient to be with them.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvidersConfig {
    /// The images API root, up to and including the version
    /// (`https://api.openai.com/v1`); the provider appends `/images/generations`.
    pub openai_base_url: Option<String>,
    /// Sent as a bearer token when set; compatible local servers usually need none.
    pub openai_api_key: Option<String>,
    /// Azure OpenAI: with a version set, the base URL is the resource's endpoint, the
    /// catalog model name is the deployment, and the key goes in `api-key`.
    pub openai_api_version: Option<String>,
    /// The web UI's root (`http://127.0.0.1:7860`), started with `--api`.
    pub automatic1111_url: Option<String>,
    /// Basic auth for a web UI started with `--api-auth user:pass`.
    pub automatic1111_username: Option<String>,
    pub automatic1111_password: Option<String>,
    /// The ComfyUI server's root (`http://127.0.0.1:8188`).
    pub comfyui_url: Option<String>,
    /// A directory of workflows in API format (`<name>.json`), beside the shipped
    /// `txt2img` and `img2img`; a file of the same name replaces a shipped one.
    pub comfyui_workflows_dir: Option<std::path::PathBuf>,
    /// The limit for one HTTP attempt, response body included. Generous by default:
    /// a diffusion model on a busy GPU takes tens of seconds per image.
    pub request_timeout: Duration,
    /// How often the AUTOMATIC1111 provider asks for progress.
    pub progress_interval: Duration,
}

impl ProvidersConfig {
    pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;
    pub const DEFAULT_PROGRESS_MS: u64 = 500;

    /// Reads the config from the environment:
    ///
    /// - `ATELIER_OPENAI_IMAGES_URL`: the OpenAI-compatible images API root, e.g.
    ///   `https://api.openai.com/v1`; unset means the `openai` provider is unavailable;
    /// - `ATELIER_OPENAI_API_KEY`: optional bearer token for it;
    /// - `ATELIER_OPENAI_API_VERSION`: set for Azure OpenAI (`api-version`);
    /// - `ATELIER_AUTOMATIC1111_URL`: the AUTOMATIC1111 web UI root; unset means the
    ///   `automatic1111` provider is unavailable;
    /// - `ATELIER_AUTOMATIC1111_USERNAME`, `ATELIER_AUTOMATIC1111_PASSWORD`: its
    ///   `--api-auth` credentials, both or neither;
    /// - `ATELIER_COMFYUI_URL`: the ComfyUI root; unset means `comfyui` is unavailable;
    /// - `ATELIER_COMFYUI_WORKFLOWS_DIR`: more workflows for it;
    /// - `ATELIER_PROVIDER_TIMEOUT_MS`: one HTTP attempt, default 120000;
    /// - `ATELIER_PROVIDER_PROGRESS_MS`: the progress poll interval, default 500.
    ///
    /// A value that is set but unusable is an error naming the variable.
    pub fn from_env() -> anyhow::Result<Self> {
        let openai_base_url = url_var("ATELIER_OPENAI_IMAGES_URL")?;
        let automatic1111_url = url_var("ATELIER_AUTOMATIC1111_URL")?;
        let automatic1111_username: Option<String> =
            optional_var("ATELIER_AUTOMATIC1111_USERNAME")?;
        let automatic1111_password: Option<String> =
            optional_var("ATELIER_AUTOMATIC1111_PASSWORD")?;
        if automatic1111_username.is_some() != automatic1111_password.is_some() {
            return Err(ConfigError::new(
                "ATELIER_AUTOMATIC1111_USERNAME",
                "<set or unset>",
                "set both ATELIER_AUTOMATIC1111_USERNAME and ATELIER_AUTOMATIC1111_PASSWORD, or neither",
            )
            .into());
        }
        Ok(Self {
            openai_base_url,
            openai_api_key: optional_var("ATELIER_OPENAI_API_KEY")?,
            openai_api_version: optional_var("ATELIER_OPENAI_API_VERSION")?,
            automatic1111_url,
            automatic1111_username,
            automatic1111_password,
            comfyui_url: url_var("ATELIER_COMFYUI_URL")?,
            comfyui_workflows_dir: optional_var::<String>("ATELIER_COMFYUI_WORKFLOWS_DIR")?
                .map(std::path::PathBuf::from),
            request_timeout: positive_millis(
                "ATELIER_PROVIDER_TIMEOUT_MS",
                Self::DEFAULT_TIMEOUT_MS,
            )?,
            progress_interval: positive_millis(
                "ATELIER_PROVIDER_PROGRESS_MS",
                Self::DEFAULT_PROGRESS_MS,
            )?,
        })
    }
}

/// No remote provider configured, and the default timeouts.
impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            openai_base_url: None,
            openai_api_key: None,
            openai_api_version: None,
            automatic1111_url: None,
            automatic1111_username: None,
            automatic1111_password: None,
            comfyui_url: None,
            comfyui_workflows_dir: None,
            request_timeout: Duration::from_millis(Self::DEFAULT_TIMEOUT_MS),
            progress_interval: Duration::from_millis(Self::DEFAULT_PROGRESS_MS),
        }
    }
}

// By hand, so the key never reaches a log through `{:?}`.
impl fmt::Debug for ProvidersConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidersConfig")
            .field("openai_base_url", &self.openai_base_url)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("openai_api_version", &self.openai_api_version)
            .field("automatic1111_url", &self.automatic1111_url)
            .field("automatic1111_username", &self.automatic1111_username)
            .field(
                "automatic1111_password",
                &self.automatic1111_password.as_ref().map(|_| "<redacted>"),
            )
            .field("comfyui_url", &self.comfyui_url)
            .field("comfyui_workflows_dir", &self.comfyui_workflows_dir)
            .field("request_timeout", &self.request_timeout)
            .field("progress_interval", &self.progress_interval)
            .finish()
    }
}

fn url_var(name: &str) -> anyhow::Result<Option<String>> {
    let Some(value) = optional_var::<String>(name)? else {
        return Ok(None);
    };
    http::check_url(&value).map_err(|reason| ConfigError::new(name, &value, reason))?;
    Ok(Some(value))
}

fn positive_millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(positive_var(name, default)?))
}

/// Builds the provider of `kind`; a remote kind whose URL is not configured is an error
/// naming the variable to set, so a catalog that points at it fails at start.
pub fn from_config(
    kind: ProviderKind,
    config: &ProvidersConfig,
) -> anyhow::Result<Arc<dyn ImageProvider>> {
    let provider: Arc<dyn ImageProvider> = match kind {
        ProviderKind::Builtin => Arc::new(BuiltinProvider::new()),
        ProviderKind::Openai => Arc::new(OpenAiProvider::new(config)?),
        ProviderKind::Automatic1111 => Arc::new(Automatic1111Provider::new(config)?),
        ProviderKind::Comfyui => Arc::new(ComfyUiProvider::new(config)?),
    };
    Ok(provider)
}

/// Sends `percent` unless the channel holds it already. Unlike `send`, this works with
/// no receiver, which is the normal case when nobody watches a generation.
fn report(progress: &watch::Sender<u32>, percent: u32) {
    let percent = percent.min(100);
    progress.send_if_modified(|current| {
        let changed = *current != percent;
        *current = percent;
        changed
    });
}

/// The error for a provider config field that is missing.
fn missing(kind: ProviderKind, variable: &str) -> anyhow::Error {
    anyhow::anyhow!("the {kind} image provider is not configured: set {variable}")
}

/// The HTTP client every remote provider uses.
fn http_client(config: &ProvidersConfig) -> anyhow::Result<reqwest::Client> {
    // A zero timeout would fail every request, each one as a retryable timeout: a config
    // mistake that is better refused at start.
    anyhow::ensure!(
        !config.request_timeout.is_zero(),
        "the image provider request timeout is zero"
    );
    reqwest::Client::builder()
        .timeout(config.request_timeout)
        // No image API redirects; one that does points at a wrong base URL (http for
        // https, a missing /v1), and following it would turn the POST into a GET and
        // hide the cause behind a 405.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the image provider HTTP client")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Fails with the scripted errors in order, then succeeds; batches by default
    /// (`generate` once per image) up to `max_batch`.
    struct Scripted {
        failures: Mutex<Vec<ProviderError>>,
        calls: Mutex<u32>,
        max_batch: u32,
    }

    impl Scripted {
        fn new(mut failures: Vec<ProviderError>) -> Self {
            failures.reverse();
            Self {
                failures: Mutex::new(failures),
                calls: Mutex::new(0),
                max_batch: 1,
            }
        }

        fn batching(self, max_batch: u32) -> Self {
            Self { max_batch, ..self }
        }

        fn calls(&self) -> u32 {
            *self.calls.lock().expect("not poisoned")
        }
    }

    #[tonic::async_trait]
    impl ImageProvider for Scripted {
        async fn generate(
            &self,
            _request: &ImageRequest,
            progress: &watch::Sender<u32>,
        ) -> Result<Bytes, ProviderError> {
            *self.calls.lock().expect("not poisoned") += 1;
            report(progress, 0);
            match self.failures.lock().expect("not poisoned").pop() {
                Some(error) => Err(error),
                None => {
                    report(progress, 100);
                    Ok(Bytes::from_static(b"png"))
                }
            }
        }

        fn max_batch(&self, _request: &ImageRequest) -> u32 {
            self.max_batch
        }
    }

    fn request() -> ImageRequest {
        ImageRequest {
            model: "m".to_owned(),
            prompt: "a red fox".to_owned(),
            negative_prompt: String::new(),
            width: 8,
            height: 8,
            seed: 1,
            init_image: None,
            strength: 0.5,
            settings: ModelSettings::default(),
        }
    }

    fn fast_policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff_base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_after(1, None), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2, None), Duration::from_millis(200));
        assert_eq!(policy.delay_after(3, None), Duration::from_millis(400));
        assert_eq!(policy.delay_after(5, None), Duration::from_secs(1));
        assert_eq!(policy.delay_after(u32::MAX, None), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_replaces_the_backoff_and_is_capped_too() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.delay_after(3, Some(Duration::ZERO)),
            Duration::ZERO,
            "the server said now"
        );
        assert_eq!(
            policy.delay_after(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay_after(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_success() {
        let provider = Scripted::new(vec![
            ProviderError::retryable("503"),
            ProviderError::Retryable {
                reason: "429".to_owned(),
                retry_after: Some(Duration::from_secs(3600)),
                trouble: Trouble::Status(429),
            },
        ]);
        let (progress, watcher) = watch::channel(0);
        let notices = Mutex::new(Vec::new());

        let png = generate_with_retries(&provider, &request(), &progress, &fast_policy(3), &|r| {
            notices.lock().expect("not poisoned").push(r);
        })
        .await
        .expect("the third attempt succeeds");

        assert_eq!(png, Bytes::from_static(b"png"));
        assert_eq!(provider.calls(), 3);
        assert_eq!(*watcher.borrow(), 100);
        // The user hears of each retry: which attempt comes, why, and when.
        let notices = notices.into_inner().expect("not poisoned");
        assert_eq!(
            notices,
            [
                Retrying {
                    next_attempt: 2,
                    max_attempts: 3,
                    wait: Duration::from_millis(1),
                    trouble: Trouble::Unreachable,
                },
                Retrying {
                    next_attempt: 3,
                    max_attempts: 3,
                    wait: Duration::from_millis(5),
                    trouble: Trouble::Status(429),
                },
            ]
        );
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let provider = Scripted::new(vec![ProviderError::permanent("bad prompt")]);
        let (progress, _watcher) = watch::channel(0);

        let err = generate_with_retries(&provider, &request(), &progress, &fast_policy(5), &|_| {})
            .await
            .expect_err("a permanent error");

        assert_eq!(err, ProviderError::permanent("bad prompt"));
        assert_eq!(provider.calls(), 1);
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_the_last_error_returned() {
        let provider = Scripted::new(vec![
            ProviderError::retryable("first"),
            ProviderError::retryable("second"),
            ProviderError::retryable("third"),
        ]);
        let (progress, _watcher) = watch::channel(0);

        let err = generate_with_retries(&provider, &request(), &progress, &fast_policy(2), &|_| {})
            .await
            .expect_err("out of attempts");

        assert_eq!(err, ProviderError::retryable("second"));
        assert_eq!(provider.calls(), 2);
    }

    #[tokio::test]
    async fn zero_attempts_still_makes_one() {
        let provider = Scripted::new(vec![ProviderError::retryable("first")]);
        let (progress, _watcher) = watch::channel(0);

        let err = generate_with_retries(&provider, &request(), &progress, &fast_policy(0), &|_| {})
            .await
            .expect_err("no retry");

        assert_eq!(err, ProviderError::retryable("first"));
        assert_eq!(provider.calls(), 1);
    }

    #[tokio::test]
    async fn a_batch_is_retried_whole() {
        let provider = Scripted::new(vec![ProviderError::retryable("503")]).batching(3);
        let (progress, _watcher) = watch::channel(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        let images = generate_batch_until(
            &provider,
            &request(),
            3,
            &progress,
            &fast_policy(2),
            deadline,
            &|_| {},
        )
        .await
        .expect("the second attempt makes the batch");

        assert_eq!(images.len(), 3);
        // The failed first image, then all three again.
        assert_eq!(provider.calls(), 4);
    }

    #[tokio::test]
    async fn a_batch_answered_short_is_a_retryable_bad_answer() {
        // Asked for more than it renders per call, the provider answers one image.
        let provider = Scripted::new(vec![]);
        let (progress, _watcher) = watch::channel(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

        let err = generate_batch_until(
            &provider,
            &request(),
            2,
            &progress,
            &fast_policy(2),
            deadline,
            &|_| {},
        )
        .await
        .expect_err("never a short batch");

        assert!(
            matches!(
                err,
                ProviderError::Retryable {
                    trouble: Trouble::BadAnswer,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(provider.calls(), 2, "retried");
    }

    #[test]
    fn retry_notices_say_what_went_wrong_without_provider_details() {
        assert_eq!(
            Trouble::TimedOut.to_string(),
            "the image provider took too long to answer"
        );
        assert_eq!(
            Trouble::Status(429).to_string(),
            "the image provider is busy (HTTP 429)"
        );
        assert_eq!(
            Trouble::Status(503).to_string(),
            "the image provider failed (HTTP 503)"
        );
    }

    #[test]
    fn report_works_without_receivers_and_caps_at_100() {
        let (progress, watcher) = watch::channel(0);
        drop(watcher);
        report(&progress, 40);
        assert_eq!(*progress.borrow(), 40);
        report(&progress, 250);
        assert_eq!(*progress.borrow(), 100);
    }

    #[test]
    fn provider_kinds_parse_from_their_config_names() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(" OpenAI ".parse::<ProviderKind>(), Ok(ProviderKind::Openai));
        let err = "dall-e".parse::<ProviderKind>().expect_err("unknown");
        assert!(
            err.contains("dall-e") && err.contains("automatic1111"),
            "{err}"
        );
    }

    #[test]
    fn remote_providers_need_their_url() {
        let config = ProvidersConfig::default();
        assert!(from_config(ProviderKind::Builtin, &config).is_ok());

        let err = from_config(ProviderKind::Openai, &config)
            .err()
            .expect("no URL")
            .to_string();
        assert!(err.contains("ATELIER_OPENAI_IMAGES_URL"), "{err}");

        let err = from_config(ProviderKind::Automatic1111, &config)
            .err()
            .expect("no URL")
            .to_string();
        assert!(err.contains("ATELIER_AUTOMATIC1111_URL"), "{err}");

        let config = ProvidersConfig {
            openai_base_url: Some("http://127.0.0.1:9/v1".to_owned()),
            automatic1111_url: Some("http://127.0.0.1:9".to_owned()),
            ..ProvidersConfig::default()
        };
        assert!(from_config(ProviderKind::Openai, &config).is_ok());
        assert!(from_config(ProviderKind::Automatic1111, &config).is_ok());

        let zero_timeout = ProvidersConfig {
            request_timeout: Duration::ZERO,
            ..config
        };
        assert!(from_config(ProviderKind::Openai, &zero_timeout).is_err());
        assert!(from_config(ProviderKind::Automatic1111, &zero_timeout).is_err());
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let config = ProvidersConfig {
            openai_api_key: Some("sk-very-secret".to_owned()),
            ..ProvidersConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    const PROBE: &str = "ATELIER_PROVIDERS_FROM_ENV_PROBE";

    /// What `from_env` returns with exactly the given provider variables set.
    fn from_env_with(vars: &[(&str, &str)]) -> String {
        atelier_testkit::rerun_with_env(
            "providers::tests::print_from_env",
            PROBE,
            &[
                "ATELIER_OPENAI_",
                "ATELIER_AUTOMATIC1111_",
                "ATELIER_COMFYUI_",
                "ATELIER_PROVIDER_",
            ],
            vars,
        )
    }

    #[test]
    fn print_from_env() {
        if std::env::var_os(PROBE).is_none() {
            return;
        }
        let printed = match ProvidersConfig::from_env() {
            Ok(config) => format!("{config:?}"),
            Err(err) => format!("error: {err}"),
        };
        println!("from_env: {printed}");
    }

    #[test]
    fn from_env_defaults() {
        let config = from_env_with(&[]);
        for expected in [
            "openai_base_url: None",
            "openai_api_key: None",
            "automatic1111_url: None",
            "request_timeout: 120s",
            "progress_interval: 500ms",
        ] {
            assert!(config.contains(expected), "{expected} in {config}");
        }
    }

    #[test]
    fn from_env_reads_every_variable() {
        let config = from_env_with(&[
            ("ATELIER_OPENAI_IMAGES_URL", "https://api.openai.com/v1"),
            ("ATELIER_OPENAI_API_KEY", "sk-from-env"),
            ("ATELIER_AUTOMATIC1111_URL", "http://gpu:7860"),
            ("ATELIER_PROVIDER_TIMEOUT_MS", "30000"),
            ("ATELIER_PROVIDER_PROGRESS_MS", "250"),
        ]);
        for expected in [
            r#"openai_base_url: Some("https://api.openai.com/v1")"#,
            r#"openai_api_key: Some("<redacted>")"#,
            r#"automatic1111_url: Some("http://gpu:7860")"#,
            "request_timeout: 30s",
            "progress_interval: 250ms",
        ] {
            assert!(config.contains(expected), "{expected} in {config}");
        }
        assert!(!config.contains("sk-from-env"), "{config}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("ATELIER_OPENAI_IMAGES_URL", "api.openai.com/v1"),
            ("ATELIER_AUTOMATIC1111_URL", "ftp://gpu"),
            ("ATELIER_PROVIDER_TIMEOUT_MS", "2m"),
            ("ATELIER_PROVIDER_TIMEOUT_MS", "0"),
            ("ATELIER_PROVIDER_PROGRESS_MS", "-1"),
        ] {
            let printed = from_env_with(&[(name, value)]);
            assert!(
                printed.starts_with("error: ") && printed.contains(name),
                "{name}={value}: {printed}"
            );
        }
    }
}
