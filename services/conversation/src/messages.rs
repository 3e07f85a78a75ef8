//! SendMessage (the fast path), ListMessages, GetMessage, CancelGeneration.

use std::collections::HashMap;

use atelier_proto::v1 as proto;
use uuid::Uuid;

use crate::db::messages::{NewMessageRows, SendOutcome};
use crate::db::{self, GenerationRow, MessageRow};
use crate::error::ServiceError;
use crate::inheritance::Unset;
use crate::metrics::Movement;
use crate::outbox::{self, EventContext};
use crate::pagination::{Cursor, PageRequest};
use crate::requests::{self, NewMessage};
use crate::text;
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
        unset_settings: settings.unset.to_row(),
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
        unset_settings: settings.unset.to_column(),
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
            state
                .metrics
                .credits_moved(Movement::Reserved, settings.cost());
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
            return replay(state, user_id, existing, &new).await;
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
        return replay(state, user_id, existing, &new).await;
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

/// The answer to a retried SendMessage: the message its first call created, as it is now,
/// if the retry is the same request; IDEMPOTENCY_KEY_REUSED if the key was used for
/// another one. The first message is read here anyway, so comparing the stored prompt and
/// settings costs no extra statement, and the fast path stores and computes nothing for
/// it.
async fn replay(
    state: &State,
    user_id: &str,
    message_id: Uuid,
    retry: &NewMessage,
) -> Result<proto::SendMessageResponse, ServiceError> {
    let first = db::messages::get(&state.pool, user_id, message_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("message", message_id))?;
    let fields = differences(retry, &first);
    if !fields.is_empty() {
        return Err(ServiceError::IdempotencyKeyReused {
            client_request_id: retry.client_request_id.clone().unwrap_or_default(),
            message_id: message_id.to_string(),
            fields,
        });
    }
    let generations = db::generations::of_messages(&state.pool, &[message_id]).await?;
    Ok(proto::SendMessageResponse {
        message: Some(wire::message(first, generations)),
    })
}

/// The request fields, as protobuf paths, in which a retry differs from the message its
/// key made: the normalised prompt and every setting as resolved (an unset setting
/// compares as its default, so leaving out `model` and naming the default model are the
/// same request). A setting both left unset is the same even when the first message has
/// since inherited it from the one before ([`crate::inheritance`]). Empty: the same
/// request.
fn differences(retry: &NewMessage, first: &MessageRow) -> Vec<&'static str> {
    let settings = &retry.settings;
    let (now, before) = (settings.unset, Unset::from_column(&first.unset_settings));
    let both_unset = |now: bool, before: bool| now && before;
    let size = both_unset(now.size, before.size);
    [
        ("prompt", first.content == retry.prompt),
        (
            "settings.model",
            both_unset(now.model, before.model) || first.model == settings.model,
        ),
        (
            "settings.width",
            size || i64::from(first.width) == i64::from(settings.width),
        ),
        (
            "settings.height",
            size || i64::from(first.height) == i64::from(settings.height),
        ),
        (
            "settings.image_count",
            i64::from(first.image_count) == i64::from(settings.image_count),
        ),
        (
            "settings.style_preset",
            both_unset(now.style_preset, before.style_preset)
                || first.style_preset == settings.style_preset,
        ),
        (
            "settings.seed",
            both_unset(now.seed, before.seed)
                || first.seed.map(i128::from) == settings.seed.map(i128::from),
        ),
        (
            "settings.negative_prompt",
            both_unset(now.negative_prompt, before.negative_prompt)
                || first.negative_prompt == settings.negative_prompt,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(field, _)| field)
    .collect()
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
/// boundary, with an ellipsis when cut. The prompt is normalised text ([`text::clean`]), so
/// the title is too: one line, NFC, nothing invisible.
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
        // One huge word: cut it, but not inside a combining sequence or a joined emoji.
        title = text::prefix(&full, AUTOMATIC_TITLE_CHARS - 1).to_owned();
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
    let rows = db::messages::page(&state.pool, user_id, conversation_id, &page).await?;
    if rows.is_empty() {
        // Statement 2 when the page is empty: is that an empty conversation or someone else's?
        db::conversations::get(&state.pool, user_id, conversation_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("conversation", conversation_id))?;
        return Ok(proto::ListMessagesResponse::default());
    }
    // Statement 2 otherwise: every generation of the page at once (not the probe row's,
    // which is never in the page).
    let ids: Vec<Uuid> = rows
        .iter()
        .take(page.size as usize)
        .map(|row| row.id)
        .collect();
    let mut by_message = group_by_message(db::generations::of_messages(&state.pool, &ids).await?);
    let (messages, next_page_token) = page.fill(
        rows,
        |row| Cursor {
            at: row.created_at,
            id: row.id,
        },
        |row| {
            let generations = by_message.remove(&row.id).unwrap_or_default();
            wire::message(row, generations)
        },
        // The edge signs a URL for every completed image.
        |message| {
            message
                .generations
                .iter()
                .filter(|generation| generation.status() == proto::GenerationStatus::Completed)
                .count()
        },
    );
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
    fn automatic_titles_are_normalised_titles() {
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        for raw in [
            "a red fox\nin the\tsnow",
            &format!("{}x\u{303}yz", "w".repeat(58)),
            &format!("{}{family}{family}", "w".repeat(57)),
            &"caf\u{E9} ".repeat(30),
        ] {
            let prompt = text::clean(raw, text::PROMPT).expect("a valid prompt");
            let title = automatic_title(&prompt);
            assert!(title.chars().count() <= AUTOMATIC_TITLE_CHARS, "{title}");
            assert_eq!(text::clean(&title, text::TITLE).as_ref(), Ok(&title));
            assert!(!title.contains("x…"), "a mark cut from its base: {title}");
            assert!(!title.contains("\u{200D}…"), "a joined emoji cut: {title}");
        }
    }

    /// The row SendMessage stores for `message`.
    fn stored(message: &NewMessage) -> MessageRow {
        let settings = &message.settings;
        MessageRow {
            id: Uuid::now_v7(),
            conversation_id: message.conversation_id,
            content: message.prompt.clone(),
            model: settings.model.clone(),
            width: i32::try_from(settings.width).expect("fits"),
            height: i32::try_from(settings.height).expect("fits"),
            image_count: i16::try_from(settings.image_count).expect("fits"),
            style_preset: settings.style_preset.clone(),
            seed: settings.seed.map(|seed| i64::try_from(seed).expect("fits")),
            negative_prompt: settings.negative_prompt.clone(),
            status: "completed".into(),
            intent_kind: Some("new".into()),
            resolved_prompt: Some("resolved".into()),
            edit_type: None,
            strength: None,
            enhanced_prompt: Some("enhanced".into()),
            effective_negative_prompt: Some("effective".into()),
            cost: settings.cost(),
            client_request_id: message.client_request_id.clone(),
            created_at: db::now(),
            unset_settings: settings.unset.to_row(),
        }
    }

    #[test]
    fn a_retry_differs_in_exactly_the_fields_it_changed() {
        let catalog = crate::catalog::Catalog::embedded();
        let conversation_id = Uuid::now_v7().to_string();
        let parse = |prompt: &str, settings: proto::GenerationSettings| {
            NewMessage::parse(
                proto::SendMessageRequest {
                    conversation_id: conversation_id.clone(),
                    prompt: prompt.into(),
                    settings: Some(settings),
                    client_request_id: "key".into(),
                },
                &catalog,
            )
            .expect("valid")
        };
        let base = proto::GenerationSettings {
            model: "sdxl".into(),
            width: Some(768),
            height: Some(512),
            image_count: Some(2),
            style_preset: "anime".into(),
            seed: Some(7),
            negative_prompt: "blurry".into(),
        };
        let first = stored(&parse("a red fox", base.clone()));

        // The same request, written differently: normalisation and defaults make it equal.
        let same = parse(" a red\u{200B} fox ", base.clone());
        assert_eq!(differences(&same, &first), Vec::<&str>::new());
        let defaults = stored(&parse("fox", proto::GenerationSettings::default()));
        let explicit = parse(
            "fox",
            proto::GenerationSettings {
                model: "builtin".into(),
                image_count: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(differences(&explicit, &defaults), Vec::<&str>::new());
        // Settings left unset that the first message has since inherited from the one
        // before (an edit after an sdxl picture) are still the same request.
        let inherited = MessageRow {
            model: "sdxl".into(),
            width: 1024,
            height: 768,
            style_preset: "cinematic".into(),
            seed: Some(99),
            negative_prompt: "text".into(),
            ..defaults.clone()
        };
        let unset = parse("fox", proto::GenerationSettings::default());
        assert_eq!(differences(&unset, &inherited), Vec::<&str>::new());
        assert_eq!(
            differences(&explicit, &inherited),
            ["settings.model"],
            "naming the default model is not leaving it unset once it was inherited"
        );

        let changes: Vec<(&str, proto::GenerationSettings, &str)> = vec![
            ("a red fox at night", base.clone(), "prompt"),
            (
                "a red fox",
                proto::GenerationSettings {
                    model: "builtin".into(),
                    ..base.clone()
                },
                "settings.model",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    width: Some(512),
                    ..base.clone()
                },
                "settings.width",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    height: Some(768),
                    ..base.clone()
                },
                "settings.height",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    image_count: Some(3),
                    ..base.clone()
                },
                "settings.image_count",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    style_preset: String::new(),
                    ..base.clone()
                },
                "settings.style_preset",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    seed: None,
                    ..base.clone()
                },
                "settings.seed",
            ),
            (
                "a red fox",
                proto::GenerationSettings {
                    negative_prompt: "blurry, dark".into(),
                    ..base.clone()
                },
                "settings.negative_prompt",
            ),
        ];
        for (prompt, settings, field) in changes {
            assert_eq!(differences(&parse(prompt, settings), &first), [field]);
        }
        let everything = parse(
            "another fox",
            proto::GenerationSettings {
                seed: Some(8),
                ..base
            },
        );
        assert_eq!(
            differences(&everything, &first),
            ["prompt", "settings.seed"]
        );
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
