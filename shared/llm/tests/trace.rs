//! A call made inside a traced span is an `llm.chat` client span of it, and its request
//! carries that span's `traceparent`: an LLM server that traces joins the caller's trace.
//! The subscriber is global, so this file holds one test: its own binary.

use std::time::Duration;

use atelier_llm::{ChatRequest, LlmClient, LlmConfig};
use atelier_testkit::SpanCollector;
use serde_json::json;
use tracing::Instrument as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_call_carries_the_traceparent_of_its_client_span() {
    let collected = SpanCollector::default();
    let _telemetry =
        atelier_runtime::telemetry::init_with_exporter("atelier-llm-test", collected.clone())
            .expect("the only subscriber of this process");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Fox" } }]
        })))
        .mount(&server)
        .await;
    let client = LlmClient::new(LlmConfig {
        call_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(10),
        ..LlmConfig::new(format!("{}/v1", server.uri()))
    })
    .expect("a valid config");

    let caller = tracing::info_span!("caller");
    client
        .complete(&ChatRequest {
            system: String::new(),
            user: "a red fox".to_owned(),
            temperature: 0.2,
            max_tokens: 8,
        })
        .instrument(caller.clone())
        .await
        .expect("an answer");
    drop(caller);

    let received = server.received_requests().await.expect("recorded");
    let traceparent = received[0]
        .headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .expect("the request carries a traceparent")
        .to_owned();
    let spans = collected.spans();
    let chat = spans
        .iter()
        .find(|span| span.name == "llm.chat")
        .expect("an llm.chat span");
    let caller = spans
        .iter()
        .find(|span| span.name == "caller")
        .expect("the caller's span");
    assert_eq!(chat.parent_span_id, caller.span_context.span_id());
    assert_eq!(chat.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            chat.span_context.trace_id(),
            chat.span_context.span_id()
        )
    );
}
