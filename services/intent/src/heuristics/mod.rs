//! The heuristic fast path of AnalyzeIntent: NEW picture or EDIT of the last one, decided
//! from the words of the prompt alone.
//!
//! Why it exists: most prompts are plainly one or the other ("a red fox in the snow",
//! "make it night"), and answering those with string rules is free and instant. Only the
//! prompts these rules cannot settle cost an LLM call, and when the LLM is missing or
//! failing, the best guess returned with them is what the pipeline uses.
//!
//! Before the rules, `corrections.rs` reads the prompt as one gesture: a re-roll ("another
//! one", or verb, what and tail: "give me a different version", "try that again"), a
//! rejection ("no, forget that, …"; after one that keeps the picture, a bare subject is
//! the one meant: "actually a zebra" swaps the subject), or a correction ("not a dog, a
//! cat"). The rules, in the order [`analyze`] applies them:
//!
//! 1. **No context, sure NEW.** Without a previous prompt, or without a previous image to
//!    start an img2img edit from, there is nothing to edit.
//! 2. **A clear edit, sure EDIT.** The prompt (after politeness and continuation words such
//!    as "please", "can you", "now", "also", "but") opens with an edit form: an imperative
//!    edit verb aimed at the picture ("make it …", "make the …", "turn it into …", "change
//!    the … to …", "add …", "remove …", "lose …", "get rid of …", "replace … with …",
//!    "put …", "place it …", "brighten …", "no …"), the picture wanted a way ("i want it
//!    in purple", "show it at night"), a comparison ("more …", "less …", "darker", "a bit
//!    warmer", "bigger eyes"; not "darker forest at night with wolves", which names a new
//!    scene), "without …", "in the style of …", "same but …", "keep … but …", or a
//!    preposition right after a continuation word ("but with a hat", "now in watercolor").
//!    Several edits joined by "and" or commas are all applied. A thing named before a
//!    closing "instead" replaces the subject ("make it a cat instead").
//! 3. **A bare modifier, sure EDIT.** A fragment of at most five words with no subject of
//!    its own, made only of edit keywords and small words ("at night", "in the rain",
//!    "black and white", "watercolor", "blue background"), can only modify the last
//!    picture.
//! 4. **Moving on, sure NEW.** After "now" or "then" (not "and", "also") or "what about",
//!    a whole scene of its own (an introduced subject and another content word, none of
//!    them in the previous prompt, nothing pointing back) is the next picture, resolved
//!    without the opener: "now a portrait of a samurai in the rain". "now a cat" stays
//!    ambiguous (rule 8).
//! 5. **An explicit request, sure NEW.** "draw a …", "generate an image of …", "make me a …"
//!    ask for a new picture unless they also point back ("draw it again").
//! 6. **A long new scene, NEW.** More than 12 words with no back-reference near the start
//!    describe a whole scene: a stray edit word inside ("with more stars") does not make
//!    it an edit. A strong back-reference later in it ("same style as the previous one")
//!    makes it ambiguous, with NEW as the guess.
//! 7. **No edit or reference word, sure NEW.** Words that hint at an edit are imperative
//!    edit verbs, comparisons and adjustments ("more", "darker", "should"), and references
//!    to the earlier picture: "same", "again", "another", "instead", "like that", "what
//!    about"; a pronoun before the prompt has a subject of its own ("it should be
//!    bigger"), a trailing "this", "it"; "the <noun>" naming something from the previous
//!    prompt; a prompt that opens with a continuation word or a preposition ("now a cat",
//!    "in a park").
//! 8. **Everything else is ambiguous.** The best guess is NEW when the prompt reads like
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

mod corrections;
mod foreign;
pub mod lexicon;
mod resolve;
mod rules;
pub mod typo;

/// What the heuristics concluded about one prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The rules are sure: no LLM call is needed.
    Sure(Intent),
    /// Only an LLM can tell; `best_guess` is what to use when it is unavailable.
    Ambiguous { best_guess: Intent, why: Unsure },
}

/// Why the heuristics are not sure: every such prompt goes to the LLM when one is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsure {
    /// The prompt points back at the earlier picture without a clear edit form.
    Reference,
    /// A language, or words of one, the lexicons cover only in part.
    Language,
    /// Read as an edit only after a typo in an edit word was corrected.
    Typo,
}

impl Unsure {
    /// The label in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unsure::Reference => "reference",
            Unsure::Language => "language",
            Unsure::Typo => "typo",
        }
    }
}

impl Decision {
    /// The sure answer or the best guess.
    pub fn intent(&self) -> &Intent {
        match self {
            Decision::Sure(intent)
            | Decision::Ambiguous {
                best_guess: intent, ..
            } => intent,
        }
    }

    pub fn into_intent(self) -> Intent {
        match self {
            Decision::Sure(intent)
            | Decision::Ambiguous {
                best_guess: intent, ..
            } => intent,
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

    /// Another picture of the previous prompt, drawn from scratch with a new seed.
    fn reroll(previous_prompt: &str) -> Self {
        Self {
            kind: IntentKind::Reroll,
            resolved_prompt: previous_prompt.trim().to_owned(),
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
            resolved_prompt: resolve::apply(previous_prompt, &phrases),
            edit_type,
            strength: edit_type.strength(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntentKind {
    New,
    Edit,
    /// Another picture of the previous prompt, unchanged, with a new seed: a new picture
    /// on the wire (txt2img), with edit type "reroll".
    Reroll,
}

impl IntentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentKind::New => "new",
            IntentKind::Edit => "edit",
            IntentKind::Reroll => "reroll",
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

/// Decides NEW, EDIT or REROLL for `prompt`, given the conversation's previous prompt and
/// whether that message has an image an edit could start from. See the module doc.
pub fn analyze(prompt: &str, previous_prompt: Option<&str>, has_previous_image: bool) -> Decision {
    let previous = previous_prompt
        .map(str::trim)
        .filter(|p| !p.is_empty() && has_previous_image);
    let Some(previous) = previous else {
        return Decision::Sure(Intent::new_picture(prompt));
    };
    if !prompt.chars().any(char::is_alphanumeric) {
        return Decision::Sure(Intent::new_picture(prompt));
    }
    match lexicon::detect(prompt) {
        Some(language) => foreign::analyze(language, prompt, previous),
        None => english(prompt, previous, true),
    }
}

/// The English path: re-rolls, rejections and corrections first, then the rules, then a
/// second reading with typos of edit words corrected.
fn english(prompt: &str, previous: &str, typos: bool) -> Decision {
    if corrections::is_reroll(prompt) {
        return Decision::Sure(Intent::reroll(previous));
    }
    if let Some(rejection) = corrections::strip_rejection(prompt) {
        let rest = rejection.rest.trim();
        if rest.is_empty() {
            return Decision::Ambiguous {
                best_guess: Intent::reroll(previous),
                why: Unsure::Reference,
            };
        }
        if let Some(change) = corrections::correction(rest) {
            return Decision::Sure(Intent::edit(previous, &[(change, EditType::Other)]));
        }
        // "actually a zebra": the subject meant, unless the picture was thrown away.
        if !rejection.discards
            && let Some(change) = corrections::meant_subject(rest)
        {
            return Decision::Sure(Intent::edit(previous, &[(change, EditType::Other)]));
        }
        let decision = rules::english(rest, Some(previous), true);
        return match decision {
            Decision::Sure(intent) if intent.kind == IntentKind::Edit => Decision::Sure(intent),
            // What follows "no, forget that" or "no, draw …" is the picture wanted instead.
            _ if rejection.discards || corrections::is_request(rest) => {
                Decision::Sure(Intent::new_picture(rest))
            }
            other => match other.into_intent() {
                intent if intent.kind == IntentKind::New => {
                    Decision::Sure(Intent::new_picture(rest))
                }
                intent => Decision::Ambiguous {
                    best_guess: intent,
                    why: Unsure::Reference,
                },
            },
        };
    }
    if let Some(change) = corrections::correction(prompt) {
        return Decision::Sure(Intent::edit(previous, &[(change, EditType::Other)]));
    }
    let decision = rules::english(prompt, Some(previous), true);
    if typos && (decision.intent().kind == IntentKind::New || !decision.is_sure()) {
        let corrected = typo::correct(prompt);
        if corrected != prompt {
            let second = english(&corrected, previous, false).into_intent();
            if second.kind != IntentKind::New && second != *decision.intent() {
                return Decision::Ambiguous {
                    best_guess: second,
                    why: Unsure::Typo,
                };
            }
        }
    }
    decision
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
        Reroll,
    }
    use Expected::{Ambiguous, Edit, New, Reroll};

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
        ("place it in a kitchen", Some(CAT), true, Edit(EditType::Other)),
        ("move her to a beach", Some(WOMAN), true, Edit(EditType::Other)),
        ("lose the cars", Some(STREET), true, Edit(EditType::Remove)),
        ("ditch the sofa please", Some(CAT), true, Edit(EditType::Remove)),
        ("i want it in purple", Some(CAT), true, Edit(EditType::Color)),
        ("show it at night please", Some(STREET), true, Edit(EditType::Time)),
        ("i'd like it to look like a watercolor", Some(CAT), true, Edit(EditType::Style)),
        ("make it a dog instead", Some(CAT), true, Edit(EditType::Other)),
        ("actually a dog", Some(CAT), true, Edit(EditType::Other)),
        // Moving on to a whole scene of its own after "now", "then", "what about".
        ("now a portrait of a samurai in the rain", Some(CAT), true, New),
        ("what about a tiger in the jungle", Some(CAT), true, New),
        ("then two owls on a branch", Some(CAT), true, New),
        ("try another one", Some(CAT), true, Reroll),
        ("give me a different version", Some(CAT), true, Reroll),
        // Pointing back without a clear edit: the LLM decides.
        ("a dog like that one but in a park", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("what about a cat?", Some(STREET), true, Ambiguous(IntentKind::Edit)),
        ("another one", Some(CAT), true, Reroll),
        ("one more", Some(CAT), true, Reroll),
        ("try again with more detail", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("it should be a lot bigger", Some(LIGHTHOUSE), true, Ambiguous(IntentKind::Edit)),
        ("the cat should be orange", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("the cat wearing a tiny crown", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("in a park", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("now a cat", Some(STREET), true, Ambiguous(IntentKind::Edit)),
        ("now a dog on the sofa", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("and a dog in the garden", Some(CAT), true, Ambiguous(IntentKind::Edit)),
        ("a dog instead", Some(CAT), true, Edit(EditType::Other)),
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
            Decision::Sure(intent) if intent.kind == IntentKind::Reroll => Reroll,
            Decision::Sure(intent) => Edit(intent.edit_type),
            Decision::Ambiguous { best_guess, .. } => Ambiguous(best_guess.kind),
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
                intent.kind != IntentKind::Edit,
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
            ("remove the cars", STREET, "a city street"),
            ("get rid of the sofa", CAT, "a cat sitting"),
            (
                "without the people",
                STREET,
                "a city street with cars, without the people",
            ),
            (
                "change the background to a beach",
                CAT,
                "a cat sitting on a sofa, a beach in the background",
            ),
            ("replace the cat with a dog", CAT, "a dog sitting on a sofa"),
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
            ("lose the sofa", CAT, "a cat sitting"),
            ("make it a dog instead", CAT, "a dog sitting on a sofa"),
            ("actually a dog", CAT, "a dog sitting on a sofa"),
            (
                "place it in a kitchen",
                CAT,
                "a cat sitting on a sofa, in a kitchen",
            ),
            ("i want it in blue", "a red car", "a blue car"),
            (
                "make it a painting instead",
                CAT,
                "a cat sitting on a sofa, a painting",
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
        let Decision::Ambiguous { best_guess, .. } =
            analyze("try again with more detail", Some(CAT), true)
        else {
            panic!("expected ambiguous");
        };
        assert_eq!(best_guess.kind, IntentKind::Edit);
        assert!(best_guess.resolved_prompt.starts_with(CAT));
        assert!(best_guess.resolved_prompt.contains("more detail"));
    }

    #[test]
    fn a_new_scene_after_now_drops_the_opener() {
        let intent = analyze("now a portrait of a samurai in the rain", Some(CAT), true);
        assert_eq!(
            intent.into_intent().resolved_prompt,
            "a portrait of a samurai in the rain"
        );
        let intent = analyze("what about a tiger in the jungle?", Some(CAT), true);
        assert_eq!(
            intent.into_intent().resolved_prompt,
            "a tiger in the jungle"
        );
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
