//! The heuristic fast path of AnalyzeIntent: NEW picture or EDIT of the last one, decided
//! from the words of the prompt alone.
//!
//! Why it exists: most prompts are plainly one or the other ("a red fox in the snow",
//! "make it night"), and answering those with string rules is free and instant. Only the
//! prompts these rules cannot settle cost an LLM call, and when the LLM is missing or
//! failing, the best guess returned with them is what the pipeline uses.
//!
//! The rules, in the order [`analyze`] applies them:
//!
//! 1. **No context, sure NEW.** Without a previous prompt, or without a previous image to
//!    start an img2img edit from, there is nothing to edit.
//! 2. **A clear edit, sure EDIT.** The prompt (after politeness and continuation words such
//!    as "please", "can you", "now", "also", "but") opens with an edit form: an imperative
//!    edit verb aimed at the picture ("make it …", "make the …", "turn it into …", "change
//!    the … to …", "add …", "remove …", "get rid of …", "replace … with …", "put …",
//!    "brighten …", "no …"), a comparison ("more …", "less …", "darker", "a bit warmer",
//!    "bigger eyes"; not "darker forest at night with wolves", which names a new scene),
//!    "without …", "in the style of …", "same but …", "keep … but …", or a preposition
//!    right after a continuation word ("but with a hat", "now in watercolor"). Several
//!    edits joined by "and" or commas are all applied.
//! 3. **A bare modifier, sure EDIT.** A fragment of at most five words with no subject of
//!    its own, made only of edit keywords and small words ("at night", "in the rain",
//!    "black and white", "watercolor", "blue background"), can only modify the last
//!    picture.
//! 4. **An explicit request, sure NEW.** "draw a …", "generate an image of …", "make me a …"
//!    ask for a new picture unless they also point back ("draw it again").
//! 5. **A long new scene, NEW.** More than 12 words with no back-reference near the start
//!    describe a whole scene: a stray edit word inside ("with more stars") does not make
//!    it an edit. A strong back-reference later in it ("same style as the previous one")
//!    makes it ambiguous, with NEW as the guess.
//! 6. **No edit or reference word, sure NEW.** Words that hint at an edit are imperative
//!    edit verbs, comparisons and adjustments ("more", "darker", "should"), and references
//!    to the earlier picture: "same", "again", "another", "instead", "like that", "what
//!    about"; a pronoun before the prompt has a subject of its own ("it should be
//!    bigger"), a trailing "this", "it"; "the <noun>" naming something from the previous
//!    prompt; a prompt that opens with a continuation word or a preposition ("now a cat",
//!    "in a park").
//! 7. **Everything else is ambiguous.** The best guess is NEW when the prompt reads like
//!    a scene of its own (a subject, no back-reference), otherwise EDIT.
//!
//! One departure from the design notes' word list: scene words such as "night", "day",
//! "rain" or "background" are not edit hints on their own. "a city street at night" is a
//! whole new prompt; the same words only signal an edit when they stand without a subject
//! (rule 3). Treating them as hints would send many plain new prompts to the LLM.
//!
//! For an edit, the resolved prompt is the previous prompt followed by the change, with
//! the edit verb rewritten into a description ("add a hat" → ", with a hat"; "remove the
//! car" → ", without the car"; "make it night" → ", night"). The strength is the suggested
//! img2img denoising strength of the edit type (see [`EditType::strength`]); when several
//! edits are combined, the strongest one's type wins, so the strength allows the largest
//! change.

use std::collections::HashSet;

/// What the heuristics concluded about one prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The rules are sure: no LLM call is needed.
    Sure(Intent),
    /// Only an LLM can tell; `best_guess` is what to use when it is unavailable.
    Ambiguous { best_guess: Intent },
}

impl Decision {
    /// The sure answer or the best guess.
    pub fn intent(&self) -> &Intent {
        match self {
            Decision::Sure(intent) | Decision::Ambiguous { best_guess: intent } => intent,
        }
    }

    pub fn into_intent(self) -> Intent {
        match self {
            Decision::Sure(intent) | Decision::Ambiguous { best_guess: intent } => intent,
        }
    }

    pub fn is_sure(&self) -> bool {
        matches!(self, Decision::Sure(_))
    }
}

/// A resolved intent, as `atelier.v1.ResolvedIntent` carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Intent {
    pub kind: IntentKind,
    /// The prompt describing the wanted picture as a whole: the prompt itself for a new
    /// picture, the previous prompt with the change appended for an edit.
    pub resolved_prompt: String,
    /// `EditType::None` for a new picture.
    pub edit_type: EditType,
    /// Suggested img2img denoising strength, 0 (keep) to 1 (replace); 1 for a new picture.
    pub strength: f32,
}

impl Intent {
    fn new_picture(prompt: &str) -> Self {
        Self {
            kind: IntentKind::New,
            resolved_prompt: prompt.trim().to_owned(),
            edit_type: EditType::None,
            strength: EditType::None.strength(),
        }
    }

    fn edit(previous_prompt: &str, changes: &[(String, EditType)]) -> Self {
        // The strongest change decides, so the strength leaves room for every change.
        let mut edit_type = EditType::Other;
        let mut strongest = f32::MIN;
        for (_, kind) in changes {
            if kind.strength() > strongest {
                strongest = kind.strength();
                edit_type = *kind;
            }
        }
        let phrases: Vec<&str> = changes.iter().map(|(phrase, _)| phrase.as_str()).collect();
        Self {
            kind: IntentKind::Edit,
            resolved_prompt: combine(previous_prompt, &phrases),
            edit_type,
            strength: edit_type.strength(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntentKind {
    New,
    Edit,
}

impl IntentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentKind::New => "new",
            IntentKind::Edit => "edit",
        }
    }
}

/// What kind of change an edit makes; `as_str` is the wire name in `ResolvedIntent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EditType {
    None,
    Lighting,
    Color,
    Add,
    Remove,
    Style,
    Weather,
    Time,
    Background,
    Pose,
    Other,
}

impl EditType {
    pub const ALL: [EditType; 11] = [
        EditType::None,
        EditType::Lighting,
        EditType::Color,
        EditType::Add,
        EditType::Remove,
        EditType::Style,
        EditType::Weather,
        EditType::Time,
        EditType::Background,
        EditType::Pose,
        EditType::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EditType::None => "none",
            EditType::Lighting => "lighting",
            EditType::Color => "color",
            EditType::Add => "add",
            EditType::Remove => "remove",
            EditType::Style => "style",
            EditType::Weather => "weather",
            EditType::Time => "time",
            EditType::Background => "background",
            EditType::Pose => "pose",
            EditType::Other => "other",
        }
    }

    /// The suggested img2img strength: low where the composition must survive (a new
    /// colour or light), higher as more of the picture has to be repainted (objects,
    /// background, pose, a whole new style). A new picture replaces everything: 1.
    pub fn strength(self) -> f32 {
        match self {
            EditType::None => 1.0,
            EditType::Color | EditType::Lighting => 0.45,
            EditType::Time | EditType::Weather => 0.55,
            EditType::Add | EditType::Remove | EditType::Other => 0.6,
            EditType::Background | EditType::Pose => 0.65,
            EditType::Style => 0.75,
        }
    }
}

/// Decides NEW or EDIT for `prompt`, given the conversation's previous prompt and whether
/// that message has an image an edit could start from. See the module doc for the rules.
pub fn analyze(prompt: &str, previous_prompt: Option<&str>, has_previous_image: bool) -> Decision {
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
            Decision::Ambiguous { best_guess: intent }
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
    Decision::Ambiguous { best_guess }
}

/// Above this many words a prompt without a back-reference at its start is a new scene.
const LONG_PROMPT_WORDS: usize = 12;

// Word lists. All lowercase; entries with spaces are phrases matched word by word.

/// Politeness, stripped from the start without meaning anything.
const POLITE: &[&str] = &[
    "please",
    "pls",
    "ok",
    "okay",
    "alright",
    "hmm",
    "hey",
    "can you",
    "could you",
    "would you",
    "will you",
    "let's",
    "lets",
    "let us",
    "go ahead and",
    "i want you to",
];

/// Words that continue the last request; stripped from the start, but they point back.
const CONTINUATIONS: &[&str] = &[
    "now", "also", "and", "then", "but", "instead", "just", "only", "plus",
];

/// Words dropped from the end of an edit phrase.
const TRAILING: &[&str] = &["please", "pls", "instead", "too", "now", "again", "thanks"];

/// What "make", "turn", "put", "give" aim at when they aim at the picture itself.
const OBJECTS: &[&str] = &[
    "the whole thing",
    "the whole image",
    "the whole picture",
    "the whole scene",
    "the image",
    "the picture",
    "the scene",
    "the photo",
    "it",
    "them",
    "him",
    "her",
    "this",
    "that",
    "these",
    "those",
    "everything",
    "everyone",
    "all",
];

/// Openers of a noun phrase naming a known part of the picture.
const DEFINITES: &[&str] = &["the", "its", "his", "their", "every"];

/// Skipped after "make it": "make it look like a painting" → "a painting".
const LOOK_WORDS: &[&str] = &[
    "look like",
    "looks like",
    "look",
    "seem",
    "appear",
    "be",
    "become",
    "into",
];

/// Words after "same" that still mean the previous picture.
const SAME_NOUNS: &[&str] = &[
    "thing",
    "scene",
    "image",
    "picture",
    "prompt",
    "one",
    "composition",
    "photo",
    "shot",
    "setup",
    "again",
];

/// Prepositions a modifier can open with ("in watercolor", "with a hat").
const PREPOSITIONS: &[&str] = &[
    "in",
    "at",
    "on",
    "with",
    "without",
    "during",
    "under",
    "inside",
    "outside",
    "near",
    "behind",
    "beside",
    "into",
    "onto",
    "from",
    "through",
    "over",
    "underneath",
    "above",
    "below",
    "like",
    "as",
];

/// Prepositions that open an edit right after a continuation word ("but with a hat").
const EDIT_PREPOSITIONS: &[&str] = &[
    "with", "without", "in", "at", "as", "during", "under", "on", "inside", "into",
];

/// Comparisons that adjust the last picture ("darker", "a bit warmer").
const COMPARATIVES: &[&str] = &[
    "brighter", "darker", "lighter", "dimmer", "warmer", "cooler", "colder", "hotter", "bigger",
    "smaller", "larger", "sharper", "softer", "happier", "sadder", "older", "younger", "closer",
    "farther", "further", "wider", "narrower", "taller", "shorter", "thinner", "moodier",
    "creepier", "scarier", "cuter", "calmer", "busier", "emptier", "simpler", "cleaner", "richer",
    "stronger", "weaker", "higher", "lower", "longer", "greener", "bluer", "redder", "foggier",
    "rainier", "snowier", "sunnier", "cloudier", "stormier", "clearer", "bolder", "deeper",
    "paler",
];

/// Degree words that may precede a comparison ("slightly darker", "a bit more red").
const DEGREES: &[&str] = &[
    "a bit", "a little", "a lot", "slightly", "somewhat", "much", "even", "way", "far",
];

/// Words that hint at an edit wherever they appear (with the comparatives).
const EDIT_HINTS: &[&str] = &[
    "make",
    "change",
    "turn",
    "add",
    "remove",
    "delete",
    "erase",
    "replace",
    "swap",
    "switch",
    "put",
    "keep",
    "give",
    "fix",
    "adjust",
    "increase",
    "decrease",
    "reduce",
    "brighten",
    "darken",
    "lighten",
    "try",
    "use",
    "zoom",
    "crop",
    "move",
    "rotate",
    "flip",
    "more",
    "less",
    "fewer",
    "should",
    "shouldn't",
    "need",
    "needs",
    "must",
    "slightly",
    "somewhat",
    "version",
    "different",
    "also",
    "now",
    "still",
    "anymore",
];

/// Phrases that refer to the earlier picture wherever they appear.
const STRONG_REFERENCES: &[&str] = &[
    "same",
    "again",
    "another",
    "instead",
    "previous",
    "redo",
    "retry",
    "regenerate",
    "variation",
    "variations",
    "that one",
    "this one",
    "the one",
    "last one",
    "one more",
    "like that",
    "like this",
    "like before",
    "as before",
    "than before",
    "from before",
    "what about",
    "how about",
    "what if",
    "this time",
    "the original",
    "the last",
    "a different",
];

/// Words that refer back when they appear last ("a darker version of the one before").
const REFERENCES_AT_END: &[&str] = &["before", "earlier", "it", "them", "him", "her"];

const PRONOUNS: &[&str] = &[
    "it", "its", "it's", "they", "them", "their", "theirs", "he", "him", "his", "she", "her",
    "hers", "this", "that", "these", "those",
];

/// After "that", these make it a relative pronoun ("a cat that is sleeping").
const RELATIVE_FOLLOWERS: &[&str] = &[
    "is", "was", "are", "were", "has", "have", "had", "can", "could", "will", "would", "looks",
    "seems",
];

/// Words that introduce a new subject ("a fox", "two cats").
const INTRODUCERS: &[&str] = &[
    "a", "an", "some", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "several", "many", "few", "lots",
];

/// Verbs that ask for a new picture when an indefinite subject follows.
const REQUEST_VERBS: &[&str] = &[
    "draw",
    "paint",
    "generate",
    "create",
    "render",
    "make",
    "show",
    "imagine",
    "design",
    "illustrate",
    "sketch",
    "give",
];

/// Small words that are neither content nor hints.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "to", "into", "onto", "with", "without", "for",
    "from", "by", "and", "or", "but", "nor", "is", "are", "be", "being", "been", "was", "were",
    "am", "as", "like", "than", "so", "very", "really", "quite", "rather", "some", "any", "no",
    "not", "there", "here", "what", "how", "about", "which", "who", "whose", "where", "when",
    "while", "up", "down", "out", "off", "over", "under", "through", "near", "behind", "beside",
    "inside", "outside", "during", "around", "above", "below", "me", "my", "mine", "us", "our",
    "you", "your", "i", "we", "can", "could", "would", "will", "shall", "may", "might", "please",
    "lot", "lots", "bit", "little", "much", "many", "few", "several", "each", "every", "all",
    "both", "either", "just", "only", "too", "then", "get", "got", "have", "has", "had", "do",
    "does", "did", "let", "let's", "lets", "i'd", "i'm", "time", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine", "ten", "ok", "okay", "yes", "yeah", "it's",
];

/// Words a bare modifier may carry besides keywords and stopwords ("anime version").
const MODIFIER_WORDS: &[&str] = &[
    "version",
    "look",
    "effect",
    "filter",
    "mode",
    "vibe",
    "vibes",
    "feel",
    "feeling",
    "theme",
    "scene",
    "setting",
    "aesthetic",
    "tones",
    "lighting",
    "colors",
    "colours",
];

// Keywords of each edit type.

const BACKGROUND_WORDS: &[&str] = &[
    "background",
    "backgrounds",
    "backdrop",
    "scenery",
    "surroundings",
];

const REMOVE_WORDS: &[&str] = &[
    "remove",
    "delete",
    "erase",
    "without",
    "get rid of",
    "take out",
    "take away",
    "take off",
];

const ADD_WORDS: &[&str] = &[
    "add",
    "put",
    "include",
    "insert",
    "with a",
    "with an",
    "with some",
    "with two",
    "with three",
    "with another",
];

const STYLE_WORDS: &[&str] = &[
    "style",
    "styled",
    "anime",
    "manga",
    "cartoon",
    "cartoonish",
    "comic",
    "watercolor",
    "watercolour",
    "oil painting",
    "painting",
    "painted",
    "sketch",
    "sketched",
    "pencil",
    "charcoal",
    "drawing",
    "illustration",
    "pixel art",
    "line art",
    "lineart",
    "digital art",
    "photographic",
    "photorealistic",
    "realistic",
    "cinematic",
    "impressionist",
    "impressionism",
    "surreal",
    "surrealist",
    "cubist",
    "cubism",
    "art deco",
    "art nouveau",
    "baroque",
    "renaissance",
    "vintage",
    "retro",
    "noir",
    "steampunk",
    "cyberpunk",
    "low poly",
    "3d",
    "claymation",
    "origami",
    "minimalist",
    "abstract",
    "ukiyo",
    "ghibli",
    "pixar",
    "gothic",
    "vaporwave",
    "synthwave",
    "pop art",
];

const WEATHER_WORDS: &[&str] = &[
    "rain",
    "rainy",
    "raining",
    "rainstorm",
    "snow",
    "snowy",
    "snowing",
    "snowfall",
    "fog",
    "foggy",
    "mist",
    "misty",
    "haze",
    "hazy",
    "storm",
    "stormy",
    "thunderstorm",
    "thunder",
    "lightning",
    "cloud",
    "clouds",
    "cloudy",
    "overcast",
    "sunny",
    "wind",
    "windy",
    "blizzard",
    "hail",
    "drizzle",
    "weather",
    "winter",
    "wintry",
    "summer",
    "autumn",
];

const TIME_WORDS: &[&str] = &[
    "night",
    "nighttime",
    "midnight",
    "day",
    "daytime",
    "daylight",
    "noon",
    "midday",
    "morning",
    "evening",
    "afternoon",
    "sunset",
    "sunrise",
    "dawn",
    "dusk",
    "twilight",
    "golden hour",
    "blue hour",
];

const COLOR_WORDS: &[&str] = &[
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "pink",
    "violet",
    "black",
    "white",
    "gray",
    "grey",
    "brown",
    "gold",
    "golden",
    "silver",
    "teal",
    "cyan",
    "magenta",
    "turquoise",
    "beige",
    "crimson",
    "scarlet",
    "navy",
    "maroon",
    "color",
    "colour",
    "colors",
    "colours",
    "colored",
    "coloured",
    "colorful",
    "colourful",
    "saturated",
    "saturation",
    "desaturated",
    "monochrome",
    "sepia",
    "pastel",
    "vibrant",
    "hue",
    "tint",
    "palette",
];

const LIGHTING_WORDS: &[&str] = &[
    "light",
    "lights",
    "lighter",
    "lighting",
    "lit",
    "bright",
    "brighter",
    "brightness",
    "brighten",
    "dark",
    "darker",
    "darken",
    "darkness",
    "dim",
    "dimmer",
    "shadow",
    "shadows",
    "shadowy",
    "glow",
    "glowing",
    "sunlight",
    "moonlight",
    "candlelight",
    "backlit",
    "backlight",
    "exposure",
    "contrast",
    "illuminated",
    "spotlight",
    "warm",
    "warmer",
    "cool",
    "cooler",
    "moody",
    "moodier",
];

const POSE_WORDS: &[&str] = &[
    "pose",
    "posing",
    "sit",
    "sitting",
    "stand",
    "standing",
    "run",
    "running",
    "jump",
    "jumping",
    "kneel",
    "kneeling",
    "lie",
    "lying",
    "smile",
    "smiling",
    "laugh",
    "laughing",
    "wave",
    "waving",
    "dance",
    "dancing",
    "walk",
    "walking",
    "facing",
    "looking",
    "crouching",
    "sleep",
    "sleeping",
    "frown",
    "frowning",
    "crying",
    "arms",
    "expression",
    "angry",
];

/// One word of a prompt: its lowercase form and where it sits in the original text.
#[derive(Clone, Debug)]
struct Token {
    norm: String,
    start: usize,
    end: usize,
    /// A comma, semicolon or sentence end follows: a clause may end here.
    sep_after: bool,
}

/// Splits on anything but letters, digits and apostrophes ("pixel-art" is two words).
fn tokenize(text: &str) -> Vec<Token> {
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

fn is(word: &str, list: &[&str]) -> bool {
    list.contains(&word)
}

fn word(tokens: &[Token], at: usize) -> &str {
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
fn match_at(tokens: &[Token], at: usize, list: &[&str]) -> Option<usize> {
    list.iter()
        .find(|phrase| phrase_at(tokens, at, phrase))
        .map(|phrase| phrase.split(' ').count())
}

fn find(tokens: &[Token], list: &[&str]) -> Option<usize> {
    (0..tokens.len()).find(|&at| match_at(tokens, at, list).is_some())
}

fn contains(tokens: &[Token], list: &[&str]) -> bool {
    find(tokens, list).is_some()
}

/// The original text from the first to the last token, whitespace collapsed.
fn slice(text: &str, tokens: &[Token]) -> Option<String> {
    let (first, last) = (tokens.first()?, tokens.last()?);
    Some(
        text[first.start..last.end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The previous prompt followed by the changes, comma-separated, with no doubled commas.
fn combine(previous: &str, phrases: &[&str]) -> String {
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
fn strip_leading_fillers(tokens: &[Token]) -> (usize, bool) {
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

fn trim_trailing_fillers(mut tokens: &[Token]) -> &[Token] {
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
        let clause = trim_trailing_fillers(&clause[skipped..]);
        let continuation = more_continuation || (i == 0 && continuation);
        let phrase = edit_phrase(text, clause, continuation, words)?;
        changes.push((phrase, classify(clause)));
    }
    Some(changes)
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
        // "remove the car", "get rid of the sofa", "take out the people"
        "remove" | "delete" | "erase" => slice(text, &t[1..]).map(|x| format!("without {x}")),
        "get" if phrase_at(t, 0, "get rid of") => {
            slice(text, &t[3..]).map(|x| format!("without {x}"))
        }
        "take" if is(w1, &["out", "away", "off"]) => {
            slice(text, &t[2..]).map(|x| format!("without {x}"))
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
fn classify(t: &[Token]) -> EditType {
    if contains(t, BACKGROUND_WORDS) {
        return EditType::Background;
    }
    if contains(t, REMOVE_WORDS) || word(t, 0) == "no" {
        return EditType::Remove;
    }
    // Replacing or moving something is not adding it, whatever "with a" follows.
    let replacing = is(word(t, 0), &["replace", "swap", "switch", "change", "turn"])
        || (word(t, 0) == "put" && match_at(t, 1, OBJECTS).is_some());
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
        (COLOR_WORDS, EditType::Color),
        (LIGHTING_WORDS, EditType::Lighting),
        (POSE_WORDS, EditType::Pose),
    ]
    .into_iter()
    .find(|(list, _)| contains(t, list))
    .map_or(EditType::Other, |(_, kind)| kind)
}

const KEYWORD_LISTS: [&[&str]; 7] = [
    BACKGROUND_WORDS,
    STYLE_WORDS,
    WEATHER_WORDS,
    TIME_WORDS,
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
    core.len() <= 5
        && !is(&core[0].norm, INTRODUCERS)
        && core.iter().all(|t| {
            is(&t.norm, STOPWORDS) || is(&t.norm, MODIFIER_WORDS) || is_keyword_word(&t.norm)
        })
        && core.iter().any(|t| is_keyword_word(&t.norm))
        && !matches!(classify(core), EditType::Other | EditType::Add)
}

/// A word that says what is in the picture, rather than a small word or an edit hint.
fn is_content(word: &str) -> bool {
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

/// A subject of its own: an introduced noun ("a fox") or at least three content words.
fn reads_like_new_scene(t: &[Token]) -> bool {
    let content = t.iter().filter(|x| is_content(&x.norm)).count();
    (is(word(t, 0), INTRODUCERS) && content >= 1) || content >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAT: &str = "a cat sitting on a sofa";
    const LIGHTHOUSE: &str = "a lighthouse on a rocky coast";
    const WOMAN: &str = "a woman in a red dress standing in a garden";
    const STREET: &str = "a city street with cars";

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Expected {
        New,
        Edit(EditType),
        Ambiguous(IntentKind),
    }
    use Expected::{Ambiguous, Edit, New};

    /// (prompt, previous prompt, previous image exists, expected decision)
    #[rustfmt::skip] // one row per line reads as the table it is
    const TABLE: &[(&str, Option<&str>, bool, Expected)] = &[
        // No context: nothing to edit.
        ("make it night", None, false, New),
        ("make it night", Some(LIGHTHOUSE), false, New),
        ("add a hat", None, true, New),
        ("add a hat", Some("   "), true, New),
        ("a dragon flying over mountains", None, false, New),
        // New prompts in a conversation.
        ("a bowl of ramen on a wooden table", Some(CAT), true, New),
        ("portrait of an old fisherman, dramatic lighting", Some(CAT), true, New),
        ("a city street at night", Some(CAT), true, New),
        ("cyberpunk samurai in the rain", Some(LIGHTHOUSE), true, New),
        ("draw a dragon with more scales", Some(CAT), true, New),
        ("generate an image of a red sports car", Some(CAT), true, New),
        ("make a poster of a cat", Some(STREET), true, New),
        ("a woman walking her dog along the beach", Some(CAT), true, New),
        ("a cat watching the rain as it falls on the window", Some(CAT), true, New),
        ("the eiffel tower at sunset", Some(CAT), true, New),
        ("a rainy day in london", Some(CAT), true, New),
        ("a sunset", Some(LIGHTHOUSE), true, New),
        ("a cozy cabin in the snowy mountains at dusk, with smoke rising from the chimney and more stars than you can count", Some(CAT), true, New),
        // Clear edits, by type.
        ("make it night", Some(LIGHTHOUSE), true, Edit(EditType::Time)),
        ("now make it sunset", Some(STREET), true, Edit(EditType::Time)),
        ("at night", Some(STREET), true, Edit(EditType::Time)),
        ("make it rain", Some(STREET), true, Edit(EditType::Weather)),
        ("turn it into a snowy scene", Some(LIGHTHOUSE), true, Edit(EditType::Weather)),
        ("add fog", Some(LIGHTHOUSE), true, Edit(EditType::Weather)),
        ("in the rain", Some(STREET), true, Edit(EditType::Weather)),
        ("keep everything but make it winter", Some(LIGHTHOUSE), true, Edit(EditType::Weather)),
        ("make it brighter", Some(CAT), true, Edit(EditType::Lighting)),
        ("darker", Some(LIGHTHOUSE), true, Edit(EditType::Lighting)),
        ("make the lighting more dramatic", Some(WOMAN), true, Edit(EditType::Lighting)),
        ("please make it a little warmer", Some(CAT), true, Edit(EditType::Lighting)),
        ("make the dress blue", Some(WOMAN), true, Edit(EditType::Color)),
        ("change the color of the car to green", Some(STREET), true, Edit(EditType::Color)),
        ("paint it red", Some(STREET), true, Edit(EditType::Color)),
        ("less saturated", Some(CAT), true, Edit(EditType::Color)),
        ("black and white", Some(WOMAN), true, Edit(EditType::Color)),
        ("add a hat", Some(CAT), true, Edit(EditType::Add)),
        ("add some birds in the sky", Some(LIGHTHOUSE), true, Edit(EditType::Add)),
        ("but with a red collar", Some(CAT), true, Edit(EditType::Add)),
        ("make it night and add a full moon", Some(LIGHTHOUSE), true, Edit(EditType::Add)),
        ("remove the cars", Some(STREET), true, Edit(EditType::Remove)),
        ("without the people", Some(STREET), true, Edit(EditType::Remove)),
        ("get rid of the sofa", Some(CAT), true, Edit(EditType::Remove)),
        ("can you remove the text?", Some(STREET), true, Edit(EditType::Remove)),
        ("no people", Some(STREET), true, Edit(EditType::Remove)),
        ("make it in the style of van gogh", Some(LIGHTHOUSE), true, Edit(EditType::Style)),
        ("now in watercolor", Some(LIGHTHOUSE), true, Edit(EditType::Style)),
        ("make it anime", Some(WOMAN), true, Edit(EditType::Style)),
        ("same but as an oil painting", Some(CAT), true, Edit(EditType::Style)),
        ("in the style of hokusai", Some(LIGHTHOUSE), true, Edit(EditType::Style)),
        ("change the background to a beach", Some(CAT), true, Edit(EditType::Background)),
        ("replace the background with a forest", Some(WOMAN), true, Edit(EditType::Background)),
        ("blue background", Some(WOMAN), true, Edit(EditType::Background)),
        ("make her smile", Some(WOMAN), true, Edit(EditType::Pose)),
        ("make the cat sleep", Some(CAT), true, Edit(EditType::Pose)),
        ("replace the cat with a dog", Some(CAT), true, Edit(EditType::Other)),
        ("more detail", Some(CAT), true, Edit(EditType::Other)),
        ("bigger eyes", Some(WOMAN), true, Edit(EditType::Other)),
        ("put it in a forest", Some(CAT), true, Edit(EditType::Other)),
        // Pointing back without a clear edit: the LLM decides.
        ("a dog like that one but in a park", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("what about a cat?", Some(STREET), true, Ambiguous(IntentKind::Edit)),
        ("another one", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("one more", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("try again with more detail", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("it should be a lot bigger", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("the cat should be orange", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("the cat wearing a tiny crown", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("in a park", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("now a cat", Some(STREET), true, Ambiguous(IntentKind::Edit)),
        ("a dog instead", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("the same lighthouse but in winter", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("draw it again in blue", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("a darker version of this", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("a castle with more towers", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::New)),
        ("darker forest at night with wolves", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::New)),
        ("a knight in shining armor riding through a misty forest at dawn, same style as the previous one", Some(CAT), true, Ambiguous(IntentKind::New)),
    ];

    fn observed(decision: &Decision) -> Expected {
        match decision {
            Decision::Sure(intent) if intent.kind == IntentKind::New => New,
            Decision::Sure(intent) => Edit(intent.edit_type),
            Decision::Ambiguous { best_guess } => Ambiguous(best_guess.kind),
        }
    }

    #[test]
    fn every_row_of_the_table_holds() {
        assert!(TABLE.len() >= 40, "the table is the specification");
        let failures: Vec<String> = TABLE
            .iter()
            .filter_map(|&(prompt, previous, image, expected)| {
                let decision = analyze(prompt, previous, image);
                (observed(&decision) != expected)
                    .then(|| format!("{prompt:?}: expected {expected:?}, got {decision:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_intent_is_consistent_and_in_range() {
        for &(prompt, previous, image, _) in TABLE {
            let intent = analyze(prompt, previous, image).into_intent();
            assert!(
                (0.0..=1.0).contains(&intent.strength),
                "{prompt:?}: {intent:?}"
            );
            assert_eq!(intent.strength, intent.edit_type.strength(), "{prompt:?}");
            assert_eq!(
                intent.kind == IntentKind::New,
                intent.edit_type == EditType::None,
                "{prompt:?}: {intent:?}"
            );
            assert!(!intent.resolved_prompt.contains(",,"), "{intent:?}");
            assert!(!intent.resolved_prompt.contains(", ,"), "{intent:?}");
        }
    }

    #[test]
    fn a_new_picture_keeps_the_prompt_as_it_is() {
        let intent = analyze("  A Bowl of Ramen  ", Some(CAT), true).into_intent();
        assert_eq!(intent.kind, IntentKind::New);
        assert_eq!(intent.resolved_prompt, "A Bowl of Ramen");
        assert_eq!(intent.edit_type, EditType::None);
        assert_eq!(intent.strength, 1.0);
    }

    fn sure_edit(prompt: &str, previous: &str) -> Intent {
        match analyze(prompt, Some(previous), true) {
            Decision::Sure(intent) if intent.kind == IntentKind::Edit => intent,
            other => panic!("{prompt:?} should be a sure edit, got {other:?}"),
        }
    }

    #[test]
    fn edits_resolve_to_the_previous_prompt_plus_the_change() {
        let cases = [
            (
                "make it night",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, night",
            ),
            (
                "now, make it look like a painting.",
                CAT,
                "a cat sitting on a sofa, a painting",
            ),
            ("add a hat", CAT, "a cat sitting on a sofa, with a hat"),
            (
                "remove the cars",
                STREET,
                "a city street with cars, without the cars",
            ),
            (
                "get rid of the sofa",
                CAT,
                "a cat sitting on a sofa, without the sofa",
            ),
            (
                "without the people",
                STREET,
                "a city street with cars, without the people",
            ),
            (
                "change the background to a beach",
                CAT,
                "a cat sitting on a sofa, the background changed to a beach",
            ),
            (
                "replace the cat with a dog",
                CAT,
                "a cat sitting on a sofa, a dog instead of the cat",
            ),
            (
                "turn it into a snowy scene",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, a snowy scene",
            ),
            (
                "same but with a hat, please",
                CAT,
                "a cat sitting on a sofa, with a hat",
            ),
            (
                "keep everything but make it winter",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, winter",
            ),
            (
                "but in watercolor",
                CAT,
                "a cat sitting on a sofa, in watercolor",
            ),
            (
                "darken the sky",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, the sky darker",
            ),
            (
                "make it night and add a full moon",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, night, with a full moon",
            ),
            (
                "make it night, then remove the boats",
                LIGHTHOUSE,
                "a lighthouse on a rocky coast, night, without the boats",
            ),
            (
                "make it black and white",
                WOMAN,
                &format!("{WOMAN}, black and white"),
            ),
        ];
        for (prompt, previous, resolved) in cases {
            assert_eq!(
                sure_edit(prompt, previous).resolved_prompt,
                resolved,
                "{prompt:?}"
            );
        }
    }

    #[test]
    fn the_resolved_prompt_never_doubles_punctuation() {
        for previous in [
            "a cat on a sofa.",
            "a cat on a sofa, ",
            "a cat on a sofa,,",
            " a cat on a sofa ",
        ] {
            let intent = sure_edit("make it night!", previous);
            assert_eq!(
                intent.resolved_prompt, "a cat on a sofa, night",
                "{previous:?}"
            );
        }
    }

    #[test]
    fn the_strongest_of_several_changes_sets_the_type() {
        // Time (0.55) and an addition (0.6): the addition needs more room.
        let intent = sure_edit("make it night and add a full moon", LIGHTHOUSE);
        assert_eq!(intent.edit_type, EditType::Add);
        // A style change (0.75) outranks a colour change (0.45) whatever the order.
        let intent = sure_edit("make it red, make it anime", CAT);
        assert_eq!(intent.edit_type, EditType::Style);
        assert_eq!(intent.strength, 0.75);
    }

    #[test]
    fn case_and_whitespace_do_not_matter() {
        let pairs = [
            ("make it night", "  MAKE   it\tNight  "),
            ("add a hat", "Add A HAT"),
            ("a bowl of ramen", "  A   BOWL of RAMEN "),
            ("another one", "ANOTHER   ONE"),
            ("now in watercolor", "Now In Watercolor"),
        ];
        for (plain, shouted) in pairs {
            let a = analyze(plain, Some(CAT), true);
            let b = analyze(shouted, Some(CAT), true);
            assert_eq!(observed(&a), observed(&b), "{plain:?} vs {shouted:?}");
            let (a, b) = (a.into_intent(), b.into_intent());
            assert_eq!(a.edit_type, b.edit_type);
            assert_eq!(a.strength, b.strength);
            // A new picture keeps the user's spacing; compare words, not spaces.
            let words = |s: &str| {
                s.to_lowercase()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            assert_eq!(words(&a.resolved_prompt), words(&b.resolved_prompt));
        }
    }

    #[test]
    fn an_edit_guess_for_an_ambiguous_prompt_builds_on_the_previous_one() {
        let Decision::Ambiguous { best_guess } = analyze("another one", Some(CAT), true) else {
            panic!("expected ambiguous");
        };
        assert_eq!(best_guess.kind, IntentKind::Edit);
        assert!(best_guess.resolved_prompt.starts_with(CAT));
        assert!(best_guess.resolved_prompt.contains("another one"));
    }

    #[test]
    fn politeness_alone_repeats_the_previous_picture() {
        let decision = analyze("ok, now", Some(CAT), true);
        assert!(!decision.is_sure());
        assert_eq!(decision.intent().resolved_prompt, CAT);
    }

    #[test]
    fn strengths_follow_the_edit_type() {
        for kind in EditType::ALL {
            assert!((0.0..=1.0).contains(&kind.strength()), "{kind:?}");
        }
        assert_eq!(EditType::Color.strength(), 0.45);
        assert_eq!(EditType::Lighting.strength(), 0.45);
        assert_eq!(EditType::Time.strength(), 0.55);
        assert_eq!(EditType::Weather.strength(), 0.55);
        assert_eq!(EditType::Add.strength(), 0.6);
        assert_eq!(EditType::Remove.strength(), 0.6);
        assert_eq!(EditType::Background.strength(), 0.65);
        assert_eq!(EditType::Style.strength(), 0.75);
        assert_eq!(EditType::Other.strength(), 0.6);
    }

    #[test]
    fn wire_names_are_lowercase() {
        let names: Vec<&str> = EditType::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(
            names,
            [
                "none",
                "lighting",
                "color",
                "add",
                "remove",
                "style",
                "weather",
                "time",
                "background",
                "pose",
                "other"
            ]
        );
        assert_eq!(IntentKind::New.as_str(), "new");
        assert_eq!(IntentKind::Edit.as_str(), "edit");
    }

    #[test]
    fn an_empty_prompt_is_not_an_edit() {
        assert_eq!(observed(&analyze("   ", Some(CAT), true)), New);
        assert_eq!(observed(&analyze("?!", Some(CAT), true)), New);
    }
}
