//! The HTTP providers against fakes of the real public APIs on loopback (wiremock): the
//! OpenAI images API and the AUTOMATIC1111 web UI API, with latency and faults injected
//! per test. Real HTTP, small durations, and no assertion that something happened within
//! some time: waits are bounded loops that fail with a message, not timing checks.

use std::sync::Arc;
use std::time::Duration;

use atelier_generation::providers::{
    self, BuiltinProvider, ImageProvider, ImageRequest, ModelSettings, ProviderError, ProviderKind,
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
        settings: Default::default(),
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
            "model": "dall-e-3",
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
    let dall_e = ImageRequest {
        model: "dall-e-3".to_owned(),
        settings: ModelSettings {
            response_format: "b64_json".to_owned(),
            ..ModelSettings::default()
        },
        ..request()
    };

    let out = openai(&server)
        .generate(&dall_e, &progress)
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
        "name=\"image\"; filename=\"image.png\"\r\nContent-Type: image/png\r\n",
    ] {
        assert!(contains(body, field.as_bytes()), "{field:?} in the form");
    }
    assert!(contains(body, &init), "the init image bytes in the form");
    // gpt-image-1 refuses the field; the catalog sets it only for models that take it.
    assert!(!contains(body, b"name=\"response_format\""));
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
async fn openai_truncated_answer_is_retried() {
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

    // A 200 cut short is the network's doing, not the API's contract: tried again.
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(requests_to(&server, GENERATIONS).await, 3);
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
            "cfg_scale": 7.0,
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
    // A 200 without the image is retried, as a cut-off answer would be.
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(requests_to(&server, INTERRUPT).await, 0);
}

#[tokio::test]
async fn openai_gpt_image_1_gets_no_response_format_but_its_quality_and_background() {
    let server = MockServer::start().await;
    let image = png("gpt-image-1 output").await;
    always(&server, GENERATIONS, openai_image(&image)).await;
    let request = ImageRequest {
        width: 1536,
        height: 1024,
        settings: ModelSettings {
            quality: "high".to_owned(),
            background: "transparent".to_owned(),
            ..ModelSettings::default()
        },
        ..request()
    };
    let (progress, _watcher) = watch::channel(0);

    let out = openai(&server)
        .generate(&request, &progress)
        .await
        .expect("an image");

    assert_eq!(out, image);
    let sent: serde_json::Value = received(&server).await[0].body_json().expect("a JSON body");
    // gpt-image-1 answers 400 to response_format: it always answers base64.
    assert!(sent.get("response_format").is_none(), "{sent}");
    assert_eq!(sent["size"], "1536x1024");
    assert_eq!(sent["quality"], "high");
    assert_eq!(sent["background"], "transparent");
}

#[tokio::test]
async fn openai_url_answers_are_downloaded() {
    let server = MockServer::start().await;
    let image = png("behind a link").await;
    always(
        &server,
        GENERATIONS,
        ResponseTemplate::new(200).set_body_json(json!({
            "created": 1_713_833_628,
            "data": [{ "url": format!("{}/files/img-1.png?sig=abc", server.uri()) }]
        })),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/files/img-1.png"))
        .and(query_param("sig", "abc"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(image.to_vec(), "image/png"))
        .expect(1)
        .mount(&server)
        .await;
    let (progress, _watcher) = watch::channel(0);

    let out = openai(&server)
        .generate(&request(), &progress)
        .await
        .expect("the downloaded image");

    assert_eq!(out, image);
    let download = received(&server)
        .await
        .into_iter()
        .find(|request| request.url.path() == "/files/img-1.png")
        .expect("the download");
    // The link is signed; the key is not for its host.
    assert!(download.headers.get("authorization").is_none());
}

#[tokio::test]
async fn azure_openai_uses_the_deployment_path_api_key_and_version() {
    let server = MockServer::start().await;
    let image = png("azure output").await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/gpt-image-1/images/generations"))
        .and(query_param("api-version", "2025-04-01-preview"))
        .and(header("api-key", KEY))
        .respond_with(openai_image(&image))
        .expect(1)
        .mount(&server)
        .await;
    let config = ProvidersConfig {
        openai_base_url: Some(server.uri()),
        openai_api_key: Some(KEY.to_owned()),
        openai_api_version: Some("2025-04-01-preview".to_owned()),
        ..config()
    };
    let provider = providers::from_config(ProviderKind::Openai, &config).expect("valid");
    let (progress, _watcher) = watch::channel(0);

    let out = provider
        .generate(&request(), &progress)
        .await
        .expect("an image");

    assert_eq!(out, image);
    let sent = &received(&server).await[0];
    assert!(sent.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a1111_with_api_auth_sends_basic_auth_the_checkpoint_and_catalog_settings() {
    let server = MockServer::start().await;
    let image = png("sdxl output").await;
    // "atelier:s3cret" in base64.
    let basic = "Basic YXRlbGllcjpzM2NyZXQ=";
    Mock::given(method("GET"))
        .and(path(PROGRESS))
        .and(header("authorization", basic))
        .respond_with(a1111_progress(0.5))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TXT2IMG))
        .and(header("authorization", basic))
        .respond_with(a1111_image(&image))
        .mount(&server)
        .await;
    let provider = automatic1111_with(
        &server,
        ProvidersConfig {
            automatic1111_username: Some("atelier".to_owned()),
            automatic1111_password: Some("s3cret".to_owned()),
            ..config()
        },
    );
    let request = ImageRequest {
        model: "sdxl".to_owned(),
        settings: ModelSettings {
            checkpoint: "sd_xl_base_1.0.safetensors".to_owned(),
            steps: Some(25),
            cfg_scale: Some(5.5),
            sampler: "DPM++ 2M SDE".to_owned(),
            scheduler: "Karras".to_owned(),
            ..ModelSettings::default()
        },
        ..request()
    };

    let (result, _seen) = generate_watched(provider.as_ref(), &request).await;

    assert_eq!(result.expect("an image"), image);
    let sent: serde_json::Value = received(&server)
        .await
        .iter()
        .find(|request| request.url.path() == TXT2IMG)
        .expect("the txt2img request")
        .body_json()
        .expect("a JSON body");
    assert_eq!(
        sent["override_settings"],
        json!({ "sd_model_checkpoint": "sd_xl_base_1.0.safetensors" })
    );
    assert_eq!(sent["override_settings_restore_afterwards"], false);
    assert_eq!(sent["steps"], 25);
    assert_eq!(sent["cfg_scale"], 5.5);
    assert_eq!(sent["sampler_name"], "DPM++ 2M SDE");
    assert_eq!(sent["scheduler"], "Karras");
}

#[tokio::test]
async fn a1111_without_credentials_behind_api_auth_is_permanent() {
    let server = MockServer::start().await;
    always(
        &server,
        TXT2IMG,
        ResponseTemplate::new(401)
            .set_body_json(json!({ "detail": "Incorrect username or password" })),
    )
    .await;
    mount_progress(&server).await;
    let (progress, _watcher) = watch::channel(0);
    let err = generate_with_retries(
        automatic1111(&server).as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect_err("unauthorised");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.reason().contains("Incorrect username"), "{err:?}");
}

#[tokio::test]
async fn a1111_renders_a_batch_in_one_call_with_consecutive_seeds() {
    let server = MockServer::start().await;
    let grid = png("the grid").await;
    let first = png("image 0").await;
    let second = png("image 1").await;
    let third = png("image 2").await;
    mount_progress(&server).await;
    always(
        &server,
        TXT2IMG,
        ResponseTemplate::new(200).set_body_json(json!({
            "images": [base64(&grid), base64(&first), base64(&second), base64(&third)],
            "parameters": {},
            "info": "{\"all_seeds\": [42, 43, 44]}"
        })),
    )
    .await;
    let request = ImageRequest {
        settings: ModelSettings {
            max_batch: 4,
            ..ModelSettings::default()
        },
        ..request()
    };
    let provider = automatic1111(&server);
    assert_eq!(provider.max_batch(&request), 4);
    let (progress, _watcher) = watch::channel(0);

    let images = provider
        .generate_batch(&request, 3, &progress)
        .await
        .expect("three images");

    // The grid the web UI puts first is not one of them.
    assert_eq!(images, [first, second, third]);
    assert_eq!(requests_to(&server, TXT2IMG).await, 1);
    let sent: serde_json::Value = received(&server)
        .await
        .iter()
        .find(|request| request.url.path() == TXT2IMG)
        .expect("the txt2img request")
        .body_json()
        .expect("a JSON body");
    assert_eq!(sent["batch_size"], 3);
    assert_eq!(sent["n_iter"], 1);
    assert_eq!(sent["seed"], 42, "image i gets seed + i");
}

#[tokio::test]
async fn a1111_truncated_answer_is_retried() {
    let server = MockServer::start().await;
    let image = png("whole this time").await;
    mount_progress(&server).await;
    first(
        &server,
        TXT2IMG,
        1,
        ResponseTemplate::new(200)
            .insert_header("content-type", "application/json")
            .set_body_string(r#"{"images": ["iVBORw0KGgo"#),
    )
    .await;
    always(&server, TXT2IMG, a1111_image(&image)).await;
    let (progress, _watcher) = watch::channel(0);

    let out = generate_with_retries(
        automatic1111(&server).as_ref(),
        &request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect("the second attempt");

    assert_eq!(out, image);
    assert_eq!(requests_to(&server, TXT2IMG).await, 2);
}

fn comfyui(server: &MockServer) -> Arc<dyn ImageProvider> {
    let config = ProvidersConfig {
        comfyui_url: Some(server.uri()),
        ..config()
    };
    providers::from_config(ProviderKind::Comfyui, &config).expect("a valid config")
}

fn comfyui_request() -> ImageRequest {
    ImageRequest {
        model: "comfyui-sdxl".to_owned(),
        settings: ModelSettings {
            checkpoint: "sd_xl_base_1.0.safetensors".to_owned(),
            sampler: "dpmpp_2m".to_owned(),
            scheduler: "karras".to_owned(),
            ..ModelSettings::default()
        },
        ..request()
    }
}

#[tokio::test]
async fn comfyui_txt2img_queues_the_filled_workflow_reports_progress_and_views_the_output() {
    let server = atelier_testkit::fakes::comfyui(3, 64, 32).await;

    let (result, seen) = generate_watched(comfyui(&server).as_ref(), &comfyui_request()).await;

    let png = result.expect("an image");
    assert!(png.starts_with(b"\x89PNG"));
    assert_eq!(seen.first(), Some(&0));
    assert!(seen.contains(&50), "running is reported: {seen:?}");
    assert_eq!(seen.last(), Some(&100));
    let requests = received(&server).await;
    let queued: serde_json::Value = requests
        .iter()
        .find(|request| request.url.path() == "/prompt")
        .expect("the queued prompt")
        .body_json()
        .expect("a JSON body");
    assert!(
        queued["client_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let workflow = &queued["prompt"];
    assert_eq!(workflow["6"]["inputs"]["text"], "a red fox in the snow");
    assert_eq!(workflow["7"]["inputs"]["text"], "blur, text");
    assert_eq!(workflow["3"]["inputs"]["seed"], 42);
    assert_eq!(workflow["3"]["inputs"]["sampler_name"], "dpmpp_2m");
    assert_eq!(workflow["3"]["inputs"]["scheduler"], "karras");
    assert_eq!(workflow["5"]["inputs"]["width"], 64);
    assert_eq!(workflow["5"]["inputs"]["height"], 32);
    assert_eq!(
        workflow["4"]["inputs"]["ckpt_name"],
        "sd_xl_base_1.0.safetensors"
    );
    let view = requests
        .iter()
        .find(|request| request.url.path() == "/view")
        .expect("the output fetched");
    let query: Vec<(String, String)> = view.url.query_pairs().into_owned().collect();
    assert!(query.contains(&("filename".to_owned(), "atelier_00001_.png".to_owned())));
    assert!(query.contains(&("type".to_owned(), "output".to_owned())));
    assert_eq!(requests_to(&server, "/upload/image").await, 0);
}

#[tokio::test]
async fn comfyui_img2img_uploads_the_init_image_and_loads_it_by_its_name() {
    let server = atelier_testkit::fakes::comfyui(1, 64, 32).await;
    let init = png("the previous image").await;
    let request = ImageRequest {
        init_image: Some(init.clone()),
        ..comfyui_request()
    };

    let (result, _seen) = generate_watched(comfyui(&server).as_ref(), &request).await;

    result.expect("an image");
    let requests = received(&server).await;
    let upload = requests
        .iter()
        .find(|request| request.url.path() == "/upload/image")
        .expect("the upload");
    assert!(contains(&upload.body, &init), "the image is in the form");
    assert!(contains(&upload.body, b"name=\"image\""));
    let queued: serde_json::Value = requests
        .iter()
        .find(|request| request.url.path() == "/prompt")
        .expect("the queued prompt")
        .body_json()
        .expect("a JSON body");
    let workflow = &queued["prompt"];
    assert_eq!(workflow["10"]["class_type"], "LoadImage");
    assert_eq!(workflow["10"]["inputs"]["image"], "atelier-upload.png");
    let denoise = workflow["3"]["inputs"]["denoise"]
        .as_f64()
        .expect("a number");
    assert!((denoise - 0.35).abs() < 1e-6, "{denoise}");
}

#[tokio::test]
async fn comfyui_dropped_mid_render_deletes_and_interrupts_the_prompt() {
    let server = atelier_testkit::fakes::comfyui(usize::MAX, 64, 32).await;
    let provider = comfyui(&server);
    let request = comfyui_request();
    let (progress, _watcher) = watch::channel(0);

    let rendering = provider.generate(&request, &progress);
    let cancelled = tokio::time::timeout(Duration::from_millis(300), rendering).await;
    assert!(cancelled.is_err(), "the render never ends");

    assert!(wait_for_request(&server, "/interrupt").await, "interrupted");
    let requests = received(&server).await;
    let interrupt: serde_json::Value = requests
        .iter()
        .find(|request| request.url.path() == "/interrupt")
        .expect("the interrupt")
        .body_json()
        .expect("a JSON body");
    assert_eq!(
        interrupt["prompt_id"],
        atelier_testkit::fakes::COMFYUI_PROMPT_ID
    );
    let deleted = requests
        .iter()
        .filter(|request| request.url.path() == "/queue" && request.method.as_str() == "POST")
        .map(|request| {
            request
                .body_json::<serde_json::Value>()
                .expect("a JSON body")
        })
        .next()
        .expect("the queue deletion");
    assert_eq!(
        deleted,
        json!({ "delete": [atelier_testkit::fakes::COMFYUI_PROMPT_ID] })
    );
}

#[tokio::test]
async fn comfyui_refused_workflow_is_permanent() {
    let server = MockServer::start().await;
    always(
        &server,
        "/prompt",
        ResponseTemplate::new(400).set_body_json(json!({
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "", "extra_info": {}
            },
            "node_errors": { "4": { "errors": [{ "type": "value_not_in_list" }] } }
        })),
    )
    .await;
    let (progress, _watcher) = watch::channel(0);
    let err = generate_with_retries(
        comfyui(&server).as_ref(),
        &comfyui_request(),
        &progress,
        &fast_retries(),
        &|_| {},
    )
    .await
    .expect_err("refused");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.reason().contains("failed validation"), "{err:?}");
    assert_eq!(requests_to(&server, "/prompt").await, 1);
}
