//! Whether an LLM's rewrite is still the user's picture.
//!
//! A model asked to enhance "a red fox in the snow" sometimes answers with style words
//! alone (", ultra-detailed, 8k, cinematic lighting"), or with a different subject. The
//! image would then not be of what the user asked for, which is worse than the plain
//! fallback. So a rewrite is used only when it:
//!
//! - keeps the user's subject: at least two thirds of the prompt's content words (words
//!   of three letters or more that are not function words), each matched by a word of the
//!   rewrite that shares its stem (a common prefix of at least three letters, which
//!   leaves at most two letters of the shorter word and three of the longer), so "foxes"
//!   keeps "fox" and "cities" keeps "city", but neither "car" nor "category" keeps "cat";
//! - starts with a letter or digit, not with the punctuation of a list it was cut from;
//! - is between half the prompt's length and the longest answer taken.
//!
//! Scripts written without spaces (Chinese, Japanese) have no words to count here: their
//! rewrites are checked for the start and the length only.

/// Why a rewrite was not used: each is a fallback, counted by reason on `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    LostSubject,
    StartsWithPunctuation,
    Length,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LostSubject => "lost_subject",
            Self::StartsWithPunctuation => "starts_with_punctuation",
            Self::Length => "length",
        }
    }
}

/// Function words and the words of a request rather than of a picture: a rewrite need
/// not repeat them.
#[rustfmt::skip]
const FUNCTION_WORDS: &[&str] = &[
    "the", "and", "with", "for", "from", "into", "onto", "over", "under", "its", "his",
    "her", "their", "this", "that", "these", "those", "some", "very", "please", "make",
    "draw", "show", "create", "generate", "picture", "image", "photo", "photograph",
    "painting", "of", "are", "was", "were", "has", "have", "who", "which", "while", "about",
    "just", "like", "one", "but", "not", "all", "any", "too", "can", "could", "would",
    "should", "there", "then", "than", "also", "only", "same", "other", "another", "more",
    "less",
];

/// Checks `rewrite` against the user's `prompt`; `max_chars` is the longest rewrite taken.
pub fn check(prompt: &str, rewrite: &str, max_chars: usize) -> Result<(), Rejection> {
    let rewrite = rewrite.trim();
    match rewrite.chars().next() {
        Some(first) if first.is_alphanumeric() => {}
        Some(_) => return Err(Rejection::StartsWithPunctuation),
        None => return Err(Rejection::Length),
    }
    let chars = rewrite.chars().count();
    if chars < prompt.trim().chars().count() / 2 || chars > max_chars {
        return Err(Rejection::Length);
    }
    let wanted = content_words(prompt);
    if wanted.is_empty() {
        return Ok(());
    }
    let offered = words(rewrite);
    let kept = wanted
        .iter()
        .filter(|word| offered.iter().any(|other| same_stem(word, other)))
        .count();
    // Two thirds, rounded up: every word of a one- or two-word subject.
    if kept * 3 >= wanted.len() * 2 {
        Ok(())
    } else {
        Err(Rejection::LostSubject)
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn content_words(prompt: &str) -> Vec<String> {
    let mut found: Vec<String> = words(prompt)
        .into_iter()
        .filter(|word| {
            word.chars().count() >= 3
                && !FUNCTION_WORDS.contains(&word.as_str())
                && !word.chars().all(|c| c.is_ascii_digit())
                && !word.chars().any(spaceless_script)
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Han, kana and Hangul: scripts whose words are not separated by spaces.
fn spaceless_script(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF)
}

fn same_stem(word: &str, other: &str) -> bool {
    let common = word
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let (a, b) = (word.chars().count(), other.chars().count());
    common >= 3 && common + 2 >= a.min(b) && a.max(b) <= common + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 2000;

    #[test]
    fn a_rewrite_that_keeps_the_subject_passes() {
        for (prompt, rewrite) in [
            (
                "a red fox in the snow",
                "a red fox curled up asleep in deep snow, soft blue morning light",
            ),
            // Two of three content words kept: "crimson" for "red" is fine.
            (
                "a red fox in the snow",
                "a crimson fox resting in fresh snow at dawn, shallow depth of field",
            ),
            (
                "two foxes in a city",
                "two red foxes crossing a rainy city street at night, neon reflections",
            ),
            (
                "a cat",
                "A fluffy ginger cat on a windowsill, warm afternoon light",
            ),
            // Nothing to count in Chinese: only the start and the length are checked.
            ("一只红色的狐狸", "一只红色的狐狸在雪地里，柔和的晨光"),
        ] {
            assert_eq!(check(prompt, rewrite, MAX), Ok(()), "{prompt} -> {rewrite}");
        }
    }

    #[test]
    fn a_rewrite_without_the_subject_is_refused() {
        for (prompt, rewrite) in [
            (
                "a red fox in the snow",
                "ultra-detailed, 8k, cinematic lighting, masterpiece",
            ),
            (
                "a red fox in the snow",
                "a majestic wolf howling at the moon, dramatic lighting",
            ),
            ("a cat on a car", "a cab on a cart, studio light"),
        ] {
            assert_eq!(
                check(prompt, rewrite, MAX),
                Err(Rejection::LostSubject),
                "{prompt} -> {rewrite}"
            );
        }
    }

    #[test]
    fn a_rewrite_that_starts_with_punctuation_is_refused() {
        for rewrite in [
            ", ultra-detailed, a red fox in the snow",
            "- a red fox in the snow",
            "\"a red fox in the snow\"",
        ] {
            assert_eq!(
                check("a red fox in the snow", rewrite, MAX),
                Err(Rejection::StartsWithPunctuation),
                "{rewrite}"
            );
        }
    }

    #[test]
    fn a_rewrite_out_of_bounds_is_refused() {
        let prompt = "a red fox sleeping in the deep snow of a quiet birch forest at dawn";
        assert_eq!(check(prompt, "red fox snow", MAX), Err(Rejection::Length));
        assert_eq!(check(prompt, "", MAX), Err(Rejection::Length));
        let long = format!("{prompt}, {}", "with soft light, ".repeat(200));
        assert_eq!(check(prompt, &long, MAX), Err(Rejection::Length));
    }

    #[test]
    fn stems_match_plurals_but_not_other_words() {
        assert!(same_stem("fox", "foxes"));
        assert!(same_stem("cities", "city"));
        assert!(!same_stem("cat", "car"));
        assert!(!same_stem("cat", "category"));
    }
}
