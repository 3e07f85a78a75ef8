//! Protobuf requests turned into checked domain values, at the handler boundary.
//!
//! Every rule of the public API lives here, once: a request either becomes a value the rest
//! of the service can trust, or an INVALID_ARGUMENT listing every broken field by its
//! protobuf path.

use atelier_proto::STYLE_PRESETS;
use atelier_proto::v1 as proto;
use tonic_types::FieldViolation;
use uuid::Uuid;

use crate::catalog::{Catalog, ModelSpec};
use crate::error::ServiceError;
use crate::inheritance::Unset;
use crate::text;

pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_NEGATIVE_PROMPT_CHARS: usize = 2000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CLIENT_REQUEST_ID_CHARS: usize = 100;
pub const MAX_IMAGES_PER_MESSAGE: u32 = 4;
/// Providers take 32-bit seeds.
pub const MAX_SEED: u64 = u32::MAX as u64;

/// Collects field violations so a client learns every problem in one round trip.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn finish(self) -> Result<(), ServiceError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self.0))
        }
    }
}

/// A free-text field a user writes (prompt, negative prompt, title), normalised by
/// [`text::clean`]; on a violation, recorded, and an empty string returned.
fn user_text(violations: &mut Violations, field: &str, raw: &str, rules: text::Field) -> String {
    text::clean(raw, rules).unwrap_or_else(|refusal| {
        violations.add(field, refusal.to_string());
        String::new()
    })
}

/// Checks a field that is not a user's text (an idempotency key, what the pipeline
/// records): no NUL character (PostgreSQL cannot store one in text, so it would surface as
/// an internal error), and `min..=max` characters.
fn text(violations: &mut Violations, field: &str, value: &str, min: usize, max: usize) {
    let chars = value.chars().count();
    if value.contains('\0') {
        violations.add(field, "must not contain NUL characters");
    } else if chars < min {
        violations.add(field, "must not be empty");
    } else if chars > max {
        violations.add(field, format!("at most {max} characters, got {chars}"));
    }
}

/// A resource id: must be a UUID. `None` after recording a violation.
fn parse_id(violations: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        violations.add(field, "required");
        return None;
    }
    match Uuid::parse_str(value) {
        Ok(id) => Some(id),
        Err(_) => {
            violations.add(field, "must be a UUID");
            None
        }
    }
}

/// Checks a lone id field.
pub fn id(field: &str, value: &str) -> Result<Uuid, ServiceError> {
    let mut violations = Violations::default();
    let id = parse_id(&mut violations, field, value);
    violations.finish()?;
    Ok(id.expect("a parsed id when there is no violation"))
}

/// A title: normalised (one line), 1 to 200 characters.
fn title(violations: &mut Violations, field: &str, value: &str) -> String {
    user_text(violations, field, value, text::TITLE)
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewConversation {
    /// `None`: automatic title.
    pub title: Option<String>,
    pub max_generations: i32,
}

impl NewConversation {
    pub fn parse(
        request: proto::CreateConversationRequest,
        server_max_generations: u32,
    ) -> Result<Self, ServiceError> {
        let mut violations = Violations::default();
        let title = (!request.title.trim().is_empty())
            .then(|| title(&mut violations, "title", &request.title));
        let max_generations = match request.max_generations {
            None => server_max_generations,
            Some(max) if (1..=server_max_generations).contains(&max) => max,
            Some(max) => {
                violations.add(
                    "max_generations",
                    format!("must be 1 to {server_max_generations}, got {max}"),
                );
                server_max_generations
            }
        };
        violations.finish()?;
        Ok(Self {
            title,
            max_generations: i32::try_from(max_generations).unwrap_or(i32::MAX),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rename {
    pub conversation_id: Uuid,
    pub title: String,
}

impl TryFrom<proto::RenameConversationRequest> for Rename {
    type Error = ServiceError;

    fn try_from(request: proto::RenameConversationRequest) -> Result<Self, ServiceError> {
        let mut violations = Violations::default();
        let conversation_id =
            parse_id(&mut violations, "conversation_id", &request.conversation_id);
        let title = title(&mut violations, "title", &request.title);
        violations.finish()?;
        Ok(Self {
            conversation_id: conversation_id.expect("checked"),
            title,
        })
    }
}

/// Generation settings with every default filled in and the price worked out.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub image_count: u32,
    pub style_preset: String,
    pub seed: Option<u64>,
    pub negative_prompt: String,
    /// Credits for one image of this model and size.
    pub price_per_image: i64,
    /// What the request left unset: an edit or a re-roll takes it from the previous
    /// message ([`crate::inheritance`]).
    pub unset: Unset,
}

impl Settings {
    /// Credits for the whole message.
    pub fn cost(&self) -> i64 {
        self.price_per_image * i64::from(self.image_count)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    pub conversation_id: Uuid,
    /// Normalised ([`text::clean`]).
    pub prompt: String,
    pub settings: Settings,
    pub client_request_id: Option<String>,
}

impl NewMessage {
    pub fn parse(
        request: proto::SendMessageRequest,
        catalog: &Catalog,
    ) -> Result<Self, ServiceError> {
        let mut violations = Violations::default();
        let conversation_id =
            parse_id(&mut violations, "conversation_id", &request.conversation_id);

        let prompt = user_text(&mut violations, "prompt", &request.prompt, text::PROMPT);

        let client_request_id = request.client_request_id.trim();
        text(
            &mut violations,
            "client_request_id",
            client_request_id,
            0,
            MAX_CLIENT_REQUEST_ID_CHARS,
        );

        let settings = settings(
            &mut violations,
            request.settings.unwrap_or_default(),
            catalog,
        );
        violations.finish()?;
        Ok(Self {
            conversation_id: conversation_id.expect("checked"),
            prompt,
            settings: settings.expect("checked"),
            client_request_id: (!client_request_id.is_empty())
                .then(|| client_request_id.to_owned()),
        })
    }
}

fn settings(
    violations: &mut Violations,
    settings: proto::GenerationSettings,
    catalog: &Catalog,
) -> Option<Settings> {
    let model_name = if settings.model.is_empty() {
        catalog.default_model.as_str()
    } else {
        settings.model.as_str()
    };
    let model = catalog.model(model_name);
    if model.is_none() {
        violations.add(
            "settings.model",
            format!(
                "unknown model {model_name:?}; known: {}",
                catalog.model_names().join(", ")
            ),
        );
    }

    let side = |violations: &mut Violations,
                field: &str,
                value: Option<u32>,
                default: fn(&ModelSpec) -> u32| {
        let model = model?;
        let side = value.unwrap_or_else(|| default(model));
        if !model.accepts_side(side) {
            violations.add(
                field,
                format!(
                    "{} accepts {} to {} pixels in multiples of 8, got {side}",
                    model.name, model.min_side, model.max_side
                ),
            );
        }
        Some(side)
    };
    let width = side(violations, "settings.width", settings.width, |m| {
        m.default_width
    });
    let height = side(violations, "settings.height", settings.height, |m| {
        m.default_height
    });
    if let (Some(model), Some(width), Some(height)) = (model, width, height)
        && model.accepts_side(width)
        && model.accepts_side(height)
        && !model.accepts_size(width, height)
    {
        // An API with a list of sizes (OpenAI's) refuses any other, and charging for an
        // image it will refuse helps nobody.
        violations.add(
            "settings.width",
            format!(
                "{} takes only the sizes {}, got {width}x{height}",
                model.name,
                model.allowed_sizes.join(", ")
            ),
        );
    }

    let image_count = settings.image_count.unwrap_or(1);
    if !(1..=MAX_IMAGES_PER_MESSAGE).contains(&image_count) {
        violations.add(
            "settings.image_count",
            format!("must be 1 to {MAX_IMAGES_PER_MESSAGE}, got {image_count}"),
        );
    }

    let style_preset = settings.style_preset.trim();
    if !style_preset.is_empty() && !STYLE_PRESETS.contains(&style_preset) {
        violations.add(
            "settings.style_preset",
            format!(
                "unknown preset {style_preset:?}; known: {}",
                STYLE_PRESETS.join(", ")
            ),
        );
    }

    if let Some(seed) = settings.seed
        && seed > MAX_SEED
    {
        violations.add("settings.seed", format!("at most {MAX_SEED}, got {seed}"));
    }

    let negative_prompt = user_text(
        violations,
        "settings.negative_prompt",
        &settings.negative_prompt,
        text::NEGATIVE_PROMPT,
    );

    let unset = Unset {
        model: settings.model.is_empty(),
        size: settings.width.is_none() && settings.height.is_none(),
        style_preset: style_preset.is_empty(),
        negative_prompt: negative_prompt.is_empty(),
        seed: settings.seed.is_none(),
    };
    let model = model?;
    let (width, height) = (width?, height?);
    Some(Settings {
        model: model.name.clone(),
        width,
        height,
        image_count,
        style_preset: style_preset.to_owned(),
        seed: settings.seed,
        negative_prompt,
        price_per_image: model.price_per_image_of(width, height),
        unset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(prompt: &str, settings: proto::GenerationSettings) -> proto::SendMessageRequest {
        proto::SendMessageRequest {
            conversation_id: Uuid::now_v7().to_string(),
            prompt: prompt.to_owned(),
            settings: Some(settings),
            client_request_id: String::new(),
        }
    }

    #[test]
    fn defaults_come_from_the_default_model() {
        let message = NewMessage::parse(
            send("  a red fox  ", Default::default()),
            &Catalog::embedded(),
        )
        .expect("valid");
        assert_eq!(message.prompt, "a red fox");
        assert_eq!(message.settings.model, "builtin");
        assert_eq!(
            (message.settings.width, message.settings.height),
            (512, 512)
        );
        assert_eq!(message.settings.image_count, 1);
        assert_eq!(message.settings.cost(), 2);
        assert_eq!(message.client_request_id, None);
    }

    #[test]
    fn cost_is_count_times_the_image_price() {
        let settings = proto::GenerationSettings {
            model: "sdxl".into(),
            image_count: Some(3),
            ..Default::default()
        };
        let message =
            NewMessage::parse(send("fox", settings), &Catalog::embedded()).expect("valid");
        assert_eq!(message.settings.cost(), 3 * 12);
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let settings = proto::GenerationSettings {
            model: "sdxl".into(),
            width: Some(100),
            image_count: Some(9),
            ..Default::default()
        };
        let request = proto::SendMessageRequest {
            conversation_id: "nope".into(),
            prompt: "   ".into(),
            settings: Some(settings),
            client_request_id: String::new(),
        };
        let Err(ServiceError::InvalidArgument(violations)) =
            NewMessage::parse(request, &Catalog::embedded())
        else {
            panic!("expected InvalidArgument");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "conversation_id",
                "prompt",
                "settings.width",
                "settings.image_count"
            ]
        );
    }
}

/// A RecordIntent request, checked: what the pipeline stores for a message.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedIntent {
    pub kind: &'static str,
    pub resolved_prompt: String,
    pub edit_type: String,
    pub strength: f32,
    pub enhanced_prompt: String,
    pub negative_prompt: String,
    pub init_generation_id: Option<Uuid>,
}

impl ResolvedIntent {
    pub fn parse(
        request: &atelier_proto::conversation::v1::RecordIntentRequest,
    ) -> Result<Self, ServiceError> {
        let mut violations = Violations::default();
        let intent = request.intent.clone().unwrap_or_default();
        let kind = match intent.kind() {
            proto::IntentKind::New => "new",
            proto::IntentKind::Edit => "edit",
            proto::IntentKind::Unspecified => {
                violations.add("intent.kind", "must be NEW or EDIT");
                "new"
            }
        };
        if !(0.0..=1.0).contains(&intent.strength) {
            violations.add("intent.strength", "must be 0 to 1");
        }
        text(
            &mut violations,
            "intent.resolved_prompt",
            &intent.resolved_prompt,
            0,
            MAX_PROMPT_CHARS * 2,
        );
        text(
            &mut violations,
            "intent.edit_type",
            &intent.edit_type,
            0,
            40,
        );
        text(
            &mut violations,
            "enhanced_prompt",
            &request.enhanced_prompt,
            1,
            MAX_PROMPT_CHARS * 2,
        );
        text(
            &mut violations,
            "negative_prompt",
            &request.negative_prompt,
            0,
            MAX_NEGATIVE_PROMPT_CHARS * 2,
        );
        let init_generation_id = if request.init_generation_id.is_empty() {
            None
        } else {
            parse_id(
                &mut violations,
                "init_generation_id",
                &request.init_generation_id,
            )
        };
        violations.finish()?;
        Ok(Self {
            kind,
            resolved_prompt: intent.resolved_prompt,
            edit_type: intent.edit_type,
            strength: intent.strength,
            enhanced_prompt: request.enhanced_prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            init_generation_id,
        })
    }
}
