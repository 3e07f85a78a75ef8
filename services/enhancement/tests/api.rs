//! EnhancePrompt over real gRPC on port 0, with a fake OpenAI-compatible LLM (wiremock)
//! on loopback: the LLM's rewrite with the style guaranteed, the cache, and the
//! deterministic fallback whenever the LLM cannot answer in time.

use std::sync::Arc;
use std::time::Duration;

use atelier_enhancement::enhance::Source;
use atelier_enhancement::{Config, State, fallback, serve};
use atelier_llm::LlmConfig;
use atelier_proto::ENHANCEMENT_SERVICE_NAME;
use atelier_proto::enhancement::v1::enhancement_service_client::EnhancementServiceClient;
use atelier_proto::enhancement::v1::{
    EnhancePromptRequest, EnhancePromptResponse, EnhancementSource,
};
use atelier_runtime::internal_call::{OutgoingCall, ServiceToken};
use atelier_testkit::{RunningServer, spawn_server};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "enhancement-test-token";
const PROMPT: &str = "a red fox in the snow";
const REWRITE: &str = "a red fox curled up asleep in deep snow, frost on its fur, soft blue \
                       morning light, low angle, shallow depth of field";
const WATERCOLOR_TERMS: [&str; 3] = ["watercolor painting", "soft washes", "paper texture"];

type Client = EnhancementServiceClient<InterceptedService<Channel, OutgoingCall>>;

struct TestEnhancement {
    server: RunningServer,
    state: Arc<State>,
    client: Client,
}

impl TestEnhancement {
    async fn spawn(llm: Option<LlmConfig>) -> Self {
        atelier_testkit::init_logging();
        let config = Config {
            llm,
            service_token: ServiceToken::new(TOKEN),
            ..Config::default()
        };
        let state = Arc::new(State::new(&config).expect("state"));
        let served = Arc::clone(&state);
        let server = spawn_server(|listener, shutdown| {
            serve(served, config.service_token, listener, shutdown)
        })
        .await
        .expect("server starts");
        let client = EnhancementServiceClient::with_interceptor(
            channel(&server).await,
            OutgoingCall::new(&ServiceToken::new(TOKEN)).expect("ascii token"),
        );
        Self {
            server,
            state,
            client,
        }
    }

    async fn enhance(&self, prompt: &str, style: &str, negative: &str) -> EnhancePromptResponse {
        self.client
            .clone()
            .enhance_prompt(request(prompt, style, negative))
            .await
            .expect("an answer")
            .into_inner()
    }
}

async fn channel(server: &RunningServer) -> Channel {
    Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connects")
}

fn request(prompt: &str, style: &str, negative: &str) -> EnhancePromptRequest {
    EnhancePromptRequest {
        prompt: prompt.to_owned(),
        style_preset: style.to_owned(),
        negative_prompt: negative.to_owned(),
    }
}

/// Fast failure: no retries and a short deadline, so a failing fake costs milliseconds.
fn llm_config(fake: &MockServer) -> LlmConfig {
    LlmConfig {
        call_timeout: Duration::from_millis(500),
        deadline: Duration::from_millis(500),
        max_retries: 0,
        backoff_base: Duration::from_millis(1),
        // High enough that no test opens the breaker by accident.
        breaker_failure_threshold: 100,
        ..LlmConfig::new(format!("{}/v1", fake.uri()))
    }
}

/// A chat completion whose message content is `content`.
fn completion(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "choices": [{ "message": { "role": "assistant", "content": content } }]
    }))
}

fn rewrite(prompt: &str, negative_prompt: &str) -> ResponseTemplate {
    completion(&json!({ "prompt": prompt, "negative_prompt": negative_prompt }).to_string())
}

async fn fake_llm(response: ResponseTemplate) -> MockServer {
    let fake = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(response)
        .mount(&fake)
        .await;
    fake
}

async fn requests_seen(fake: &MockServer) -> usize {
    fake.received_requests().await.map_or(0, |seen| seen.len())
}

fn assert_is_fallback(response: &EnhancePromptResponse, prompt: &str, style: &str, negative: &str) {
    assert_eq!(response.source(), EnhancementSource::Fallback);
    let expected = fallback::enhance(prompt, style, negative);
    assert_eq!(response.prompt, expected.prompt);
    assert_eq!(response.negative_prompt, expected.negative_prompt);
}

#[tokio::test]
async fn the_llm_rewrite_is_used_with_the_style_terms_guaranteed() {
    let fake = fake_llm(rewrite(REWRITE, "extra legs, text")).await;
    let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;

    let response = app.enhance(PROMPT, "watercolor", "text, watermark").await;
    assert_eq!(response.source(), EnhancementSource::Llm);
    assert_eq!(
        response.prompt,
        format!("{REWRITE}, {}", WATERCOLOR_TERMS.join(", "))
    );
    // The user's terms first, then the LLM's new ones, then the preset's.
    assert_eq!(
        response.negative_prompt,
        "text, watermark, extra legs, photograph, 3d render, harsh lines"
    );
    assert_eq!(requests_seen(&fake).await, 1);

    // The LLM was told the preset, and given the request as data.
    let seen = fake.received_requests().await.expect("recorded");
    let body: serde_json::Value = seen[0].body_json().expect("json body");
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    let system = body["messages"][0]["content"].as_str().expect("system");
    assert!(system.contains("\"watercolor\""), "{system}");
    let user: serde_json::Value =
        serde_json::from_str(body["messages"][1]["content"].as_str().expect("user"))
            .expect("the user content is JSON");
    assert_eq!(user["prompt"], PROMPT);
    assert_eq!(user["style_preset"], "watercolor");
    assert_eq!(user["negative_prompt"], "text, watermark");
}

#[tokio::test]
async fn the_same_request_again_comes_from_the_cache() {
    let fake = fake_llm(rewrite(REWRITE, "")).await;
    let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;

    let first = app.enhance(PROMPT, "anime", "").await;
    assert_eq!(first.source(), EnhancementSource::Llm);
    let again = app.enhance(&format!("  {PROMPT} "), "anime", "").await;
    assert_eq!(again.source(), EnhancementSource::Cache);
    assert_eq!(
        (again.prompt, again.negative_prompt),
        (first.prompt, first.negative_prompt)
    );
    assert_eq!(requests_seen(&fake).await, 1);

    // Another style is another request.
    let other = app.enhance(PROMPT, "cinematic", "").await;
    assert_eq!(other.source(), EnhancementSource::Llm);
    assert_eq!(requests_seen(&fake).await, 2);
}

#[tokio::test]
async fn a_failing_llm_gets_the_fallback_which_still_applies_the_style() {
    let fake = fake_llm(ResponseTemplate::new(500).set_body_string("overloaded")).await;
    let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;

    let response = app.enhance(PROMPT, "watercolor", "text").await;
    assert_is_fallback(&response, PROMPT, "watercolor", "text");
    for term in WATERCOLOR_TERMS {
        assert!(response.prompt.contains(term), "{term} in {response:?}");
    }
    assert!(response.negative_prompt.starts_with("text, "));

    // Not cached: the LLM is asked again next time.
    let again = app.enhance(PROMPT, "watercolor", "text").await;
    assert_eq!(again.source(), EnhancementSource::Fallback);
    assert_eq!(requests_seen(&fake).await, 2);
}

#[tokio::test]
async fn an_unusable_llm_answer_gets_the_fallback() {
    for content in [
        "here is your prompt: a fox".to_owned(),
        json!({ "negative_prompt": "blurry" }).to_string(),
        json!({ "prompt": "   " }).to_string(),
        json!({ "prompt": "x".repeat(2001) }).to_string(),
    ] {
        let fake = fake_llm(completion(&content)).await;
        let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;
        let response = app.enhance(PROMPT, "pixel-art", "").await;
        assert_is_fallback(&response, PROMPT, "pixel-art", "");
    }
}

/// Every answer the LLM gave but that could not be used is a fallback, counted by why:
/// the wrong JSON, a rewrite that lost the user's subject, one that starts with
/// punctuation (a list's tail), one out of length bounds.
#[tokio::test]
async fn rewrites_that_are_not_the_users_picture_get_the_fallback_counted_by_reason() {
    for (content, reason) in [
        (json!({ "text": REWRITE }).to_string(), "wrong_shape"),
        (
            json!({ "prompt": "ultra-detailed, 8k, cinematic lighting, masterpiece", "negative_prompt": "" })
                .to_string(),
            "lost_subject",
        ),
        (
            json!({ "prompt": ", ultra-detailed, a red fox in the snow", "negative_prompt": "" })
                .to_string(),
            "starts_with_punctuation",
        ),
        (
            json!({ "prompt": "fox", "negative_prompt": "" }).to_string(),
            "length",
        ),
    ] {
        let fake = fake_llm(completion(&content)).await;
        let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;
        let response = app.enhance(PROMPT, "", "").await;
        assert_is_fallback(&response, PROMPT, "", "");
        let text = app.state.metrics().encode();
        let line = format!("atelier_enhancement_llm_fallbacks_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

/// A model that writes a sentence around its JSON, or fences it, is still understood.
#[tokio::test]
async fn json_with_prose_around_it_is_used() {
    let content = format!(
        "Sure! Here is the enhanced prompt:\n```json\n{}\n```\nLet me know if you need more.",
        json!({ "prompt": REWRITE, "negative_prompt": "blurry" })
    );
    let fake = fake_llm(completion(&content)).await;
    let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;
    let response = app.enhance(PROMPT, "", "").await;
    assert_eq!(response.source(), EnhancementSource::Llm);
    assert!(response.prompt.starts_with(REWRITE), "{}", response.prompt);
}

#[tokio::test]
async fn a_slow_llm_is_not_waited_for_past_its_deadline() {
    let fake = fake_llm(rewrite(REWRITE, "").set_delay(Duration::from_secs(5))).await;
    let config = LlmConfig {
        call_timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(200),
        ..llm_config(&fake)
    };
    let app = TestEnhancement::spawn(Some(config)).await;
    let response = app.enhance(PROMPT, "cinematic", "").await;
    assert_is_fallback(&response, PROMPT, "cinematic", "");
}

#[tokio::test]
async fn without_an_llm_every_answer_is_the_fallback() {
    let app = TestEnhancement::spawn(None).await;
    let response = app.enhance(PROMPT, "", " lowres ").await;
    assert_is_fallback(&response, PROMPT, "", "lowres");
    let again = app.enhance(PROMPT, "", " lowres ").await;
    assert_eq!(again.source(), EnhancementSource::Fallback);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let app = TestEnhancement::spawn(None).await;
    for (prompt, style, negative, field) in [
        ("", "", "", "prompt"),
        ("a fox\0", "", "", "prompt"),
        (&*"x".repeat(4001), "", "", "prompt"),
        (PROMPT, "baroque", "", "style_preset"),
        (PROMPT, "", &*"n".repeat(2001), "negative_prompt"),
        (PROMPT, "", "no\0pe", "negative_prompt"),
    ] {
        let status = app
            .client
            .clone()
            .enhance_prompt(request(prompt, style, negative))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
        let details = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(details.field_violations[0].field, field);
    }
}

#[tokio::test]
async fn the_api_needs_the_service_credential_but_health_does_not() {
    let app = TestEnhancement::spawn(None).await;
    let channel = channel(&app.server).await;

    let status = EnhancementServiceClient::new(channel.clone())
        .enhance_prompt(request(PROMPT, "", ""))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: ENHANCEMENT_SERVICE_NAME.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn the_metrics_count_every_answer_by_source() {
    let fake = MockServer::start().await;
    // The first LLM call fails, the later ones answer.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&fake)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(rewrite(REWRITE, ""))
        .mount(&fake)
        .await;
    let app = TestEnhancement::spawn(Some(llm_config(&fake))).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(app.enhance(PROMPT, "anime", "").await.source());
    }
    assert_eq!(
        seen,
        [
            EnhancementSource::Fallback,
            EnhancementSource::Llm,
            EnhancementSource::Cache,
            EnhancementSource::Cache,
        ]
    );
    let metrics = app.state.metrics();
    assert_eq!(metrics.count(Source::Llm.as_str()), 1);
    assert_eq!(metrics.count(Source::Cache.as_str()), 2);
    assert_eq!(metrics.count(Source::Fallback.as_str()), 1);
    let text = metrics.encode();
    assert!(text.contains("# TYPE atelier_enhancement_answers counter\n"));
    for line in [
        "atelier_enhancement_answers_total{source=\"llm\"} 1",
        "atelier_enhancement_answers_total{source=\"cache\"} 2",
        "atelier_enhancement_answers_total{source=\"fallback\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn the_default_config_serves_the_fallback() {
    let config = Config::default();
    assert!(config.llm.is_none());
    let server =
        spawn_server(|listener, shutdown| atelier_enhancement::run(config, listener, shutdown))
            .await
            .expect("server starts");
    let response = EnhancementServiceClient::with_interceptor(
        channel(&server).await,
        OutgoingCall::new(&ServiceToken::new(
            atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
        ))
        .expect("ascii"),
    )
    .enhance_prompt(request(PROMPT, "anime", ""))
    .await
    .expect("an answer")
    .into_inner();
    assert_is_fallback(&response, PROMPT, "anime", "");
    server.stop().await.expect("stops cleanly");
}

/// Outside development the service refuses to start without its service credential, or with a built-in or
/// short one; development mode warns, and listens on loopback only.
#[test]
fn refuses_to_start_unsafely() {
    use atelier_testkit::startup::{
        RequiredSecret, assert_development_is_loopback_only, assert_development_warns,
        assert_secrets_required,
    };
    let binary = env!("CARGO_BIN_EXE_atelier-enhancement");
    let secrets = [RequiredSecret {
        variable: "ATELIER_SERVICE_TOKEN",
        development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
    }];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_is_loopback_only(binary, "ATELIER_METRICS_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}
