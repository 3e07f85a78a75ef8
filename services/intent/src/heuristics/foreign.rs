//! Follow-ups in a language other than English, read with that language's lexicon.
//!
//! The gestures are the English ones, recognised by their words: one more of the same; a
//! rejection, then a new request; "the same" then a change ("la même la nuit"); a request
//! for a new picture; an edit (an edit verb, a removal, an addition, a background, a
//! comparison, or a bare colour, time of day, style or weather); a preposition after a
//! continuation word ("ahora en la playa"; without one, only a guess); otherwise a scene
//! of its own.
//!
//! How an edit resolves, and why: the previous prompt is usually English, and a
//! dictionary of every noun is out of reach, so the user's own words are appended to it
//! (image models read mixed languages moderately well). Colours and times of day are the
//! exception: their English names are known, so "hazlo azul" after "a red car" resolves
//! to "a blue car" and "de noche" appends "at night". A removal or replacement takes the
//! object out when the previous prompt names it in the same words (a conversation held in
//! one language), else appends the user's words.
//!
//! What the lexicons miss is not sure: a short follow-up with no known word goes to the
//! LLM when one is configured, with NEW as the guess.

use super::lexicon::{Lexicon, find_phrase, fold, words};
use super::resolve::{recolor, remove};
use super::rules::combine;
use super::{Decision, EditType, Intent, Unsure};

/// Decides a follow-up written in `lexicon`'s language.
pub(super) fn analyze(lexicon: &Lexicon, prompt: &str, previous: &str) -> Decision {
    let text = Text::new(lexicon, prompt);
    let core = text.without_fillers();
    if core.is_empty() {
        return Decision::Ambiguous {
            best_guess: Intent::reroll(previous),
            why: Unsure::Language,
        };
    }
    if core.is_exactly(lexicon.rerolls) {
        return Decision::Sure(Intent::reroll(previous));
    }
    let mut core = core;
    let mut rejected = false;
    while let Some(rest) = core.strip_prefix(lexicon.rejections) {
        rejected = true;
        core = rest;
    }
    if rejected {
        if core.is_empty() {
            return Decision::Ambiguous {
                best_guess: Intent::reroll(previous),
                why: Unsure::Language,
            };
        }
        if !core.is_edit() || core.starts_with(lexicon.requests) {
            return Decision::Sure(Intent::new_picture(&core.original()));
        }
    }
    if core.contains(lexicon.instead) {
        return Decision::Sure(Intent {
            kind: super::IntentKind::Edit,
            resolved_prompt: combine(previous, &[&core.original()]),
            edit_type: EditType::Other,
            strength: EditType::Other.strength(),
        });
    }
    // "la même la nuit", "lo mismo pero de noche": the change is what follows.
    if let Some(rest) = core.strip_prefix(lexicon.same) {
        let rest = rest.without_fillers();
        return if rest.is_empty() {
            Decision::Ambiguous {
                best_guess: Intent::reroll(previous),
                why: Unsure::Language,
            }
        } else {
            Decision::Sure(rest.edit(previous))
        };
    }
    if core.starts_with(lexicon.requests) && !core.contains(lexicon.pronouns_strict()) {
        return Decision::Sure(Intent::new_picture(prompt));
    }
    if core.is_edit() {
        return Decision::Sure(core.edit(previous));
    }
    // "ahora en la playa": a place or a manner, not a subject, after a word that goes on
    // from the last picture; without that word ("en la playa") only a guess, as in English.
    if core.starts_with(lexicon.prepositions) {
        if text.opens_with_continuation() {
            return Decision::Sure(core.edit(previous));
        }
        if !lexicon.unspaced && core.flat().len() <= 4 {
            return Decision::Ambiguous {
                best_guess: core.edit(previous),
                why: Unsure::Language,
            };
        }
    }
    if core.reads_like_scene() {
        Decision::Sure(Intent::new_picture(prompt))
    } else {
        Decision::Ambiguous {
            best_guess: Intent::new_picture(prompt),
            why: Unsure::Language,
        }
    }
}

impl Lexicon {
    /// Pronouns that cannot also be articles ("lo" can be both in Italian; "es" cannot).
    fn pronouns_strict(&self) -> &'static [&'static str] {
        if self.unspaced { self.pronouns } else { &[] }
    }
}

/// A prompt, or what remains of it, in one language: folded words for spaced languages,
/// the folded string for the others, and the original for quoting.
#[derive(Clone)]
struct Text<'l> {
    lexicon: &'l Lexicon,
    /// Spaced languages: the words; unspaced: one entry, the whole string.
    words: Vec<String>,
    /// The original words (spaced) or string (unspaced), for what is quoted back.
    original: Vec<String>,
}

impl<'l> Text<'l> {
    fn new(lexicon: &'l Lexicon, prompt: &str) -> Self {
        if lexicon.unspaced {
            let clean: String = prompt
                .chars()
                .filter(|c| !c.is_whitespace() && !is_punctuation(*c))
                .collect();
            return Self {
                lexicon,
                words: vec![fold(&clean)],
                original: vec![clean],
            };
        }
        let original: Vec<String> = prompt
            .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        // Folded words split at apostrophes too; keep them aligned with the originals by
        // folding each original word into one entry.
        let words = original
            .iter()
            .map(|w| words(w).join(" "))
            .collect::<Vec<_>>();
        Self {
            lexicon,
            words,
            original,
        }
    }

    fn flat(&self) -> Vec<String> {
        self.words
            .iter()
            .flat_map(|w| w.split(' ').map(str::to_owned))
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.words.iter().all(String::is_empty)
    }

    fn original(&self) -> String {
        if self.lexicon.unspaced {
            self.original.concat()
        } else {
            self.original.join(" ")
        }
    }

    /// Whether a continuation word ("ahora", "mais") is among the fillers it opens with.
    fn opens_with_continuation(&self) -> bool {
        let mut text = self.clone();
        loop {
            if text.starts_with(self.lexicon.continuations) {
                return true;
            }
            match text.strip_prefix(self.lexicon.fillers) {
                Some(rest) => text = rest,
                None => return false,
            }
        }
    }

    /// The text as an edit of `previous`: its type, and the resolved prompt.
    fn edit(&self, previous: &str) -> Intent {
        let edit_type = self.classify();
        Intent {
            kind: super::IntentKind::Edit,
            resolved_prompt: self.resolve(previous, edit_type),
            edit_type,
            strength: edit_type.strength(),
        }
    }

    /// Drops fillers from both ends.
    fn without_fillers(&self) -> Text<'l> {
        let mut text = self.clone();
        loop {
            if let Some(rest) = text.strip_prefix(self.lexicon.fillers) {
                text = rest;
            } else if let Some(rest) = text.strip_suffix(self.lexicon.fillers) {
                text = rest;
            } else {
                return text;
            }
        }
    }

    /// The text after the longest entry of `list` it starts with.
    fn strip_prefix(&self, list: &[&str]) -> Option<Text<'l>> {
        if self.is_empty() {
            return None;
        }
        if self.lexicon.unspaced {
            let s = &self.words[0];
            let entry = list
                .iter()
                .filter(|e| s.starts_with(**e))
                .max_by_key(|e| e.len())?;
            let o = &self.original[0];
            let mut text = self.clone();
            text.words = vec![s[entry.len()..].to_owned()];
            text.original = vec![o.get(entry.len()..).unwrap_or("").to_owned()];
            return Some(text);
        }
        let n = list
            .iter()
            .filter(|e| self.starts_with_entry(e))
            .map(|e| e.split(' ').count())
            .max()?;
        let mut text = self.clone();
        text.words = self.words[n.min(self.words.len())..].to_vec();
        text.original = self.original[n.min(self.original.len())..].to_vec();
        Some(text)
    }

    fn strip_suffix(&self, list: &[&str]) -> Option<Text<'l>> {
        if self.is_empty() {
            return None;
        }
        if self.lexicon.unspaced {
            let s = &self.words[0];
            let entry = list
                .iter()
                .filter(|e| s.ends_with(**e))
                .max_by_key(|e| e.len())?;
            let o = &self.original[0];
            let mut text = self.clone();
            text.words = vec![s[..s.len() - entry.len()].to_owned()];
            text.original = vec![
                o.get(..o.len().saturating_sub(entry.len()))
                    .unwrap_or("")
                    .to_owned(),
            ];
            return Some(text);
        }
        let n = list
            .iter()
            .filter(|e| {
                let parts: Vec<&str> = e.split(' ').collect();
                parts.len() <= self.words.len()
                    && self.words[self.words.len() - parts.len()..]
                        .iter()
                        .zip(&parts)
                        .all(|(w, p)| w == p)
            })
            .map(|e| e.split(' ').count())
            .max()?;
        let mut text = self.clone();
        text.words.truncate(self.words.len() - n);
        text.original.truncate(self.original.len() - n);
        Some(text)
    }

    fn starts_with_entry(&self, entry: &str) -> bool {
        let parts: Vec<&str> = entry.split(' ').collect();
        parts.len() <= self.words.len() && self.words.iter().zip(&parts).all(|(w, p)| w == p)
    }

    fn starts_with(&self, list: &[&str]) -> bool {
        if self.lexicon.unspaced {
            return list.iter().any(|e| self.words[0].starts_with(e));
        }
        list.iter().any(|e| self.starts_with_entry(e))
    }

    fn contains(&self, list: &[&str]) -> bool {
        if self.lexicon.unspaced {
            return list.iter().any(|e| self.words[0].contains(e));
        }
        let flat = self.flat();
        list.iter().any(|e| find_phrase(&flat, e).is_some())
    }

    fn is_exactly(&self, list: &[&str]) -> bool {
        let joined = if self.lexicon.unspaced {
            self.words[0].clone()
        } else {
            self.flat().join(" ")
        };
        list.contains(&joined.as_str())
    }

    fn colors(&self) -> Vec<&'static str> {
        self.mapped(self.lexicon.colors)
    }

    fn times(&self) -> Vec<&'static str> {
        self.mapped(self.lexicon.times)
    }

    /// The English names of the entries of `pairs` in the text, longest entries first.
    fn mapped(&self, pairs: &'static [(&'static str, &'static str)]) -> Vec<&'static str> {
        let mut found = Vec::new();
        if self.lexicon.unspaced {
            let mut s = self.words[0].clone();
            let mut sorted: Vec<_> = pairs.iter().collect();
            sorted.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
            for (w, english) in sorted {
                if s.contains(w) {
                    found.push(*english);
                    s = s.replace(w, " ");
                }
            }
            return found;
        }
        let flat = self.flat();
        for (w, english) in pairs {
            if find_phrase(&flat, w).is_some() && !found.contains(english) {
                found.push(*english);
            }
        }
        found
    }

    /// Every word (or, unspaced, every character) is a known small word or modifier.
    fn is_bare_modifier(&self) -> bool {
        let l = self.lexicon;
        let modifiers: [&[&str]; 7] = [
            l.markers,
            l.pronouns,
            l.background,
            l.styles,
            l.weather,
            l.lighting,
            l.comparatives,
        ];
        if l.unspaced {
            let mut s = self.words[0].clone();
            let mut entries: Vec<&str> = modifiers.iter().flat_map(|l| l.iter().copied()).collect();
            entries.extend(l.colors.iter().map(|(w, _)| *w));
            entries.extend(l.times.iter().map(|(w, _)| *w));
            entries.extend([
                "一点",
                "的",
                "に",
                "で",
                "の",
                "な",
                "く",
                "色",
                "风",
                "っぽい",
                "版",
                "时分",
                "时候",
                "的时候",
                "時",
            ]);
            entries.sort_by_key(|e| std::cmp::Reverse(e.len()));
            let before = s.chars().count();
            for e in entries {
                s = s.replace(e, "");
            }
            return s.is_empty() && before > 0;
        }
        let flat = self.flat();
        let known = |w: &String| {
            modifiers.iter().any(|list| list.contains(&w.as_str()))
                || l.colors.iter().any(|(c, _)| c == w)
                || l.times.iter().any(|(t, _)| t.split(' ').any(|p| p == w))
                || l.styles.iter().any(|s| s.split(' ').any(|p| p == w))
        };
        !flat.is_empty() && flat.len() <= 5 && flat.iter().all(known)
    }

    fn is_edit(&self) -> bool {
        let l = self.lexicon;
        self.starts_with(l.edit_verbs)
            || self.starts_with(l.remove)
            || self.starts_with(l.add)
            || (l.unspaced
                && (self.contains(l.edit_verbs) || self.contains(l.remove) || self.contains(l.add)))
            || (self.contains(l.background) && self.flat().len() <= 6)
            || self.starts_with(l.comparatives)
            || self.is_bare_modifier()
    }

    fn classify(&self) -> EditType {
        let l = self.lexicon;
        if self.contains(l.background) {
            EditType::Background
        } else if self.starts_with(l.remove) || (l.unspaced && self.contains(l.remove)) {
            EditType::Remove
        } else if self.contains(l.styles) {
            EditType::Style
        } else if self.contains(l.weather) {
            EditType::Weather
        } else if !self.times().is_empty() {
            EditType::Time
        } else if !self.colors().is_empty() {
            EditType::Color
        } else if self.contains(l.lighting) {
            EditType::Lighting
        } else if self.starts_with(l.add) || (l.unspaced && self.contains(l.add)) {
            EditType::Add
        } else {
            EditType::Other
        }
    }

    /// The resolved prompt: see the module doc.
    fn resolve(&self, previous: &str, edit_type: EditType) -> String {
        let quoted = self.original();
        match edit_type {
            EditType::Color if self.only_known_words() => {
                let color = self.colors().join(" and ");
                recolor(previous, "", &color).unwrap_or_else(|| combine(previous, &[&color]))
            }
            EditType::Time if self.only_known_words() => {
                let time = self.times()[0];
                super::resolve::apply(previous, &[time])
            }
            EditType::Remove if !self.lexicon.unspaced => {
                let object = self
                    .strip_prefix(self.lexicon.remove)
                    .map(|rest| rest.original())
                    .unwrap_or_default();
                remove(previous, &object).unwrap_or_else(|| combine(previous, &[&quoted]))
            }
            _ => combine(previous, &[&quoted]),
        }
    }

    /// No word but edit verbs, pronouns, small words, colours and times: nothing a
    /// translation would lose.
    fn only_known_words(&self) -> bool {
        let l = self.lexicon;
        if l.unspaced {
            let mut s = self.words[0].clone();
            let mut entries: Vec<&str> = [
                l.edit_verbs,
                l.pronouns,
                l.markers,
                l.fillers,
                l.comparatives,
            ]
            .iter()
            .flat_map(|list| list.iter().copied())
            .collect();
            entries.extend(l.colors.iter().map(|(w, _)| *w));
            entries.extend(l.times.iter().map(|(w, _)| *w));
            entries.extend([
                "一点", "的", "に", "で", "の", "な", "く", "色", "把", "让", "使", "成", "整个",
                "全部", "时分", "时候", "時",
            ]);
            entries.sort_by_key(|e| std::cmp::Reverse(e.len()));
            for e in entries {
                s = s.replace(e, "");
            }
            return s.is_empty();
        }
        let lists: [&[&str]; 5] = [
            l.edit_verbs,
            l.pronouns,
            l.markers,
            l.fillers,
            l.comparatives,
        ];
        self.flat().iter().all(|w| {
            lists
                .iter()
                .any(|list| list.iter().any(|e| e.split(' ').any(|p| p == w)))
                || l.colors.iter().any(|(c, _)| c == w)
                || l.times.iter().any(|(t, _)| t.split(' ').any(|p| p == w))
        })
    }

    /// A subject of its own: an article or number then a word, or several unknown words.
    fn reads_like_scene(&self) -> bool {
        if self.lexicon.unspaced {
            return self.words[0].chars().count() >= 4;
        }
        let flat = self.flat();
        let unknown = flat
            .iter()
            .filter(|w| !super::lexicon::knows(self.lexicon, w))
            .count();
        unknown >= 2 || (flat.len() >= 2 && self.lexicon.markers.contains(&flat[0].as_str()))
    }
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '。' | '、'
                | '，'
                | '！'
                | '？'
                | '：'
                | '；'
                | '「'
                | '」'
                | '…'
                | '・'
                | '～'
                | '¡'
                | '¿'
        )
}

#[cfg(test)]
mod tests {
    use super::super::{IntentKind, analyze as decide};

    const CAR: &str = "a red car on a road";

    fn kind(prompt: &str) -> (IntentKind, String) {
        let intent = decide(prompt, Some(CAR), true).into_intent();
        (intent.kind, intent.resolved_prompt)
    }

    #[test]
    fn colours_translate_and_replace() {
        for prompt in [
            "hazlo azul",
            "rends-le bleu",
            "mach es blau",
            "deixe azul",
            "rendilo blu",
            "把它变成蓝色",
            "青にして",
        ] {
            let (kind, resolved) = kind(prompt);
            assert_eq!(kind, IntentKind::Edit, "{prompt:?}");
            assert_eq!(resolved, "a blue car on a road", "{prompt:?}");
        }
    }

    #[test]
    fn a_preposition_after_a_continuation_is_an_edit() {
        for prompt in [
            "ahora en la playa",
            "et maintenant dans la neige",
            "jetzt im Schnee",
            "agora na praia",
            "ora sulla spiaggia",
        ] {
            let (kind, resolved) = kind(prompt);
            assert_eq!(kind, IntentKind::Edit, "{prompt:?}");
            assert!(resolved.starts_with(CAR), "{prompt:?}: {resolved}");
        }
        // Without the continuation it is only a guess; with a subject, a new picture.
        let decision = decide("en la playa", Some(CAR), true);
        assert!(!decision.is_sure());
        assert_eq!(decision.intent().kind, IntentKind::Edit);
        assert_eq!(kind("un gato en la playa").0, IntentKind::New);
    }

    #[test]
    fn the_same_then_a_change_is_an_edit() {
        for prompt in [
            "la même la nuit",
            "lo mismo pero de noche",
            "lo stesso di notte",
        ] {
            let (kind, resolved) = kind(prompt);
            assert_eq!(kind, IntentKind::Edit, "{prompt:?}");
            assert_eq!(resolved, "a red car on a road, at night", "{prompt:?}");
        }
        let decision = decide("la même", Some(CAR), true);
        assert!(!decision.is_sure());
        assert_eq!(decision.intent().kind, IntentKind::Reroll);
    }

    #[test]
    fn rerolls_and_new_requests() {
        for prompt in [
            "otra",
            "encore une",
            "noch eins",
            "mais uma",
            "un'altra",
            "再来一张",
            "もう一枚",
        ] {
            assert_eq!(kind(prompt).0, IntentKind::Reroll, "{prompt:?}");
        }
        for prompt in [
            "dibuja un castillo",
            "dessine un château",
            "zeichne eine Burg",
            "画一只猫",
            "猫の絵を描いて",
        ] {
            assert_eq!(kind(prompt).0, IntentKind::New, "{prompt:?}");
        }
    }
}
