//! The generation worker's RPCs: GetGenerationContext, StartGeneration, RecordIntent,
//! CompleteGeneration, FailGeneration, ApplyTitle; and the public CancelGeneration, which
//! ends generations the same way a failure does.
//!
//! GetGenerationContext only reads. Each of the others runs one transaction that locks
//! the message, changes it conditionally and writes its events to the outbox; after the
//! commit it publishes those events and waits for NATS, so the worker's next step (and
//! its own events) come after them in the stream. Repeating any call changes nothing and
//! announces nothing twice.

use atelier_proto::conversation::v1 as internal;
use atelier_proto::v1 as proto;
use uuid::Uuid;

use crate::db::pipeline::{Ending, InheritedRow, LockedMessage, MessageWithPrevious, ResolvedRow};
use crate::db::{self, OutboxRow};
use crate::error::ServiceError;
use crate::inheritance::{self, Follow};
use crate::messages::load_message;
use crate::metrics::Movement;
use crate::outbox::EventContext;
use crate::requests;
use crate::{State, wire};

/// The longest failure reason stored and shown.
pub(crate) const MAX_REASON_CHARS: usize = 500;

fn events_of<'a>(user_id: &'a str, message: &LockedMessage) -> EventContext<'a> {
    EventContext {
        user_id,
        conversation_id: Some(message.conversation_id),
        message_id: Some(message.id),
        at: db::now(),
    }
}

/// Writes the events' outbox rows, commits, then publishes them after any older rows of
/// their subjects a dead instance left, and waits for the stream (a failed publish is
/// left to the sweeper: order is then best effort, nothing is lost).
async fn commit_and_announce(
    state: &State,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    events: Vec<OutboxRow>,
) -> Result<(), ServiceError> {
    let earlier = db::outbox::insert(&mut tx, &events, db::now()).await?;
    tx.commit().await?;
    state.relay.publish_after(earlier, &events).await;
    Ok(())
}

pub async fn start(
    state: &State,
    user_id: &str,
    request: internal::StartGenerationRequest,
) -> Result<internal::StartGenerationResponse, ServiceError> {
    let message_id = requests::id("message_id", &request.message_id)?;
    let now = db::now();
    let mut tx = state.pool.begin().await?;
    let mut message = db::pipeline::lock_whole_message(&mut tx, user_id, message_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("message", message_id))?;
    let rows = db::pipeline::start(&mut tx, message_id, now).await?;
    let generation_ids: Vec<String> = rows
        .iter()
        .filter(|row| row.started)
        .map(|row| row.generation.id.to_string())
        .collect();
    let mut events = Vec::new();
    let left_the_queue = rows.iter().any(|row| row.first_start);
    if left_the_queue {
        let context = EventContext {
            user_id,
            conversation_id: Some(message.conversation_id),
            message_id: Some(message_id),
            at: now,
        };
        events.push(context.event(proto::event::Payload::GenerationStarted(
            proto::GenerationStarted {
                generation_ids: generation_ids.clone(),
            },
        )));
    }
    commit_and_announce(state, tx, events).await?;
    if left_the_queue {
        // Every message behind this one moved up.
        state.queue.nudge();
    }

    if let Some(status) = rows.iter().find_map(|row| row.message_status.clone()) {
        message.status = status;
    }
    let (provider, model_settings) = provider_of(state, &message.model);
    let generations = rows.into_iter().map(|row| row.generation).collect();
    Ok(internal::StartGenerationResponse {
        message: Some(wire::message(message, generations)),
        user_id: user_id.to_owned(),
        generation_ids,
        provider,
        model_settings,
    })
}

/// The image provider of a model and its catalog settings. A model removed from the
/// catalog since the message was sent has no provider: the worker fails its images with
/// that reason.
fn provider_of(state: &State, model: &str) -> (String, Option<internal::ModelSettings>) {
    let spec = state.config.catalog.model(model);
    let provider = spec
        .map(|spec| spec.provider.as_str().to_owned())
        .unwrap_or_default();
    (provider, spec.map(|spec| spec.settings.to_proto()))
}

/// A read: no lock, no transaction, so the worker can ask the LLMs while StartGeneration
/// commits.
pub async fn context(
    state: &State,
    user_id: &str,
    request: internal::GetGenerationContextRequest,
) -> Result<internal::GetGenerationContextResponse, ServiceError> {
    let message_id = requests::id("message_id", &request.message_id)?;
    let found = db::pipeline::message_with_previous(&state.pool, user_id, message_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("message", message_id))?;
    // The seed is offered as an edit takes it; the worker leaves it out of a re-roll.
    let inherited_settings = inheritance::of_stored(&found, Follow::Edit, &state.config.catalog)
        .map(|settings| wire::settings(&settings));
    let MessageWithPrevious { message, previous } = found;
    let previous = previous.previous_id.map(|id| internal::PreviousMessage {
        message_id: id.to_string(),
        prompt: previous.previous_prompt.unwrap_or_default(),
        generation_id: previous
            .previous_generation_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        image_key: previous.previous_image_key.unwrap_or_default(),
    });
    let message = wire::message(message, Vec::new());
    Ok(internal::GetGenerationContextResponse {
        status: message.status,
        prompt: message.content,
        settings: message.settings,
        previous,
        inherited_settings,
    })
}

pub async fn record_intent(
    state: &State,
    user_id: &str,
    request: internal::RecordIntentRequest,
) -> Result<internal::RecordIntentResponse, ServiceError> {
    let message_id = requests::id("message_id", &request.message_id)?;
    let resolved = requests::ResolvedIntent::parse(&request)?;
    let now = db::now();
    let mut tx = state.pool.begin().await?;
    let locked = db::pipeline::lock_whole_message(&mut tx, user_id, message_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("message", message_id))?;
    let follow = match (resolved.kind, resolved.edit_type.as_str()) {
        ("edit", _) => Some(Follow::Edit),
        ("new", "reroll") => Some(Follow::Reroll),
        _ => None,
    };
    let unfinished = matches!(locked.status.as_str(), "queued" | "processing");
    let mut settings = inheritance::stored_settings(&locked);
    let mut cost = locked.cost;
    let mut credits_moved = 0;
    if let Some(follow) = follow.filter(|_| request.inherit_settings && unfinished) {
        // Worked out again under the lock: what the worker was offered may have changed.
        let found = db::pipeline::message_with_previous(&mut *tx, user_id, message_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("message", message_id))?;
        if let Some(next) = inheritance::of_stored(&found, follow, &state.config.catalog) {
            let row = InheritedRow {
                model: &next.model,
                width: i32::try_from(next.width).unwrap_or(i32::MAX),
                height: i32::try_from(next.height).unwrap_or(i32::MAX),
                style_preset: &next.style_preset,
                negative_prompt: &next.negative_prompt,
                seed: next.seed.and_then(|seed| i64::try_from(seed).ok()),
                price_per_image: next.price_per_image,
            };
            match db::pipeline::apply_inherited(&mut tx, user_id, message_id, &row, now).await? {
                Some(moved) => {
                    credits_moved = moved;
                    cost -= moved;
                    settings = next;
                }
                None => tracing::info!(
                    model = %next.model,
                    "the balance cannot cover the inherited settings; the message keeps its own"
                ),
            }
        }
    }
    // A model whose API takes no image draws an edit from scratch: no starting image is
    // recorded for it (the message may have just inherited such a model).
    let takes_images = state
        .config
        .catalog
        .model(&settings.model)
        .is_none_or(|model| !model.settings.text_to_image_only);
    let row = ResolvedRow {
        intent_kind: resolved.kind,
        resolved_prompt: &resolved.resolved_prompt,
        edit_type: &resolved.edit_type,
        strength: resolved.strength,
        enhanced_prompt: &resolved.enhanced_prompt,
        negative_prompt: &resolved.negative_prompt,
        init_generation_id: resolved.init_generation_id.filter(|_| takes_images),
    };
    let changed = db::pipeline::record_intent(&mut tx, message_id, &row, now).await?;
    let context = EventContext {
        user_id,
        conversation_id: Some(locked.conversation_id),
        message_id: Some(message_id),
        at: now,
    };
    let mut events = Vec::new();
    if credits_moved != 0 {
        events.push(
            context.event(proto::event::Payload::CreditsChanged(
                proto::CreditsChanged {
                    delta: credits_moved,
                    reason: if credits_moved < 0 {
                        proto::CreditsChangeReason::Reserve
                    } else {
                        proto::CreditsChangeReason::Release
                    }
                    .into(),
                    reference: message_id.to_string(),
                },
            )),
        );
    }
    if changed {
        events.push(context.event(proto::event::Payload::IntentResolved(
            proto::IntentResolved {
                intent: request.intent.clone(),
                enhanced_prompt: resolved.enhanced_prompt.clone(),
                settings: Some(wire::settings(&settings)),
                cost,
            },
        )));
    }
    commit_and_announce(state, tx, events).await?;
    if credits_moved < 0 {
        state
            .metrics
            .credits_moved(Movement::Reserved, -credits_moved);
    } else {
        state
            .metrics
            .credits_moved(Movement::Released, credits_moved);
    }
    if !request.inherit_settings {
        return Ok(internal::RecordIntentResponse::default());
    }
    let message = load_message(state, user_id, message_id).await?;
    let (provider, model_settings) = provider_of(state, &settings.model);
    Ok(internal::RecordIntentResponse {
        message: Some(message),
        provider,
        model_settings,
    })
}

pub async fn complete(
    state: &State,
    user_id: &str,
    request: internal::CompleteGenerationRequest,
) -> Result<internal::CompleteGenerationResponse, ServiceError> {
    let generation_id = requests::id("generation_id", &request.generation_id)?;
    let image_key = request.image_key.trim();
    if image_key.is_empty() || image_key.len() > 1024 || image_key.contains('\0') {
        return Err(ServiceError::invalid(
            "image_key",
            "must be 1 to 1024 bytes, without NUL",
        ));
    }
    let now = db::now();
    let mut tx = state.pool.begin().await?;
    let locked = db::pipeline::lock_message_of_generation(&mut tx, user_id, generation_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("generation", generation_id))?;
    let Some(row) = db::pipeline::complete(&mut tx, generation_id, image_key, now).await? else {
        // Ended before (a redelivered job, or cancelled meanwhile): report it as it is.
        tx.rollback().await?;
        let row = db::generations::get(&state.pool, user_id, generation_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("generation", generation_id))?;
        return Ok(internal::CompleteGenerationResponse {
            generation: Some(wire::generation(row)),
            completed: false,
        });
    };
    let captured = row.cost;
    let generation = wire::generation(row);
    let events =
        vec![
            events_of(user_id, &locked).event(proto::event::Payload::GenerationCompleted(
                proto::GenerationCompleted {
                    generations: vec![generation.clone()],
                },
            )),
        ];
    commit_and_announce(state, tx, events).await?;
    state.metrics.credits_moved(Movement::Captured, captured);
    if locked.status == "queued" {
        // An image completed without a start (not the worker's way): the queue may have
        // changed.
        state.queue.nudge();
    }
    Ok(internal::CompleteGenerationResponse {
        generation: Some(generation),
        completed: true,
    })
}

pub async fn fail(
    state: &State,
    user_id: &str,
    request: internal::FailGenerationRequest,
) -> Result<internal::FailGenerationResponse, ServiceError> {
    let ids = generation_ids(&request.generation_ids)?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.contains('\0') {
        return Err(ServiceError::invalid(
            "reason",
            format!("must be 1 to {MAX_REASON_CHARS} characters, without NUL"),
        ));
    }
    let mut tx = state.pool.begin().await?;
    let locked = db::pipeline::lock_message_of_generation(&mut tx, user_id, ids[0])
        .await?
        .ok_or_else(|| ServiceError::not_found("generation", ids[0]))?;
    let refunded = end(
        state,
        tx,
        user_id,
        &locked,
        Some(&ids),
        Ending::Failed,
        reason,
    )
    .await?;
    Ok(internal::FailGenerationResponse { refunded })
}

/// The public CancelGeneration: the message's unfinished images, or one of them.
pub async fn cancel(
    state: &State,
    user_id: &str,
    request: proto::CancelGenerationRequest,
) -> Result<proto::CancelGenerationResponse, ServiceError> {
    use proto::cancel_generation_request::Target;
    let mut tx = state.pool.begin().await?;
    let (locked, only) = match request.target {
        Some(Target::MessageId(id)) => {
            let id = requests::id("message_id", &id)?;
            let locked = db::pipeline::lock_message(&mut tx, user_id, id)
                .await?
                .ok_or_else(|| ServiceError::not_found("message", id))?;
            (locked, None)
        }
        Some(Target::GenerationId(id)) => {
            let id = requests::id("generation_id", &id)?;
            let locked = db::pipeline::lock_message_of_generation(&mut tx, user_id, id)
                .await?
                .ok_or_else(|| ServiceError::not_found("generation", id))?;
            (locked, Some(vec![id]))
        }
        None => {
            return Err(ServiceError::invalid(
                "target",
                "set message_id or generation_id",
            ));
        }
    };
    let message_id = locked.id;
    end(
        state,
        tx,
        user_id,
        &locked,
        only.as_deref(),
        Ending::Cancelled,
        "",
    )
    .await?;
    Ok(proto::CancelGenerationResponse {
        message: Some(load_message(state, user_id, message_id).await?),
    })
}

/// Ends generations without an image, releases their credits, settles the message and
/// announces it all. Returns the credits released now.
pub(crate) async fn end(
    state: &State,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: &str,
    locked: &LockedMessage,
    only: Option<&[Uuid]>,
    ending: Ending,
    reason: &str,
) -> Result<i64, ServiceError> {
    let now = db::now();
    let (ended, refunded) =
        db::pipeline::end(&mut tx, locked.id, only, ending, reason, now).await?;
    db::pipeline::settle_message(&mut tx, locked.id, now).await?;
    let context = events_of(user_id, locked);
    let mut events = Vec::new();
    if !ended.is_empty() {
        let generation_ids: Vec<String> = ended.iter().map(Uuid::to_string).collect();
        events.push(context.event(match ending {
            Ending::Failed => proto::event::Payload::GenerationFailed(proto::GenerationFailed {
                generation_ids,
                reason: reason.to_owned(),
                refunded,
            }),
            Ending::Cancelled => {
                proto::event::Payload::GenerationCancelled(proto::GenerationCancelled {
                    generation_ids,
                    refunded,
                })
            }
        }));
    }
    if refunded > 0 {
        events.push(context.event(proto::event::Payload::CreditsChanged(
            proto::CreditsChanged {
                delta: refunded,
                reason: proto::CreditsChangeReason::Release.into(),
                reference: locked.id.to_string(),
            },
        )));
    }
    commit_and_announce(state, tx, events).await?;
    state.metrics.credits_moved(Movement::Released, refunded);
    if locked.status == "queued" {
        // The message left the queue, or its waiting images changed.
        state.queue.nudge();
    }
    Ok(refunded)
}

pub async fn apply_title(
    state: &State,
    user_id: &str,
    request: internal::ApplyTitleRequest,
) -> Result<internal::ApplyTitleResponse, ServiceError> {
    let rename = requests::Rename::try_from(proto::RenameConversationRequest {
        conversation_id: request.conversation_id,
        title: request.title,
    })?;
    let now = db::now();
    let event = EventContext {
        user_id,
        conversation_id: Some(rename.conversation_id),
        message_id: None,
        at: now,
    }
    .event(proto::event::Payload::TitleUpdated(proto::TitleUpdated {
        title: rename.title.clone(),
    }));
    let mut tx = state.pool.begin().await?;
    let applied =
        db::pipeline::apply_title(&mut tx, user_id, rename.conversation_id, &rename.title).await?;
    if applied {
        commit_and_announce(state, tx, vec![event]).await?;
    } else {
        tx.rollback().await?;
    }
    Ok(internal::ApplyTitleResponse { applied })
}

fn generation_ids(raw: &[String]) -> Result<Vec<Uuid>, ServiceError> {
    if raw.is_empty() || raw.len() > requests::MAX_IMAGES_PER_MESSAGE as usize {
        return Err(ServiceError::invalid(
            "generation_ids",
            format!("1 to {} ids", requests::MAX_IMAGES_PER_MESSAGE),
        ));
    }
    raw.iter()
        .map(|id| requests::id("generation_ids", id))
        .collect()
}
