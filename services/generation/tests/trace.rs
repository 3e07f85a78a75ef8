//! Every HTTP call of an image provider is a client span of its own under the span it was
//! made from (the worker's `provider.render`), and carries that span's W3C `traceparent`:
//! a progress poll, a download or a cancel shows in the message's trace as itself, and a
//! provider that traces joins it. The subscriber is global, so this file holds one test:
//! its own binary.

use std::time::{Duration, Instant};

use atelier_generation::providers::{self, ImageRequest, ProviderKind, ProvidersConfig};
use atelier_testkit::SpanCollector;
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::watch;
use tracing::Instrument as _;

fn request() -> ImageRequest {
    ImageRequest {
        model: "sdxl".to_owned(),
        prompt: "a red fox in the snow".to_owned(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        seed: 42,
        init_image: None,
        strength: 0.35,
        // ComfyUI's workflows load a checkpoint by name; AUTOMATIC1111 is told it too.
        settings: providers::ModelSettings {
            checkpoint: "sd_xl_base_1.0.safetensors".to_owned(),
            ..Default::default()
        },
    }
}

fn provider(kind: ProviderKind, url: String) -> std::sync::Arc<dyn providers::ImageProvider> {
    let mut config = ProvidersConfig {
        request_timeout: Duration::from_secs(10),
        progress_interval: Duration::from_millis(50),
        ..ProvidersConfig::default()
    };
    match kind {
        ProviderKind::Automatic1111 => config.automatic1111_url = Some(url),
        _ => config.comfyui_url = Some(url),
    }
    providers::from_config(kind, &config).expect("a valid config")
}

/// `(trace id, span id)` of a request's `traceparent`.
fn traceparent(request: &wiremock::Request) -> (String, String) {
    let value = request
        .headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_else(|| panic!("{} {} has no traceparent", request.method, request.url));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The spans ended so far, once every one of `ids` is among them (spans sent from a
/// spawned task end after the caller has moved on).
async fn spans_with(collected: &SpanCollector, ids: &[String]) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spans = collected.spans();
        let ended = |id: &String| {
            spans
                .iter()
                .any(|span| span.span_context.span_id().to_string() == *id)
        };
        if ids.iter().all(ended) {
            return spans;
        }
        assert!(Instant::now() < deadline, "spans {ids:?} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that every request `server` received is a span of its own, named after it, with
/// its status, under the span named `parent` and in its trace; and that the calls named in
/// `expected` were among them.
async fn assert_calls_are_spans_of(
    collected: &SpanCollector,
    parent: &str,
    server: &wiremock::MockServer,
    expected: &[&str],
) {
    let received = server.received_requests().await.expect("recorded");
    let contexts: Vec<(String, String)> = received.iter().map(traceparent).collect();
    let ids: Vec<String> = contexts.iter().map(|(_, span)| span.clone()).collect();
    let spans = spans_with(collected, &ids).await;
    let parent = spans
        .iter()
        .find(|span| span.name == parent)
        .unwrap_or_else(|| panic!("the span {parent} ended"));
    let mut names = Vec::new();
    for (request, (trace_id, span_id)) in received.iter().zip(&contexts) {
        let name = format!("{} {}", request.method, request.url.path());
        assert_eq!(
            *trace_id,
            parent.span_context.trace_id().to_string(),
            "{name}"
        );
        let span = spans
            .iter()
            .find(|span| span.span_context.span_id().to_string() == *span_id)
            .expect("ended");
        assert_eq!(span.name, name);
        assert_eq!(span.parent_span_id, parent.span_context.span_id(), "{name}");
        assert!(
            span.attributes
                .iter()
                .any(
                    |attribute| attribute.key.as_str() == "http.response.status_code"
                        && attribute.value == Value::I64(200)
                ),
            "{name}: {:?}",
            span.attributes
        );
        names.push(name);
    }
    for call in expected {
        assert!(names.iter().any(|name| name == call), "{call} in {names:?}");
    }
}

#[tokio::test]
async fn every_provider_call_is_a_span_of_the_render_and_carries_its_context() {
    let collected = SpanCollector::default();
    let _telemetry = atelier_runtime::telemetry::init_with_exporter(
        "atelier-generation-test",
        collected.clone(),
    )
    .expect("the only subscriber of this process");
    let (progress, _watcher) = watch::channel(0);

    // AUTOMATIC1111: the render's POST, and the progress polls while it runs.
    let automatic1111 = atelier_testkit::fakes::automatic1111(
        atelier_testkit::fakes::sized_answer(Duration::from_millis(300)),
    )
    .await;
    let render = tracing::info_span!("automatic1111 render");
    provider(ProviderKind::Automatic1111, automatic1111.uri())
        .generate(&request(), &progress)
        .instrument(render.clone())
        .await
        .expect("a picture");
    drop(render);
    assert_calls_are_spans_of(
        &collected,
        "automatic1111 render",
        &automatic1111,
        &["POST /sdapi/v1/txt2img", "GET /sdapi/v1/progress"],
    )
    .await;

    // ComfyUI: the prompt, the history polls, the image's download.
    let comfyui = atelier_testkit::fakes::comfyui(2, 64, 64).await;
    let render = tracing::info_span!("comfyui render");
    provider(ProviderKind::Comfyui, comfyui.uri())
        .generate(&request(), &progress)
        .instrument(render.clone())
        .await
        .expect("a picture");
    drop(render);
    let history = format!("GET /history/{}", atelier_testkit::fakes::COMFYUI_PROMPT_ID);
    assert_calls_are_spans_of(
        &collected,
        "comfyui render",
        &comfyui,
        &["POST /prompt", &history, "GET /view"],
    )
    .await;

    // An abandoned ComfyUI render: its cancel is sent from a task of its own after the
    // render's future is gone, and still belongs to the render's trace.
    let endless = atelier_testkit::fakes::comfyui(usize::MAX, 64, 64).await;
    let render = tracing::info_span!("abandoned render");
    let comfyui = provider(ProviderKind::Comfyui, endless.uri());
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        comfyui.generate(&request(), &progress),
    )
    .instrument(render.clone())
    .await;
    assert!(abandoned.is_err(), "the render never ends");
    drop(render);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !endless
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .any(|request| request.url.path() == "/interrupt")
    {
        assert!(Instant::now() < deadline, "no interrupt was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_calls_are_spans_of(
        &collected,
        "abandoned render",
        &endless,
        &["POST /prompt", "POST /queue", "POST /interrupt"],
    )
    .await;
}
