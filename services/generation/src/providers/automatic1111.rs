//! The `automatic1111` provider: the AUTOMATIC1111 Stable Diffusion web UI API (started
//! with `--api`), which Forge and SD.Next serve too.
//!
//! Text-to-image is `POST {url}/sdapi/v1/txt2img`, an edit `POST {url}/sdapi/v1/img2img`
//! with the previous image as `init_images` and the strength as `denoising_strength`.
//! Both answer only once the image is done, tens of seconds later on a busy GPU, so
//! while the POST runs the provider polls `GET {url}/sdapi/v1/progress` and forwards the
//! percentage: it is the one provider with real progress.
//!
//! The catalog model's settings choose the checkpoint (`override_settings.
//! sd_model_checkpoint`, left loaded afterwards: restoring the previous one would reload
//! gigabytes of weights on every call), steps, CFG scale, sampler and scheduler; without
//! them the server's loaded checkpoint and [`STEPS`], [`CFG_SCALE`] and [`SAMPLER`] apply.
//! Several images of one message can be rendered in one call (`batch_size`, seeds seed,
//! seed+1, ...: the web UI's own rule for a batch), up to the model's `max_batch`.
//!
//! A server started with `--api-auth user:pass` gets HTTP basic auth on every call.
//!
//! The web UI renders one image at a time for all its clients, and its progress and
//! interrupt endpoints act on whatever it is rendering now. That is why progress is kept
//! monotonic and below 100 until our image arrives (a poll may see the tail of another
//! client's job), and why interrupting is best-effort. A server dedicated to Atelier's
//! workers, the expected deployment, has no other client to confuse.
//!
//! Cancel-safe: when the call is dropped while the server renders, a drop guard spawns a
//! fire-and-forget `POST {url}/sdapi/v1/interrupt`, so the GPU does not keep working for
//! an image nobody will read; nothing else is left behind. A request that times out
//! interrupts the server the same way (awaited there, so that a retry does not queue
//! behind the abandoned render). A call that got its answer, image or error, never
//! interrupts: the server is done with it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{
    ImageProvider, ImageRequest, ProviderError, ProviderKind, ProvidersConfig, http, http_client,
    missing, report,
};

const NAME: &str = "automatic1111";

/// Sampling defaults for a model whose catalog entry sets none: a good quality/speed
/// balance for SD 1.5 and SDXL checkpoints alike.
pub const STEPS: u32 = 30;
pub const CFG_SCALE: f32 = 7.0;
pub const SAMPLER: &str = "DPM++ 2M";

/// The limit of the interrupt request: it is fire-and-forget, and the server answers it
/// at once when it is alive.
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The lowest limit of one progress poll. The web UI answers polls from the same Python
/// process that renders, so under load it may be slow; a late poll only skips an update.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for one AUTOMATIC1111-compatible server.
#[derive(Clone, Debug)]
pub struct Automatic1111Provider {
    http: reqwest::Client,
    /// Without a trailing slash.
    base_url: String,
    progress_interval: Duration,
    poll_timeout: Duration,
    /// `--api-auth` credentials.
    auth: Option<(String, String)>,
}

impl Automatic1111Provider {
    /// Fails when `automatic1111_url` is not set or not an http(s) URL.
    pub fn new(config: &ProvidersConfig) -> anyhow::Result<Self> {
        let base_url = config
            .automatic1111_url
            .as_deref()
            .ok_or_else(|| missing(ProviderKind::Automatic1111, "ATELIER_AUTOMATIC1111_URL"))?;
        anyhow::ensure!(
            !config.progress_interval.is_zero(),
            "the progress interval is zero"
        );
        Ok(Self {
            http: http_client(config)?,
            base_url: http::base_url(base_url)?,
            progress_interval: config.progress_interval,
            poll_timeout: config
                .progress_interval
                .saturating_mul(2)
                .max(MIN_POLL_TIMEOUT)
                .min(config.request_timeout),
            auth: config
                .automatic1111_username
                .clone()
                .zip(config.automatic1111_password.clone()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/sdapi/v1/{path}", self.base_url)
    }

    /// A request with the credentials, when the server wants them; `http::send` sends it.
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// The whole render of `count` images: the POST and the parsing of its answer.
    async fn render(
        &self,
        request: &ImageRequest,
        count: u32,
    ) -> Result<Vec<Bytes>, RenderFailure> {
        let (path, body) = match &request.init_image {
            Some(init_image) => (
                "img2img",
                RenderBody {
                    init_images: Some([http::encode_base64(init_image)]),
                    denoising_strength: Some(request.strength.clamp(0.0, 1.0)),
                    ..RenderBody::new(request, count)
                },
            ),
            None => ("txt2img", RenderBody::new(request, count)),
        };
        let response = http::send(NAME, self.call(reqwest::Method::POST, path).json(&body))
            .await
            .map_err(RenderFailure::transport)?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            // The status is the error; a body that cannot be read only loses the message.
            let body = response.bytes().await.unwrap_or_default();
            return Err(RenderFailure::answered(http::from_status(
                NAME,
                status,
                &headers,
                &body,
                self.auth.as_ref().map(|(_, password)| password.as_str()),
            )));
        }
        // Headers come only once the image is done, so a body cut short is no reason
        // to interrupt the server.
        let body = response
            .bytes()
            .await
            .map_err(|err| RenderFailure::answered(http::from_reqwest(NAME, &err)))?;
        parse_images(&body, count).map_err(RenderFailure::answered)
    }

    /// Polls progress until dropped; it never returns.
    async fn poll_progress(&self, progress: &watch::Sender<u32>) -> Infallible {
        let mut highest = 0;
        loop {
            // Sleep first: right after the POST, the server has not started our job.
            tokio::time::sleep(self.progress_interval).await;
            match self.fetch_progress().await {
                Ok(fraction) => {
                    let percent = percent(fraction);
                    if percent > highest {
                        highest = percent;
                        report(progress, highest);
                    }
                }
                // Progress is a nicety: a failed poll must not fail the render.
                Err(err) => tracing::debug!(error = %err, "{NAME}: progress poll failed"),
            }
        }
    }

    async fn fetch_progress(&self) -> Result<f64, reqwest::Error> {
        // Without the flag, every poll would carry the preview image as a large base64
        // string.
        let poll = self
            .call(reqwest::Method::GET, "progress?skip_current_image=true")
            .timeout(self.poll_timeout);
        let answer: ProgressResponse = http::send(NAME, poll)
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer.progress)
    }

    /// Asks the server to stop its current job, and waits for the answer.
    async fn interrupt(&self) {
        send_interrupt(self.call(reqwest::Method::POST, "interrupt")).await;
    }
}

#[tonic::async_trait]
impl ImageProvider for Automatic1111Provider {
    /// Reports 0, then the server's progress (monotonic, at most 99), then 100 with the
    /// image.
    async fn generate(
        &self,
        request: &ImageRequest,
        progress: &watch::Sender<u32>,
    ) -> Result<Bytes, ProviderError> {
        let mut images = self.generate_batch(request, 1, progress).await?;
        images
            .pop()
            .ok_or_else(|| ProviderError::bad_answer(format!("{NAME}: the answer has no image")))
    }

    fn max_batch(&self, request: &ImageRequest) -> u32 {
        request.settings.max_batch.max(1)
    }

    /// One call with `batch_size` = `count` (at most the model's `max_batch`; the rest of
    /// a larger count is the caller's to split).
    async fn generate_batch(
        &self,
        request: &ImageRequest,
        count: u32,
        progress: &watch::Sender<u32>,
    ) -> Result<Vec<Bytes>, ProviderError> {
        let count = count.clamp(1, self.max_batch(request));
        report(progress, 0);
        let mut guard = InterruptOnDrop {
            target: Some(self.call(reqwest::Method::POST, "interrupt")),
            span: tracing::Span::current(),
        };
        let outcome = tokio::select! {
            outcome = self.render(request, count) => outcome,
            never = self.poll_progress(progress) => match never {},
        };
        if let Err(failure) = &outcome
            && failure.server_may_be_busy
        {
            // We stopped waiting but the server renders on, and a retry would queue
            // behind an image nobody will read. Awaited, not spawned, so the interrupt
            // reaches the server before the retry does.
            self.interrupt().await;
        }
        guard.disarm();
        let images = outcome.map_err(|failure| failure.error)?;
        report(progress, 100);
        Ok(images)
    }
}

/// A failed render, and whether the server may still be working on it.
struct RenderFailure {
    error: ProviderError,
    /// True when we gave up waiting (a timeout) rather than the server answering.
    server_may_be_busy: bool,
}

impl RenderFailure {
    fn transport(err: reqwest::Error) -> Self {
        Self {
            server_may_be_busy: err.is_timeout(),
            error: http::from_reqwest(NAME, &err),
        }
    }

    fn answered(error: ProviderError) -> Self {
        Self {
            error,
            server_may_be_busy: false,
        }
    }
}

/// Interrupts the server's job if dropped while armed, i.e. when the call was cancelled
/// mid-render.
struct InterruptOnDrop {
    target: Option<reqwest::RequestBuilder>,
    /// The render's span: the interrupt belongs to its trace, whoever drops the guard.
    span: tracing::Span,
}

impl InterruptOnDrop {
    fn disarm(&mut self) {
        self.target = None;
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        let Some(interrupt) = self.target.take() else {
            return;
        };
        // Drop cannot await: the request goes on a task of its own. Without a runtime
        // (the runtime itself is shutting down) there is nobody left to send it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send_interrupt(interrupt).instrument(self.span.clone()));
            }
            Err(_) => tracing::debug!("{NAME}: no runtime left to send the interrupt"),
        }
    }
}

async fn send_interrupt(interrupt: reqwest::RequestBuilder) {
    let result = http::send(NAME, interrupt.timeout(INTERRUPT_TIMEOUT))
        .await
        .and_then(reqwest::Response::error_for_status);
    match result {
        Ok(_) => tracing::info!("{NAME}: interrupted the abandoned render"),
        Err(err) => {
            tracing::warn!(error = %err, "{NAME}: interrupting the abandoned render failed")
        }
    }
}

/// A percentage from the server's fraction: never 100 (only the image itself is 100) and
/// 0 for anything that is not a fraction.
fn percent(fraction: f64) -> u32 {
    if !fraction.is_finite() {
        return 0;
    }
    // Within 0..=99 after the clamp and min, so the cast is exact.
    ((fraction.clamp(0.0, 1.0) * 100.0).round() as u32).min(99)
}

/// The body of txt2img, and of img2img with the two optional fields.
#[derive(Serialize)]
struct RenderBody<'a> {
    prompt: &'a str,
    negative_prompt: &'a str,
    width: u32,
    height: u32,
    /// The first image's; the web UI gives image i of a batch seed + i.
    seed: u32,
    batch_size: u32,
    n_iter: u32,
    steps: u32,
    cfg_scale: f32,
    sampler_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scheduler: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    override_settings: Option<OverrideSettings<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    override_settings_restore_afterwards: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_images: Option<[String; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    denoising_strength: Option<f32>,
}

#[derive(Serialize)]
struct OverrideSettings<'a> {
    sd_model_checkpoint: &'a str,
}

impl<'a> RenderBody<'a> {
    fn new(request: &'a ImageRequest, count: u32) -> Self {
        let settings = &request.settings;
        let checkpoint = (!settings.checkpoint.is_empty()).then_some(settings.checkpoint.as_str());
        Self {
            prompt: &request.prompt,
            negative_prompt: &request.negative_prompt,
            width: request.width,
            height: request.height,
            seed: request.seed,
            batch_size: count.max(1),
            n_iter: 1,
            steps: settings.steps.unwrap_or(STEPS),
            cfg_scale: settings.cfg_scale.unwrap_or(CFG_SCALE),
            sampler_name: if settings.sampler.is_empty() {
                SAMPLER
            } else {
                &settings.sampler
            },
            scheduler: &settings.scheduler,
            override_settings: checkpoint.map(|sd_model_checkpoint| OverrideSettings {
                sd_model_checkpoint,
            }),
            // The checkpoint stays loaded for the next image of the same model.
            override_settings_restore_afterwards: checkpoint.map(|_| false),
            init_images: None,
            denoising_strength: None,
        }
    }
}

#[derive(Deserialize)]
struct RenderResponse {
    images: Vec<String>,
}

#[derive(Deserialize)]
struct ProgressResponse {
    progress: f64,
}

/// The `count` images of a 200 answer. With a batch the web UI may put a grid of them
/// first, so the images are the last `count`. An answer short of them (cut off, a
/// proxy's page) is worth another try.
fn parse_images(body: &[u8], count: u32) -> Result<Vec<Bytes>, ProviderError> {
    let response: RenderResponse = http::parse_json(NAME, body)?;
    let count = usize::try_from(count.max(1)).unwrap_or(1);
    if response.images.len() < count {
        return Err(ProviderError::bad_answer(format!(
            "{NAME}: the answer has {} images, {count} expected",
            response.images.len()
        )));
    }
    let first = response.images.len() - count;
    response.images[first..]
        .iter()
        .map(|encoded| http::decode_png(NAME, encoded))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_stay_below_100_until_the_image_arrives() {
        assert_eq!(percent(0.0), 0);
        assert_eq!(percent(0.304), 30);
        assert_eq!(percent(0.705), 71);
        assert_eq!(percent(0.996), 99);
        assert_eq!(percent(1.0), 99);
        assert_eq!(percent(7.0), 99);
        assert_eq!(percent(-1.0), 0);
        assert_eq!(percent(f64::NAN), 0);
    }

    #[test]
    fn the_txt2img_body_has_the_fixed_sampling_settings_and_no_img2img_fields() {
        let request = ImageRequest {
            model: "ignored".to_owned(),
            prompt: "a red fox".to_owned(),
            negative_prompt: "blur".to_owned(),
            width: 512,
            height: 768,
            seed: 42,
            init_image: None,
            strength: 0.4,
            settings: Default::default(),
        };
        let body = serde_json::to_value(RenderBody::new(&request, 1)).expect("serialisable");
        assert_eq!(
            body,
            serde_json::json!({
                "prompt": "a red fox",
                "negative_prompt": "blur",
                "width": 512,
                "height": 768,
                "seed": 42,
                "batch_size": 1,
                "n_iter": 1,
                "steps": 30,
                "cfg_scale": 7.0,
                "sampler_name": "DPM++ 2M"
            })
        );
    }

    #[test]
    fn answers_without_a_png_are_retried() {
        for body in [
            "not json",
            r#"{"images":["iVBOR"#,
            "{}",
            r#"{"images":[]}"#,
            r#"{"images":["aGVsbG8="]}"#,
        ] {
            let err = parse_images(body.as_bytes(), 1).expect_err(body);
            assert!(err.is_retryable(), "{body}: {err}");
        }
    }

    #[test]
    fn the_poll_timeout_is_bounded_both_ways() {
        let config = ProvidersConfig {
            automatic1111_url: Some("http://gpu:7860/".to_owned()),
            progress_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(60),
            ..ProvidersConfig::default()
        };
        let provider = Automatic1111Provider::new(&config).expect("a valid config");
        assert_eq!(provider.poll_timeout, MIN_POLL_TIMEOUT);
        assert_eq!(provider.url("txt2img"), "http://gpu:7860/sdapi/v1/txt2img");

        let slow = ProvidersConfig {
            progress_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            ..config
        };
        let provider = Automatic1111Provider::new(&slow).expect("a valid config");
        assert_eq!(provider.poll_timeout, Duration::from_secs(15));
    }
}
