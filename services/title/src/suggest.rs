//! Asking the LLM for a title, and refusing answers that would make a bad one.
//!
//! The model is asked for JSON so its answer is the title and nothing else (no "Sure,
//! here is a title:"), and whatever it says is still checked here: a title is shown in
//! every conversation list, so one that is empty, multi-line or a paragraph long is
//! worse than the automatic title the conversation already has.

use std::time::Duration;

use atelier_llm::{ChatRequest, JsonSchema, LlmClient, LlmError};
use serde::Deserialize;

/// The longest title accepted from the model, in characters: the automatic title's
/// length, so an LLM title never makes a list row wider than it was.
pub const MAX_TITLE_CHARS: usize = 60;

/// Enough of the prompt to name it; a longer one only costs tokens.
const MAX_PROMPT_CHARS: usize = 2000;

const SYSTEM_PROMPT: &str = "You name conversations in an image-generation chat. Given the \
user's first prompt, reply with a JSON object {\"title\": string}: a short, specific \
conversation title of 2 to 6 words that says what the pictures are about, with no quotes \
and no trailing punctuation, in the language of the prompt.";

/// Why no title came from the model; every case means "keep the automatic title".
#[derive(Debug, thiserror::Error)]
pub enum NoTitle {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("the LLM did not answer within the title deadline")]
    Deadline,
    #[error("the LLM's title is unusable: {0}")]
    Unusable(&'static str),
}

impl NoTitle {
    /// A stable label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            NoTitle::Llm(err) => err.kind(),
            NoTitle::Deadline => "deadline",
            NoTitle::Unusable(_) => "unusable",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    title: String,
}

/// The model's title for a conversation that starts with `prompt`, within `deadline`.
pub async fn llm_title(
    llm: &LlmClient,
    prompt: &str,
    deadline: Duration,
) -> Result<String, NoTitle> {
    let request = ChatRequest {
        system: SYSTEM_PROMPT.to_owned(),
        user: prompt.chars().take(MAX_PROMPT_CHARS).collect(),
        // Low: a title should describe the prompt, not riff on it.
        temperature: 0.2,
        // Six words in any script, with the JSON around them.
        max_tokens: 48,
    };
    let schema = JsonSchema::object("title", &[("title", serde_json::json!({"type": "string"}))]);
    let answer: Answer = tokio::time::timeout(deadline, llm.complete_json(&request, &schema))
        .await
        .map_err(|_elapsed| NoTitle::Deadline)??;
    clean(&answer.title).map_err(NoTitle::Unusable)
}

/// The title a conversation may carry, from what the model said: trimmed, without the
/// quotes and the final full stop models add despite being told not to.
pub fn clean(raw: &str) -> Result<String, &'static str> {
    let mut title = raw.trim();
    loop {
        let unquoted = strip_quotes(title)
            .trim()
            .trim_end_matches(['.', '。'])
            .trim_end();
        if unquoted == title {
            break;
        }
        title = unquoted;
    }
    if title.is_empty() {
        return Err("empty");
    }
    if title.chars().any(char::is_control) {
        return Err("holds control characters or line breaks");
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err("too long");
    }
    Ok(title.to_owned())
}

/// `title` without one pair of surrounding quotes, if it has them.
fn strip_quotes(title: &str) -> &str {
    const PAIRS: [(char, char); 7] = [
        ('"', '"'),
        ('\'', '\''),
        ('`', '`'),
        ('“', '”'),
        ('‘', '’'),
        ('«', '»'),
        ('„', '“'),
    ];
    for (open, close) in PAIRS {
        if let Some(inner) = title
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
        {
            return inner;
        }
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_title_passes_trimmed() {
        assert_eq!(clean("  Foxes in Snow \n").as_deref(), Ok("Foxes in Snow"));
    }

    #[test]
    fn quotes_and_a_final_stop_are_removed() {
        for raw in [
            "\"Foxes in Snow\"",
            "'Foxes in Snow'",
            "“Foxes in Snow”",
            "« Foxes in Snow »",
            "\"Foxes in Snow.\"",
            "\"Foxes in Snow\".",
            "`\"Foxes in Snow\"`",
        ] {
            assert_eq!(clean(raw).as_deref(), Ok("Foxes in Snow"), "{raw:?}");
        }
    }

    #[test]
    fn inner_quotes_and_other_punctuation_stay() {
        assert_eq!(
            clean("The \"Night\" Fox").as_deref(),
            Ok("The \"Night\" Fox")
        );
        assert_eq!(
            clean("Who Painted This?").as_deref(),
            Ok("Who Painted This?")
        );
    }

    #[test]
    fn unusable_titles_are_refused() {
        for raw in [
            "",
            "   ",
            "\"\"",
            "...",
            "Foxes\nin Snow",
            "Foxes\0",
            "a\rb",
        ] {
            assert!(clean(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn the_length_limit_counts_characters() {
        let longest = "é".repeat(MAX_TITLE_CHARS);
        assert_eq!(clean(&longest).as_deref(), Ok(longest.as_str()));
        assert!(clean(&"é".repeat(MAX_TITLE_CHARS + 1)).is_err());
    }
}
