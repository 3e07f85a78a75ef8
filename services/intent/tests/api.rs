//! AnalyzeIntent over real gRPC on port 0, with a fake OpenAI-compatible LLM (wiremock) on
//! loopback: which path answers, what the LLM is asked, and what the caller gets when the
//! LLM fails or is absent.

use std::sync::Arc;
use std::time::Duration;

use atelier_intent::analyze::Source;
use atelier_intent::heuristics::{self, IntentKind as Kind};
use atelier_intent::{Config, State, serve};
use atelier_llm::LlmConfig;
use atelier_proto::INTENT_SERVICE_NAME;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_proto::intent::v1::{AnalyzeIntentRequest, AnalyzeIntentResponse, IntentSource};
use atelier_proto::v1::{IntentKind, ResolvedIntent};
use atelier_runtime::internal_call::{OutgoingCall, ServiceToken};
use atelier_testkit::{RunningServer, spawn_server};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "intent-test-token";
const CAT: &str = "a cat sitting on a sofa";
/// Points back at the last picture without saying how: only an LLM can tell.
const AMBIGUOUS: &str = "try again with more detail";

type Client = IntentServiceClient<InterceptedService<Channel, OutgoingCall>>;

struct TestIntent {
    server: RunningServer,
    state: Arc<State>,
    client: Client,
}

impl TestIntent {
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
        let client = IntentServiceClient::with_interceptor(
            channel(&server).await,
            OutgoingCall::new(&ServiceToken::new(TOKEN)).expect("ascii token"),
        );
        Self {
            server,
            state,
            client,
        }
    }

    async fn ask(&self, prompt: &str, previous: &str) -> AnalyzeIntentResponse {
        self.client
            .clone()
            .analyze_intent(request(prompt, previous))
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

fn request(prompt: &str, previous: &str) -> AnalyzeIntentRequest {
    AnalyzeIntentRequest {
        prompt: prompt.to_owned(),
        previous_prompt: previous.to_owned(),
        has_previous_image: !previous.is_empty(),
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

fn intent(response: &AnalyzeIntentResponse) -> &ResolvedIntent {
    response.intent.as_ref().expect("an intent")
}

/// The heuristic's best guess for an ambiguous prompt, as the wire carries it.
fn best_guess(prompt: &str, previous: &str) -> heuristics::Intent {
    let decision = heuristics::analyze(prompt, Some(previous), true);
    assert!(!decision.is_sure(), "{prompt:?} must be ambiguous");
    decision.into_intent()
}

fn assert_is_best_guess(response: &AnalyzeIntentResponse, prompt: &str, previous: &str) {
    let guess = best_guess(prompt, previous);
    let intent = intent(response);
    assert_eq!(guess.kind, Kind::Edit, "the fixture's guess is an edit");
    assert_eq!(intent.kind(), IntentKind::Edit);
    assert_eq!(intent.resolved_prompt, guess.resolved_prompt);
    assert_eq!(intent.edit_type, guess.edit_type.as_str());
    assert_eq!(intent.strength, guess.strength);
}

#[tokio::test]
async fn a_clear_edit_is_answered_by_the_heuristics_without_the_llm() {
    let fake = fake_llm(completion(r#"{"kind":"new"}"#)).await;
    let app = TestIntent::spawn(Some(llm_config(&fake))).await;

    let response = app.ask("add a hat", CAT).await;
    assert_eq!(response.source(), IntentSource::Heuristic);
    let edit = intent(&response);
    assert_eq!(edit.kind(), IntentKind::Edit);
    assert_eq!(edit.resolved_prompt, "a cat sitting on a sofa, with a hat");
    assert_eq!(edit.edit_type, "add");
    assert_eq!(edit.strength, 0.6);

    // A first message has nothing to edit: a new picture, with blank edit fields.
    let response = app.ask("  a red fox in the snow ", "").await;
    assert_eq!(response.source(), IntentSource::Heuristic);
    let new = intent(&response);
    assert_eq!(new.kind(), IntentKind::New);
    assert_eq!(new.resolved_prompt, "a red fox in the snow");
    assert_eq!(new.edit_type, "");
    assert_eq!(new.strength, 0.0);

    assert_eq!(requests_seen(&fake).await, 0);
}

#[tokio::test]
async fn an_ambiguous_prompt_asks_the_llm_once_then_comes_from_the_cache() {
    let fake = fake_llm(completion(
        &json!({
            "kind": "edit",
            "resolved_prompt": "two cats sitting on a sofa",
            "edit_type": "add",
            "strength": 0.55
        })
        .to_string(),
    ))
    .await;
    let app = TestIntent::spawn(Some(llm_config(&fake))).await;

    let response = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(response.source(), IntentSource::Llm);
    let edit = intent(&response);
    assert_eq!(edit.kind(), IntentKind::Edit);
    assert_eq!(edit.resolved_prompt, "two cats sitting on a sofa");
    assert_eq!(edit.edit_type, "add");
    assert_eq!(edit.strength, 0.55);
    assert_eq!(requests_seen(&fake).await, 1);

    // The LLM was given both prompts, as data, and asked for JSON.
    let seen = fake.received_requests().await.expect("recorded");
    let body: serde_json::Value = seen[0].body_json().expect("json body");
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    let user: serde_json::Value = serde_json::from_str(
        body["messages"][1]["content"]
            .as_str()
            .expect("user content"),
    )
    .expect("the user content is JSON");
    assert_eq!(user["previous_prompt"], CAT);
    assert_eq!(user["new_message"], AMBIGUOUS);

    let again = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(again.source(), IntentSource::Cache);
    assert_eq!(again.intent, response.intent);
    assert_eq!(requests_seen(&fake).await, 1);

    // The whole question is the key: another previous prompt is another question.
    let other = app.ask(AMBIGUOUS, "a dog in a park").await;
    assert_eq!(other.source(), IntentSource::Llm);
    assert_eq!(requests_seen(&fake).await, 2);
}

#[tokio::test]
async fn a_failing_llm_gives_the_heuristics_best_guess_and_is_asked_again_next_time() {
    let fake = fake_llm(ResponseTemplate::new(500).set_body_string("overloaded")).await;
    let app = TestIntent::spawn(Some(llm_config(&fake))).await;

    let response = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(response.source(), IntentSource::Fallback);
    assert_is_best_guess(&response, AMBIGUOUS, CAT);
    assert_eq!(requests_seen(&fake).await, 1);

    // Not cached: the LLM may be back by now.
    let again = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(again.source(), IntentSource::Fallback);
    assert_eq!(requests_seen(&fake).await, 2);
}

#[tokio::test]
async fn a_malformed_llm_answer_gives_the_best_guess() {
    for content in [
        "this is not JSON",
        r#"{"resolved_prompt": "no kind"}"#,
        r#"{"kind": "maybe"}"#,
    ] {
        let fake = fake_llm(completion(content)).await;
        let app = TestIntent::spawn(Some(llm_config(&fake))).await;
        let response = app.ask(AMBIGUOUS, CAT).await;
        assert_eq!(response.source(), IntentSource::Fallback, "{content}");
        assert_is_best_guess(&response, AMBIGUOUS, CAT);
        assert_eq!(requests_seen(&fake).await, 1);
        // Counted as the model's fault, not the provider's.
        assert_eq!(app.state.metrics().fallbacks("wrong_shape"), 1, "{content}");
    }
}

#[tokio::test]
async fn a_slow_llm_is_not_waited_for_past_its_deadline() {
    let fake = fake_llm(completion(r#"{"kind":"new"}"#).set_delay(Duration::from_secs(5))).await;
    let config = LlmConfig {
        call_timeout: Duration::from_millis(200),
        deadline: Duration::from_millis(200),
        ..llm_config(&fake)
    };
    let app = TestIntent::spawn(Some(config)).await;
    let response = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(response.source(), IntentSource::Fallback);
    assert_is_best_guess(&response, AMBIGUOUS, CAT);
}

#[tokio::test]
async fn without_an_llm_an_ambiguous_prompt_gets_the_best_guess() {
    let app = TestIntent::spawn(None).await;
    let response = app.ask(AMBIGUOUS, CAT).await;
    assert_eq!(response.source(), IntentSource::Fallback);
    assert_is_best_guess(&response, AMBIGUOUS, CAT);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let app = TestIntent::spawn(None).await;
    for (prompt, previous, field) in [
        ("", CAT, "prompt"),
        (" \n\t ", CAT, "prompt"),
        ("a cat\0", CAT, "prompt"),
        (&"x".repeat(4001), CAT, "prompt"),
        ("add a hat", "a cat\0", "previous_prompt"),
    ] {
        let status = app
            .client
            .clone()
            .analyze_intent(request(prompt, previous))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{prompt:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
        let details = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(details.field_violations[0].field, field);
    }
    // Nothing was answered: every counter (4 sources, 6 LLM failure kinds) is still 0.
    assert_eq!(app.state.metrics().encode().matches(" 0\n").count(), 10);
}

#[tokio::test]
async fn the_api_needs_the_service_credential_but_health_does_not() {
    let app = TestIntent::spawn(None).await;
    let channel = channel(&app.server).await;

    let status = IntentServiceClient::new(channel.clone())
        .analyze_intent(request("add a hat", CAT))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    let status = IntentServiceClient::with_interceptor(
        channel.clone(),
        OutgoingCall::new(&ServiceToken::new("not-the-token")).expect("ascii"),
    )
    .analyze_intent(request("add a hat", CAT))
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);

    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: INTENT_SERVICE_NAME.to_owned(),
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
        .respond_with(completion(r#"{"kind":"new"}"#))
        .mount(&fake)
        .await;
    let app = TestIntent::spawn(Some(llm_config(&fake))).await;

    let mut seen = Vec::new();
    for (prompt, previous) in [
        ("add a hat", CAT),
        (AMBIGUOUS, CAT),
        (AMBIGUOUS, CAT),
        (AMBIGUOUS, CAT),
        ("add a hat", CAT),
        ("a red fox", ""),
    ] {
        seen.push(app.ask(prompt, previous).await.source());
    }
    assert_eq!(
        seen,
        [
            IntentSource::Heuristic,
            IntentSource::Fallback,
            IntentSource::Llm,
            IntentSource::Cache,
            IntentSource::Cache,
            IntentSource::Heuristic,
        ]
    );

    let metrics = app.state.metrics();
    assert_eq!(metrics.count(Source::Heuristic.as_str()), 2);
    assert_eq!(metrics.count(Source::Llm.as_str()), 1);
    assert_eq!(metrics.count(Source::Cache.as_str()), 2);
    assert_eq!(metrics.count(Source::Fallback.as_str()), 1);
    assert_eq!(metrics.fallbacks("status"), 1, "the 503");
    let text = metrics.encode();
    assert!(text.contains("# TYPE atelier_intent_answers counter\n"));
    for line in [
        "atelier_intent_answers_total{source=\"heuristic\"} 2",
        "atelier_intent_answers_total{source=\"llm\"} 1",
        "atelier_intent_answers_total{source=\"cache\"} 2",
        "atelier_intent_answers_total{source=\"fallback\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn the_default_config_serves_in_heuristic_mode() {
    let config = Config::default();
    assert!(config.llm.is_none());
    assert_eq!(config.cache_ttl, Config::DEFAULT_CACHE_TTL);
    let server = spawn_server(|listener, shutdown| atelier_intent::run(config, listener, shutdown))
        .await
        .expect("server starts");
    let response = IntentServiceClient::with_interceptor(
        channel(&server).await,
        OutgoingCall::new(&ServiceToken::new(
            atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
        ))
        .expect("ascii"),
    )
    .analyze_intent(request(AMBIGUOUS, CAT))
    .await
    .expect("an answer")
    .into_inner();
    assert_eq!(response.source(), IntentSource::Fallback);
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
    let binary = env!("CARGO_BIN_EXE_atelier-intent");
    let secrets = [RequiredSecret {
        variable: "ATELIER_SERVICE_TOKEN",
        development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
    }];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_is_loopback_only(binary, "ATELIER_METRICS_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}
