//! The deterministic enhancement: what EnhancePrompt answers when no LLM is configured or
//! the LLM fails.
//!
//! It never rewrites the user's words. The prompt comes first, intact (only trimmed), and
//! the style preset's terms follow; a short prompt (under [`SHORT_PROMPT_WORDS`] words)
//! also gets a few generic quality terms, because the image model has little else to go
//! on, while a long prompt already says what it wants. A term the prompt already contains
//! (as whole words, case-insensitively) is not added again. The negative prompt is the
//! user's, intact, followed by the preset's negative terms it does not contain yet. An
//! unknown or empty preset adds no style terms. The same input always gives the same
//! output, so the fallback is safe to cache.

/// The style presets: (name, terms appended to the prompt, terms appended to the negative
/// prompt), each list comma-separated. The names must be exactly
/// `atelier_proto::STYLE_PRESETS`; a test in `enhance` checks the two lists against each
/// other.
pub const STYLES: &[(&str, &str, &str)] = &[
    (
        "photographic",
        "photograph, realistic, natural lighting, sharp focus",
        "illustration, painting, drawing, cartoon, anime, 3d render",
    ),
    (
        "digital-art",
        "digital art, digital painting, vibrant colors",
        "photograph, photorealistic",
    ),
    (
        "anime",
        "anime style, cel shading, clean lines, vibrant colors",
        "photograph, realistic, 3d render",
    ),
    (
        "cinematic",
        "cinematic, film still, dramatic lighting, shallow depth of field",
        "cartoon, illustration, flat lighting",
    ),
    (
        "watercolor",
        "watercolor painting, soft washes, paper texture",
        "photograph, 3d render, harsh lines",
    ),
    (
        "line-art",
        "line art, clean ink lines, black and white, minimal shading",
        "color, gradients, photograph, blurry",
    ),
    (
        "pixel-art",
        "pixel art, 8-bit, limited palette, crisp pixels",
        "blurry, smooth gradients, anti-aliasing, photograph",
    ),
];

/// Generic terms for a prompt too short to say much on its own.
pub const QUALITY_TERMS: &[&str] = &["high quality", "highly detailed"];

/// Prompts with fewer words than this get [`QUALITY_TERMS`].
pub const SHORT_PROMPT_WORDS: usize = 8;

/// An enhanced prompt and the negative prompt to send with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enhanced {
    pub prompt: String,
    pub negative_prompt: String,
}

/// Enhances `prompt` with the style preset's terms (and generic quality terms when it is
/// short) and extends `negative_prompt` with the preset's negative terms.
pub fn enhance(prompt: &str, style_preset: &str, negative_prompt: &str) -> Enhanced {
    let style = style(style_preset);
    let prompt = prompt.trim();

    let mut additions: Vec<&str> = Vec::new();
    if !prompt.is_empty() {
        if let Some((_, positive, _)) = style {
            additions.extend(terms(positive));
        }
        if prompt.split_whitespace().count() < SHORT_PROMPT_WORDS {
            additions.extend(QUALITY_TERMS.iter().copied());
        }
    }
    let negatives = style.map(|(_, _, negative)| terms(negative).collect::<Vec<_>>());

    Enhanced {
        prompt: append_new_terms(prompt, &additions),
        negative_prompt: append_new_terms(negative_prompt.trim(), &negatives.unwrap_or_default()),
    }
}

/// The preset named `name` (trimmed, ASCII case ignored), if it exists.
pub fn style(name: &str) -> Option<&'static (&'static str, &'static str, &'static str)> {
    let name = name.trim();
    STYLES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
}

fn terms(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// `base`, then each term the text so far does not already contain, comma-separated.
/// `enhance` also uses it to merge the LLM's negative terms into the user's.
pub(crate) fn append_new_terms(base: &str, additions: &[&str]) -> String {
    let mut text = base.to_owned();
    let mut words = words_of(&text);
    for term in additions {
        let term_words = words_of(term);
        if term_words.is_empty() || contains_run(&words, &term_words) {
            continue;
        }
        // The user's own trailing separator would double the comma.
        let kept = text.trim_end_matches(|c: char| c == ',' || c == ';' || c.is_whitespace());
        text.truncate(kept.len());
        if !text.is_empty() {
            text.push_str(", ");
        }
        text.push_str(term);
        words.extend(term_words);
    }
    text
}

/// Lowercase words, split on anything but letters and digits ("8-bit" is "8", "bit").
fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `needle` appears in `haystack` as consecutive words.
fn contains_run(haystack: &[String], needle: &[String]) -> bool {
    haystack.windows(needle.len()).any(|run| run == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The preset names must match atelier_proto::STYLE_PRESETS exactly; `enhance` checks
    // this list against the proto's.
    const PRESET_NAMES: &[&str] = &[
        "photographic",
        "digital-art",
        "anime",
        "cinematic",
        "watercolor",
        "line-art",
        "pixel-art",
    ];

    const SHORT: &str = "a red fox";
    const LONG: &str = "a red fox curled up asleep in deep snow under tall pine trees";

    fn lower(terms_list: &str) -> Vec<String> {
        terms(terms_list).map(str::to_lowercase).collect()
    }

    #[test]
    fn the_presets_are_the_proto_presets() {
        let names: Vec<&str> = STYLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, PRESET_NAMES);
    }

    #[test]
    fn each_preset_applies_its_terms() {
        for (name, positive, negative) in STYLES {
            let out = enhance(LONG, name, "");
            assert!(out.prompt.starts_with(LONG), "{name}: {out:?}");
            for term in terms(positive) {
                assert!(
                    out.prompt.contains(term),
                    "{name}: missing {term:?} in {out:?}"
                );
            }
            for term in terms(negative) {
                assert!(
                    out.negative_prompt.contains(term),
                    "{name}: missing {term:?} in {out:?}"
                );
            }
        }
    }

    #[test]
    fn a_preset_adds_exactly_its_terms_in_order() {
        let out = enhance(LONG, "watercolor", "");
        assert_eq!(
            out.prompt,
            format!("{LONG}, watercolor painting, soft washes, paper texture")
        );
        assert_eq!(out.negative_prompt, "photograph, 3d render, harsh lines");
    }

    #[test]
    fn preset_names_ignore_case_and_surrounding_space() {
        assert_eq!(enhance(LONG, " Anime ", ""), enhance(LONG, "anime", ""));
    }

    #[test]
    fn an_empty_or_unknown_preset_adds_no_style_terms() {
        for preset in ["", "  ", "baroque", "anime-ish"] {
            assert_eq!(
                enhance(LONG, preset, "text, watermark"),
                Enhanced {
                    prompt: LONG.to_owned(),
                    negative_prompt: "text, watermark".to_owned(),
                },
                "{preset:?}"
            );
            assert_eq!(
                enhance(SHORT, preset, "").prompt,
                "a red fox, high quality, highly detailed",
                "{preset:?}"
            );
        }
    }

    #[test]
    fn short_prompts_get_quality_terms_after_the_style() {
        let out = enhance(SHORT, "pixel-art", "");
        assert_eq!(
            out.prompt,
            "a red fox, pixel art, 8-bit, limited palette, crisp pixels, high quality, highly detailed"
        );
    }

    #[test]
    fn long_prompts_get_no_quality_padding() {
        // Exactly SHORT_PROMPT_WORDS words is no longer short.
        let eight = "one two three four five six seven eight";
        assert_eq!(eight.split_whitespace().count(), SHORT_PROMPT_WORDS);
        assert_eq!(enhance(eight, "", "").prompt, eight);
        let seven = "one two three four five six seven";
        assert!(enhance(seven, "", "").prompt.contains("high quality"));

        let out = enhance(LONG, "cinematic", "");
        for term in QUALITY_TERMS {
            assert!(!out.prompt.contains(term), "{out:?}");
        }
    }

    #[test]
    fn terms_already_in_the_prompt_are_not_repeated() {
        let prompt = "A WATERCOLOR PAINTING fox, Paper Texture, High-Quality";
        assert!(prompt.split_whitespace().count() < SHORT_PROMPT_WORDS);
        let out = enhance(prompt, "watercolor", "");
        assert_eq!(
            out.prompt,
            format!("{prompt}, soft washes, highly detailed")
        );
        // Whole words only: "pixelated art" does not contain "pixel art".
        let out = enhance("pixelated art of a fox", "pixel-art", "");
        assert!(out.prompt.contains(", pixel art"), "{out:?}");
    }

    #[test]
    fn no_term_appears_twice() {
        for (name, _, _) in STYLES {
            for prompt in [SHORT, LONG, "anime style fox, cel shading, vibrant colors"] {
                let out = enhance(prompt, name, "blurry, photograph");
                for text in [&out.prompt, &out.negative_prompt] {
                    let parts = lower(text);
                    let mut unique = parts.clone();
                    unique.sort();
                    unique.dedup();
                    assert_eq!(parts.len(), unique.len(), "{name}: {text:?}");
                }
            }
        }
    }

    #[test]
    fn the_users_negative_prompt_is_kept_first() {
        let out = enhance(LONG, "photographic", "  extra fingers, Cartoon , text ");
        assert_eq!(
            out.negative_prompt,
            "extra fingers, Cartoon , text, illustration, painting, drawing, anime, 3d render"
        );
        // Without a preset the user's negative prompt is returned as given, trimmed.
        assert_eq!(enhance(LONG, "", " lowres ").negative_prompt, "lowres");
    }

    #[test]
    fn trailing_separators_do_not_double_commas() {
        let out = enhance("a red fox, ", "anime", "blurry,");
        assert!(out.prompt.starts_with("a red fox, anime style"), "{out:?}");
        assert!(!out.prompt.contains(",,") && !out.prompt.contains(", ,"));
        assert_eq!(
            out.negative_prompt,
            "blurry, photograph, realistic, 3d render"
        );
    }

    #[test]
    fn the_prompt_stays_first_and_intact() {
        let prompt = "  Un Renard ROUX, dans la neige  ";
        let out = enhance(prompt, "cinematic", "");
        assert!(out.prompt.starts_with(prompt.trim()), "{out:?}");
    }

    #[test]
    fn an_empty_prompt_stays_empty() {
        let out = enhance("   ", "anime", "blurry");
        assert_eq!(out.prompt, "");
        assert_eq!(
            out.negative_prompt,
            "blurry, photograph, realistic, 3d render"
        );
    }

    #[test]
    fn the_output_is_deterministic() {
        for (name, _, _) in STYLES {
            let first = enhance(SHORT, name, "text");
            for _ in 0..3 {
                assert_eq!(enhance(SHORT, name, "text"), first);
            }
        }
    }
}
