//! English word lists of the heuristics. All lowercase; entries with spaces are phrases
//! matched word by word.

/// Politeness, stripped from the start without meaning anything.
pub const POLITE: &[&str] = &[
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
pub const CONTINUATIONS: &[&str] = &[
    "now", "also", "and", "then", "but", "instead", "just", "only", "plus",
];

/// Words dropped from the end of an edit phrase.
pub const TRAILING: &[&str] = &["please", "pls", "instead", "too", "now", "again", "thanks"];

/// What "make", "turn", "put", "give" aim at when they aim at the picture itself.
pub const OBJECTS: &[&str] = &[
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
pub const DEFINITES: &[&str] = &["the", "its", "his", "their", "every"];

/// Skipped after "make it": "make it look like a painting" → "a painting".
pub const LOOK_WORDS: &[&str] = &[
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
pub const SAME_NOUNS: &[&str] = &[
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
pub const PREPOSITIONS: &[&str] = &[
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

/// Verbs that want the picture a certain way, before an object: "i want it in purple",
/// "show it at night".
pub const WANT_VERBS: &[&str] = &[
    "i want",
    "i'd like",
    "id like",
    "i would like",
    "i wanna",
    "i need",
    "show",
    "show me",
    "let me see",
];

/// Verbs that move the subject somewhere, before an object: "place it in a kitchen".
pub const PLACE_VERBS: &[&str] = &["put", "place", "set", "move", "position", "relocate"];

/// Continuation words that move on to the next picture rather than add to the last one:
/// "now a portrait of a samurai" (not "and", "also", "plus", "but").
pub const SEQUENCE_WORDS: &[&str] = &["now", "then"];

/// Suggestions that open a follow-up: "what about a tiger in the jungle".
pub const SUGGESTIONS: &[&str] = &["what about", "how about", "what if"];

/// Prepositions that open an edit right after a continuation word ("but with a hat").
pub const EDIT_PREPOSITIONS: &[&str] = &[
    "with", "without", "in", "at", "as", "during", "under", "on", "inside", "into",
];

/// Comparisons that adjust the last picture ("darker", "a bit warmer").
pub const COMPARATIVES: &[&str] = &[
    "brighter", "darker", "lighter", "dimmer", "warmer", "cooler", "colder", "hotter", "bigger",
    "smaller", "larger", "sharper", "softer", "happier", "sadder", "older", "younger", "closer",
    "farther", "further", "wider", "narrower", "taller", "shorter", "thinner", "moodier",
    "creepier", "scarier", "cuter", "calmer", "busier", "emptier", "simpler", "cleaner", "richer",
    "stronger", "weaker", "higher", "lower", "longer", "greener", "bluer", "redder", "foggier",
    "rainier", "snowier", "sunnier", "cloudier", "stormier", "clearer", "bolder", "deeper",
    "paler",
];

/// Degree words that may precede a comparison ("slightly darker", "a bit more red").
pub const DEGREES: &[&str] = &[
    "a bit", "a little", "a lot", "slightly", "somewhat", "much", "even", "way", "far",
];

/// Words that hint at an edit wherever they appear (with the comparatives).
pub const EDIT_HINTS: &[&str] = &[
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
pub const STRONG_REFERENCES: &[&str] = &[
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
pub const REFERENCES_AT_END: &[&str] = &["before", "earlier", "it", "them", "him", "her"];

pub const PRONOUNS: &[&str] = &[
    "it", "its", "it's", "they", "them", "their", "theirs", "he", "him", "his", "she", "her",
    "hers", "this", "that", "these", "those",
];

/// After "that", these make it a relative pronoun ("a cat that is sleeping").
pub const RELATIVE_FOLLOWERS: &[&str] = &[
    "is", "was", "are", "were", "has", "have", "had", "can", "could", "will", "would", "looks",
    "seems",
];

/// Words that introduce a new subject ("a fox", "two cats").
pub const INTRODUCERS: &[&str] = &[
    "a", "an", "some", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "several", "many", "few", "lots",
];

/// Verbs that ask for a new picture when an indefinite subject follows.
pub const REQUEST_VERBS: &[&str] = &[
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
pub const STOPWORDS: &[&str] = &[
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
pub const MODIFIER_WORDS: &[&str] = &[
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

pub const BACKGROUND_WORDS: &[&str] = &[
    "background",
    "backgrounds",
    "backdrop",
    "scenery",
    "surroundings",
];

/// Verbs that take something out of the picture ("remove the car", "lose the laptop").
pub const REMOVE_VERBS: &[&str] = &[
    "remove",
    "delete",
    "erase",
    "get rid of",
    "take out",
    "take away",
    "take off",
    "lose",
    "ditch",
    "eliminate",
    "scrap",
    "cut out",
    "leave out",
];

pub const ADD_WORDS: &[&str] = &[
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

pub const STYLE_WORDS: &[&str] = &[
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

pub const WEATHER_WORDS: &[&str] = &[
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

pub const TIME_WORDS: &[&str] = &[
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

/// Colours by name: the ones that replace one another as an adjective ("a red car" made
/// blue is "a blue car").
pub const COLOR_NAMES: &[&str] = &[
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
];

/// Words about colour that are not a colour's name.
pub const COLOR_WORDS: &[&str] = &[
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

pub const LIGHTING_WORDS: &[&str] = &[
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

pub const POSE_WORDS: &[&str] = &[
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

/// Whole prompts (politeness aside) that ask for one more of the same picture.
pub const REROLLS: &[&str] = &[
    "another",
    "another one",
    "another please",
    "another version",
    "another variation",
    "another take",
    "another try",
    "one more",
    "one more time",
    "once more",
    "more",
    "more of these",
    "more like this",
    "more like that",
    "again",
    "same again",
    "same again please",
    "do it again",
    "try again",
    "try another",
    "one more try",
    "redo",
    "redo it",
    "retry",
    "reroll",
    "re roll",
    "regenerate",
    "regenerate it",
    "next",
    "next one",
    "give me another",
    "give me another one",
    "show me another",
    "show me another one",
    "make another",
    "make another one",
    "draw another",
    "draw another one",
    "draw it again",
    "generate another",
    "generate another one",
    "generate again",
    "same prompt again",
    "same thing again",
    "same one again",
    "another roll",
    "roll again",
    "new seed",
    "different seed",
];

/// What a re-roll may ask for, after one of [`REROLL_VERBS`] or alone: "give me a
/// different version", "try another one". Longer phrases first.
pub const REROLL_OBJECTS: &[&str] = &[
    "another version",
    "another variation",
    "another take",
    "another try",
    "another image",
    "another picture",
    "another one",
    "another",
    "one more",
    "a different version",
    "a different variation",
    "a different take",
    "a different one",
    "a new version",
    "a new variation",
    "a new one",
    "a variation",
    "some variations",
    "more variations",
    "a few more",
    "some more",
    "more",
];

/// Verbs that may open a re-roll: "try another one", "give me a different version",
/// "try that again".
pub const REROLL_VERBS: &[&str] = &[
    "give me",
    "show me",
    "get me",
    "let me see",
    "i want",
    "i'd like",
    "try",
    "do",
    "make",
    "draw",
    "generate",
    "create",
    "render",
];

/// Words that may close a re-roll: "another one like that", "do it again".
pub const REROLL_TAILS: &[&str] = &[
    "again",
    "like that",
    "like this",
    "of that",
    "of this",
    "of it",
    "for me",
];

/// Rejections of the last picture at the start of a prompt, and whether each throws the
/// picture away (so what follows is a new one).
pub const REJECTIONS: &[(&str, bool)] = &[
    ("forget that", true),
    ("forget it", true),
    ("forget this", true),
    ("forget about it", true),
    ("never mind", true),
    ("nevermind", true),
    ("scratch that", true),
    ("start over", true),
    ("let's start over", true),
    ("something else", true),
    ("something different", true),
    ("i don't like it", false),
    ("i don't like that", false),
    ("that's wrong", false),
    ("that's not it", false),
    ("not what i wanted", false),
    ("not what i meant", false),
    ("that's not what i wanted", false),
    ("that's not what i meant", false),
    ("actually", false),
];
