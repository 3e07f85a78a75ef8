//! The client: a call is a breaker check, then attempts under one deadline, then the
//! outcome reported to the breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atelier_runtime::http_retry::{is_retryable_status, retry_after};
use atelier_runtime::metrics::{self, HistogramBy, Registry, StateGauge};
use reqwest::header::CONTENT_TYPE;
use reqwest::redirect;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::config::{LlmConfig, StructuredOutput};
use crate::error::LlmError;
use crate::wire::{CompletionRequest, CompletionResponse, Message, ResponseFormat, SchemaFormat};

/// One question to the model: a system prompt and a user message, which is all the
/// workers need.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Left out of the request when empty.
    pub system: String,
    pub user: String,
    pub temperature: f32,
    pub max_tokens: u32,
}

/// The shape of a JSON answer, sent as `response_format: json_schema` with `strict`.
///
/// Strict mode wants every property listed as required and no others allowed:
/// [`JsonSchema::object`] builds such a schema from the properties.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    /// Letters, digits, `_` and `-`: the API's rule for the name.
    pub name: &'static str,
    pub schema: serde_json::Value,
}

impl JsonSchema {
    /// An object of exactly these properties, all required (a property that may be
    /// absent is typed `["string", "null"]`, as strict mode asks).
    pub fn object(name: &'static str, properties: &[(&str, serde_json::Value)]) -> Self {
        let names: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
        let properties: serde_json::Map<String, serde_json::Value> = properties
            .iter()
            .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
            .collect();
        Self {
            name,
            schema: serde_json::json!({
                "type": "object",
                "properties": properties,
                "required": names,
                "additionalProperties": false,
            }),
        }
    }
}

/// A chat-completions client with deadlines, retries and a circuit breaker.
///
/// Cloning is cheap and clones share the breaker and the connection pool, so build one
/// per process and hand out clones.
#[derive(Debug, Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoint: String,
    config: LlmConfig,
    breaker: CircuitBreaker,
    /// Set once the server refused a `json_schema` request: it is asked with
    /// `json_object` from then on.
    schemas_refused: AtomicBool,
    /// Every call's duration, by outcome (`ok` or an [`LlmError::kind`]).
    calls: HistogramBy,
}

/// The outcomes a call is recorded under: `ok`, or why it failed.
const OUTCOMES: [&str; 7] = {
    let kinds = LlmError::KINDS;
    [
        "ok", kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], kinds[5],
    ]
};

impl LlmClient {
    pub fn new(config: LlmConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let http = reqwest::Client::builder()
            // An OpenAI-compatible endpoint does not redirect; one that does points at a
            // wrong base URL (http for https, a missing /v1), and following it would
            // turn the POST into a GET and hide the cause behind a 405.
            .redirect(redirect::Policy::none())
            .build()
            .context("building the LLM HTTP client")?;
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: config.breaker_failure_threshold,
            open_for: config.breaker_open_for,
            // No call outlives its deadline, so a trial without an outcome by then was
            // abandoned by its caller.
            trial_lease: config.deadline,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint: config.endpoint(),
                schemas_refused: AtomicBool::new(
                    config.structured_output == StructuredOutput::JsonObject,
                ),
                config,
                breaker,
                calls: metrics::histogram_by("outcome", &OUTCOMES),
            }),
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// The model's answer, as text.
    pub async fn complete(&self, request: &ChatRequest) -> Result<String, LlmError> {
        self.call(request, None, Ok).await
    }

    /// The model's answer parsed as `T`, asked for with `schema` (see
    /// [`StructuredOutput`]). An answer that does not parse as `T`, even read tolerantly,
    /// is [`LlmError::WrongShape`]: the caller falls back, and the breaker, which guards
    /// against an endpoint that is down, does not count it.
    pub async fn complete_json<T: DeserializeOwned>(
        &self,
        request: &ChatRequest,
        schema: &JsonSchema,
    ) -> Result<T, LlmError> {
        if self.inner.schemas_refused.load(Ordering::Relaxed) {
            return self.complete_json_object(request).await;
        }
        let format = ResponseFormat::JsonSchema {
            json_schema: SchemaFormat {
                name: schema.name,
                strict: true,
                schema: &schema.schema,
            },
        };
        match self
            .call(request, Some(format), |content| parse_json(&content))
            .await
        {
            Err(LlmError::Status {
                status: 400,
                body_excerpt,
            }) if refuses_schemas(&body_excerpt) => {
                if !self.inner.schemas_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the LLM server refused response_format json_schema; asking it for \
                         json_object from now on (ATELIER_LLM_STRUCTURED_OUTPUT=json_object \
                         skips the first try)"
                    );
                }
                self.complete_json_object(request).await
            }
            other => other,
        }
    }

    async fn complete_json_object<T: DeserializeOwned>(
        &self,
        request: &ChatRequest,
    ) -> Result<T, LlmError> {
        self.call(request, Some(ResponseFormat::JsonObject), |content| {
            parse_json(&content)
        })
        .await
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state(Instant::now())
    }

    /// Registers this client's series: `atelier_llm_call_duration_seconds{outcome}` (a
    /// call's whole time, retries included, by how it ended) and
    /// `atelier_llm_breaker_state{state}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "llm_call_duration_seconds",
            "Time of each call to the LLM, retries included, by outcome (ok, or the kind of failure).",
            self.inner.calls.clone(),
        );
        let client = self.clone();
        StateGauge::register(
            registry,
            "llm_breaker_state",
            "State of the circuit breaker in front of the LLM (1 for the current state).",
            &BreakerState::NAMES,
            move || client.breaker_state().as_str(),
        );
    }

    async fn call<T>(
        &self,
        request: &ChatRequest,
        response_format: Option<ResponseFormat<'_>>,
        parse: impl FnOnce(String) -> Result<T, LlmError>,
    ) -> Result<T, LlmError> {
        let started = Instant::now();
        let breaker = &self.inner.breaker;
        if !breaker.allow(started) {
            self.record(started, "circuit_open");
            return Err(LlmError::CircuitOpen);
        }
        let result = match self.encode(request, response_format) {
            Ok(body) => self.attempts(&body).await.and_then(parse),
            Err(error) => Err(error),
        };
        // Every error counts, a 4xx too: a wrong key, model or URL fails every call
        // alike, and the breaker spares each of them the wait. An answer of the wrong
        // shape does not: the endpoint answered, and the next question may fit.
        match &result {
            Ok(_) | Err(LlmError::WrongShape(_)) => breaker.record_success(),
            Err(_) => breaker.record_failure(Instant::now()),
        }
        self.record(
            started,
            result.as_ref().map_or_else(LlmError::kind, |_| "ok"),
        );
        result
    }

    fn record(&self, started: Instant, outcome: &'static str) {
        self.inner
            .calls
            .get_or_create(&[("outcome", outcome)])
            .observe(started.elapsed().as_secs_f64());
    }

    // Encoded once per call, not once per attempt.
    fn encode(
        &self,
        request: &ChatRequest,
        response_format: Option<ResponseFormat<'_>>,
    ) -> Result<Vec<u8>, LlmError> {
        let mut messages = Vec::with_capacity(2);
        if !request.system.is_empty() {
            messages.push(Message {
                role: "system",
                content: &request.system,
            });
        }
        messages.push(Message {
            role: "user",
            content: &request.user,
        });
        let body = CompletionRequest {
            model: &self.inner.config.model,
            messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            response_format,
        };
        serde_json::to_vec(&body)
            .map_err(|err| LlmError::Transport(format!("encoding the request: {err}")))
    }

    async fn attempts(&self, body: &[u8]) -> Result<String, LlmError> {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let remaining = config.deadline.saturating_sub(started.elapsed());
            let budget = config.call_timeout.min(remaining);
            // One client span per HTTP attempt; the request carries its `traceparent`.
            let call = tracing::info_span!("llm.chat", otel.kind = "client", attempt);
            let failure = match tokio::time::timeout(budget, self.attempt(body))
                .instrument(call)
                .await
            {
                Ok(Ok(content)) => return Ok(content),
                Ok(Err(failure)) => failure,
                Err(_elapsed) => Failure::retry(LlmError::Timeout),
            };

            let wait = match failure.retry {
                Retry::Never => None,
                Retry::Backoff => Some(backoff(config.backoff_base, attempt)),
                Retry::After(wait) => Some(wait),
            };
            // Sleeping into the deadline would only delay the caller's fallback: there
            // would be no time left for the attempt the sleep is for.
            let remaining = config.deadline.saturating_sub(started.elapsed());
            let wait = wait.filter(|wait| attempt <= config.max_retries && *wait < remaining);

            let status = match &failure.error {
                LlmError::Status { status, .. } => Some(*status),
                _ => None,
            };
            // Not the error's Display: a provider's error body may echo part of the key.
            let detail = match &failure.error {
                LlmError::Transport(detail) | LlmError::Malformed(detail) => detail.as_str(),
                _ => "",
            };
            tracing::warn!(
                attempt,
                status,
                error = failure.error.kind(),
                detail,
                retry_in_ms = wait.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                "LLM attempt failed"
            );

            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(failure.error),
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<String, Failure> {
        let inner = &*self.inner;
        let mut request = inner
            .http
            .post(&inner.endpoint)
            .headers(atelier_runtime::telemetry::trace_headers())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &inner.config.api_key {
            // bearer_auth marks the header sensitive, which keeps it out of reqwest's
            // own debug output.
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(Failure::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            let body = response.bytes().await.map_err(Failure::from_reqwest)?;
            return parse_completion(&body).map_err(Failure::never);
        }

        let retry_after = retry_after(response.headers());
        // The status is the error; a body that cannot be read only loses the excerpt.
        let body = response.bytes().await.unwrap_or_default();
        let error = LlmError::Status {
            status: status.as_u16(),
            body_excerpt: excerpt(&body, inner.config.api_key.as_deref()),
        };
        // The image providers share this rule (atelier_runtime::http_retry).
        let retry = if is_retryable_status(status.as_u16()) {
            retry_after.map_or(Retry::Backoff, Retry::After)
        } else {
            Retry::Never
        };
        Err(Failure { error, retry })
    }
}

/// A failed attempt, and whether another one may succeed.
struct Failure {
    error: LlmError,
    retry: Retry,
}

enum Retry {
    Never,
    Backoff,
    /// The server said when (`Retry-After`).
    After(Duration),
}

impl Failure {
    fn never(error: LlmError) -> Self {
        Self {
            error,
            retry: Retry::Never,
        }
    }

    fn retry(error: LlmError) -> Self {
        Self {
            error,
            retry: Retry::Backoff,
        }
    }

    fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::retry(LlmError::Timeout)
        } else if err.is_builder() {
            // The request itself cannot be built; it will not build next time either.
            Self::never(LlmError::Transport(error_chain(&err)))
        } else {
            Self::retry(LlmError::Transport(error_chain(&err)))
        }
    }
}

/// The wait before retry number `attempt` (1-based): `base`, then doubling.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
}

fn parse_completion(body: &[u8]) -> Result<String, LlmError> {
    let completion: CompletionResponse = serde_json::from_slice(body)
        .map_err(|err| LlmError::Malformed(format!("not a chat completion: {err}")))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::Malformed("no choices".to_owned()))?;
    match choice.message.content {
        Some(content) if !content.trim().is_empty() => Ok(content),
        // No caller can use an empty answer, and counting it as a failure lets the
        // breaker notice a model that only answers with nothing.
        _ => Err(LlmError::Malformed(
            "the first choice has no content".to_owned(),
        )),
    }
}

/// `content` as `T`, read tolerantly: without a code fence around it, or, failing that,
/// the outermost `{...}` in it, for models that write a sentence before or after.
fn parse_json<T: DeserializeOwned>(content: &str) -> Result<T, LlmError> {
    let unfenced = strip_code_fence(content);
    let error = match serde_json::from_str(unfenced) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    if let (Some(start), Some(end)) = (unfenced.find('{'), unfenced.rfind('}'))
        && start < end
        && let Ok(value) = serde_json::from_str(&unfenced[start..=end])
    {
        return Ok(value);
    }
    Err(LlmError::WrongShape(format!(
        "not the expected JSON: {error}"
    )))
}

/// Whether a 400's body says the server does not take `json_schema` (OpenAI-compatible
/// servers name the parameter, or the type, in their message).
fn refuses_schemas(body_excerpt: &str) -> bool {
    let body = body_excerpt.to_ascii_lowercase();
    body.contains("response_format") || body.contains("json_schema")
}

/// Models asked for JSON often wrap it in a Markdown code block anyway, especially
/// servers that ignore `response_format`.
fn strip_code_fence(content: &str) -> &str {
    let trimmed = content.trim();
    let Some(inner) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    // The info string (`json`) runs to the end of the first line.
    let inner = match inner.split_once('\n') {
        Some((_info, rest)) => rest,
        None => inner.trim_start_matches("json"),
    };
    inner.trim_end().strip_suffix("```").unwrap_or(inner).trim()
}

const EXCERPT_CHARS: usize = 200;

/// The start of an error body, for the log: enough to see the provider's message.
fn excerpt(body: &[u8], api_key: Option<&str>) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    // Before cutting, so a key across the cut cannot leave its start behind.
    if let Some(key) = api_key.filter(|key| !key.is_empty()) {
        text = text.replace(key, "<redacted>");
    }
    text.trim().chars().take(EXCERPT_CHARS).collect()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1), Duration::from_millis(100));
        assert_eq!(backoff(base, 2), Duration::from_millis(200));
        assert_eq!(backoff(base, 3), Duration::from_millis(400));
        // Saturates rather than overflowing; the deadline cuts it short anyway.
        assert!(backoff(base, u32::MAX) > Duration::from_secs(86_400));
    }

    #[test]
    fn code_fences_are_stripped() {
        assert_eq!(strip_code_fence("{\"a\":1}"), "{\"a\":1}");
        assert_eq!(strip_code_fence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_code_fence("  ```\n{\"a\":1}\n```  \n"), "{\"a\":1}");
        assert_eq!(strip_code_fence("```json{\"a\":1}```"), "{\"a\":1}");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Reply {
        prompt: String,
    }

    #[test]
    fn json_is_read_through_fences_and_prose() {
        for content in [
            r#"{"prompt": "a fox"}"#,
            "```json\n{\"prompt\": \"a fox\"}\n```",
            "Here is the JSON you asked for:\n{\"prompt\": \"a fox\"}\nEnjoy!",
            "Sure! ```{\"prompt\": \"a fox\"}```",
        ] {
            assert_eq!(
                parse_json::<Reply>(content),
                Ok(Reply {
                    prompt: "a fox".to_owned()
                }),
                "{content}"
            );
        }
        for content in ["a fox", r#"{"text": "a fox"}"#, r#"{"prompt": 3}"#, "} {"] {
            assert!(
                matches!(parse_json::<Reply>(content), Err(LlmError::WrongShape(_))),
                "{content}"
            );
        }
    }

    #[test]
    fn strict_schemas_require_every_property_and_no_other() {
        let schema = JsonSchema::object(
            "enhanced_prompt",
            &[
                ("prompt", serde_json::json!({"type": "string"})),
                ("negative_prompt", serde_json::json!({"type": "string"})),
            ],
        );
        assert_eq!(
            schema.schema,
            serde_json::json!({
                "type": "object",
                "properties": {
                    "prompt": {"type": "string"},
                    "negative_prompt": {"type": "string"},
                },
                "required": ["prompt", "negative_prompt"],
                "additionalProperties": false,
            })
        );
    }

    #[test]
    fn schema_refusals_are_recognised() {
        assert!(refuses_schemas(
            r#"{"error":{"message":"Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."}}"#
        ));
        assert!(refuses_schemas(
            "unknown variant `json_schema`, expected `text` or `json_object`"
        ));
        assert!(!refuses_schemas(
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens"}}"#
        ));
    }

    #[test]
    fn excerpts_are_short_and_never_hold_the_key() {
        let body = format!("{{\"error\":\"bad key sk-123\"}}{}", "x".repeat(1000));
        let short = excerpt(body.as_bytes(), Some("sk-123"));
        assert!(!short.contains("sk-123"), "{short}");
        assert_eq!(short.chars().count(), EXCERPT_CHARS);

        // A key that straddles the cut leaves no prefix behind either.
        let key = "sk-abcdefghijklmnop";
        let body = format!("{}{key}", "y".repeat(EXCERPT_CHARS - 5));
        let short = excerpt(body.as_bytes(), Some(key));
        assert!(!short.contains("sk-ab"), "{short}");
    }

    #[test]
    fn completions_without_an_answer_are_malformed() {
        for body in [
            "not json",
            "{}",
            r#"{"choices":[]}"#,
            r#"{"choices":[{"message":{"content":null}}]}"#,
            r#"{"choices":[{"message":{"content":"  "}}]}"#,
        ] {
            assert!(
                matches!(
                    parse_completion(body.as_bytes()),
                    Err(LlmError::Malformed(_))
                ),
                "{body}"
            );
        }
        assert_eq!(
            parse_completion(br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#),
            Ok("hi".to_owned())
        );
    }
}
