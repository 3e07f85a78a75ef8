//! What an edit or a re-roll takes from the message it follows.
//!
//! "Make it night-time", sent without settings after an `sdxl` picture, must look like
//! that picture: the same model at the same size, the same style and negative prompt and,
//! for an edit, the same seed (img2img then starts from the same noise). The request's own
//! settings always win; only those it left unset are taken. Whether a message is an edit
//! is known only once the pipeline has resolved its intent, so the fast path records which
//! settings were unset (`messages.unset_settings`), GetGenerationContext tells the worker
//! what the message would inherit, and RecordIntent applies it and moves the price.

use crate::catalog::Catalog;
use crate::db::MessageRow;
use crate::db::pipeline::{MessageWithPrevious, PreviousColumns};
use crate::requests::Settings;

/// The settings a SendMessage request left unset (empty or absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unset {
    pub model: bool,
    /// Width and height together: half a size is not inherited.
    pub size: bool,
    pub style_preset: bool,
    pub negative_prompt: bool,
    pub seed: bool,
}

impl Unset {
    const MODEL: &str = "model";
    const SIZE: &str = "size";
    const STYLE_PRESET: &str = "style_preset";
    const NEGATIVE_PROMPT: &str = "negative_prompt";
    const SEED: &str = "seed";

    /// As stored in `messages.unset_settings`.
    pub fn to_column(self) -> Vec<&'static str> {
        [
            (self.model, Self::MODEL),
            (self.size, Self::SIZE),
            (self.style_preset, Self::STYLE_PRESET),
            (self.negative_prompt, Self::NEGATIVE_PROMPT),
            (self.seed, Self::SEED),
        ]
        .into_iter()
        .filter_map(|(unset, name)| unset.then_some(name))
        .collect()
    }

    /// As a row holds it ([`crate::db::MessageRow::unset_settings`]).
    pub fn to_row(self) -> Vec<String> {
        self.to_column().into_iter().map(String::from).collect()
    }

    pub fn from_column(names: &[String]) -> Self {
        let has = |name: &str| names.iter().any(|stored| stored == name);
        Self {
            model: has(Self::MODEL),
            size: has(Self::SIZE),
            style_preset: has(Self::STYLE_PRESET),
            negative_prompt: has(Self::NEGATIVE_PROMPT),
            seed: has(Self::SEED),
        }
    }
}

/// The previous message as it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Previous<'a> {
    pub model: &'a str,
    pub width: u32,
    pub height: u32,
    pub style_preset: &'a str,
    pub negative_prompt: &'a str,
    /// The seed of its image an edit starts from; `None` when it has no completed image.
    pub seed: Option<u64>,
}

/// How the message follows the previous one (its resolved intent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// An edit of the previous image: everything unset is taken, the seed too.
    Edit,
    /// Another picture of the previous prompt: the same settings, a new seed.
    Reroll,
}

/// The settings `own` takes when it follows `previous`, priced; `None` when nothing would
/// change. A previous model no longer in the catalog is not taken, nor a previous size the
/// chosen model refuses (the chosen model's default size is used), nor a previous model
/// that refuses the size the request set.
pub fn inherit(
    own: &Settings,
    unset: Unset,
    previous: &Previous<'_>,
    follow: Follow,
    catalog: &Catalog,
) -> Option<Settings> {
    let own_model = catalog.model(&own.model)?;
    let previous_model = catalog
        .model(previous.model)
        .filter(|_| unset.model)
        .filter(|model| unset.size || model.accepts_size(own.width, own.height));
    let model = previous_model.unwrap_or(own_model);
    let (width, height) = if !unset.size {
        (own.width, own.height)
    } else if model.accepts_size(previous.width, previous.height) {
        (previous.width, previous.height)
    } else {
        (model.default_width, model.default_height)
    };
    let pick =
        |unset: bool, own: &str, previous: &str| if unset { previous } else { own }.to_owned();
    let next = Settings {
        model: model.name.clone(),
        width,
        height,
        image_count: own.image_count,
        style_preset: pick(unset.style_preset, &own.style_preset, previous.style_preset),
        seed: match (follow, unset.seed, previous.seed) {
            (Follow::Edit, true, Some(seed)) => Some(seed),
            _ => own.seed,
        },
        negative_prompt: pick(
            unset.negative_prompt,
            &own.negative_prompt,
            previous.negative_prompt,
        ),
        price_per_image: model.price_per_image_of(width, height),
        unset,
    };
    let same = Settings {
        price_per_image: own.price_per_image,
        ..next.clone()
    } == *own;
    (!same).then_some(next)
}

/// What the stored message would take if it follows its previous message as `follow`
/// says; `None` for a first message or when nothing would change.
pub fn of_stored(
    found: &MessageWithPrevious,
    follow: Follow,
    catalog: &Catalog,
) -> Option<Settings> {
    let own = stored_settings(&found.message);
    let previous = stored_previous(&found.previous)?;
    inherit(&own, own.unset, &previous, follow, catalog)
}

/// A stored message's settings, as SendMessage resolved them (or as inherited since).
pub fn stored_settings(row: &MessageRow) -> Settings {
    let image_count = u32::try_from(row.image_count).unwrap_or(1).max(1);
    Settings {
        model: row.model.clone(),
        width: u32::try_from(row.width).unwrap_or(0),
        height: u32::try_from(row.height).unwrap_or(0),
        image_count,
        style_preset: row.style_preset.clone(),
        seed: row.seed.and_then(|seed| u64::try_from(seed).ok()),
        negative_prompt: row.negative_prompt.clone(),
        price_per_image: row.cost / i64::from(image_count),
        unset: Unset::from_column(&row.unset_settings),
    }
}

fn stored_previous(columns: &PreviousColumns) -> Option<Previous<'_>> {
    Some(Previous {
        model: columns.previous_model.as_deref()?,
        width: u32::try_from(columns.previous_width?).ok()?,
        height: u32::try_from(columns.previous_height?).ok()?,
        style_preset: columns.previous_style_preset.as_deref()?,
        negative_prompt: columns.previous_negative_prompt.as_deref()?,
        seed: columns
            .previous_seed
            .and_then(|seed| u64::try_from(seed).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_UNSET: Unset = Unset {
        model: true,
        size: true,
        style_preset: true,
        negative_prompt: true,
        seed: true,
    };

    /// A message sent with no settings at all, as the fast path stores it.
    fn unset_message() -> Settings {
        Settings {
            model: "builtin".into(),
            width: 512,
            height: 512,
            image_count: 2,
            style_preset: String::new(),
            seed: None,
            negative_prompt: String::new(),
            price_per_image: 2,
            unset: ALL_UNSET,
        }
    }

    fn sdxl_picture() -> Previous<'static> {
        Previous {
            model: "sdxl",
            width: 1024,
            height: 768,
            style_preset: "cinematic",
            negative_prompt: "text, watermark",
            seed: Some(4_000_000_000),
        }
    }

    #[test]
    fn an_edit_without_settings_takes_every_setting_and_the_seed() {
        let next = inherit(
            &unset_message(),
            ALL_UNSET,
            &sdxl_picture(),
            Follow::Edit,
            &Catalog::embedded(),
        )
        .expect("changes");
        assert_eq!(next.model, "sdxl");
        assert_eq!((next.width, next.height), (1024, 768));
        assert_eq!(next.style_preset, "cinematic");
        assert_eq!(next.negative_prompt, "text, watermark");
        assert_eq!(next.seed, Some(4_000_000_000));
        assert_eq!(next.image_count, 2, "the count is the request's own");
        // sdxl: 4 per image + 4 per started megapixel (0.79 MP).
        assert_eq!(next.price_per_image, 8);
    }

    #[test]
    fn a_reroll_takes_the_settings_but_not_the_seed() {
        let next = inherit(
            &unset_message(),
            ALL_UNSET,
            &sdxl_picture(),
            Follow::Reroll,
            &Catalog::embedded(),
        )
        .expect("changes");
        assert_eq!(next.model, "sdxl");
        assert_eq!(next.seed, None);
    }

    #[test]
    fn settings_the_request_set_are_kept() {
        let own = Settings {
            style_preset: "anime".into(),
            seed: Some(7),
            unset: Unset {
                style_preset: false,
                seed: false,
                ..ALL_UNSET
            },
            ..unset_message()
        };
        let next = inherit(
            &own,
            own.unset,
            &sdxl_picture(),
            Follow::Edit,
            &Catalog::embedded(),
        )
        .expect("changes");
        assert_eq!(next.style_preset, "anime");
        assert_eq!(next.seed, Some(7));
        assert_eq!(next.model, "sdxl");
    }

    #[test]
    fn a_size_the_chosen_model_refuses_falls_back_to_its_default() {
        // The request named gpt-image-1 and no size; the previous 1024x768 is not one of
        // gpt-image-1's sizes.
        let catalog = Catalog::embedded();
        let own = Settings {
            model: "gpt-image-1".into(),
            width: 1024,
            height: 1024,
            price_per_image: 18,
            unset: Unset {
                model: false,
                ..ALL_UNSET
            },
            ..unset_message()
        };
        let next = inherit(&own, own.unset, &sdxl_picture(), Follow::Edit, &catalog)
            .expect("style and seed change");
        assert_eq!(next.model, "gpt-image-1");
        assert_eq!((next.width, next.height), (1024, 1024));
    }

    #[test]
    fn a_previous_model_that_refuses_the_requested_size_is_not_taken() {
        let own = Settings {
            width: 256,
            height: 256,
            unset: Unset {
                size: false,
                ..ALL_UNSET
            },
            ..unset_message()
        };
        let next = inherit(
            &own,
            own.unset,
            &sdxl_picture(),
            Follow::Edit,
            &Catalog::embedded(),
        )
        .expect("style and seed change");
        assert_eq!(next.model, "builtin", "sdxl takes 512 to 1536 pixels");
        assert_eq!((next.width, next.height), (256, 256));
    }

    #[test]
    fn a_previous_model_gone_from_the_catalog_is_not_taken() {
        let previous = Previous {
            model: "retired",
            ..sdxl_picture()
        };
        let next = inherit(
            &unset_message(),
            ALL_UNSET,
            &previous,
            Follow::Edit,
            &Catalog::embedded(),
        )
        .expect("size, style and seed change");
        assert_eq!(next.model, "builtin");
        assert_eq!((next.width, next.height), (1024, 768));
        assert_eq!(next.price_per_image, 2);
    }

    #[test]
    fn once_taken_nothing_changes_again() {
        let catalog = Catalog::embedded();
        let next = inherit(
            &unset_message(),
            ALL_UNSET,
            &sdxl_picture(),
            Follow::Edit,
            &catalog,
        )
        .expect("changes");
        assert_eq!(
            inherit(&next, ALL_UNSET, &sdxl_picture(), Follow::Edit, &catalog),
            None
        );
    }

    #[test]
    fn a_request_that_set_everything_inherits_nothing() {
        let own = Settings {
            unset: Unset::default(),
            ..unset_message()
        };
        assert_eq!(
            inherit(
                &own,
                own.unset,
                &sdxl_picture(),
                Follow::Edit,
                &Catalog::embedded()
            ),
            None
        );
    }

    #[test]
    fn the_column_round_trips() {
        for unset in [
            ALL_UNSET,
            Unset::default(),
            Unset {
                size: false,
                seed: false,
                ..ALL_UNSET
            },
        ] {
            assert_eq!(Unset::from_column(&unset.to_row()), unset);
        }
    }
}
