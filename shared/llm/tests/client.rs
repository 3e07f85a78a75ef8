//! The client against a fake chat-completions server on loopback (wiremock): real HTTP,
//! small durations, and no assertion that a thing happened within some time, except
//! where giving up at once is the behaviour under test, with a wide margin.

use std::time::{Duration, Instant};

use atelier_llm::{
    BreakerState, ChatRequest, JsonSchema, LlmClient, LlmConfig, LlmError, StructuredOutput,
};
use serde::Deserialize;
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ENDPOINT: &str = "/v1/chat/completions";

fn config(server: &MockServer) -> LlmConfig {
    LlmConfig {
        api_key: Some("test-key".to_owned()),
        model: "test-model".to_owned(),
        call_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(10),
        max_retries: 2,
        backoff_base: Duration::from_millis(1),
        breaker_failure_threshold: 5,
        breaker_open_for: Duration::from_secs(60),
        ..LlmConfig::new(format!("{}/v1", server.uri()))
    }
}

fn client(config: LlmConfig) -> LlmClient {
    LlmClient::new(config).expect("a valid config")
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "You name conversations.".to_owned(),
        user: "a red fox in the snow".to_owned(),
        temperature: 0.2,
        max_tokens: 32,
    }
}

fn answer(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop"
        }]
    }))
}

/// Mounts `response` for the first `times` requests only; mount the later answer after.
async fn first(server: &MockServer, times: u64, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(response)
        .up_to_n_times(times)
        .mount(server)
        .await;
}

async fn always(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn requests_seen(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .len()
}

#[tokio::test]
async fn success_returns_the_content_and_sends_model_messages_and_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(header("authorization", "Bearer test-key"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "model": "test-model",
            "messages": [
                { "role": "system", "content": "You name conversations." },
                { "role": "user", "content": "a red fox in the snow" }
            ],
            "max_tokens": 32
        })))
        .respond_with(answer("Fox in Snow"))
        .expect(1)
        .mount(&server)
        .await;

    let content = client(config(&server))
        .complete(&request())
        .await
        .expect("an answer");

    assert_eq!(content, "Fox in Snow");
    let sent: serde_json::Value = server.received_requests().await.expect("recorded")[0]
        .body_json()
        .expect("a JSON body");
    assert!(sent.get("response_format").is_none(), "{sent}");
    assert!((sent["temperature"].as_f64().expect("a number") - 0.2).abs() < 1e-6);
}

#[tokio::test]
async fn no_key_sends_no_authorization_and_an_empty_system_prompt_is_left_out() {
    let server = MockServer::start().await;
    always(&server, answer("ok")).await;
    let config = LlmConfig {
        api_key: None,
        ..config(&server)
    };
    let request = ChatRequest {
        system: String::new(),
        ..request()
    };

    client(config).complete(&request).await.expect("an answer");

    let received = server.received_requests().await.expect("recorded");
    assert!(received[0].headers.get("authorization").is_none());
    let sent: serde_json::Value = received[0].body_json().expect("a JSON body");
    assert_eq!(
        sent["messages"],
        json!([{ "role": "user", "content": "a red fox in the snow" }])
    );
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let server = MockServer::start().await;
    first(&server, 1, ResponseTemplate::new(500)).await;
    always(&server, answer("second time lucky")).await;
    let client = client(config(&server));

    let content = client.complete(&request()).await.expect("an answer");

    assert_eq!(content, "second time lucky");
    assert_eq!(requests_seen(&server).await, 2);
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let server = MockServer::start().await;
    first(
        &server,
        1,
        ResponseTemplate::new(429).insert_header("retry-after", "0"),
    )
    .await;
    always(&server, answer("ok")).await;

    let content = client(config(&server))
        .complete(&request())
        .await
        .expect("an answer");

    assert_eq!(content, "ok");
    assert_eq!(requests_seen(&server).await, 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_gives_up_at_once() {
    let server = MockServer::start().await;
    always(
        &server,
        ResponseTemplate::new(429)
            .insert_header("retry-after", "3600")
            .set_body_string("slow down"),
    )
    .await;
    // A deadline long enough that "at once" and "at the deadline" cannot be confused on
    // a loaded machine.
    let deadline = Duration::from_secs(10);
    let config = LlmConfig {
        deadline,
        ..config(&server)
    };

    let started = Instant::now();
    let err = client(config)
        .complete(&request())
        .await
        .expect_err("no answer");

    assert_eq!(
        err,
        LlmError::Status {
            status: 429,
            body_excerpt: "slow down".to_owned()
        }
    );
    assert_eq!(requests_seen(&server).await, 1);
    assert!(started.elapsed() < deadline / 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let server = MockServer::start().await;
    always(
        &server,
        ResponseTemplate::new(400).set_body_string("unknown model"),
    )
    .await;

    let err = client(config(&server))
        .complete(&request())
        .await
        .expect_err("no answer");

    assert!(
        matches!(err, LlmError::Status { status: 400, ref body_excerpt } if body_excerpt == "unknown model"),
        "{err:?}"
    );
    assert_eq!(requests_seen(&server).await, 1);
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = MockServer::start().await;
    always(&server, ResponseTemplate::new(503)).await;

    let err = client(config(&server))
        .complete(&request())
        .await
        .expect_err("no answer");

    assert!(
        matches!(err, LlmError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(
        requests_seen(&server).await,
        3,
        "the first attempt and 2 retries"
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    always(
        &server,
        answer("too late").set_delay(Duration::from_secs(5)),
    )
    .await;
    let config = LlmConfig {
        call_timeout: Duration::from_millis(100),
        max_retries: 0,
        ..config(&server)
    };

    let err = client(config)
        .complete(&request())
        .await
        .expect_err("no answer");

    assert_eq!(err, LlmError::Timeout);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let config = LlmConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        max_retries: 1,
        backoff_base: Duration::from_millis(1),
        ..LlmConfig::new("http://unused")
    };

    let err = client(config)
        .complete(&request())
        .await
        .expect_err("no answer");

    assert!(matches!(err, LlmError::Transport(_)), "{err:?}");
}

#[tokio::test]
async fn a_body_that_is_not_a_completion_is_malformed_and_not_retried() {
    let server = MockServer::start().await;
    always(
        &server,
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
    )
    .await;

    let err = client(config(&server))
        .complete(&request())
        .await
        .expect_err("no answer");

    assert!(matches!(err, LlmError::Malformed(_)), "{err:?}");
    assert_eq!(requests_seen(&server).await, 1);
}

#[tokio::test]
async fn a_completion_without_choices_is_malformed() {
    let server = MockServer::start().await;
    always(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({ "choices": [] })),
    )
    .await;

    let err = client(config(&server))
        .complete(&request())
        .await
        .expect_err("no answer");

    assert!(matches!(err, LlmError::Malformed(_)), "{err:?}");
}

#[derive(Debug, Deserialize, PartialEq)]
struct Intent {
    kind: String,
    confidence: f32,
}

fn intent_schema() -> JsonSchema {
    JsonSchema::object(
        "intent",
        &[
            ("kind", json!({"type": "string", "enum": ["new", "edit"]})),
            ("confidence", json!({"type": "number"})),
        ],
    )
}

#[tokio::test]
async fn complete_json_asks_with_the_strict_schema_and_parses_the_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(body_partial_json(json!({ "response_format": {
            "type": "json_schema",
            "json_schema": { "name": "intent", "strict": true, "schema": intent_schema().schema },
        } })))
        .respond_with(answer(r#"{"kind": "edit", "confidence": 0.5}"#))
        .expect(1)
        .mount(&server)
        .await;

    let intent: Intent = client(config(&server))
        .complete_json(&request(), &intent_schema())
        .await
        .expect("an answer");

    assert_eq!(
        intent,
        Intent {
            kind: "edit".to_owned(),
            confidence: 0.5
        }
    );
}

/// A server without schemas (an older vLLM, a proxy) answers 400 naming the parameter:
/// the client asks again with json_object, reads the answer tolerantly, and asks that
/// server with json_object from then on.
#[tokio::test]
async fn a_server_that_refuses_schemas_is_asked_for_a_json_object() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(body_partial_json(
            json!({ "response_format": { "type": "json_schema" } }),
        ))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({ "error": {
            "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
            "type": "invalid_request_error",
        } })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(body_partial_json(
            json!({ "response_format": { "type": "json_object" } }),
        ))
        .respond_with(answer(
            "Sure, here it is:\n```json\n{\"kind\": \"edit\", \"confidence\": 0.5}\n```",
        ))
        .expect(2)
        .mount(&server)
        .await;
    let client = client(config(&server));

    for _ in 0..2 {
        let intent: Intent = client
            .complete_json(&request(), &intent_schema())
            .await
            .expect("an answer");
        assert_eq!(intent.kind, "edit");
    }
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn json_object_mode_never_sends_a_schema() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ENDPOINT))
        .and(body_partial_json(
            json!({ "response_format": { "type": "json_object" } }),
        ))
        .respond_with(answer(r#"{"kind": "new", "confidence": 1}"#))
        .expect(1)
        .mount(&server)
        .await;
    let config = LlmConfig {
        structured_output: StructuredOutput::JsonObject,
        ..config(&server)
    };

    let intent: Intent = client(config)
        .complete_json(&request(), &intent_schema())
        .await
        .expect("an answer");
    assert_eq!(intent.kind, "new");
}

#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_not_retried_and_not_a_breaker_failure() {
    let server = MockServer::start().await;
    always(&server, answer(r#"{"label": "edit"}"#)).await;
    let config = LlmConfig {
        breaker_failure_threshold: 1,
        ..config(&server)
    };
    let client = client(config);

    let err = client
        .complete_json::<Intent>(&request(), &intent_schema())
        .await
        .expect_err("no answer");

    assert!(
        matches!(&err, LlmError::WrongShape(reason) if reason.contains("kind")),
        "{err:?}"
    );
    assert_eq!(
        requests_seen(&server).await,
        1,
        "a bad answer is not retried"
    );
    // The endpoint works: the next question may well be answered.
    assert_eq!(client.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_closes_after_a_good_trial() {
    let server = MockServer::start().await;
    let threshold = 3;
    first(&server, threshold, ResponseTemplate::new(500)).await;
    always(&server, answer("back")).await;
    let open_for = Duration::from_millis(200);
    let config = LlmConfig {
        max_retries: 0,
        breaker_failure_threshold: u32::try_from(threshold).expect("small"),
        breaker_open_for: open_for,
        ..config(&server)
    };
    let client = client(config);

    for _ in 0..threshold {
        let err = client.complete(&request()).await.expect_err("a 500");
        assert!(
            matches!(err, LlmError::Status { status: 500, .. }),
            "{err:?}"
        );
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);

    let err = client.complete(&request()).await.expect_err("open");
    assert_eq!(err, LlmError::CircuitOpen);
    let seen = requests_seen(&server).await;
    assert_eq!(seen, 3, "an open breaker sends nothing");

    tokio::time::sleep(open_for + Duration::from_millis(50)).await;
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    let content = client.complete(&request()).await.expect("the trial");
    assert_eq!(content, "back");
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_eq!(requests_seen(&server).await, 4);
}

#[tokio::test]
async fn clones_share_the_breaker() {
    let server = MockServer::start().await;
    always(&server, ResponseTemplate::new(401)).await;
    let config = LlmConfig {
        breaker_failure_threshold: 1,
        ..config(&server)
    };
    let client = client(config);
    let clone = client.clone();

    client.complete(&request()).await.expect_err("a 401");

    assert_eq!(clone.breaker_state(), BreakerState::Open);
    assert_eq!(clone.complete(&request()).await, Err(LlmError::CircuitOpen));
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried() {
    let server = MockServer::start().await;
    first(
        &server,
        1,
        answer("too late").set_delay(Duration::from_secs(5)),
    )
    .await;
    always(&server, answer("in time")).await;
    let config = LlmConfig {
        call_timeout: Duration::from_millis(100),
        max_retries: 1,
        ..config(&server)
    };

    let content = client(config)
        .complete(&request())
        .await
        .expect("an answer");

    assert_eq!(content, "in time");
    assert_eq!(requests_seen(&server).await, 2);
}

/// A server that answers at once with the headers and half the body, then stalls: the
/// slow-body fault, which a delay before the headers does not exercise.
async fn stalling_server() -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"choices\":[";
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_body_that_stalls_is_a_timeout() {
    let config = LlmConfig {
        call_timeout: Duration::from_millis(300),
        deadline: Duration::from_secs(5),
        max_retries: 0,
        ..LlmConfig::new(stalling_server().await)
    };
    let err = client(config)
        .complete(&request())
        .await
        .expect_err("the body never ends");
    assert_eq!(err, LlmError::Timeout);
}
