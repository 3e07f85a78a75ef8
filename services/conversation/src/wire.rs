//! Database rows turned into protobuf messages for responses and events.

use atelier_proto::v1 as proto;
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::db::{ConversationRow, GenerationRow, MessageRow};

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

pub fn conversation(row: ConversationRow) -> proto::Conversation {
    let status = match row.status.as_str() {
        "active" => proto::ConversationStatus::Active,
        "archived" => proto::ConversationStatus::Archived,
        _ => proto::ConversationStatus::Unspecified,
    };
    proto::Conversation {
        id: row.id.to_string(),
        title: row.title,
        auto_titled: row.auto_titled,
        status: status.into(),
        message_count: count(row.message_count),
        generation_count: count(row.generation_count),
        max_generations: count(row.max_generations),
        created_at: Some(timestamp(row.created_at)),
        last_activity_at: Some(timestamp(row.last_activity_at)),
    }
}

pub fn message_status(status: &str) -> proto::MessageStatus {
    match status {
        "queued" => proto::MessageStatus::Queued,
        "processing" => proto::MessageStatus::Processing,
        "completed" => proto::MessageStatus::Completed,
        "failed" => proto::MessageStatus::Failed,
        "cancelled" => proto::MessageStatus::Cancelled,
        _ => proto::MessageStatus::Unspecified,
    }
}

pub fn generation_status(status: &str) -> proto::GenerationStatus {
    match status {
        "queued" => proto::GenerationStatus::Queued,
        "running" => proto::GenerationStatus::Running,
        "completed" => proto::GenerationStatus::Completed,
        "failed" => proto::GenerationStatus::Failed,
        "cancelled" => proto::GenerationStatus::Cancelled,
        _ => proto::GenerationStatus::Unspecified,
    }
}

/// Resolved settings as the API shows them: every default filled in.
pub fn settings(settings: &crate::requests::Settings) -> proto::GenerationSettings {
    proto::GenerationSettings {
        model: settings.model.clone(),
        width: Some(settings.width),
        height: Some(settings.height),
        image_count: Some(settings.image_count),
        style_preset: settings.style_preset.clone(),
        seed: settings.seed,
        negative_prompt: settings.negative_prompt.clone(),
    }
}

/// A message with its generations (which must all belong to it).
pub fn message(row: MessageRow, generations: Vec<GenerationRow>) -> proto::Message {
    let intent = row
        .intent_kind
        .as_deref()
        .map(|kind| proto::ResolvedIntent {
            kind: match kind {
                "edit" => proto::IntentKind::Edit,
                _ => proto::IntentKind::New,
            }
            .into(),
            resolved_prompt: row.resolved_prompt.clone().unwrap_or_default(),
            edit_type: row.edit_type.clone().unwrap_or_default(),
            strength: row.strength.unwrap_or_default(),
        });
    proto::Message {
        id: row.id.to_string(),
        conversation_id: row.conversation_id.to_string(),
        content: row.content,
        settings: Some(proto::GenerationSettings {
            model: row.model,
            width: Some(count(row.width)),
            height: Some(count(row.height)),
            image_count: Some(u32::try_from(row.image_count).unwrap_or(0)),
            style_preset: row.style_preset,
            seed: row.seed.and_then(|seed| u64::try_from(seed).ok()),
            negative_prompt: row.negative_prompt.clone(),
        }),
        status: message_status(&row.status).into(),
        intent,
        enhanced_prompt: row.enhanced_prompt.unwrap_or_default(),
        negative_prompt: row.effective_negative_prompt.unwrap_or(row.negative_prompt),
        cost: row.cost,
        generations: generations.into_iter().map(generation).collect(),
        created_at: Some(timestamp(row.created_at)),
        client_request_id: row.client_request_id.unwrap_or_default(),
    }
}

pub fn generation(row: GenerationRow) -> proto::Generation {
    proto::Generation {
        id: row.id.to_string(),
        message_id: row.message_id.to_string(),
        conversation_id: row.conversation_id.to_string(),
        index: u32::try_from(row.position).unwrap_or(0),
        status: generation_status(&row.status).into(),
        model: row.model,
        width: count(row.width),
        height: count(row.height),
        seed: u64::try_from(row.seed).unwrap_or(0),
        prompt: row.prompt,
        negative_prompt: row.negative_prompt,
        init_generation_id: row
            .init_generation_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        strength: row.strength.unwrap_or_default(),
        // The edge signs a URL for the caller; a storage key never leaves the mesh.
        image_url: String::new(),
        cost: row.cost,
        is_favorite: row.is_favorite,
        error: row.error.unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        started_at: row.started_at.map(timestamp),
        completed_at: row.completed_at.map(timestamp),
        image_url_expires_at: None,
    }
}
