//! The client's settings, and reading them from the environment.

use std::fmt;
use std::time::Duration;

use atelier_runtime::config::{ConfigError, optional_var, positive_var, var_or};

/// Where the LLM lives and how patient to be with it.
#[derive(Clone)]
pub struct LlmConfig {
    /// The API root, up to and including the version: `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1` (Ollama). The client appends `/chat/completions`.
    pub base_url: String,
    /// Sent as a bearer token when set; local servers usually need none.
    pub api_key: Option<String>,
    pub model: String,
    /// The limit for one HTTP attempt, headers and body.
    pub call_timeout: Duration,
    /// The limit for the whole call, retries and backoff included: what a caller waits
    /// at most before it falls back to its heuristic.
    pub deadline: Duration,
    /// Attempts after the first one.
    pub max_retries: u32,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff_base: Duration,
    /// Consecutive failed calls that open the breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker fails calls before it lets a trial through.
    pub breaker_open_for: Duration,
    /// How JSON answers are asked for: see [`StructuredOutput`].
    pub structured_output: StructuredOutput,
}

/// How a JSON answer is asked for (`response_format`).
///
/// `json_schema` (strict) makes the server constrain the answer to the caller's schema,
/// so a model cannot word its JSON differently; OpenAI, vLLM, Ollama, llama.cpp server
/// and LiteLLM take it. Servers that do not answer such a request with a 400 naming
/// `response_format` or `json_schema`: the client then asks that server with
/// `json_object` from then on, once, by itself. `json_object` skips the first try, for a
/// server known to refuse schemas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StructuredOutput {
    JsonSchema,
    JsonObject,
}

impl std::str::FromStr for StructuredOutput {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "json_schema" => Ok(Self::JsonSchema),
            "json_object" => Ok(Self::JsonObject),
            _ => Err("must be json_schema or json_object".to_owned()),
        }
    }
}

impl LlmConfig {
    pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
    pub const DEFAULT_TIMEOUT_MS: u64 = 4000;
    pub const DEFAULT_MAX_RETRIES: u32 = 2;
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
    pub const DEFAULT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
    pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);

    /// A config with the defaults for everything but the endpoint.
    ///
    /// One attempt may use the whole deadline: a provider that is slow now is rarely fast
    /// a second later, so cutting attempts short would only fail answers that were on
    /// their way. Retries then serve the fast failures (429, 5xx, refused connections),
    /// which are the ones that pass.
    pub fn new(base_url: impl Into<String>) -> Self {
        let deadline = Duration::from_millis(Self::DEFAULT_TIMEOUT_MS);
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: Self::DEFAULT_MODEL.to_owned(),
            call_timeout: deadline,
            deadline,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            breaker_failure_threshold: Self::DEFAULT_BREAKER_FAILURE_THRESHOLD,
            breaker_open_for: Self::DEFAULT_BREAKER_OPEN_FOR,
            structured_output: StructuredOutput::JsonSchema,
        }
    }

    /// Reads the config from the environment:
    ///
    /// - `ATELIER_LLM_BASE_URL`: the API root; unset or empty means no LLM (`Ok(None)`),
    ///   and the services run in heuristic mode, the default;
    /// - `ATELIER_LLM_API_KEY`: optional bearer token;
    /// - `ATELIER_LLM_MODEL`: default `gpt-4o-mini`;
    /// - `ATELIER_LLM_TIMEOUT_MS`: the deadline of one call, retries included, default
    ///   4000;
    /// - `ATELIER_LLM_MAX_RETRIES`: default 2;
    /// - `ATELIER_LLM_STRUCTURED_OUTPUT`: `json_schema` (default) or `json_object`
    ///   ([`StructuredOutput`]).
    ///
    /// A value that is set but unusable is an error naming the variable, so a typo stops
    /// the process at start instead of silently disabling the LLM.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(base_url) = optional_var::<String>("ATELIER_LLM_BASE_URL")? else {
            return Ok(None);
        };
        check_base_url(&base_url)
            .map_err(|reason| ConfigError::new("ATELIER_LLM_BASE_URL", &base_url, reason))?;
        let timeout_ms = positive_var("ATELIER_LLM_TIMEOUT_MS", Self::DEFAULT_TIMEOUT_MS)?;
        let deadline = Duration::from_millis(timeout_ms);
        Ok(Some(Self {
            api_key: optional_var("ATELIER_LLM_API_KEY")?,
            model: var_or("ATELIER_LLM_MODEL", Self::DEFAULT_MODEL.to_owned())?,
            call_timeout: deadline,
            deadline,
            max_retries: var_or("ATELIER_LLM_MAX_RETRIES", Self::DEFAULT_MAX_RETRIES)?,
            structured_output: var_or(
                "ATELIER_LLM_STRUCTURED_OUTPUT",
                StructuredOutput::JsonSchema,
            )?,
            ..Self::new(base_url)
        }))
    }

    /// Checks the settings that would otherwise make every call fail in a confusing way.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        check_base_url(&self.base_url)
            .map_err(|reason| anyhow::anyhow!("LLM base URL {:?}: {reason}", self.base_url))?;
        anyhow::ensure!(!self.model.is_empty(), "the LLM model name is empty");
        anyhow::ensure!(!self.call_timeout.is_zero(), "the LLM call timeout is zero");
        anyhow::ensure!(!self.deadline.is_zero(), "the LLM deadline is zero");
        anyhow::ensure!(
            self.breaker_failure_threshold > 0,
            "the LLM breaker failure threshold is zero"
        );
        Ok(())
    }

    /// Where chat completions are posted.
    pub(crate) fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

fn check_base_url(value: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(value).map_err(|err| err.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

// By hand, so the key never reaches a log through `{:?}`.
impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("call_timeout", &self.call_timeout)
            .field("deadline", &self.deadline)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("breaker_failure_threshold", &self.breaker_failure_threshold)
            .field("breaker_open_for", &self.breaker_open_for)
            .field("structured_output", &self.structured_output)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "ATELIER_LLM_FROM_ENV_PROBE";

    /// What `from_env` returns with exactly the given `ATELIER_LLM_*` variables set.
    fn from_env_with(vars: &[(&str, &str)]) -> String {
        atelier_testkit::rerun_with_env(
            "config::tests::print_from_env",
            PROBE,
            &["ATELIER_LLM_"],
            vars,
        )
    }

    #[test]
    fn print_from_env() {
        if std::env::var_os(PROBE).is_none() {
            return;
        }
        let printed = match LlmConfig::from_env() {
            Ok(Some(config)) => format!("{config:?}"),
            Ok(None) => "none".to_owned(),
            Err(err) => format!("error: {err}"),
        };
        println!("from_env: {printed}");
    }

    #[test]
    fn no_base_url_is_heuristic_mode() {
        assert_eq!(from_env_with(&[]), "none");
        assert_eq!(from_env_with(&[("ATELIER_LLM_BASE_URL", "")]), "none");
        assert_eq!(
            from_env_with(&[("ATELIER_LLM_BASE_URL", " "), ("ATELIER_LLM_MODEL", "m")]),
            "none"
        );
    }

    #[test]
    fn from_env_defaults_everything_but_the_url() {
        let config = from_env_with(&[("ATELIER_LLM_BASE_URL", "http://llm:8000/v1")]);
        for expected in [
            r#"base_url: "http://llm:8000/v1""#,
            "api_key: None",
            r#"model: "gpt-4o-mini""#,
            "call_timeout: 4s",
            "deadline: 4s",
            "max_retries: 2",
        ] {
            assert!(config.contains(expected), "{expected} in {config}");
        }
    }

    #[test]
    fn from_env_reads_every_variable() {
        let config = from_env_with(&[
            ("ATELIER_LLM_BASE_URL", "https://api.openai.com/v1"),
            ("ATELIER_LLM_API_KEY", "sk-from-env"),
            ("ATELIER_LLM_MODEL", "llama3.1"),
            ("ATELIER_LLM_TIMEOUT_MS", "1500"),
            ("ATELIER_LLM_MAX_RETRIES", "0"),
        ]);
        for expected in [
            r#"api_key: Some("<redacted>")"#,
            r#"model: "llama3.1""#,
            "deadline: 1.5s",
            "max_retries: 0",
        ] {
            assert!(config.contains(expected), "{expected} in {config}");
        }
        assert!(!config.contains("sk-from-env"), "{config}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("ATELIER_LLM_BASE_URL", "llm:8000"),
            ("ATELIER_LLM_TIMEOUT_MS", "4s"),
            ("ATELIER_LLM_TIMEOUT_MS", "0"),
            ("ATELIER_LLM_MAX_RETRIES", "-1"),
        ] {
            let mut vars = vec![("ATELIER_LLM_BASE_URL", "http://llm/v1")];
            vars.push((name, value));
            let printed = from_env_with(&vars);
            assert!(
                printed.starts_with("error: ") && printed.contains(name),
                "{name}={value}: {printed}"
            );
        }
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let config = LlmConfig {
            api_key: Some("sk-very-secret".to_owned()),
            ..LlmConfig::new("http://localhost:11434/v1")
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn the_endpoint_tolerates_a_trailing_slash() {
        assert_eq!(
            LlmConfig::new("http://llm:8000/v1/").endpoint(),
            "http://llm:8000/v1/chat/completions"
        );
        assert_eq!(
            LlmConfig::new("http://llm:8000/v1").endpoint(),
            "http://llm:8000/v1/chat/completions"
        );
    }

    #[test]
    fn validation_rejects_unusable_settings() {
        assert!(LlmConfig::new("http://llm/v1").validate().is_ok());
        assert!(LlmConfig::new("not a url").validate().is_err());
        assert!(LlmConfig::new("ftp://llm/v1").validate().is_err());
        let zero_threshold = LlmConfig {
            breaker_failure_threshold: 0,
            ..LlmConfig::new("http://llm/v1")
        };
        assert!(zero_threshold.validate().is_err());
    }
}
