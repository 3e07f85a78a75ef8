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
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

#[derive(Debug, Serialize)]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl ResponseFormat {
    pub const JSON_OBJECT: Self = Self {
        kind: "json_object",
    };
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
