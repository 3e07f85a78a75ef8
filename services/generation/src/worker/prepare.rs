//! Step 3 of a job: what the images are made from. Intent and enhancement of the
//! message's prompt at the same time, each under its deadline with a fallback (the
//! prompt as new, the prompt as written), so neither an LLM outage nor a slow service
//! stops the picture; and, for an edit, the previous image to start from.

use atelier_proto::conversation::v1 as internal;
use atelier_proto::enhancement::v1 as enhancement;
use atelier_proto::intent::v1 as intent;
use atelier_proto::jobs::v1::GenerateJob;
use atelier_proto::v1 as proto;
use bytes::Bytes;
use tracing::Instrument as _;

use super::{Worker, as_user};

/// What the images are made from.
pub(super) struct Prepared {
    pub(super) resolved: proto::ResolvedIntent,
    pub(super) enhanced: Enhanced,
    /// The previous image to edit (img2img), when the intent is an edit of it.
    pub(super) init: Option<InitImage>,
    /// The message follows the previous one and takes settings from it (see
    /// GetGenerationContext's inherited_settings): RecordIntent applies them.
    pub(super) inherits: bool,
}

pub(super) struct InitImage {
    pub(super) generation_id: String,
    pub(super) png: Bytes,
}

/// Step 3: intent and enhancement of the message's prompt, and the image an edit starts
/// from.
pub(super) async fn prepare(
    worker: &Worker,
    job: &GenerateJob,
    context: internal::GetGenerationContextResponse,
) -> Prepared {
    let settings = context.settings.unwrap_or_default();
    let previous = context.previous;
    let prompt = context.prompt;
    let (resolved, enhanced) = tokio::join!(
        analyze_intent(worker, job, &prompt, previous.as_ref()),
        enhance(worker, job, &prompt, &settings),
    );
    let edit = resolved.kind() == proto::IntentKind::Edit;
    // A re-roll is a new picture of the previous prompt: the resolved prompt, not the
    // user's "another one", is what to draw (from scratch: no init image below).
    let reroll = resolved.kind() == proto::IntentKind::New && resolved.edit_type == "reroll";
    // Following the previous message, it takes that message's style and negative prompt
    // where its own are unset: the enhancement must be made with those.
    let inherited = context.inherited_settings.filter(|_| edit || reroll);
    let restyled = inherited.as_ref().is_some_and(|inherited| {
        inherited.style_preset != settings.style_preset
            || inherited.negative_prompt != settings.negative_prompt
    });
    let reprompted = (edit || reroll)
        && !resolved.resolved_prompt.is_empty()
        && resolved.resolved_prompt != prompt;
    let enhanced = if reprompted || restyled {
        let prompt = if reprompted {
            &resolved.resolved_prompt
        } else {
            &prompt
        };
        enhance(worker, job, prompt, inherited.as_ref().unwrap_or(&settings)).await
    } else {
        enhanced
    };
    let edit_from = previous.filter(|previous| edit && !previous.image_key.is_empty());
    let init = match edit_from {
        Some(previous) => match worker.store.get(&previous.image_key).await {
            Ok(png) => Some(InitImage {
                generation_id: previous.generation_id,
                png,
            }),
            Err(err) => {
                // The edit becomes a fresh picture of the resolved prompt.
                tracing::warn!(error = %err, "previous image unreadable; generating from scratch");
                None
            }
        },
        None => None,
    };
    Prepared {
        resolved,
        enhanced,
        init,
        inherits: inherited.is_some(),
    }
}

async fn analyze_intent(
    worker: &Worker,
    job: &GenerateJob,
    prompt: &str,
    previous: Option<&internal::PreviousMessage>,
) -> proto::ResolvedIntent {
    let new = proto::ResolvedIntent {
        kind: proto::IntentKind::New.into(),
        resolved_prompt: prompt.to_owned(),
        edit_type: String::new(),
        strength: 0.0,
    };
    let Some(previous) = previous else {
        // Nothing to edit: no need to ask.
        return new;
    };
    let Ok(request) = as_user(
        intent::AnalyzeIntentRequest {
            prompt: prompt.to_owned(),
            previous_prompt: previous.prompt.clone(),
            has_previous_image: !previous.image_key.is_empty(),
        },
        &job.user_id,
    ) else {
        return new;
    };
    let mut client = worker.intent.clone();
    // The client's side of the call, beside enhancement's: the intent service's `rpc`
    // span is its child (the interceptor sends this span's `traceparent`).
    let call = tracing::info_span!(
        "intent.analyze",
        otel.kind = "client",
        rpc.method = "/atelier.intent.v1.IntentService/AnalyzeIntent",
    );
    match tokio::time::timeout(
        worker.config.intent_deadline,
        client.analyze_intent(request),
    )
    .instrument(call)
    .await
    {
        Ok(Ok(answer)) => answer.into_inner().intent.unwrap_or(new),
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "intent service failed; treating the prompt as new");
            new
        }
        Err(_) => {
            tracing::warn!("intent service too slow; treating the prompt as new");
            new
        }
    }
}

pub(super) struct Enhanced {
    pub(super) prompt: String,
    pub(super) negative_prompt: String,
}

async fn enhance(
    worker: &Worker,
    job: &GenerateJob,
    prompt: &str,
    settings: &proto::GenerationSettings,
) -> Enhanced {
    let plain = Enhanced {
        prompt: prompt.to_owned(),
        negative_prompt: settings.negative_prompt.clone(),
    };
    let Ok(request) = as_user(
        enhancement::EnhancePromptRequest {
            prompt: prompt.to_owned(),
            style_preset: settings.style_preset.clone(),
            negative_prompt: settings.negative_prompt.clone(),
        },
        &job.user_id,
    ) else {
        return plain;
    };
    let mut client = worker.enhancement.clone();
    // The client's side of the call (see `analyze_intent`).
    let call = tracing::info_span!(
        "enhancement.enhance",
        otel.kind = "client",
        rpc.method = "/atelier.enhancement.v1.EnhancementService/EnhancePrompt",
    );
    match tokio::time::timeout(
        worker.config.enhancement_deadline,
        client.enhance_prompt(request),
    )
    .instrument(call)
    .await
    {
        Ok(Ok(answer)) => {
            let answer = answer.into_inner();
            Enhanced {
                prompt: answer.prompt,
                negative_prompt: answer.negative_prompt,
            }
        }
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "enhancement failed; using the prompt as written");
            plain
        }
        Err(_) => {
            tracing::warn!("enhancement too slow; using the prompt as written");
            plain
        }
    }
}
