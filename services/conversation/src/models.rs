//! ListModels: the catalog as clients see it.
//!
//! Only what a client needs to offer a choice and show a price leaves the service; how a
//! model is rendered (checkpoints, workflows, samplers) stays with the worker.

use atelier_proto::STYLE_PRESETS;
use atelier_proto::v1 as proto;

use crate::catalog::{Catalog, ModelSpec, Provider, SIDE_MULTIPLE, parse_size};
use crate::requests::MAX_IMAGES_PER_MESSAGE;

pub fn list(catalog: &Catalog) -> proto::ListModelsResponse {
    proto::ListModelsResponse {
        models: catalog
            .models
            .iter()
            .map(|model| public(model, model.name == catalog.default_model))
            .collect(),
        max_images_per_message: MAX_IMAGES_PER_MESSAGE,
        style_presets: STYLE_PRESETS.iter().map(|&name| name.to_owned()).collect(),
    }
}

fn public(model: &ModelSpec, is_default: bool) -> proto::Model {
    proto::Model {
        name: model.name.clone(),
        description: model.description.clone(),
        provider: model.provider.as_str().to_owned(),
        is_default,
        min_side: model.min_side,
        max_side: model.max_side,
        side_multiple: SIDE_MULTIPLE,
        default_width: model.default_width,
        default_height: model.default_height,
        allowed_sizes: model
            .allowed_sizes
            .iter()
            .filter_map(|size| parse_size(size))
            .map(|(width, height)| proto::ImageSize { width, height })
            .collect(),
        price_per_image: model.price_per_image,
        price_per_megapixel: model.price_per_megapixel,
        default_image_price: model.price_per_image_of(model.default_width, model.default_height),
        features: Some(proto::ModelFeatures {
            // OpenAI's images API has neither field (the worker turns a negative prompt
            // into an instruction); the builtin renderer draws from the prompt alone.
            seed: model.provider != Provider::Openai,
            negative_prompt: matches!(model.provider, Provider::Automatic1111 | Provider::Comfyui),
            max_batch: match model.provider {
                Provider::Automatic1111 => model.settings.max_batch.max(1),
                _ => 1,
            },
            edits_from_image: !model.settings.text_to_image_only,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_model_is_listed_with_its_limits_prices_and_features() {
        let catalog = Catalog::embedded();
        let listed = list(&catalog);
        let names: Vec<&str> = listed.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, catalog.model_names());
        let defaults: Vec<&str> = listed
            .models
            .iter()
            .filter(|m| m.is_default)
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(defaults, [catalog.default_model.as_str()]);
        assert_eq!(listed.max_images_per_message, 4);
        assert!(listed.style_presets.iter().any(|name| name == "cinematic"));

        let model = |name: &str| {
            listed
                .models
                .iter()
                .find(|model| model.name == name)
                .expect("listed")
        };
        let sdxl = model("sdxl");
        assert_eq!(sdxl.provider, "automatic1111");
        assert_eq!((sdxl.min_side, sdxl.max_side), (512, 1536));
        assert_eq!((sdxl.default_width, sdxl.default_height), (1024, 1024));
        // 4 per image + 4 for each of the 2 started megapixels of 1024x1024.
        assert_eq!(sdxl.default_image_price, 12);
        let features = sdxl.features.expect("features");
        assert!(features.seed && features.negative_prompt);
        assert_eq!(features.max_batch, 4);

        let gpt = model("gpt-image-1");
        assert_eq!(
            gpt.allowed_sizes,
            [(1024, 1024), (1536, 1024), (1024, 1536)]
                .map(|(width, height)| proto::ImageSize { width, height })
        );
        let features = gpt.features.expect("features");
        assert!(!features.seed && !features.negative_prompt);
        assert_eq!(features.max_batch, 1);
        assert!(features.edits_from_image);
        assert!(
            !model("dall-e-3")
                .features
                .expect("features")
                .edits_from_image,
            "OpenAI has no edits for dall-e-3"
        );
    }

    #[test]
    fn the_listed_default_price_is_what_send_message_charges() {
        let catalog = Catalog::embedded();
        for model in list(&catalog).models {
            let request = proto::SendMessageRequest {
                conversation_id: uuid::Uuid::now_v7().to_string(),
                prompt: "a red fox".into(),
                settings: Some(proto::GenerationSettings {
                    model: model.name.clone(),
                    ..Default::default()
                }),
                client_request_id: String::new(),
            };
            let sent = crate::requests::NewMessage::parse(request, &catalog).expect("valid");
            assert_eq!(
                sent.settings.cost(),
                model.default_image_price,
                "{}",
                model.name
            );
        }
    }
}
