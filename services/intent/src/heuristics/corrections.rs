//! English follow-ups that react to the last picture rather than describe a change to
//! it: a request for one more ("another one", "again"), a rejection ("no, forget that"),
//! and a correction that names a replacement ("not a dog, a cat").
//!
//! Why apart from the rules: these read the whole prompt as one gesture, while the rules
//! read edit forms clause by clause; run first, they keep "another one" from being glued
//! onto the prompt as words and "no, a cat instead of a dog" from being read backwards.

use super::lexicon::en::{
    COMPARATIVES, EDIT_HINTS, INTRODUCERS, PREPOSITIONS, PRONOUNS, REJECTIONS, REROLL_OBJECTS,
    REROLL_TAILS, REROLL_VERBS, REROLLS,
};
use super::rules::{
    Token, is, match_at, slice, strip_leading_fillers, tokenize, trim_trailing_fillers,
};

/// Whether the prompt opens with a request for a picture ("draw", "generate").
pub(super) fn is_request(prompt: &str) -> bool {
    let tokens = tokenize(prompt);
    let (skipped, _) = strip_leading_fillers(&tokens);
    tokens.get(skipped).is_some_and(|t| {
        super::lexicon::en::REQUEST_VERBS.contains(&t.norm.as_str())
            && t.norm != "make"
            && t.norm != "give"
    }) || tokens
        .get(skipped)
        .is_some_and(|t| matches!(t.norm.as_str(), "make" | "give"))
        && tokens.get(skipped + 1).is_some_and(|t| t.norm == "me")
}

/// Whether the whole prompt, politeness aside, asks for one more of the same picture:
/// one of [`REROLLS`], or a sentence of the form verb, what, tail, each part optional but
/// the what: "give me a different version", "try another one", "try that again".
pub(super) fn is_reroll(prompt: &str) -> bool {
    let tokens = tokenize(prompt);
    let (skipped, _) = strip_leading_fillers(&tokens);
    let core = without_politeness(&tokens[skipped..]);
    // "again" is also a trailing filler: try the words before and after trimming.
    let listed = [core, trim_trailing_fillers(core)].into_iter().any(|core| {
        let joined = core
            .iter()
            .map(|t| t.norm.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        !joined.is_empty() && REROLLS.contains(&joined.as_str())
    });
    listed || reroll_sentence(core)
}

/// Verb (optional), what (another one, a different version; or "it", "that" when "again"
/// follows), tails ("again", "like that"), and nothing else.
fn reroll_sentence(t: &[Token]) -> bool {
    let mut at = match_at(t, 0, REROLL_VERBS).unwrap_or(0);
    let pronoun = matches!(word(t, at), "it" | "that" | "this");
    match match_at(t, at, REROLL_OBJECTS) {
        Some(n) => at += n,
        None if pronoun => at += 1,
        None => return false,
    }
    let mut again = false;
    while let Some(n) = match_at(t, at, REROLL_TAILS) {
        again |= word(t, at) == "again";
        at += n;
    }
    at == t.len() && (!pronoun || again)
}

/// Drops "please", "pls", "thanks", "thank you" from the end, and nothing else.
fn without_politeness(mut t: &[Token]) -> &[Token] {
    loop {
        let n = t.len();
        if n >= 2 && word(t, n - 2) == "thank" && word(t, n - 1) == "you" {
            t = &t[..n - 2];
        } else if n > 0 && matches!(word(t, n - 1), "please" | "pls" | "thanks") {
            t = &t[..n - 1];
        } else {
            return t;
        }
    }
}

/// After a rejection that keeps the picture ("actually", "no,"), a bare noun phrase is
/// the subject the user meant: "actually a zebra" swaps the horse for a zebra. The
/// phrase "NEW instead of", or `None` when the rest says more than a subject (a setting,
/// an edit, a pronoun), and may be a new picture.
pub(super) fn meant_subject(rest: &str) -> Option<String> {
    let tokens = tokenize(rest);
    let (skipped, _) = strip_leading_fillers(&tokens);
    let t = without_politeness(&tokens[skipped..]);
    let plain = |x: &Token| {
        let w = x.norm.as_str();
        !is(w, PREPOSITIONS) && !is(w, EDIT_HINTS) && !is(w, COMPARATIVES) && !is(w, PRONOUNS)
    };
    let subject = (2..=4).contains(&t.len())
        && is(word(t, 0), INTRODUCERS)
        && t[1..].iter().all(plain)
        && !t[..t.len() - 1].iter().any(|x| x.sep_after);
    subject
        .then(|| slice(rest, t))
        .flatten()
        .map(|new| format!("{new} instead of"))
}

/// A rejection at the start of a prompt and what follows it.
pub(super) struct Rejection<'p> {
    /// The rest of the prompt, in the user's words.
    pub rest: &'p str,
    /// The rejection throws the picture away ("forget that", "start over"), so whatever
    /// follows is a new picture unless it is plainly an edit.
    pub discards: bool,
}

/// Strips "no,", "nope", "forget that", "never mind" and the like from the start.
pub(super) fn strip_rejection(prompt: &str) -> Option<Rejection<'_>> {
    let tokens = tokenize(prompt);
    let mut at = 0;
    let mut discards = false;
    let mut found = false;
    loop {
        // "no" rejects only when a pause follows it: "no people" is a removal.
        if matches!(word(&tokens, at), "no" | "nope" | "nah" | "wrong")
            && tokens.get(at).is_some_and(|t| t.sep_after)
        {
            at += 1;
            found = true;
            continue;
        }
        if let Some((phrase, discard)) = REJECTIONS.iter().find(|(phrase, _)| {
            phrase
                .split(' ')
                .enumerate()
                .all(|(k, w)| word(&tokens, at + k) == w)
        }) {
            at += phrase.split(' ').count();
            discards |= *discard;
            found = true;
            continue;
        }
        break;
    }
    if !found {
        return None;
    }
    let rest = tokens.get(at).map_or("", |t| &prompt[t.start..]);
    Some(Rejection { rest, discards })
}

fn word(tokens: &[Token], at: usize) -> &str {
    tokens.get(at).map_or("", |t| t.norm.as_str())
}

/// A correction that names what it replaces, as the phrase "NEW instead of OLD" (OLD
/// empty when only the replacement is named: "a dog instead", "I meant a dog").
pub(super) fn correction(prompt: &str) -> Option<String> {
    let tokens = tokenize(prompt);
    let (skipped, _) = strip_leading_fillers(&tokens);
    // Not the shared trailing fillers: "instead" is one of them, and it matters here.
    let t = without_politeness(&tokens[skipped..]);
    if t.is_empty() {
        return None;
    }
    let text = |range: &[Token]| slice(prompt, strip_openers(range));
    // "not a dog, a cat", "not a dog but a cat"
    if word(t, 0) == "not" {
        let k = (1..t.len()).find(|&k| t[k - 1].sep_after || word(t, k) == "but")?;
        let new_at = if word(t, k) == "but" { k + 1 } else { k };
        let old = text(&t[1..k])?;
        let new = text(&t[new_at..])?;
        return Some(format!("{new} instead of {old}"));
    }
    // "a cat, not a dog", "a cat not a dog"
    if let Some(k) = (1..t.len()).find(|&k| word(t, k) == "not" && word(t, k + 1) != "be") {
        let introduced = matches!(word(t, k + 1), "a" | "an" | "the" | "some");
        if t[k - 1].sep_after || introduced {
            let new = text(&t[..k])?;
            let old = text(&t[k + 1..])?;
            return Some(format!("{new} instead of {old}"));
        }
    }
    // "a cat instead of a dog", "I meant a cat instead of the dog"
    if let Some(k) = (0..t.len()).find(|&k| word(t, k) == "instead" && word(t, k + 1) == "of") {
        if k == 0 {
            // "instead of the dog, a cat"
            let sep = (2..t.len()).find(|&j| t[j - 1].sep_after)?;
            let old = text(&t[2..sep])?;
            let new = text(&t[sep..])?;
            return Some(format!("{new} instead of {old}"));
        }
        if !opens_with_meaning(t) && !matches!(word(t, 0), "a" | "an" | "some" | "the") {
            return None;
        }
        let new = text(&t[..k])?;
        let old = text(&t[k + 2..])?;
        return Some(format!("{new} instead of {old}"));
    }
    // "a dog instead", "I meant a dog"
    let last = t.len() - 1;
    if word(t, last) == "instead"
        && last > 0
        && last <= 4
        && word(t, 0) != "make"
        && (matches!(word(t, 0), "a" | "an" | "some" | "two" | "three") || opens_with_meaning(t))
    {
        let new = text(&t[..last])?;
        return Some(format!("{new} instead of"));
    }
    if opens_with_meaning(t) && t.len() <= 6 {
        let new = text(t)?;
        return Some(format!("{new} instead of"));
    }
    None
}

/// "I meant", "I said", "it should be", "I wanted": the rest is what was meant.
fn opens_with_meaning(t: &[Token]) -> bool {
    OPENERS
        .iter()
        .any(|opener| opener.split(' ').enumerate().all(|(k, w)| word(t, k) == w))
}

const OPENERS: &[&str] = &[
    "i meant",
    "i mean",
    "i said",
    "i wanted",
    "i asked for",
    "meant",
];

fn strip_openers(t: &[Token]) -> &[Token] {
    for opener in OPENERS {
        let n = opener.split(' ').count();
        if opener.split(' ').enumerate().all(|(k, w)| word(t, k) == w) {
            return &t[n..];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerolls_are_whole_prompts() {
        for prompt in [
            "another one",
            "More",
            "again!",
            "one more please",
            "ok, another",
        ] {
            assert!(is_reroll(prompt), "{prompt:?}");
        }
        for prompt in ["another cat", "more stars", "again in blue", "a cat"] {
            assert!(!is_reroll(prompt), "{prompt:?}");
        }
    }

    #[test]
    fn rerolls_are_also_sentences_of_verb_what_and_tail() {
        for prompt in [
            "try another one",
            "give me a different version",
            "show me a new one please",
            "another one like that",
            "try that again",
            "do it again please",
            "again please",
            "generate a few more",
        ] {
            assert!(is_reroll(prompt), "{prompt:?}");
        }
        for prompt in [
            "try it",
            "give me a different hat",
            "try another style",
            "another one with a hat",
            "make it again in red",
            "give me a cat",
        ] {
            assert!(!is_reroll(prompt), "{prompt:?}");
        }
    }

    #[test]
    fn a_bare_subject_after_a_rejection_is_the_one_meant() {
        assert_eq!(
            meant_subject("a zebra").as_deref(),
            Some("a zebra instead of")
        );
        assert_eq!(
            meant_subject("a black horse, please").as_deref(),
            Some("a black horse instead of")
        );
        for rest in [
            "a zebra in the savanna",
            "make it a zebra",
            "zebra",
            "a castle on a hill at dawn",
            "a bit darker",
            "a cat, a dog",
        ] {
            assert_eq!(meant_subject(rest), None, "{rest:?}");
        }
    }

    #[test]
    fn rejections_need_a_pause_after_no() {
        let rejection = strip_rejection("no, forget that, draw a castle").expect("rejection");
        assert_eq!(rejection.rest, "draw a castle");
        assert!(rejection.discards);
        assert!(strip_rejection("no people").is_none());
        let rejection = strip_rejection("no, make it a cat").expect("rejection");
        assert!(!rejection.discards);
    }

    #[test]
    fn corrections_name_old_and_new() {
        let cases = [
            ("not a dog, a cat", "a cat instead of a dog"),
            ("not a dog but a cat", "a cat instead of a dog"),
            ("a cat, not a dog", "a cat instead of a dog"),
            ("a cat instead of a dog", "a cat instead of a dog"),
            ("a dog instead", "a dog instead of"),
            ("I meant a horse", "a horse instead of"),
        ];
        for (prompt, phrase) in cases {
            assert_eq!(correction(prompt).as_deref(), Some(phrase), "{prompt:?}");
        }
        assert_eq!(correction("a cat on a sofa"), None);
        assert_eq!(correction("it should not be blue"), None);
    }
}
