//! The words the heuristics know, one module per language, and which language a prompt
//! is in.
//!
//! Why per language and apart from the rules: the rules for languages other than English
//! are the same few gestures (an edit verb, a removal, an addition, a colour, a time of
//! day, a background, one more, a rejection); what differs is the words. Adding a
//! language is adding a word list.
//!
//! Entries are lowercase with accents folded ("añade" is "anade"), so a user who types
//! without accents is understood; entries with spaces are phrases matched word by word.
//! Chinese and Japanese are written without spaces: their entries are matched as
//! substrings.

pub mod de;
pub mod en;
pub mod es;
pub mod fr;
pub mod it;
pub mod ja;
pub mod pt;
pub mod zh;

/// The words of one language other than English.
#[derive(Debug)]
pub struct Lexicon {
    /// ISO 639-1 code, for logs and the accuracy table.
    pub code: &'static str,
    /// Written without spaces between words: phrases are matched as substrings.
    pub unspaced: bool,
    /// Frequent small words (articles, prepositions) that tell the language apart.
    pub markers: &'static [&'static str],
    /// Politeness and continuation at the start or end ("por favor", "ahora").
    pub fillers: &'static [&'static str],
    /// Verbs and forms that change the picture ("hazlo", "cambia", "mach").
    pub edit_verbs: &'static [&'static str],
    /// Pronouns aimed at the picture ("lo", "es", "它").
    pub pronouns: &'static [&'static str],
    pub remove: &'static [&'static str],
    pub add: &'static [&'static str],
    pub background: &'static [&'static str],
    pub styles: &'static [&'static str],
    pub weather: &'static [&'static str],
    pub lighting: &'static [&'static str],
    /// "more", "less": an adjustment of what is there.
    pub comparatives: &'static [&'static str],
    /// Colours and their English names, which the resolved prompt uses.
    pub colors: &'static [(&'static str, &'static str)],
    /// Times of day and their English phrases.
    pub times: &'static [(&'static str, &'static str)],
    /// Whole prompts asking for one more of the same.
    pub rerolls: &'static [&'static str],
    /// Rejections of the last picture at the start of a prompt.
    pub rejections: &'static [&'static str],
    /// Requests for a picture ("dibuja", "dessine").
    pub requests: &'static [&'static str],
    /// "instead of": a correction naming the replaced thing after it.
    pub instead: &'static [&'static str],
    /// Fillers that continue the last picture ("ahora", "mais"): a preposition right
    /// after one opens an edit ("ahora en la playa").
    pub continuations: &'static [&'static str],
    /// Prepositions that open a modifier rather than a subject ("en", "dans", "im").
    pub prepositions: &'static [&'static str],
    /// "the same" at the start: what follows changes the last picture ("la même la nuit").
    pub same: &'static [&'static str],
}

impl Lexicon {
    /// Every list whose words say something about the picture or the request.
    pub fn word_lists(&self) -> [&'static [&'static str]; 15] {
        [
            self.markers,
            self.fillers,
            self.edit_verbs,
            self.pronouns,
            self.remove,
            self.add,
            self.background,
            self.styles,
            self.weather,
            self.lighting,
            self.comparatives,
            self.rerolls,
            self.rejections,
            self.requests,
            self.same,
        ]
    }
}

/// The languages besides English, in the order ties between them are settled.
pub const LANGUAGES: [&Lexicon; 7] = [
    &es::LEXICON,
    &fr::LEXICON,
    &de::LEXICON,
    &pt::LEXICON,
    &it::LEXICON,
    &zh::LEXICON,
    &ja::LEXICON,
];

/// Lowercase with the accents of Latin letters dropped and "ß" spelled "ss".
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let folded = match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            '’' => '\'',
            'ß' => {
                out.push_str("ss");
                continue;
            }
            other => other,
        };
        out.push(folded);
    }
    out
}

/// Folded words: letters and digits, split at anything else, apostrophes included
/// ("l'arbre" is "l" and "arbre").
pub fn words(text: &str) -> Vec<String> {
    fold(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{ff66}'..='\u{ff9f}')
}

fn is_kana(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30ff}' | '\u{ff66}'..='\u{ff9f}')
}

/// The language of `prompt` when it is not English; `None` for English, or for words no
/// lexicon knows better than the English one.
pub fn detect(prompt: &str) -> Option<&'static Lexicon> {
    if prompt.chars().any(is_cjk) {
        return Some(if prompt.chars().any(is_kana) {
            &ja::LEXICON
        } else {
            &zh::LEXICON
        });
    }
    let words = words(prompt);
    let english = words.iter().filter(|w| is_english(w)).count();
    let mut best: Option<(&'static Lexicon, usize)> = None;
    for lexicon in LANGUAGES.iter().filter(|l| !l.unspaced) {
        let score =
            words.iter().filter(|w| knows(lexicon, w)).count() + phrase_hits(lexicon, &words);
        if score > english && best.is_none_or(|(_, s)| score > s) {
            best = Some((lexicon, score));
        }
    }
    best.map(|(lexicon, _)| lexicon)
}

fn is_english(word: &str) -> bool {
    use en::*;
    [
        STOPWORDS,
        EDIT_HINTS,
        COMPARATIVES,
        COLOR_NAMES,
        COLOR_WORDS,
        TIME_WORDS,
        BACKGROUND_WORDS,
        STYLE_WORDS,
        WEATHER_WORDS,
        LIGHTING_WORDS,
        PRONOUNS,
        REQUEST_VERBS,
        REMOVE_VERBS,
        ADD_WORDS,
        REROLLS,
    ]
    .iter()
    .any(|list| list.contains(&word))
}

/// Whether `word` is a one-word entry of any of the lexicon's lists.
pub fn knows(lexicon: &Lexicon, word: &str) -> bool {
    lexicon.word_lists().iter().any(|list| list.contains(&word))
        || lexicon.colors.iter().any(|(w, _)| *w == word)
        || lexicon.times.iter().any(|(w, _)| *w == word)
}

/// Multi-word entries found in `words`: each counts once more than its first word.
fn phrase_hits(lexicon: &Lexicon, words: &[String]) -> usize {
    let mut hits = 0;
    for list in lexicon.word_lists() {
        for entry in list.iter().filter(|e| e.contains(' ')) {
            if find_phrase(words, entry).is_some() {
                hits += 1;
            }
        }
    }
    hits
}

/// Where the phrase `entry` (words separated by spaces) starts in `words`.
pub fn find_phrase(words: &[String], entry: &str) -> Option<usize> {
    let parts: Vec<&str> = entry.split(' ').collect();
    (0..words.len()).find(|&at| {
        parts
            .iter()
            .enumerate()
            .all(|(k, part)| words.get(at + k).is_some_and(|w| w == part))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(prompt: &str) -> &'static str {
        detect(prompt).map_or("en", |lexicon| lexicon.code)
    }

    #[test]
    fn languages_are_told_apart() {
        let cases = [
            ("make it blue", "en"),
            ("a cat on a sofa", "en"),
            ("hazlo azul", "es"),
            ("quita el sombrero", "es"),
            ("rends-le bleu", "fr"),
            ("enlève le chapeau", "fr"),
            ("mach es blau", "de"),
            ("entferne den Hut", "de"),
            ("deixe azul", "pt"),
            ("rendilo blu", "it"),
            ("把它变成蓝色", "zh"),
            ("青にして", "ja"),
        ];
        for (prompt, expected) in cases {
            assert_eq!(code(prompt), expected, "{prompt:?}");
        }
    }

    #[test]
    fn accents_fold() {
        assert_eq!(fold("Añade Größe, à l'été"), "anade grosse, a l'ete");
        assert_eq!(words("l'arbre"), ["l", "arbre"]);
    }
}
