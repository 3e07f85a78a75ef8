//! The two-turn case table (`tests/cases.tsv`) and how an answer is scored against it,
//! shared by the accuracy test and the `intent-accuracy` example.
//!
//! Why in the library: the test that guards the heuristics and the program that compares
//! them with the LLM must score the same way, or their numbers would not mean the same.

use crate::heuristics::{Intent, IntentKind};

/// The table, compiled in so the test and the program need no path.
pub const CASES_TSV: &str = include_str!("../tests/cases.tsv");

/// One row: a previous prompt, a follow-up and what it must resolve to.
#[derive(Clone, Debug)]
pub struct Case {
    pub category: String,
    pub previous: String,
    pub prompt: String,
    pub kind: IntentKind,
    /// Each must appear in the resolved prompt (case-insensitive).
    pub must_contain: Vec<String>,
    /// None may appear in the resolved prompt (case-insensitive).
    pub must_not_contain: Vec<String>,
}

/// The compiled-in table ([`CASES_TSV`]).
pub fn cases() -> Vec<Case> {
    parse_cases(CASES_TSV)
}

/// Parses a table in the format of `tests/cases.tsv`; panics on a malformed row, since a
/// table is code.
pub fn parse_cases(tsv: &str) -> Vec<Case> {
    let list = |field: Option<&str>| -> Vec<String> {
        field
            .unwrap_or("")
            .split('|')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    tsv.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.split('\t');
            let mut next = || fields.next().unwrap_or_else(|| panic!("short row: {line}"));
            let category = next().to_owned();
            let previous = next().to_owned();
            let prompt = next().to_owned();
            let kind = match next() {
                "new" => IntentKind::New,
                "edit" => IntentKind::Edit,
                "reroll" => IntentKind::Reroll,
                other => panic!("unknown kind {other:?} in {line}"),
            };
            Case {
                category,
                previous,
                prompt,
                kind,
                must_contain: list(fields.next()),
                must_not_contain: list(fields.next()),
            }
        })
        .collect()
}

/// Why `intent` fails `case`, or `None` when it passes.
pub fn check(case: &Case, intent: &Intent) -> Option<String> {
    if intent.kind != case.kind {
        return Some(format!(
            "kind {} instead of {}",
            intent.kind.as_str(),
            case.kind.as_str()
        ));
    }
    let resolved = intent.resolved_prompt.to_lowercase();
    for word in &case.must_contain {
        if !resolved.contains(&word.to_lowercase()) {
            return Some(format!("{:?} lacks {word:?}", intent.resolved_prompt));
        }
    }
    for word in &case.must_not_contain {
        if resolved.contains(&word.to_lowercase()) {
            return Some(format!("{:?} still has {word:?}", intent.resolved_prompt));
        }
    }
    None
}
