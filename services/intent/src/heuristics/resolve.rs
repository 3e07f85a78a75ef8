//! Applies an edit's changes to the previous prompt: the resolved prompt of an edit.
//!
//! Why not only append: an image model reads "a cat with a hat, without the hat" as a
//! cat with a hat, and "a dog instead of the cat" still names the cat. So a removal takes
//! the object's words out of the prompt, a replacement swaps them, and a new colour
//! replaces the old one ("a red car" + "make it blue" → "a blue car"). Only what names
//! nothing in the prompt is appended, as before.

use super::lexicon::en::{COLOR_NAMES, COLOR_WORDS, TIME_WORDS};
use super::rules::{Token, combine, tokenize};

/// One change to the previous prompt, read from the phrase the rules produce.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Change {
    Append(String),
    /// The object to take out.
    Remove(String),
    /// `old` (empty: the main subject) becomes `new`.
    Replace {
        old: String,
        new: String,
    },
    /// A new colour for `target` (empty: the main subject).
    Recolor {
        target: String,
        color: String,
    },
}

const SHADES: &[&str] = &["light", "dark", "bright", "pale", "deep", "pastel", "neon"];
const ARTICLES: &[&str] = &[
    "a", "an", "the", "some", "its", "his", "her", "their", "all", "any", "those", "these", "this",
    "that",
];
/// Words that attach a part to the scene: a removal takes them out with the part.
const LINKERS: &[&str] = &[
    "with", "and", "wearing", "holding", "carrying", "in", "on", "under", "beside", "near",
    "behind", "next", "by", "at", "plus", "having",
];

impl Change {
    pub(super) fn from_phrase(phrase: &str) -> Change {
        let t = tokenize(phrase);
        let w = |at: usize| t.get(at).map_or("", |x| x.norm.as_str());
        let text = |range: &[Token]| span(phrase, range);
        if w(0) == "without" && t.len() > 1 {
            return Change::Remove(text(&t[1..]));
        }
        if let Some(k) = (0..t.len()).find(|&k| w(k) == "instead" && w(k + 1) == "of")
            && k > 0
        {
            return Change::Replace {
                old: text(&t[k + 2..]),
                new: text(&t[..k]),
            };
        }
        if let Some(k) = (1..t.len()).find(|&k| w(k) == "changed" && w(k + 1) == "to") {
            let mut target = &t[..k];
            let value = &t[k + 2..];
            if let Some(j) = (0..target.len()).find(|&j| {
                matches!(target[j].norm.as_str(), "color" | "colour") && w(j + 1) == "of"
            }) {
                target = &target[j + 2..];
            }
            let target_text = text(target);
            if is_color(value) {
                return Change::Recolor {
                    target: target_text,
                    color: text(value),
                };
            }
            if target.iter().any(|x| {
                matches!(
                    x.norm.as_str(),
                    "background" | "backdrop" | "scenery" | "setting"
                )
            }) {
                return Change::Append(format!("{} in the background", text(value)));
            }
            return Change::Replace {
                old: target_text,
                new: text(value),
            };
        }
        // "blue", "in blue" (from "i want it in blue")
        let color = if w(0) == "in" { &t[1..] } else { &t[..] };
        if is_color(color) {
            return Change::Recolor {
                target: String::new(),
                color: text(color),
            };
        }
        // "the dress blue" from "make the dress blue"
        if w(0) == "the" && t.len() >= 3 {
            let mut k = t.len();
            while k > 1 && is_color_word(&t[k - 1].norm) {
                k -= 1;
            }
            if k < t.len() && is_color(&t[k..]) {
                return Change::Recolor {
                    target: text(&t[..k]),
                    color: text(&t[k..]),
                };
            }
        }
        Change::Append(phrase.to_owned())
    }
}

fn is_color_word(w: &str) -> bool {
    COLOR_NAMES.contains(&w) || SHADES.contains(&w)
}

/// One or two words naming a plain colour ("blue", "dark green").
fn is_color(t: &[Token]) -> bool {
    let t = match t.first() {
        Some(first) if ARTICLES.contains(&first.norm.as_str()) => &t[1..],
        _ => t,
    };
    !t.is_empty()
        && t.len() <= 2
        && t.iter().all(|x| is_color_word(&x.norm))
        && COLOR_NAMES.contains(&t[t.len() - 1].norm.as_str())
}

fn span(text: &str, t: &[Token]) -> String {
    match (t.first(), t.last()) {
        (Some(first), Some(last)) => text[first.start..last.end].to_owned(),
        _ => String::new(),
    }
}

/// The previous prompt with the phrases' changes applied in order.
pub(super) fn apply(previous: &str, phrases: &[&str]) -> String {
    let mut prompt = combine(previous, &[]);
    for phrase in phrases {
        prompt = match Change::from_phrase(phrase) {
            Change::Append(text) => append(&prompt, &text),
            Change::Remove(object) => {
                remove(&prompt, &object).unwrap_or_else(|| combine(&prompt, &[phrase]))
            }
            Change::Replace { old, new } => replace(&prompt, &old, &new)
                .unwrap_or_else(|| combine(&prompt, &[strip_article(&new).as_str()])),
            Change::Recolor { target, color } => {
                recolor(&prompt, &target, &color).unwrap_or_else(|| {
                    let target = strip_article(&target);
                    combine(&prompt, &[format!("{color} {target}").trim()])
                })
            }
        };
    }
    prompt
}

/// Appends `text`, replacing a time of day the prompt already names ("at sunset" → "at
/// night") rather than naming two.
fn append(prompt: &str, text: &str) -> String {
    let added = tokenize(text);
    let time_only = !added.is_empty()
        && added.iter().all(|t| {
            TIME_WORDS.contains(&t.norm.as_str()) || matches!(t.norm.as_str(), "at" | "the" | "in")
        });
    if time_only {
        let new_time = added
            .iter()
            .rev()
            .find(|t| TIME_WORDS.contains(&t.norm.as_str()));
        let tokens = tokenize(prompt);
        if let (Some(new_time), Some(old)) = (
            new_time,
            tokens
                .iter()
                .find(|t| TIME_WORDS.contains(&t.norm.as_str())),
        ) {
            return format!(
                "{}{}{}",
                &prompt[..old.start],
                &text[new_time.start..new_time.end],
                &prompt[old.end..]
            );
        }
    }
    combine(prompt, &[text])
}

fn strip_article(text: &str) -> String {
    let t = tokenize(text);
    match t.first() {
        Some(first) if ARTICLES.contains(&first.norm.as_str()) && t.len() > 1 => {
            span(text, &t[1..])
        }
        _ => text.trim().to_owned(),
    }
}

/// The noun a phrase names: its last word that is not an article.
fn head(text: &str) -> Option<String> {
    tokenize(text)
        .into_iter()
        .rev()
        .find(|t| {
            !ARTICLES.contains(&t.norm.as_str())
                && !COLOR_WORDS.contains(&t.norm.as_str())
                && !COLOR_NAMES.contains(&t.norm.as_str())
        })
        .map(|t| t.norm)
}

/// Singular and plural forms compare equal ("the cars" names "cars" and "car").
fn same_noun(a: &str, b: &str) -> bool {
    let stem = |w: &str| {
        w.strip_suffix("es")
            .filter(|s| s.ends_with('s') || s.ends_with("sh") || s.ends_with("ch"))
            .or_else(|| w.strip_suffix('s').filter(|s| s.len() > 2))
            .unwrap_or(w)
            .to_owned()
    };
    a == b || stem(a) == stem(b)
}

fn find_noun(tokens: &[Token], noun: &str) -> Option<usize> {
    tokens.iter().position(|t| same_noun(&t.norm, noun))
}

/// Where the main subject's noun sits: the first noun phrase, up to a linker, a verb in
/// -ing, a comma or the end.
fn subject(tokens: &[Token]) -> Option<usize> {
    let mut at = 0;
    while tokens
        .get(at)
        .is_some_and(|t| ARTICLES.contains(&t.norm.as_str()))
    {
        at += 1;
    }
    tokens.get(at)?;
    while let Some(next) = tokens.get(at + 1) {
        let ends = tokens[at].sep_after
            || LINKERS.contains(&next.norm.as_str())
            || next.norm.ends_with("ing")
            || matches!(next.norm.as_str(), "of" | "that" | "who" | "is" | "are");
        if ends {
            break;
        }
        at += 1;
    }
    Some(at)
}

/// Takes `object` out of `prompt`, with the word that attached it ("with a hat"); `None`
/// when the prompt does not name it.
pub(super) fn remove(prompt: &str, object: &str) -> Option<String> {
    let noun = head(object)?;
    let tokens = tokenize(prompt);
    let k = find_noun(&tokens, &noun)?;
    // Back over adjectives and articles to the linker or the start of the clause.
    let mut start = k;
    while start > 0
        && !tokens[start - 1].sep_after
        && !LINKERS.contains(&tokens[start - 1].norm.as_str())
    {
        start -= 1;
    }
    let mut end = k;
    let linked = start > 0 && !tokens[start - 1].sep_after;
    if tokens.get(k + 1).is_some_and(|t| t.norm == "and") && !tokens[k].sep_after {
        // "with cars and trees" → "with trees"; "a dog and a cat" → "a cat"
        end = k + 1;
    } else if linked {
        start -= 1;
        // "next to the tree": "next" links with "to"
        if start > 0 && tokens[start].norm == "to" && tokens[start - 1].norm == "next" {
            start -= 1;
        }
    }
    let cut_from = tokens[start].start;
    let cut_to = tokens[end].end;
    let out = format!("{} {}", &prompt[..cut_from], &prompt[cut_to..]);
    let cleaned = combine(&out, &[]).replace(" ,", ",");
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Swaps the noun of `old` (or the main subject) for `new`; `None` when the prompt does
/// not name it.
pub(super) fn replace(prompt: &str, old: &str, new: &str) -> Option<String> {
    let tokens = tokenize(prompt);
    let k = if old.trim().is_empty() {
        subject(&tokens)?
    } else {
        find_noun(&tokens, &head(old)?)?
    };
    // The new words replace the old noun and its colour words, not the adjectives of
    // size or mood around it.
    let new_words = strip_article(new);
    let mut start = k;
    if !old.trim().is_empty() {
        // "the red car" → "a bike": the old colour goes with the old noun.
        while start > 0 && is_color_word(&tokens[start - 1].norm) {
            start -= 1;
        }
    }
    Some(splice(prompt, &tokens, start, k, &new_words))
}

/// Gives the noun of `target` (or the main subject) the colour `color`, in place of the
/// colour words before it.
pub(super) fn recolor(prompt: &str, target: &str, color: &str) -> Option<String> {
    let tokens = tokenize(prompt);
    let k = if target.trim().is_empty() || is_pronoun(target) {
        subject(&tokens)?
    } else {
        find_noun(&tokens, &head(target)?)?
    };
    let color = strip_article(color);
    let mut start = k;
    while start > 0 && is_color_word(&tokens[start - 1].norm) {
        start -= 1;
    }
    let noun = &prompt[tokens[k].start..tokens[k].end];
    Some(splice(
        prompt,
        &tokens,
        start,
        k,
        &format!("{color} {noun}"),
    ))
}

fn is_pronoun(text: &str) -> bool {
    matches!(
        text.trim().to_lowercase().as_str(),
        "it" | "them" | "this" | "that" | "everything" | "the image" | "the picture"
    )
}

/// Replaces tokens `start..=end` by `words`, fixing "a"/"an" before them.
fn splice(prompt: &str, tokens: &[Token], start: usize, end: usize, words: &str) -> String {
    let mut before = prompt[..tokens[start].start].to_owned();
    let after = &prompt[tokens[end].end..];
    if start > 0 {
        let article = &tokens[start - 1];
        if article.end == before.trim_end().len() && matches!(article.norm.as_str(), "a" | "an") {
            let vowel = words
                .chars()
                .next()
                .is_some_and(|c| "aeiouAEIOU".contains(c));
            let fixed = if vowel { "an" } else { "a" };
            let original = &prompt[article.start..article.end];
            let fixed = if original.starts_with('A') {
                if vowel { "An" } else { "A" }
            } else {
                fixed
            };
            before = format!(
                "{}{}{}",
                &before[..article.start],
                fixed,
                &before[article.end..]
            );
        }
    }
    combine(&format!("{before}{words}{after}"), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_take_the_object_out() {
        let cases = [
            ("a cat with a hat", "the hat", "a cat"),
            ("a city street with cars", "the cars", "a city street"),
            ("a dog and a cat in a park", "the dog", "a cat in a park"),
            ("a cat sitting on a sofa", "the sofa", "a cat sitting"),
            (
                "a man wearing a red hat, standing by a tree",
                "the hat",
                "a man, standing by a tree",
            ),
            (
                "a street with cars and trees",
                "the cars",
                "a street with trees",
            ),
        ];
        for (prompt, object, expected) in cases {
            assert_eq!(
                remove(prompt, object).as_deref(),
                Some(expected),
                "{prompt:?}"
            );
        }
        assert_eq!(remove("a cat", "the dog"), None);
    }

    #[test]
    fn replacements_swap_the_noun() {
        assert_eq!(
            replace("a dog in a park", "a dog", "a cat").as_deref(),
            Some("a cat in a park")
        );
        assert_eq!(
            replace("a cat sitting on a sofa", "", "an owl").as_deref(),
            Some("an owl sitting on a sofa")
        );
        assert_eq!(
            replace("a red car on a road", "the car", "a truck").as_deref(),
            Some("a truck on a road")
        );
    }

    #[test]
    fn recolouring_replaces_the_old_colour() {
        assert_eq!(
            recolor("a red car", "", "blue").as_deref(),
            Some("a blue car")
        );
        assert_eq!(
            recolor("a woman in a red dress", "the dress", "green").as_deref(),
            Some("a woman in a green dress")
        );
        assert_eq!(
            recolor("a car on a road", "it", "orange").as_deref(),
            Some("an orange car on a road")
        );
    }

    #[test]
    fn phrases_become_changes() {
        assert_eq!(
            Change::from_phrase("without the hat"),
            Change::Remove("the hat".into())
        );
        assert_eq!(
            Change::from_phrase("a dog instead of the cat"),
            Change::Replace {
                old: "the cat".into(),
                new: "a dog".into()
            }
        );
        assert_eq!(
            Change::from_phrase("blue"),
            Change::Recolor {
                target: String::new(),
                color: "blue".into()
            }
        );
        assert_eq!(
            Change::from_phrase("in dark green"),
            Change::Recolor {
                target: String::new(),
                color: "dark green".into()
            }
        );
        assert_eq!(
            Change::from_phrase("in the rain"),
            Change::Append("in the rain".into())
        );
        assert_eq!(
            Change::from_phrase("the dress blue"),
            Change::Recolor {
                target: "the dress".into(),
                color: "blue".into()
            }
        );
    }

    #[test]
    fn a_new_time_of_day_replaces_the_old_one() {
        assert_eq!(
            apply("a lighthouse at sunset", &["night"]),
            "a lighthouse at night"
        );
        assert_eq!(apply("a lighthouse", &["night"]), "a lighthouse, night");
    }
}
