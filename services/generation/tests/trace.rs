//! The HTTP calls of an image provider carry the W3C `traceparent` of the span they are
//! made in (the worker's `provider.render`): a provider that traces joins the message's
//! trace. The subscriber is global, so this file holds one test: its own binary.

use std::time::Duration;

use atelier_generation::providers::{self, ImageRequest, ProviderKind, ProvidersConfig};
use atelier_testkit::SpanCollector;
use tokio::sync::watch;
use tracing::Instrument as _;

#[tokio::test]
async fn an_automatic1111_render_carries_the_callers_traceparent() {
    let collected = SpanCollector::default();
    let _telemetry = atelier_runtime::telemetry::init_with_exporter(
        "atelier-generation-test",
        collected.clone(),
    )
    .expect("the only subscriber of this process");
    let server =
        atelier_testkit::fakes::automatic1111(atelier_testkit::fakes::sized_answer(Duration::ZERO))
            .await;
    let provider = providers::from_config(
        ProviderKind::Automatic1111,
        &ProvidersConfig {
            automatic1111_url: Some(server.uri()),
            request_timeout: Duration::from_secs(10),
            ..ProvidersConfig::default()
        },
    )
    .expect("a valid config");
    let (progress, _watcher) = watch::channel(0);
    let request = ImageRequest {
        model: "sdxl".to_owned(),
        prompt: "a red fox in the snow".to_owned(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        seed: 42,
        init_image: None,
        strength: 0.35,
        settings: Default::default(),
    };

    let render = tracing::info_span!("render");
    provider
        .generate(&request, &progress)
        .instrument(render.clone())
        .await
        .expect("a picture");
    drop(render);

    let render = collected
        .spans()
        .into_iter()
        .find(|span| span.name == "render")
        .expect("the render span ended");
    let expected = format!(
        "00-{}-{}-01",
        render.span_context.trace_id(),
        render.span_context.span_id()
    );
    let received = server.received_requests().await.expect("recorded");
    let txt2img = received
        .iter()
        .find(|request| request.url.path() == "/sdapi/v1/txt2img")
        .expect("a txt2img call");
    assert_eq!(
        txt2img
            .headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
        Some(expected.as_str())
    );
}
