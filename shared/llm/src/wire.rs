//! The JSON of the chat-completions API: only the fields this client sends or reads, so
//! the many servers that speak a dialect of it all fit.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub(crate) struct CompletionRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<Message<'a>>,
    pub temperature: f32,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat<'a> {
    JsonObject,
    JsonSchema { json_schema: SchemaFormat<'a> },
}

#[derive(Debug, Serialize)]
pub(crate) struct SchemaFormat<'a> {
    pub name: &'a str,
    pub strict: bool,
    pub schema: &'a serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionResponse {
    pub choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    pub message: ChoiceMessage,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChoiceMessage {
    /// Null when the model refused or called a tool instead of answering.
    pub content: Option<String>,
}
