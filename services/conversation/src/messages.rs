//! SendMessage (the fast path), ListMessages, GetMessage, CancelGeneration.

use std::collections::HashMap;

use atelier_proto::v1 as proto;
use uuid::Uuid;

use crate::db::messages::{NewMessageRows, SendOutcome};
use crate::db::{self, GenerationRow, MessageRow};
use crate::error::ServiceError;
use crate::outbox::{self, EventContext};
use crate::pagination::{Cursor, PageRequest};
use crate::requests::{self, NewMessage};
use crate::{State, wire};

/// Longest automatic title, in characters, before the LLM title replaces it.
const AUTOMATIC_TITLE_CHARS: usize = 60;

/// The fast path: validation in memory, then one transaction of one statement (three round
/// trips: BEGIN, the statement, COMMIT). No LLM, provider or broker is on this path; the
/// outbox rows written with the message start everything else.
pub async fn send(
    state: &State,
    user_id: &str,
    request: proto::SendMessageRequest,
) -> Result<proto::SendMessageResponse, ServiceError> {
    let new = NewMessage::parse(request, &state.config.catalog)?;
    let now = db::now();
    let message_id = Uuid::now_v7();
    let settings = &new.settings;

    let generations: Vec<GenerationRow> = (0..settings.image_count)
        .map(|position| {
            let id = Uuid::now_v7();
            GenerationRow {
                id,
                message_id,
                conversation_id: new.conversation_id,
                position: i16::try_from(position).unwrap_or(0),
                status: "queued".to_owned(),
                model: settings.model.clone(),
                width: i32::try_from(settings.width).unwrap_or(i32::MAX),
                height: i32::try_from(settings.height).unwrap_or(i32::MAX),
                seed: seed_of(settings.seed, position, id),
                prompt: String::new(),
                negative_prompt: settings.negative_prompt.clone(),
                init_generation_id: None,
                strength: None,
                image_key: None,
                cost: settings.price_per_image,
                is_favorite: false,
                error: None,
                created_at: now,
                started_at: None,
                completed_at: None,
            }
        })
        .collect();
    let message_row = MessageRow {
        id: message_id,
        conversation_id: new.conversation_id,
        content: new.prompt.clone(),
        model: settings.model.clone(),
        width: i32::try_from(settings.width).unwrap_or(i32::MAX),
        height: i32::try_from(settings.height).unwrap_or(i32::MAX),
        image_count: i16::try_from(settings.image_count).unwrap_or(0),
        style_preset: settings.style_preset.clone(),
        seed: settings.seed.and_then(|seed| i64::try_from(seed).ok()),
        negative_prompt: settings.negative_prompt.clone(),
        status: "queued".to_owned(),
        intent_kind: None,
        resolved_prompt: None,
        edit_type: None,
        strength: None,
        enhanced_prompt: None,
        effective_negative_prompt: None,
        cost: settings.cost(),
        client_request_id: new.client_request_id.clone(),
        created_at: now,
    };
    // The response is the same value the database now holds, so it is built once, here.
    let message = wire::message(message_row.clone(), generations.clone());

    let events = EventContext {
        user_id,
        conversation_id: Some(new.conversation_id),
        message_id: Some(message_id),
        at: now,
    };
    let automatic_title = automatic_title(&new.prompt);
    let rows = NewMessageRows {
        owner_id: user_id,
        conversation_id: new.conversation_id,
        message_id,
        content: &new.prompt,
        model: &settings.model,
        width: message_row.width,
        height: message_row.height,
        style_preset: &settings.style_preset,
        seed: message_row.seed,
        negative_prompt: &settings.negative_prompt,
        client_request_id: new.client_request_id.as_deref(),
        cost: settings.cost(),
        price_per_image: settings.price_per_image,
        generation_ids: generations.iter().map(|generation| generation.id).collect(),
        generation_seeds: generations
            .iter()
            .map(|generation| generation.seed)
            .collect(),
        automatic_title: &automatic_title,
        outbox: vec![
            events.event(proto::event::Payload::MessageCreated(
                proto::MessageCreated {
                    message: Some(message.clone()),
                },
            )),
            events.event(proto::event::Payload::CreditsChanged(
                proto::CreditsChanged {
                    delta: -settings.cost(),
                    reason: proto::CreditsChangeReason::Reserve.into(),
                    reference: message_id.to_string(),
                },
            )),
            outbox::generate_job(user_id, new.conversation_id, message_id),
        ],
        outbox_if_titled: vec![
            events.event(proto::event::Payload::TitleUpdated(proto::TitleUpdated {
                title: automatic_title.clone(),
            })),
            outbox::title_job(user_id, new.conversation_id, &new.prompt),
        ],
        now,
    };

    let mut tx = state.pool.begin().await?;
    let outcome = db::messages::insert_new(&mut tx, &rows).await;
    let refusal = match outcome {
        Ok(SendOutcome::Accepted { titled }) => {
            tx.commit().await?;
            // After the commit, never before: a job must not reach a worker before its
            // message exists. The fast path does not wait for NATS.
            let mut announced = rows.outbox;
            if titled {
                announced.extend(rows.outbox_if_titled);
            }
            state.relay.hand_off(announced);
            // A new message in the queue: the reporter announces its place once the rows
            // above are published (a nudge is a notification, not a wait).
            state.queue.nudge();
            return Ok(proto::SendMessageResponse {
                message: Some(message),
            });
        }
        Ok(SendOutcome::Replay(existing)) => {
            tx.rollback().await?;
            return replay(state, user_id, existing).await;
        }
        Ok(SendOutcome::ConversationRefused) => {
            tx.rollback().await?;
            None
        }
        Ok(SendOutcome::CreditsRefused) => {
            tx.rollback().await?;
            Some(settings.cost())
        }
        // The same client_request_id committed by a concurrent call after this statement's
        // snapshot: that call won, and the replay below answers with its message.
        Err(sqlx::Error::Database(err))
            if err.constraint() == Some("messages_conversation_id_client_request_id_key") =>
        {
            tx.rollback().await?;
            None
        }
        Err(err) => return Err(err.into()),
    };

    // Refused, or lost a race on the idempotency key. A retry whose first call committed
    // after this statement's snapshot (and spent the last credits or images) must still
    // get the first answer: a fresh read finds it. Only refused calls pay this read.
    if let Some(client_request_id) = new.client_request_id.as_deref()
        && let Some(existing) = db::messages::by_client_request_id(
            &state.pool,
            user_id,
            new.conversation_id,
            client_request_id,
        )
        .await?
    {
        return replay(state, user_id, existing).await;
    }
    match refusal {
        Some(cost) => {
            let balance = db::credits::balance(&state.pool, user_id)
                .await?
                .unwrap_or(0);
            Err(ServiceError::CreditsExhausted { balance, cost })
        }
        None => Err(conversation_refusal(state, user_id, &new).await),
    }
}

/// The answer to a retried SendMessage: the message its first call created, as it is now.
async fn replay(
    state: &State,
    user_id: &str,
    message_id: Uuid,
) -> Result<proto::SendMessageResponse, ServiceError> {
    let message = load_message(state, user_id, message_id).await?;
    Ok(proto::SendMessageResponse {
        message: Some(message),
    })
}

/// Why the conversation refused the message. Read only on this failure path.
async fn conversation_refusal(state: &State, user_id: &str, new: &NewMessage) -> ServiceError {
    let id = new.conversation_id;
    match db::conversations::get(&state.pool, user_id, id).await {
        Ok(Some(row))
            if row.status == "active"
                && i64::from(row.generation_count) + i64::from(new.settings.image_count)
                    > i64::from(row.max_generations) =>
        {
            ServiceError::GenerationLimitReached {
                conversation_id: id.to_string(),
                max: row.max_generations,
                used: row.generation_count,
                requested: i32::try_from(new.settings.image_count).unwrap_or(i32::MAX),
            }
        }
        _ => crate::conversations::refusal(state, user_id, id).await,
    }
}

/// The seed of image `position`: consecutive from the requested seed, or random (from the
/// generation id's random bits) and stored, so every image can be made again.
fn seed_of(requested: Option<u64>, position: u32, generation_id: Uuid) -> i64 {
    match requested {
        // Consecutive modulo 2^32: providers take 32-bit seeds.
        Some(seed) => i64::from((seed as u32).wrapping_add(position)),
        None => {
            let bytes = generation_id.as_bytes();
            i64::from(u32::from_be_bytes([
                bytes[12], bytes[13], bytes[14], bytes[15],
            ]))
        }
    }
}

/// The conversation title until the LLM's arrives: the prompt's first words, cut at a word
/// boundary, with an ellipsis when cut.
pub fn automatic_title(prompt: &str) -> String {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let full = words.join(" ");
    if full.chars().count() <= AUTOMATIC_TITLE_CHARS {
        return full;
    }
    let mut title = String::new();
    for word in &words {
        let needed = title.chars().count() + usize::from(!title.is_empty()) + word.chars().count();
        if needed > AUTOMATIC_TITLE_CHARS - 1 {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    if title.is_empty() {
        // One huge word: cut it.
        title = full.chars().take(AUTOMATIC_TITLE_CHARS - 1).collect();
    }
    title.push('…');
    title
}

pub async fn list(
    state: &State,
    user_id: &str,
    request: proto::ListMessagesRequest,
) -> Result<proto::ListMessagesResponse, ServiceError> {
    let conversation_id = requests::id("conversation_id", &request.conversation_id)?;
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
    // Statement 1: the page (owner-filtered).
    let mut rows = db::messages::page(&state.pool, user_id, conversation_id, &page).await?;
    if rows.is_empty() {
        // Statement 2 when the page is empty: is that an empty conversation or someone else's?
        db::conversations::get(&state.pool, user_id, conversation_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("conversation", conversation_id))?;
        return Ok(proto::ListMessagesResponse::default());
    }
    let next_page_token = page.finish(&mut rows, |row| Cursor {
        at: row.created_at,
        id: row.id,
    });
    // Statement 2 otherwise: every generation of the page at once.
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let mut by_message = group_by_message(db::generations::of_messages(&state.pool, &ids).await?);
    let messages = rows
        .into_iter()
        .map(|row| {
            let generations = by_message.remove(&row.id).unwrap_or_default();
            wire::message(row, generations)
        })
        .collect();
    Ok(proto::ListMessagesResponse {
        messages,
        next_page_token,
    })
}

pub async fn get(
    state: &State,
    user_id: &str,
    request: proto::GetMessageRequest,
) -> Result<proto::GetMessageResponse, ServiceError> {
    let id = requests::id("message_id", &request.message_id)?;
    let message = load_message(state, user_id, id).await?;
    Ok(proto::GetMessageResponse {
        message: Some(message),
    })
}

pub(crate) async fn load_message(
    state: &State,
    user_id: &str,
    id: Uuid,
) -> Result<proto::Message, ServiceError> {
    let row = db::messages::get(&state.pool, user_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("message", id))?;
    let generations = db::generations::of_messages(&state.pool, &[id]).await?;
    Ok(wire::message(row, generations))
}

fn group_by_message(rows: Vec<GenerationRow>) -> HashMap<Uuid, Vec<GenerationRow>> {
    let mut groups: HashMap<Uuid, Vec<GenerationRow>> = HashMap::new();
    for row in rows {
        groups.entry(row.message_id).or_default().push(row);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_prompts_are_their_own_title() {
        assert_eq!(
            automatic_title("  a red   fox in the snow "),
            "a red fox in the snow"
        );
    }

    #[test]
    fn long_prompts_are_cut_at_a_word_with_an_ellipsis() {
        let prompt = "a very detailed oil painting of a red fox sitting in deep fresh snow under a full moon";
        let title = automatic_title(prompt);
        assert!(title.chars().count() <= AUTOMATIC_TITLE_CHARS, "{title}");
        assert!(title.ends_with('…'));
        let without = title.trim_end_matches('…');
        assert!(prompt.starts_with(without));
        assert!(
            prompt[without.len()..].starts_with(' '),
            "cut inside a word: {title}"
        );
    }

    #[test]
    fn one_huge_word_is_cut() {
        let title = automatic_title(&"x".repeat(500));
        assert_eq!(title.chars().count(), AUTOMATIC_TITLE_CHARS);
    }

    #[test]
    fn requested_seeds_are_consecutive_and_random_ones_fit_32_bits() {
        let id = Uuid::now_v7();
        assert_eq!(seed_of(Some(41), 0, id), 41);
        assert_eq!(seed_of(Some(41), 3, id), 44);
        assert_eq!(seed_of(Some(u64::from(u32::MAX)), 1, id), 0);
        let random = seed_of(None, 0, id);
        assert!((0..=i64::from(u32::MAX)).contains(&random));
    }
}
