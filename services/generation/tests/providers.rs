//! The HTTP providers against fakes of the real public APIs on loopback (wiremock): the
//! OpenAI images API and the AUTOMATIC1111 web UI API, with latency and faults injected
//! per test. Real HTTP, small durations, and no assertion that something happened within
//! some time: waits are bounded loops that fail with a message, not timing checks.

use std::sync::Arc;
use std::time::Duration;

use atelier_generation::providers::{
    self, BuiltinProvider, ImageProvider, ImageRequest, ProviderError, ProviderKind,
    ProvidersConfig, RetryPolicy, generate_with_retries,
};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "sk-test-key";

fn request() -> ImageRequest {
    ImageRequest {
        model: "gpt-image-1".to_owned(),
        prompt: "a red fox in the snow".to_owned(),
        negative_prompt: "blur, text".to_owned(),
        width: 64,
        height: 32,
        seed: 42,
        init_image: None,
        strength: 0.35,
    }
}

/// A real PNG, so the fakes answer with what a model would.
async fn png(prompt: &str) -> Bytes {
    let (progress, _watcher) = watch::channel(0);
    let request = ImageRequest {
        prompt: prompt.to_owned(),
        ..request()
    };
    BuiltinProvider::new()
        .generate(&request, &progress)
        .await
        .expect("a picture")
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn config() -> ProvidersConfig {
    ProvidersConfig {
        request_timeout: Duration::from_secs(10),
        progress_interval: Duration::from_millis(20),
        ..ProvidersConfig::default()
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

async fn received(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

async fn requests_to(server: &MockServer, endpoint: &str) -> usize {
    received(server)
        .await
        .iter()
        .filter(|request| request.url.path() == endpoint)
        .count()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

// --- OpenAI images API -------------------------------------------------------------

const GENERATIONS: &str = "/v1/images/generations";
const EDITS: &str = "/v1/images/edits";

fn openai(server: &MockServer) -> Arc<dyn ImageProvider> {
    let config = ProvidersConfig {
        openai_base_url: Some(format!("{}/v1", server.uri())),
        openai_api_key: Some(KEY.to_owned()),
        ..config()
    };
    providers::from_config(ProviderKind::Openai, &config).expect("a valid config")
}

/// The API's answer with `png` as the only image.
fn openai_image(png: &[u8]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "created": 1_713_833_628,
        "data": [{ "b64_json": base64(png), "revised_prompt": "a red fox in the snow" }],
        "usage": { "total_tokens": 100, "input_tokens": 50, "output_tokens": 50 }
    }))
}

fn openai_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": { "message": message, "type": "invalid_request_error", "param": null, "code": null }
    }))
}

/// Mounts `response` for the first `times` requests to `endpoint`; mount the later
/// answer after it.
async fn first(server: &MockServer, endpoint: &str, times: u64, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .respond_with(response)
        .up_to_n_times(times)
        .mount(server)
        .await;
}

async fn always(server: &MockServer, endpoint: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(endpoint))
        .respond_with(response)
        .mount(server)
        .await;
}

#[tokio::test]
async fn openai_generation_sends_the_request_fields_and_the_key() {
    let server = MockServer::start().await;
    let image = png("fake model output").await;
    Mock::given(method("POST"))
        .and(path(GENERATIONS))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "model": "gpt-image-1",
            "prompt": "a red fox in the snow Avoid: blur, text",
            "n": 1,
            "size": "64x32",
            "response_format": "b64_json"
        })))
        .respond_with(openai_image(&image))
        .expect(1)
        .mount(&server)
        .await;
    let (progress, watcher) = watch::channel(0);

    let out = openai(&server)
        .generate(&request(), &progress)
        .await
        .expect("an image");

    assert_eq!(out, image);
    assert_eq!(*watcher.borrow(), 100);
    let sent: serde_json::Value = received(&server).await[0].body_json().expect("a JSON body");
    // The API has neither field; an unknown one would be a 400.
    assert!(sent.get("seed").is_none(), "{sent}");
    assert!(sent.get("negative_prompt").is_none(), "{sent}");
}

#[tokio::test]
async fn openai_edit_sends_a_multipart_form_with_the_image() {
    let server = MockServer::start().await;
    let init = png("the previous image").await;
    let edited = png("the edited image").await;
    always(&server, EDITS, openai_image(&edited)).await;
    let request = ImageRequest {
        init_image: Some(init.clone()),
        negative_prompt: String::new(),
        ..request()
    };
    let (progress, _watcher) = watch::channel(0);

    let out = openai(&server)
        .generate(&request, &progress)
        .await
        .expect("an image");

    assert_eq!(out, edited);
    let requests = received(&server).await;
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.url.path(), EDITS);
    let content_type = sent
        .headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    assert_eq!(
        sent.headers
            .get("authorization")
            .and_then(|value| value.to_str().ok()),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = &sent.body;
    for field in [
        "name=\"model\"\r\n\r\ngpt-image-1\r\n",
        "name=\"prompt\"\r\n\r\na red fox in the snow\r\n",
        "name=\"size\"\r\n\r\n64x32\r\n",
        "name=\"n\"\r\n\r\n1\r\n",
        "name=\"response_format\"\r\n\r\nb64_json\r\n",
        "name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n",
    ] {
        assert!(contains(body, field.as_bytes()), "{field:?} in the form");
    }
    assert!(contains(body, &init), "the init image bytes in the form");
}

#[tokio::test]
async fn openai_server_error_then_success_is_retried() {
    let server = MockServer::start().await;
    let image = png("second time lucky").await;
    first(
        &server,
        GENERATIONS,
        1,
        openai_error(500, "The server had an error"),
    )
    .await;
    always(&server, GENERATIONS, openai_image(&image)).await;
    let (progress, watcher) = watch::channel(0);

    let out = generate_with_retries(
        openai(&server).as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect("an image");

    assert_eq!(out, image);
    assert_eq!(requests_to(&server, GENERATIONS).await, 2);
    assert_eq!(*watcher.borrow(), 100);
}

#[tokio::test]
async fn openai_rate_limit_carries_retry_after_and_is_retried() {
    let server = MockServer::start().await;
    let image = png("after the wait").await;
    let provider = openai(&server);
    let (progress, _watcher) = watch::channel(0);

    // What the provider makes of a 429 on its own: the server's wait, kept.
    first(
        &server,
        GENERATIONS,
        1,
        openai_error(429, "Rate limit reached").insert_header("retry-after", "7"),
    )
    .await;
    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("rate limited");
    match err {
        ProviderError::Retryable {
            reason,
            retry_after,
            ..
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert!(reason.contains("Rate limit reached"), "{reason}");
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }

    // And through the policy: `Retry-After: 0`, then success.
    first(
        &server,
        GENERATIONS,
        1,
        openai_error(429, "Rate limit reached").insert_header("retry-after", "0"),
    )
    .await;
    always(&server, GENERATIONS, openai_image(&image)).await;
    let out = generate_with_retries(
        provider.as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect("an image");

    assert_eq!(out, image);
    assert_eq!(requests_to(&server, GENERATIONS).await, 3);
}

#[tokio::test]
async fn openai_bad_request_is_permanent_and_not_retried() {
    let server = MockServer::start().await;
    let message = "Your request was rejected as a result of our safety system.";
    always(&server, GENERATIONS, openai_error(400, message)).await;
    let (progress, _watcher) = watch::channel(0);

    let err = generate_with_retries(
        openai(&server).as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect_err("rejected");

    match err {
        ProviderError::Permanent { reason } => {
            assert!(reason.contains(message), "{reason}");
            assert!(reason.contains("400"), "{reason}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert_eq!(requests_to(&server, GENERATIONS).await, 1);
}

#[tokio::test]
async fn openai_auth_and_not_found_errors_are_permanent_and_hide_the_key() {
    let server = MockServer::start().await;
    let provider = openai(&server);
    let (progress, _watcher) = watch::channel(0);
    for status in [401, 403, 404] {
        server.reset().await;
        always(
            &server,
            GENERATIONS,
            openai_error(status, &format!("Incorrect API key provided: {KEY}.")),
        )
        .await;

        let err = provider
            .generate(&request(), &progress)
            .await
            .expect_err("refused");

        assert!(!err.is_retryable(), "{status}: {err}");
        assert!(!err.to_string().contains(KEY), "{status}: {err}");
    }
}

#[tokio::test]
async fn openai_malformed_answer_is_permanent() {
    let server = MockServer::start().await;
    always(
        &server,
        GENERATIONS,
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/json")
            .set_body_string(r#"{"data": [{"b64_json": "#),
    )
    .await;
    let (progress, _watcher) = watch::channel(0);

    let err = generate_with_retries(
        openai(&server).as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect_err("malformed");

    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert_eq!(requests_to(&server, GENERATIONS).await, 1);
}

#[tokio::test]
async fn openai_answer_slower_than_the_timeout_is_a_retryable_timeout() {
    let server = MockServer::start().await;
    let image = png("too late").await;
    always(
        &server,
        GENERATIONS,
        openai_image(&image).set_delay(Duration::from_secs(5)),
    )
    .await;
    let config = ProvidersConfig {
        openai_base_url: Some(format!("{}/v1", server.uri())),
        request_timeout: Duration::from_millis(200),
        ..config()
    };
    let provider = providers::from_config(ProviderKind::Openai, &config).expect("a valid config");
    let (progress, _watcher) = watch::channel(0);

    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("timed out");

    match err {
        ProviderError::Retryable { reason, .. } => {
            assert!(reason.contains("timed out"), "{reason}");
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn openai_unreachable_server_is_retryable() {
    // Bound and released at once, so nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("an address").port()
    };
    let config = ProvidersConfig {
        openai_base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        ..config()
    };
    let provider = providers::from_config(ProviderKind::Openai, &config).expect("a valid config");
    let (progress, _watcher) = watch::channel(0);

    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("refused");

    assert!(err.is_retryable(), "{err}");
}

// --- AUTOMATIC1111 web UI API --------------------------------------------------------

const TXT2IMG: &str = "/sdapi/v1/txt2img";
const IMG2IMG: &str = "/sdapi/v1/img2img";
const PROGRESS: &str = "/sdapi/v1/progress";
const INTERRUPT: &str = "/sdapi/v1/interrupt";

fn automatic1111(server: &MockServer) -> Arc<dyn ImageProvider> {
    automatic1111_with(server, config())
}

fn automatic1111_with(server: &MockServer, config: ProvidersConfig) -> Arc<dyn ImageProvider> {
    let config = ProvidersConfig {
        automatic1111_url: Some(server.uri()),
        ..config
    };
    providers::from_config(ProviderKind::Automatic1111, &config).expect("a valid config")
}

/// The web UI's answer to txt2img and img2img.
fn a1111_image(png: &[u8]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "images": [base64(png)],
        "parameters": {},
        "info": "{\"seed\": 42}"
    }))
}

fn a1111_progress(fraction: f64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "progress": fraction,
        "eta_relative": 1.5,
        "state": {
            "skipped": false, "interrupted": false, "stopping_generation": false,
            "job": "task(abc)", "job_count": 1, "job_timestamp": "20240101000000",
            "job_no": 0, "sampling_step": 9, "sampling_steps": 30
        },
        "current_image": null,
        "textinfo": null
    }))
}

/// Progress answers 0.3 once, then 0.7.
async fn mount_progress(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path(PROGRESS))
        .and(query_param("skip_current_image", "true"))
        .respond_with(a1111_progress(0.3))
        .up_to_n_times(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(PROGRESS))
        .and(query_param("skip_current_image", "true"))
        .respond_with(a1111_progress(0.7))
        .mount(server)
        .await;
}

async fn mount_interrupt(server: &MockServer) {
    always(
        server,
        INTERRUPT,
        ResponseTemplate::new(200).set_body_json(json!({})),
    )
    .await;
}

/// Every value the channel holds while `provider` generates `request`, in order.
async fn generate_watched(
    provider: &dyn ImageProvider,
    request: &ImageRequest,
) -> (Result<Bytes, ProviderError>, Vec<u32>) {
    let (progress, mut watcher) = watch::channel(0);
    let watching = tokio::spawn(async move {
        let mut seen = vec![*watcher.borrow_and_update()];
        while watcher.changed().await.is_ok() {
            seen.push(*watcher.borrow_and_update());
        }
        seen
    });
    let result = provider.generate(request, &progress).await;
    drop(progress);
    (result, watching.await.expect("the watcher ends"))
}

/// Waits, up to about 5 s, for the fake to have received a request to `endpoint`.
async fn wait_for_request(server: &MockServer, endpoint: &str) -> bool {
    for _ in 0..100 {
        if requests_to(server, endpoint).await > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a1111_txt2img_reports_polled_progress_then_100() {
    let server = MockServer::start().await;
    let image = png("diffused").await;
    mount_progress(&server).await;
    mount_interrupt(&server).await;
    Mock::given(method("POST"))
        .and(path(TXT2IMG))
        .and(body_partial_json(json!({
            "prompt": "a red fox in the snow",
            "negative_prompt": "blur, text",
            "width": 64,
            "height": 32,
            "seed": 42,
            "steps": 30,
            "cfg_scale": 7,
            "sampler_name": "DPM++ 2M"
        })))
        // Long enough for several polls at the 20 ms interval.
        .respond_with(a1111_image(&image).set_delay(Duration::from_millis(400)))
        .expect(1)
        .mount(&server)
        .await;

    let (result, seen) = generate_watched(automatic1111(&server).as_ref(), &request()).await;

    assert_eq!(result.expect("an image"), image);
    assert!(
        seen.iter().any(|percent| *percent > 0 && *percent < 100),
        "no intermediate progress in {seen:?}"
    );
    assert_eq!(seen.last(), Some(&100), "{seen:?}");
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "not monotonic: {seen:?}"
    );
    assert!(requests_to(&server, PROGRESS).await >= 1);
    let sent: serde_json::Value = received(&server)
        .await
        .iter()
        .find(|request| request.url.path() == TXT2IMG)
        .expect("the txt2img request")
        .body_json()
        .expect("a JSON body");
    assert!(sent.get("init_images").is_none(), "{sent}");
    assert!(sent.get("denoising_strength").is_none(), "{sent}");
    // The render finished: nothing to interrupt.
    assert_eq!(requests_to(&server, INTERRUPT).await, 0);
}

#[tokio::test]
async fn a1111_img2img_sends_the_init_image_and_the_strength() {
    let server = MockServer::start().await;
    let init = png("the previous image").await;
    let edited = png("the edited image").await;
    mount_progress(&server).await;
    always(&server, IMG2IMG, a1111_image(&edited)).await;
    let request = ImageRequest {
        init_image: Some(init.clone()),
        ..request()
    };

    let (result, seen) = generate_watched(automatic1111(&server).as_ref(), &request).await;

    assert_eq!(result.expect("an image"), edited);
    assert_eq!(seen.last(), Some(&100));
    let requests = received(&server).await;
    let sent: serde_json::Value = requests
        .iter()
        .find(|request| request.url.path() == IMG2IMG)
        .expect("the img2img request")
        .body_json()
        .expect("a JSON body");
    assert_eq!(sent["init_images"], json!([base64(&init)]));
    let strength = sent["denoising_strength"].as_f64().expect("a number");
    assert!((strength - 0.35).abs() < 1e-6, "{strength}");
    assert_eq!(sent["prompt"], "a red fox in the snow");
    assert_eq!(sent["steps"], 30);
    assert_eq!(requests_to(&server, TXT2IMG).await, 0);
}

#[tokio::test]
async fn a1111_dropped_mid_render_interrupts_the_server() {
    let server = MockServer::start().await;
    let image = png("never delivered").await;
    mount_progress(&server).await;
    mount_interrupt(&server).await;
    always(
        &server,
        TXT2IMG,
        a1111_image(&image).set_delay(Duration::from_secs(30)),
    )
    .await;
    let provider = automatic1111(&server);
    let (progress, _watcher) = watch::channel(0);
    let request = request();

    // Cancel the way the worker does: drop the future, here once the render is under way.
    tokio::select! {
        result = provider.generate(&request, &progress) => {
            panic!("the fake answers after 30 s, yet the call ended: {result:?}");
        }
        () = async {
            while requests_to(&server, TXT2IMG).await == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => {}
    }

    assert!(
        wait_for_request(&server, INTERRUPT).await,
        "no interrupt reached the server"
    );
}

#[tokio::test]
async fn a1111_timeout_interrupts_the_server_and_is_retryable() {
    let server = MockServer::start().await;
    let image = png("too late").await;
    mount_progress(&server).await;
    mount_interrupt(&server).await;
    always(
        &server,
        TXT2IMG,
        a1111_image(&image).set_delay(Duration::from_secs(30)),
    )
    .await;
    let config = ProvidersConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    };
    let (progress, _watcher) = watch::channel(0);

    let err = automatic1111_with(&server, config)
        .generate(&request(), &progress)
        .await
        .expect_err("timed out");

    assert!(err.is_retryable(), "{err}");
    // Awaited before the call returns, so a retry cannot overtake it.
    assert_eq!(requests_to(&server, INTERRUPT).await, 1);
}

#[tokio::test]
async fn a1111_errors_have_the_same_classes_as_openai() {
    let server = MockServer::start().await;
    let provider = automatic1111(&server);
    let (progress, _watcher) = watch::channel(0);

    always(
        &server,
        TXT2IMG,
        ResponseTemplate::new(503).insert_header("retry-after", "3"),
    )
    .await;
    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("busy");
    assert!(
        matches!(
            err,
            ProviderError::Retryable { retry_after: Some(wait), .. } if wait == Duration::from_secs(3)
        ),
        "{err:?}"
    );

    server.reset().await;
    always(
        &server,
        TXT2IMG,
        ResponseTemplate::new(422).set_body_json(json!({
            "detail": [{ "loc": ["body", "width"], "msg": "value is not a valid integer", "type": "type_error.integer" }]
        })),
    )
    .await;
    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("invalid");
    match err {
        ProviderError::Permanent { reason } => {
            assert!(reason.contains("value is not a valid integer"), "{reason}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }

    server.reset().await;
    always(
        &server,
        TXT2IMG,
        ResponseTemplate::new(200).set_body_json(json!({ "images": [], "info": "" })),
    )
    .await;
    let err = provider
        .generate(&request(), &progress)
        .await
        .expect_err("no image");
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert_eq!(requests_to(&server, INTERRUPT).await, 0);
}
