//! Typos in edit words: "mkae it blue", "chnage the background".
//!
//! Why bounded as it is: a word one or two letters from an edit word is usually that
//! word mistyped, but many real words are that close too ("cake", "take", "more" and
//! "mode"). So only words the lexicon does not know are corrected, only towards edit
//! words, short targets allow one edit and longer ones two, a swap of two neighbours
//! counts as one, and the correction must be the only candidate at its distance. The
//! caller keeps a corrected reading only when it turns the prompt into an edit, and
//! marks it unsure.

use super::lexicon::en::{EDIT_HINTS, STOPWORDS};

/// Edit words worth correcting towards.
const TARGETS: &[&str] = &[
    "make",
    "change",
    "turn",
    "remove",
    "delete",
    "erase",
    "replace",
    "swap",
    "add",
    "put",
    "background",
    "brighter",
    "darker",
    "without",
    "instead",
    "another",
    "again",
    "colour",
    "color",
    "night",
    "style",
    "sunset",
    "lighter",
    "bigger",
    "smaller",
    "switch",
];

/// Real words near an edit word, never corrected.
const REAL_WORDS: &[&str] = &[
    "cake",
    "bake",
    "take",
    "fake",
    "lake",
    "wake",
    "sake",
    "rake",
    "male",
    "mate",
    "maze",
    "mane",
    "mike",
    "mace",
    "made",
    "mare",
    "mark",
    "mask",
    "mall",
    "makes",
    "maker",
    "and",
    "had",
    "ad",
    "aid",
    "odd",
    "dad",
    "bad",
    "mad",
    "sad",
    "pad",
    "lad",
    "ads",
    "adds",
    "tern",
    "burn",
    "torn",
    "tune",
    "turf",
    "turns",
    "more",
    "mode",
    "move",
    "core",
    "bore",
    "wore",
    "sore",
    "tore",
    "mire",
    "night",
    "might",
    "light",
    "right",
    "sight",
    "fight",
    "tight",
    "eight",
    "knight",
    "nights",
    "chance",
    "charge",
    "changes",
    "colon",
    "cooler",
    "collar",
    "against",
    "gain",
    "other",
    "mother",
    "brother",
    "anther",
    "replica",
    "replay",
    "darken",
    "barker",
    "parker",
    "stale",
    "stile",
    "still",
    "stole",
    "styles",
    "stylish",
    "styled",
    "remote",
    "removed",
    "removal",
    "deleted",
    "replaced",
    "changed",
    "added",
    "turned",
    "made",
    "pat",
    "pot",
    "putt",
    "pit",
    "out",
    "sunsets",
    "sunset",
    "onset",
    "upset",
    "bigger",
    "digger",
    "swamp",
    "swan",
    "sway",
    "swap",
    "swat",
    "twitch",
    "stitch",
    "witch",
    "instant",
    "instead",
    "without",
    "lighter",
    "fighter",
    "tighter",
    "righter",
    "brighter",
    "another",
    "backgrounds",
    "again",
    "darker",
    "smaller",
    "taller",
    "caller",
    "dealer",
    "delta",
    "erase",
    "erased",
    "erode",
    "crane",
    "crash",
    "cane",
    "came",
    "game",
    "name",
    "same",
    "tame",
    "lame",
    "fame",
    "dame",
    "nice",
    "nine",
    "nigh",
    "orange",
    "market",
    "marker",
    "range",
    "arrange",
    "strange",
    "grange",
    "manage",
    "stylet",
    "arise",
    "trace",
    "grace",
    "place",
    "space",
    "brace",
    "chase",
    "chancel",
];

/// The prompt with each unknown word that is a near miss of exactly one edit word
/// replaced by that word.
pub fn correct(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            out.push_str(&correct_word(word).unwrap_or_else(|| word.clone()));
            word.clear();
        }
    };
    for c in prompt.chars() {
        if c.is_alphabetic() || c == '\'' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The edit word `word` is a typo of, if any.
pub fn correct_word(word: &str) -> Option<String> {
    let lower = word.to_lowercase();
    if lower.chars().count() < 3
        || !lower.chars().all(|c| c.is_ascii_alphabetic())
        || TARGETS.contains(&lower.as_str())
        || REAL_WORDS.contains(&lower.as_str())
        || STOPWORDS.contains(&lower.as_str())
        || EDIT_HINTS.contains(&lower.as_str())
    {
        return None;
    }
    let mut best: Option<(&str, usize)> = None;
    let mut tied = false;
    for target in TARGETS {
        let allowed = if target.len() <= 5 { 1 } else { 2 };
        if lower.len().abs_diff(target.len()) > allowed {
            continue;
        }
        let distance = distance(&lower, target);
        if distance > allowed {
            continue;
        }
        match best {
            Some((_, d)) if d < distance => {}
            Some((_, d)) if d == distance => tied = true,
            _ => {
                best = Some((target, distance));
                tied = false;
            }
        }
    }
    // The first letter is rarely the typo: a short word must keep it, which keeps "bake"
    // and "fake"-like words we do not list away from "make"; a longer one may lose it only
    // to a single slip, which keeps "tiger" (two edits) away from "bigger".
    best.filter(|(target, distance)| {
        !tied && (target[..1] == lower[..1] || (target.len() > 5 && *distance == 1))
    })
    .map(|(target, _)| target.to_owned())
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// two neighbouring letters each cost one.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_count_once() {
        assert_eq!(distance("mkae", "make"), 1);
        assert_eq!(distance("chnage", "change"), 1);
        assert_eq!(distance("backgorund", "background"), 1);
        assert_eq!(distance("rmeove", "remove"), 1);
        assert_eq!(distance("cat", "dog"), 3);
    }

    #[test]
    fn near_misses_of_edit_words_are_corrected() {
        for (typo, word) in [
            ("mkae", "make"),
            ("maek", "make"),
            ("chnage", "change"),
            ("chagne", "change"),
            ("backgrond", "background"),
            ("bakground", "background"),
            ("remvoe", "remove"),
            ("replce", "replace"),
            ("anohter", "another"),
            ("witout", "without"),
        ] {
            assert_eq!(correct_word(typo).as_deref(), Some(word), "{typo:?}");
        }
        assert_eq!(correct("mkae it blue"), "make it blue");
    }

    #[test]
    fn real_words_are_left_alone() {
        for word in [
            "cake", "take", "bake", "more", "mode", "knight", "cat", "dog", "market", "chance",
            "add", "and", "had", "mask", "style", "tree", "house", "bridge", "range", "orange",
            "strange", "heaven", "seven", "sheep", "moon", "stars", "tiger", "ginger",
        ] {
            assert_eq!(correct_word(word), None, "{word:?}");
        }
    }
}
