//! The English rules: NEW or EDIT from the words of an English prompt, as the module doc of
//! [`super`] lists them.

use std::collections::HashSet;

use super::lexicon::en::*;
use super::{Decision, EditType, Intent, Unsure};

/// Decides NEW or EDIT for `prompt`, given the conversation's previous prompt and whether
/// that message has an image an edit could start from. See the module doc for the rules.
pub(super) fn english(
    prompt: &str,
    previous_prompt: Option<&str>,
    has_previous_image: bool,
) -> Decision {
    let previous = previous_prompt
        .map(str::trim)
        .filter(|p| !p.is_empty() && has_previous_image);
    let Some(previous) = previous else {
        return Decision::Sure(Intent::new_picture(prompt));
    };
    let tokens = tokenize(prompt);
    if tokens.is_empty() {
        return Decision::Sure(Intent::new_picture(prompt));
    }
    let (skipped, continuation) = strip_leading_fillers(&tokens);
    let core = &tokens[skipped..];
    if core.is_empty() {
        // Only "ok", "now", "please" and the like: do it again, presumably.
        return Decision::Ambiguous {
            best_guess: Intent::edit(previous, &[]),
            why: Unsure::Reference,
        };
    }

    if let Some(changes) = clear_edit(prompt, core, continuation, tokens.len()) {
        return Decision::Sure(Intent::edit(previous, &changes));
    }
    if !continuation && is_bare_modifier(core) {
        let phrase = slice(prompt, trim_trailing_fillers(core)).unwrap_or_default();
        return Decision::Sure(Intent::edit(previous, &[(phrase, classify(core))]));
    }

    let previous_words: HashSet<String> = tokenize(previous).into_iter().map(|t| t.norm).collect();
    if let Some(scene) = next_scene(&tokens[..skipped], core, &previous_words) {
        let scene = slice(prompt, scene).unwrap_or_default();
        return Decision::Sure(Intent::new_picture(&scene));
    }
    let elliptical = continuation || is(&core[0].norm, PREPOSITIONS);
    let strong = first_strong_reference(core);
    let pronoun = first_pronoun_reference(core, &previous_words);
    let reference = [strong, pronoun].into_iter().flatten().min();
    let anaphora = elliptical || reference.is_some();

    if let Some(rest) = strip_request(core)
        && !elliptical
        && first_strong_reference(rest).is_none()
        && pronoun.is_none()
    {
        return Decision::Sure(Intent::new_picture(prompt));
    }

    let anaphora_at_start = elliptical || reference.is_some_and(|at| at < 3);
    if tokens.len() > LONG_PROMPT_WORDS && !anaphora_at_start {
        let intent = Intent::new_picture(prompt);
        return if strong.is_some() {
            Decision::Ambiguous {
                best_guess: intent,
                why: Unsure::Reference,
            }
        } else {
            Decision::Sure(intent)
        };
    }

    if !anaphora && !has_edit_hint(core) {
        return Decision::Sure(Intent::new_picture(prompt));
    }

    let best_guess = if !anaphora && reads_like_new_scene(core) {
        Intent::new_picture(prompt)
    } else {
        let phrase = slice(prompt, trim_trailing_fillers(core)).unwrap_or_default();
        Intent::edit(previous, &[(phrase, classify(core))])
    };
    Decision::Ambiguous {
        best_guess,
        why: Unsure::Reference,
    }
}

/// Above this many words a prompt without a back-reference at its start is a new scene.
pub(super) const LONG_PROMPT_WORDS: usize = 12;

/// One word of a prompt: its lowercase form and where it sits in the original text.
#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) norm: String,
    pub(super) start: usize,
    pub(super) end: usize,
    /// A comma, semicolon or sentence end follows: a clause may end here.
    pub(super) sep_after: bool,
}

/// Splits on anything but letters, digits and apostrophes ("pixel-art" is two words).
pub(super) fn tokenize(text: &str) -> Vec<Token> {
    fn push(text: &str, start: usize, end: usize, tokens: &mut Vec<Token>) {
        let is_quote = |c: char| c == '\'' || c == '’';
        let raw = &text[start..end];
        let trimmed = raw.trim_start_matches(is_quote);
        let start = start + (raw.len() - trimmed.len());
        let trimmed = trimmed.trim_end_matches(is_quote);
        if trimmed.is_empty() {
            return;
        }
        tokens.push(Token {
            norm: trimmed.to_lowercase().replace('’', "'"),
            start,
            end: start + trimmed.len(),
            sep_after: false,
        });
    }

    let mut tokens = Vec::new();
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        let in_word = c.is_alphanumeric() || c == '\'' || c == '’';
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(start)) => {
                push(text, start, i, &mut tokens);
                word_start = None;
            }
            _ => {}
        }
        if matches!(c, ',' | ';' | '.' | '!' | '?' | ':')
            && let Some(last) = tokens.last_mut()
        {
            last.sep_after = true;
        }
    }
    if let Some(start) = word_start {
        push(text, start, text.len(), &mut tokens);
    }
    tokens
}

pub(super) fn is(word: &str, list: &[&str]) -> bool {
    list.contains(&word)
}

pub(super) fn word(tokens: &[Token], at: usize) -> &str {
    tokens.get(at).map_or("", |t| t.norm.as_str())
}

/// Whether `phrase` (words separated by single spaces) starts at `at`.
fn phrase_at(tokens: &[Token], at: usize, phrase: &str) -> bool {
    phrase
        .split(' ')
        .enumerate()
        .all(|(k, w)| tokens.get(at + k).is_some_and(|t| t.norm == w))
}

/// The length in words of the first phrase of `list` that starts at `at`.
pub(super) fn match_at(tokens: &[Token], at: usize, list: &[&str]) -> Option<usize> {
    list.iter()
        .find(|phrase| phrase_at(tokens, at, phrase))
        .map(|phrase| phrase.split(' ').count())
}

pub(super) fn find(tokens: &[Token], list: &[&str]) -> Option<usize> {
    (0..tokens.len()).find(|&at| match_at(tokens, at, list).is_some())
}

pub(super) fn contains(tokens: &[Token], list: &[&str]) -> bool {
    find(tokens, list).is_some()
}

/// The original text from the first to the last token, whitespace collapsed.
pub(super) fn slice(text: &str, tokens: &[Token]) -> Option<String> {
    let (first, last) = (tokens.first()?, tokens.last()?);
    Some(
        text[first.start..last.end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The previous prompt followed by the changes, comma-separated, with no doubled commas.
pub(super) fn combine(previous: &str, phrases: &[&str]) -> String {
    let clean = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .trim_matches(|c: char| matches!(c, ',' | ';' | '.' | '!' | '?' | ':' | ' '))
            .to_owned()
    };
    let parts: Vec<String> = std::iter::once(previous)
        .chain(phrases.iter().copied())
        .map(clean)
        .filter(|p| !p.is_empty())
        .collect();
    let mut joined = parts.join(", ");
    while joined.contains(",,") || joined.contains(", ,") {
        joined = joined.replace(", ,", ",").replace(",,", ",");
    }
    joined
}

/// Skips politeness and continuation words at the start; reports whether a continuation
/// word was among them.
pub(super) fn strip_leading_fillers(tokens: &[Token]) -> (usize, bool) {
    let mut at = 0;
    let mut continuation = false;
    loop {
        if let Some(n) = match_at(tokens, at, POLITE) {
            at += n;
        } else if is(word(tokens, at), CONTINUATIONS) {
            at += 1;
            continuation = true;
        } else {
            return (at, continuation);
        }
    }
}

pub(super) fn trim_trailing_fillers(mut tokens: &[Token]) -> &[Token] {
    loop {
        let n = tokens.len();
        if n >= 2 && word(tokens, n - 2) == "thank" && word(tokens, n - 1) == "you" {
            tokens = &tokens[..n - 2];
        } else if n > 0 && is(word(tokens, n - 1), TRAILING) {
            tokens = &tokens[..n - 1];
        } else {
            return tokens;
        }
    }
}

fn is_pronoun_object(tokens: &[Token]) -> bool {
    match_at(tokens, 0, OBJECTS) == Some(tokens.len())
}

/// Drops "the", "its", … from the start of a noun phrase.
fn without_article(tokens: &[Token]) -> &[Token] {
    match tokens.first() {
        Some(t) if is(&t.norm, DEFINITES) || is(&t.norm, &["her", "a", "an"]) => &tokens[1..],
        _ => tokens,
    }
}

/// The changes of a prompt that is a clear edit, one per clause, or `None`.
fn clear_edit(
    text: &str,
    core: &[Token],
    continuation: bool,
    words: usize,
) -> Option<Vec<(String, EditType)>> {
    let mut changes = Vec::new();
    for (i, clause) in split_clauses(text, core, words).into_iter().enumerate() {
        let (skipped, more_continuation) = strip_leading_fillers(clause);
        let untrimmed = &clause[skipped..];
        let clause = trim_trailing_fillers(untrimmed);
        let instead = untrimmed[clause.len()..]
            .iter()
            .any(|x| x.norm == "instead");
        let continuation = more_continuation || (i == 0 && continuation);
        let mut phrase = edit_phrase(text, clause, continuation, words)?;
        if instead && names_a_thing(&tokenize(&phrase)) {
            // "make it a cat instead": the cat replaces the subject, it is not added.
            phrase.push_str(" instead of");
        }
        changes.push((phrase, classify(clause)));
    }
    Some(changes)
}

/// An introduced noun phrase that names a thing, not a look: "a cat", "two owls"; not "a
/// painting", "a night scene", "a bit darker".
fn names_a_thing(t: &[Token]) -> bool {
    t.len() >= 2
        && is(word(t, 0), INTRODUCERS)
        && match_at(t, 0, DEGREES).is_none()
        && t[1..].iter().all(|x| {
            !is_keyword_word(&x.norm)
                && !is(&x.norm, MODIFIER_WORDS)
                && !is(&x.norm, PREPOSITIONS)
                && !is(&x.norm, COMPARATIVES)
        })
}

/// Splits "make it night and add a moon" into its edits: a new clause starts at "and",
/// "then" or a comma only when an edit opens there ("black and white" stays whole).
fn split_clauses<'t>(text: &str, tokens: &'t [Token], words: usize) -> Vec<&'t [Token]> {
    let mut clauses = Vec::new();
    let mut start = 0;
    for at in 1..tokens.len() {
        let boundary = tokens[at - 1].sep_after || is(&tokens[at].norm, &["and", "then"]);
        if !boundary {
            continue;
        }
        let (skipped, _) = strip_leading_fillers(&tokens[at..]);
        let next = trim_trailing_fillers(&tokens[at + skipped..]);
        if !next.is_empty() && edit_phrase(text, next, false, words).is_some() {
            clauses.push(&tokens[start..at]);
            start = at;
        }
    }
    clauses.push(&tokens[start..]);
    clauses
}

/// When `t` opens with an edit form, the words to append to the previous prompt.
fn edit_phrase(text: &str, t: &[Token], continuation: bool, words: usize) -> Option<String> {
    let w0 = word(t, 0);
    let w1 = word(t, 1);
    // "remove the car", "get rid of the sofa", "lose the laptop"
    if let Some(n) = match_at(t, 0, REMOVE_VERBS) {
        return slice(text, &t[n..]).map(|x| format!("without {x}"));
    }
    // "i want it in purple", "show it at night": the picture, wanted a certain way
    if let Some(n) = match_at(t, 0, WANT_VERBS)
        && let Some(m) = match_at(t, n, OBJECTS)
    {
        let mut rest = &t[n + m..];
        if word(rest, 0) == "to" && match_at(rest, 1, LOOK_WORDS).is_some() {
            rest = &rest[1..];
        }
        if let Some(k) = match_at(rest, 0, LOOK_WORDS) {
            rest = &rest[k..];
        }
        return slice(text, rest);
    }
    // "place it in a kitchen", "move him to a desert"; "put" also adds ("put a hat on her")
    if w0 != "put"
        && is(w0, PLACE_VERBS)
        && let Some(n) = match_at(t, 1, OBJECTS)
    {
        let rest = &t[1 + n..];
        let rest = if word(rest, 0) == "to" {
            &rest[1..]
        } else {
            rest
        };
        return slice(text, rest);
    }
    match w0 {
        // "make it night", "make the sky purple", "paint it red"
        "make" | "paint" | "color" | "colour" => {
            if let Some(n) = match_at(t, 1, OBJECTS) {
                let mut rest = &t[1 + n..];
                if let Some(k) = match_at(rest, 0, LOOK_WORDS) {
                    rest = &rest[k..];
                }
                return slice(text, rest);
            }
            if is(w1, DEFINITES) && t.len() > 2 {
                return slice(text, &t[1..]);
            }
            None
        }
        // "turn it into a snowy scene", "turn the sky orange", "turn off the lights"
        "turn" => {
            if let Some(n) = match_at(t, 1, OBJECTS) {
                let mut rest = &t[1 + n..];
                if is(word(rest, 0), &["into", "to"]) {
                    rest = &rest[1..];
                }
                return slice(text, rest);
            }
            if is(w1, &["into", "to"]) {
                return slice(text, &t[2..]);
            }
            if is(w1, &["off", "on", "up", "down"]) {
                return slice(text, &t[2..]).map(|thing| format!("{thing} turned {w1}"));
            }
            if is(w1, DEFINITES) {
                let rest = &t[1..];
                return match find(rest, &["into", "to"]) {
                    Some(_) => change_to(text, rest, &["into", "to"]),
                    None => slice(text, rest),
                };
            }
            None
        }
        // "change the background to a beach", "change her dress"
        "change" | "switch" if w1 != "of" && t.len() > 1 => {
            change_to(text, &t[1..], &["to", "into"])
        }
        // "replace the cat with a dog", "swap the hat for a crown"
        "replace" | "swap" if t.len() > 1 => {
            let rest = &t[1..];
            match find(rest, &["with", "for", "by"]) {
                Some(k) => {
                    let value = slice(text, &rest[k + 1..])?;
                    let target = &rest[..k];
                    if target.is_empty() || is_pronoun_object(target) {
                        Some(value)
                    } else {
                        Some(format!("{value} instead of {}", slice(text, target)?))
                    }
                }
                None => different(text, rest),
            }
        }
        // "add a hat", "include more trees"
        "add" | "include" | "insert" => {
            let rest = if w1 == "in" { &t[2..] } else { &t[1..] };
            slice(text, rest).map(|thing| format!("with {thing}"))
        }
        // "put a hat on her", "put it in a forest"
        "put" => match match_at(t, 1, OBJECTS) {
            Some(n) => slice(text, &t[1 + n..]),
            None => slice(text, &t[1..]).map(|thing| format!("with {thing}")),
        },
        // "give her a hat", "give it a vintage look"
        "give" => {
            let n = match_at(t, 1, OBJECTS)?;
            slice(text, &t[1 + n..]).map(|thing| format!("with {thing}"))
        }
        "without" if t.len() > 1 => slice(text, t),
        // "no people", "no text": short prompts only
        "no" if t.len() > 1 && words <= 4 => {
            let rest = if word(t, 1) == "more" {
                &t[2..]
            } else {
                &t[1..]
            };
            slice(text, rest).map(|x| format!("without {x}"))
        }
        // "brighten it", "darken the sky"
        "brighten" | "darken" | "lighten" | "dim" => {
            let adjective = match w0 {
                "brighten" => "brighter",
                "darken" => "darker",
                "lighten" => "lighter",
                _ => "dimmer",
            };
            let rest = &t[1..];
            if rest.is_empty() || is_pronoun_object(rest) {
                Some(adjective.to_owned())
            } else {
                slice(text, rest).map(|thing| format!("{thing} {adjective}"))
            }
        }
        "zoom" if is(w1, &["in", "out"]) => Some(format!("zoomed {w1}")),
        "blur" | "sharpen" if t.len() > 1 => {
            let done = if w0 == "blur" { "blurred" } else { "sharp" };
            slice(text, without_article(&t[1..])).map(|x| format!("{done} {x}"))
        }
        // "more contrast", "less clutter"
        "more" | "less" | "fewer" if t.len() > 1 => slice(text, t),
        // "the same but with a hat", "same scene at night"
        "same" | "the" if phrase_at(t, 0, "same") || phrase_at(t, 0, "the same") => {
            let mut at = if w0 == "same" { 1 } else { 2 };
            while is(word(t, at), SAME_NOUNS) {
                at += 1;
            }
            let separated = t[at - 1].sep_after;
            let but = word(t, at) == "but";
            if but {
                at += 1;
            }
            let rest = &t[at..];
            let opens_change = but || separated || is(word(rest, 0), EDIT_PREPOSITIONS);
            if rest.is_empty() || !opens_change {
                return None;
            }
            edit_phrase(text, rest, false, words).or_else(|| slice(text, rest))
        }
        // "keep everything but make it winter"
        "keep" => {
            let k = find(t, &["but"])?;
            let rest = &t[k + 1..];
            edit_phrase(text, rest, false, words).or_else(|| slice(text, rest))
        }
        // "in the style of van gogh"
        "in" if phrase_at(t, 0, "in the style of") || phrase_at(t, 0, "in style of") => {
            slice(text, t)
        }
        // "but with a hat", "now in watercolor"
        _ if continuation && is(w0, EDIT_PREPOSITIONS) && t.len() > 1 => slice(text, t),
        // "darker", "a bit warmer", "slightly more red": short adjustments only
        _ if words <= 6 => {
            let at = match_at(t, 0, DEGREES).unwrap_or(0);
            let head = word(t, at);
            let adjusts = is(head, COMPARATIVES)
                || (at > 0 && is(head, &["more", "less"]) && t.len() > at + 1);
            // "bigger eyes" adjusts; "darker forest at night with wolves" is a scene.
            let no_new_subject = t.len() <= 3
                || t[at + 1..]
                    .iter()
                    .all(|x| !is_content(&x.norm) || is_keyword_word(&x.norm));
            if adjusts && no_new_subject {
                slice(text, t)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// "X to Y" → "X changed to Y" (or just "Y" when X is the picture); no "to" → "a different X".
fn change_to(text: &str, rest: &[Token], linkers: &[&str]) -> Option<String> {
    match find(rest, linkers) {
        Some(k) => {
            let value = slice(text, &rest[k + 1..])?;
            let target = &rest[..k];
            if target.is_empty() || is_pronoun_object(target) {
                Some(value)
            } else {
                Some(format!("{} changed to {value}", slice(text, target)?))
            }
        }
        None => different(text, rest),
    }
}

fn different(text: &str, target: &[Token]) -> Option<String> {
    if target.is_empty() || is_pronoun_object(target) {
        return None;
    }
    slice(text, without_article(target)).map(|thing| format!("a different {thing}"))
}

/// The kind of change, from the clause's keywords. The action decides first (a new
/// background, a removal, an addition), then what changes: style, weather, time of day,
/// colour, light, pose.
pub(super) fn classify(t: &[Token]) -> EditType {
    if contains(t, BACKGROUND_WORDS) {
        return EditType::Background;
    }
    if contains(t, REMOVE_VERBS) || contains(t, &["without"]) || word(t, 0) == "no" {
        return EditType::Remove;
    }
    // Replacing or moving something is not adding it, whatever "with a" follows.
    let replacing = is(word(t, 0), &["replace", "swap", "switch", "change", "turn"])
        || (is(word(t, 0), PLACE_VERBS) && match_at(t, 1, OBJECTS).is_some());
    let adding = !replacing && (contains(t, ADD_WORDS) || word(t, 0) == "give");
    if adding {
        // "add snow" changes the weather; "add a red hat" adds a hat.
        return [
            (STYLE_WORDS, EditType::Style),
            (WEATHER_WORDS, EditType::Weather),
            (TIME_WORDS, EditType::Time),
            (LIGHTING_WORDS, EditType::Lighting),
        ]
        .into_iter()
        .find(|(list, _)| contains(t, list))
        .map_or(EditType::Add, |(_, kind)| kind);
    }
    [
        (STYLE_WORDS, EditType::Style),
        (WEATHER_WORDS, EditType::Weather),
        (TIME_WORDS, EditType::Time),
        (COLOR_NAMES, EditType::Color),
        (COLOR_WORDS, EditType::Color),
        (LIGHTING_WORDS, EditType::Lighting),
        (POSE_WORDS, EditType::Pose),
    ]
    .into_iter()
    .find(|(list, _)| contains(t, list))
    .map_or(EditType::Other, |(_, kind)| kind)
}

const KEYWORD_LISTS: [&[&str]; 8] = [
    BACKGROUND_WORDS,
    STYLE_WORDS,
    WEATHER_WORDS,
    TIME_WORDS,
    COLOR_NAMES,
    COLOR_WORDS,
    LIGHTING_WORDS,
    POSE_WORDS,
];

/// A keyword, or one word of a keyword phrase ("oil" of "oil painting").
fn is_keyword_word(word: &str) -> bool {
    KEYWORD_LISTS
        .iter()
        .flat_map(|list| list.iter())
        .any(|entry| entry.split(' ').any(|w| w == word))
}

/// "at night", "in the rain", "black and white": short, no subject, only edit keywords.
fn is_bare_modifier(core: &[Token]) -> bool {
    // "a white background" names no subject of its own: a background is the picture's.
    let introduced_background = is(&core[0].norm, &["a", "an"]) && contains(core, BACKGROUND_WORDS);
    core.len() <= 5
        && (!is(&core[0].norm, INTRODUCERS) || introduced_background)
        && core.iter().all(|t| {
            is(&t.norm, STOPWORDS) || is(&t.norm, MODIFIER_WORDS) || is_keyword_word(&t.norm)
        })
        && core.iter().any(|t| is_keyword_word(&t.norm))
        && !matches!(classify(core), EditType::Other | EditType::Add)
}

/// A word that says what is in the picture, rather than a small word or an edit hint.
pub(super) fn is_content(word: &str) -> bool {
    !(word.is_empty()
        || is(word, STOPWORDS)
        || is(word, PRONOUNS)
        || is(word, EDIT_HINTS)
        || is(word, COMPARATIVES)
        || is(word, CONTINUATIONS)
        || STRONG_REFERENCES.contains(&word))
}

/// Where the first phrase that points at the earlier picture sits, if any.
fn first_strong_reference(t: &[Token]) -> Option<usize> {
    let last = t.len().checked_sub(1)?;
    (0..t.len()).find(|&at| {
        let w = word(t, at);
        match_at(t, at, STRONG_REFERENCES).is_some()
            || (at == last && is(w, &["before", "earlier"]))
            || (at == 0 && w == "different")
            // "a red one", "the blue one but smaller": "one" standing for the picture
            || (w == "one"
                && at > 0
                && (at == last || (!is_content(word(t, at + 1)) && word(t, at + 1) != "of")))
    })
}

/// Where the first pronoun or definite phrase that points back sits, if any: a pronoun
/// before any subject of the prompt's own ("her hair should be blue"), a demonstrative
/// standing alone ("a darker version of this"), an object pronoun at the end, or "the
/// <noun>" naming a noun of the previous prompt.
fn first_pronoun_reference(t: &[Token], previous_words: &HashSet<String>) -> Option<usize> {
    if word(t, 0) == "the"
        && t[1..]
            .iter()
            .take(2)
            .any(|x| is_content(&x.norm) && previous_words.contains(&x.norm))
    {
        return Some(0);
    }
    let last = t.len().checked_sub(1)?;
    let mut seen_content = false;
    for at in 0..t.len() {
        let w = word(t, at);
        let next = word(t, at + 1);
        let refers = (is(w, PRONOUNS) && !seen_content)
            || (is(w, &["this", "these", "those"]) && !is_content(next))
            || (w == "that" && !is_content(next) && !is(next, RELATIVE_FOLLOWERS))
            || (at == last && is(w, REFERENCES_AT_END) && at > 0);
        if refers {
            return Some(at);
        }
        seen_content |= is_content(w);
    }
    None
}

/// Edit verbs, comparisons, adjustments, "but" inside or "too" at the end.
fn has_edit_hint(t: &[Token]) -> bool {
    let last = t.len().saturating_sub(1);
    t.iter().enumerate().any(|(at, token)| {
        let w = token.norm.as_str();
        is(w, EDIT_HINTS)
            || is(w, COMPARATIVES)
            || (w == "but" && at > 0)
            || (w == "too" && at == last)
    })
}

/// After "draw", "generate an image of", "make me": the request's subject, if it
/// introduces a new one.
fn strip_request(t: &[Token]) -> Option<&[Token]> {
    if !is(word(t, 0), REQUEST_VERBS) {
        return None;
    }
    let mut at = 1;
    let for_me = is(word(t, at), &["me", "us"]);
    if for_me {
        at += 1;
    }
    // "give a hat to the cat" is an edit; "give me a cat" is a request.
    if word(t, 0) == "give" && !for_me {
        return None;
    }
    is(word(t, at), INTRODUCERS).then(|| &t[at..])
}

/// "now a portrait of a samurai in the rain", "what about a tiger in the jungle": after a
/// word that moves on ("now", "then") or a suggestion, a whole scene of its own, which is
/// the next picture rather than a change to the last one. The scene, without the opener.
///
/// A whole scene: an introduced subject and at least one more content word, none of them
/// named by the previous prompt, and nothing pointing back. "now a cat" or "what about a
/// cat?" stay ambiguous (a replacement, maybe); "now a cat in the same park" points back.
fn next_scene<'t>(
    fillers: &[Token],
    core: &'t [Token],
    previous_words: &HashSet<String>,
) -> Option<&'t [Token]> {
    let rest = if let Some(n) = match_at(core, 0, SUGGESTIONS) {
        &core[n..]
    } else if fillers.iter().any(|x| is(&x.norm, SEQUENCE_WORDS))
        && fillers
            .iter()
            .all(|x| !is(&x.norm, CONTINUATIONS) || is(&x.norm, SEQUENCE_WORDS))
    {
        core
    } else {
        return None;
    };
    let scene = trim_trailing_fillers(rest);
    if !is(word(scene, 0), INTRODUCERS)
        || first_strong_reference(scene).is_some()
        || first_pronoun_reference(scene, previous_words).is_some()
        || has_edit_hint(scene)
    {
        return None;
    }
    let content: Vec<&str> = scene
        .iter()
        .map(|x| x.norm.as_str())
        .filter(|w| is_content(w))
        .collect();
    let fresh = content.iter().all(|w| !previous_words.contains(*w));
    (content.len() >= 2 && fresh).then_some(scene)
}

/// A subject of its own: an introduced noun ("a fox") or at least three content words.
fn reads_like_new_scene(t: &[Token]) -> bool {
    let content = t.iter().filter(|x| is_content(&x.norm)).count();
    (is(word(t, 0), INTRODUCERS) && content >= 1) || content >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phrase(prompt: &str) -> Option<String> {
        let t = tokenize(prompt);
        edit_phrase(prompt, &t, false, t.len())
    }

    #[test]
    fn removal_verbs_take_the_object_out() {
        for verb in [
            "remove",
            "delete",
            "lose",
            "ditch",
            "get rid of",
            "take out",
        ] {
            let prompt = format!("{verb} the laptop");
            assert_eq!(
                phrase(&prompt).as_deref(),
                Some("without the laptop"),
                "{prompt:?}"
            );
        }
        assert_eq!(phrase("lose"), None);
    }

    #[test]
    fn wanting_the_picture_a_way_is_an_edit() {
        assert_eq!(phrase("i want it in purple").as_deref(), Some("in purple"));
        assert_eq!(phrase("show it at night").as_deref(), Some("at night"));
        assert_eq!(
            phrase("i'd like it to look like a watercolor").as_deref(),
            Some("a watercolor")
        );
        // Without the picture as object, a request: a new picture.
        assert_eq!(phrase("i want a cat"), None);
        assert_eq!(phrase("show me a castle"), None);
    }

    #[test]
    fn placing_the_picture_somewhere_is_an_edit() {
        assert_eq!(
            phrase("place it in a kitchen").as_deref(),
            Some("in a kitchen")
        );
        assert_eq!(phrase("move him to a desert").as_deref(), Some("a desert"));
        assert_eq!(phrase("place a vase"), None);
        assert_eq!(
            phrase("put a hat on her").as_deref(),
            Some("with a hat on her")
        );
    }

    #[test]
    fn instead_after_an_edit_naming_a_thing_replaces_the_subject() {
        let changes = |prompt: &str| {
            let t = tokenize(prompt);
            clear_edit(prompt, &t, false, t.len())
                .map(|c| c.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
        };
        assert_eq!(
            changes("make it a cat instead"),
            Some(vec!["a cat instead of".to_owned()])
        );
        assert_eq!(
            changes("make it a painting instead"),
            Some(vec!["a painting".to_owned()])
        );
        assert_eq!(changes("make it a cat"), Some(vec!["a cat".to_owned()]));
        assert!(names_a_thing(&tokenize("two owls")));
        for phrase in ["a night scene", "a bit darker", "a cat in a hat", "cat"] {
            assert!(!names_a_thing(&tokenize(phrase)), "{phrase:?}");
        }
    }

    #[test]
    fn a_whole_scene_after_now_or_what_about_is_the_next_picture() {
        let scene = |prompt: &str, previous: &str| {
            let tokens = tokenize(prompt);
            let (skipped, _) = strip_leading_fillers(&tokens);
            let previous: HashSet<String> =
                tokenize(previous).into_iter().map(|t| t.norm).collect();
            next_scene(&tokens[..skipped], &tokens[skipped..], &previous)
                .and_then(|scene| slice(prompt, scene))
        };
        let cat = "a cat on a sofa";
        assert_eq!(
            scene("now a tiger in the jungle", cat).as_deref(),
            Some("a tiger in the jungle")
        );
        assert_eq!(
            scene("how about a tiger in the jungle please", cat).as_deref(),
            Some("a tiger in the jungle")
        );
        for prompt in [
            "now a tiger",                   // one word: a replacement, maybe
            "now a tiger on the sofa",       // names the previous sofa
            "also a tiger in the jungle",    // adds
            "now a tiger with more stripes", // an edit hint
            "what about in the jungle",      // no subject
            "a tiger in the jungle",         // no opener: the other rules decide
        ] {
            assert_eq!(scene(prompt, cat), None, "{prompt:?}");
        }
    }
}
