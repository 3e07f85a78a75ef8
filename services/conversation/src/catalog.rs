//! The model catalog: which image models exist, their size limits and their prices.
//!
//! The catalog is configuration (`ATELIER_MODEL_CATALOG_FILE`, JSON; the embedded
//! `catalog.json` by default), so adding a model or changing a price is a deploy, not a
//! code change. Prices are whole credits; a message costs its image count times the price
//! of one image of its size.

use serde::Deserialize;

/// The catalog this service is built with.
const EMBEDDED_CATALOG: &str = include_str!("../catalog.json");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The model used when a request names none.
    pub default_model: String,
    pub models: Vec<ModelSpec>,
}

/// Which kind of API renders a model's images.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Builtin,
    Openai,
    Automatic1111,
    Comfyui,
}

impl Provider {
    /// The name the catalog and the generation worker use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Openai => "openai",
            Self::Automatic1111 => "automatic1111",
            Self::Comfyui => "comfyui",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub provider: Provider,
    #[serde(default)]
    pub description: String,
    /// Credits per image, whatever its size.
    pub price_per_image: i64,
    /// Credits per started megapixel of each image, on top of `price_per_image`.
    pub price_per_megapixel: i64,
    /// Smallest and largest width or height, in pixels.
    pub min_side: u32,
    pub max_side: u32,
    pub default_width: u32,
    pub default_height: u32,
    /// The only sizes the model's API takes (`"1024x1536"`), for APIs that take a list
    /// rather than a range (OpenAI's); empty means any size within the side limits.
    #[serde(default)]
    pub allowed_sizes: Vec<String>,
    /// How the generation worker renders the model, passed to it with StartGeneration.
    #[serde(default)]
    pub settings: ModelSettings,
}

/// The provider settings of a model (see `ModelSettings` in the internal conversation
/// proto for what each provider reads); every field is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    #[serde(default)]
    pub checkpoint: String,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f32>,
    #[serde(default)]
    pub sampler: String,
    #[serde(default)]
    pub scheduler: String,
    #[serde(default)]
    pub max_batch: u32,
    #[serde(default)]
    pub workflow: String,
    #[serde(default)]
    pub img2img_workflow: String,
    #[serde(default)]
    pub response_format: String,
    #[serde(default)]
    pub quality: String,
    #[serde(default)]
    pub background: String,
    /// The API takes no image: an edit is drawn from scratch.
    #[serde(default)]
    pub text_to_image_only: bool,
}

impl ModelSettings {
    pub fn to_proto(&self) -> atelier_proto::conversation::v1::ModelSettings {
        atelier_proto::conversation::v1::ModelSettings {
            checkpoint: self.checkpoint.clone(),
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            scheduler: self.scheduler.clone(),
            max_batch: self.max_batch,
            workflow: self.workflow.clone(),
            img2img_workflow: self.img2img_workflow.clone(),
            response_format: self.response_format.clone(),
            quality: self.quality.clone(),
            background: self.background.clone(),
            text_to_image_only: self.text_to_image_only,
        }
    }
}

/// Image sides must be multiples of this: every diffusion model works on 8x8 latent cells.
pub const SIDE_MULTIPLE: u32 = 8;

/// The longest model name: every message and image carries it, so it counts in the size
/// of the largest message (see `pagination`).
pub const MAX_MODEL_NAME_CHARS: usize = 64;

impl Catalog {
    /// The embedded catalog (`catalog.json` beside this crate's Cargo.toml).
    pub fn embedded() -> Self {
        Self::from_json(EMBEDDED_CATALOG).expect("the embedded catalog is valid: see its test")
    }

    /// Parses and checks a catalog.
    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let catalog: Catalog = serde_json::from_str(json)?;
        catalog.check()?;
        Ok(catalog)
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|model| model.name == name)
    }

    pub fn model_names(&self) -> Vec<&str> {
        self.models
            .iter()
            .map(|model| model.name.as_str())
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.models.is_empty(), "the catalog has no model");
        anyhow::ensure!(
            self.model(&self.default_model).is_some(),
            "default_model {:?} is not in the catalog",
            self.default_model
        );
        for (index, model) in self.models.iter().enumerate() {
            let name = &model.name;
            anyhow::ensure!(!name.is_empty(), "model #{index} has no name");
            anyhow::ensure!(
                name.chars().count() <= MAX_MODEL_NAME_CHARS,
                "model {name:?} has a name over {MAX_MODEL_NAME_CHARS} characters"
            );
            anyhow::ensure!(
                self.models[..index].iter().all(|other| &other.name != name),
                "model {name:?} appears twice"
            );
            anyhow::ensure!(
                model.price_per_image >= 0 && model.price_per_megapixel >= 0,
                "model {name:?} has a negative price"
            );
            anyhow::ensure!(
                model.price_per_image + model.price_per_megapixel > 0,
                "model {name:?} is free: every image must cost at least one credit"
            );
            anyhow::ensure!(
                SIDE_MULTIPLE <= model.min_side && model.min_side <= model.max_side,
                "model {name:?} has min_side > max_side or a side under {SIDE_MULTIPLE}"
            );
            for side in [model.default_width, model.default_height] {
                anyhow::ensure!(
                    model.accepts_side(side),
                    "model {name:?} has a default size outside its own limits"
                );
            }
            for size in &model.allowed_sizes {
                let (width, height) = parse_size(size).ok_or_else(|| {
                    anyhow::anyhow!("model {name:?} has an allowed size {size:?} that is not WxH")
                })?;
                anyhow::ensure!(
                    model.accepts_side(width) && model.accepts_side(height),
                    "model {name:?} allows {size:?}, outside its own side limits"
                );
            }
            anyhow::ensure!(
                model.accepts_size(model.default_width, model.default_height),
                "model {name:?} has a default size that is not among its allowed sizes"
            );
        }
        Ok(())
    }
}

impl ModelSpec {
    /// Whether `side` pixels is an acceptable width or height for this model.
    pub fn accepts_side(&self, side: u32) -> bool {
        (self.min_side..=self.max_side).contains(&side) && side.is_multiple_of(SIDE_MULTIPLE)
    }

    /// Whether `width` x `height` is a size this model takes: both sides within limits
    /// and, when the model lists its sizes, one of them.
    pub fn accepts_size(&self, width: u32, height: u32) -> bool {
        self.accepts_side(width)
            && self.accepts_side(height)
            && (self.allowed_sizes.is_empty()
                || self
                    .allowed_sizes
                    .iter()
                    .any(|size| parse_size(size) == Some((width, height))))
    }

    /// Credits for one image of `width` x `height`: the per-image price plus the
    /// per-megapixel price for every started megapixel.
    pub fn price_per_image_of(&self, width: u32, height: u32) -> i64 {
        let pixels = i64::from(width) * i64::from(height);
        let megapixels_started = (pixels + 999_999) / 1_000_000;
        self.price_per_image + self.price_per_megapixel * megapixels_started
    }
}

/// `"1024x1536"` as (width, height).
pub(crate) fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (width, height) = size.trim().split_once('x')?;
    Some((width.parse().ok()?, height.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_is_valid_and_has_three_priced_models() {
        let catalog = Catalog::from_json(EMBEDDED_CATALOG).expect("valid");
        assert_eq!(catalog.default_model, "builtin");
        assert_eq!(
            catalog.model_names(),
            [
                "builtin",
                "sdxl",
                "gpt-image-1",
                "dall-e-3",
                "dall-e-2",
                "comfyui-sdxl"
            ]
        );
    }

    #[test]
    fn openai_models_take_only_the_sizes_their_api_documents() {
        let catalog = Catalog::embedded();
        let takes = |model: &str, width, height| {
            catalog
                .model(model)
                .expect("in catalog")
                .accepts_size(width, height)
        };
        for (width, height) in [(1024, 1024), (1536, 1024), (1024, 1536)] {
            assert!(takes("gpt-image-1", width, height), "{width}x{height}");
        }
        for (width, height) in [(1536, 1536), (1024, 1032), (1792, 1024)] {
            assert!(!takes("gpt-image-1", width, height), "{width}x{height}");
        }
        for (width, height) in [(1024, 1024), (1792, 1024), (1024, 1792)] {
            assert!(takes("dall-e-3", width, height), "{width}x{height}");
        }
        assert!(!takes("dall-e-3", 1536, 1024));
        for side in [256, 512, 1024] {
            assert!(takes("dall-e-2", side, side), "{side}");
        }
        assert!(!takes("dall-e-2", 512, 1024));
        // Models without a list take any size within their limits.
        assert!(takes("sdxl", 832, 1216));
        // gpt-image-1 refuses response_format; dall-e takes it.
        let format = |model: &str| {
            catalog
                .model(model)
                .expect("in catalog")
                .settings
                .response_format
                .clone()
        };
        assert_eq!(format("gpt-image-1"), "");
        assert_eq!(format("dall-e-3"), "b64_json");
    }

    #[test]
    fn allowed_sizes_must_fit_the_limits_and_hold_the_default() {
        let model = |sizes: &str| {
            format!(
                r#"{{"default_model":"a","models":[{{"name":"a","provider":"openai","price_per_image":1,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":64,"default_height":64,"allowed_sizes":{sizes}}}]}}"#
            )
        };
        Catalog::from_json(&model(r#"["64x64","128x64"]"#)).expect("valid");
        for (sizes, expected) in [
            (r#"["128x128"]"#, "not among its allowed sizes"),
            (r#"["64x64","256x256"]"#, "outside its own side limits"),
            (r#"["64x64","big"]"#, "not WxH"),
        ] {
            let err = Catalog::from_json(&model(sizes))
                .expect_err(sizes)
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn prices_depend_on_model_and_size() {
        let catalog = Catalog::embedded();
        let price = |model: &str, width, height| {
            catalog
                .model(model)
                .expect("in catalog")
                .price_per_image_of(width, height)
        };
        // 0.26 MP starts one megapixel.
        assert_eq!(price("builtin", 512, 512), 2);
        // Exactly one megapixel is one started megapixel, one pixel more is two.
        assert_eq!(price("builtin", 1000, 1000), 2);
        assert_eq!(price("builtin", 1000, 1008), 3);
        // 1.05 MP: two started megapixels.
        assert_eq!(price("sdxl", 1024, 1024), 4 + 4 * 2);
        assert_eq!(price("gpt-image-1", 1024, 1024), 10 + 8 * 2);
        assert_eq!(price("gpt-image-1", 1536, 1024), 10 + 8 * 2);
        assert_eq!(price("gpt-image-1", 1536, 1536), 10 + 8 * 3);
    }

    #[test]
    fn sides_must_be_in_range_and_multiples_of_eight() {
        let catalog = Catalog::embedded();
        let sdxl = catalog.model("sdxl").expect("in catalog");
        assert!(sdxl.accepts_side(512));
        assert!(sdxl.accepts_side(1536));
        assert!(!sdxl.accepts_side(504));
        assert!(!sdxl.accepts_side(1544));
        assert!(!sdxl.accepts_side(1020));
    }

    #[test]
    fn broken_catalogs_are_refused_with_a_reason() {
        let cases = [
            (r#"{"default_model":"x","models":[]}"#, "no model"),
            (
                r#"{"default_model":"nope","models":[{"name":"a","provider":"builtin","price_per_image":1,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":64,"default_height":64}]}"#,
                "not in the catalog",
            ),
            (
                r#"{"default_model":"a","models":[{"name":"a","provider":"builtin","price_per_image":0,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":64,"default_height":64}]}"#,
                "free",
            ),
            (
                r#"{"default_model":"a","models":[{"name":"a","provider":"builtin","price_per_image":1,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":256,"default_height":64}]}"#,
                "default size",
            ),
            (
                r#"{"default_model":"a","models":[{"name":"a","provider":"dalle","price_per_image":1,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":64,"default_height":64}]}"#,
                "unknown variant",
            ),
        ];
        for (json, expected) in cases {
            let err = Catalog::from_json(json).expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let model = |name: &str| {
            format!(
                r#"{{"default_model":"{name}","models":[{{"name":"{name}","provider":"builtin","price_per_image":1,"price_per_megapixel":0,"min_side":64,"max_side":128,"default_width":64,"default_height":64}}]}}"#
            )
        };
        Catalog::from_json(&model(&"m".repeat(MAX_MODEL_NAME_CHARS))).expect("64 characters");
        let err = Catalog::from_json(&model(&"m".repeat(MAX_MODEL_NAME_CHARS + 1)))
            .expect_err("65 characters")
            .to_string();
        assert!(err.contains("over 64 characters"), "{err}");
    }
}
