//! CreateConversation, ListConversations, GetConversation, RenameConversation,
//! ArchiveConversation.

use atelier_proto::v1 as proto;
use uuid::Uuid;

use crate::db;
use crate::error::ServiceError;
use crate::outbox::EventContext;
use crate::pagination::{Cursor, PageRequest};
use crate::requests::{self, NewConversation, Rename};
use crate::{State, wire};

pub async fn create(
    state: &State,
    user_id: &str,
    request: proto::CreateConversationRequest,
) -> Result<proto::CreateConversationResponse, ServiceError> {
    let new = NewConversation::parse(request, state.config.max_generations_per_conversation)?;
    let now = db::now();
    // Every user's first conversation opens their account, so SendMessage can rely on one.
    db::credits::open_account(&state.pool, user_id, state.config.starting_credits, now).await?;
    let row = db::conversations::create(
        &state.pool,
        db::conversations::NewConversationRow {
            id: Uuid::now_v7(),
            owner_id: user_id,
            title: new.title.as_deref(),
            max_generations: new.max_generations,
            now,
        },
    )
    .await?;
    Ok(proto::CreateConversationResponse {
        conversation: Some(wire::conversation(row)),
    })
}

pub async fn list(
    state: &State,
    user_id: &str,
    request: proto::ListConversationsRequest,
) -> Result<proto::ListConversationsResponse, ServiceError> {
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
    let rows =
        db::conversations::list(&state.pool, user_id, request.include_archived, &page).await?;
    let (conversations, next_page_token) = page.fill(
        rows,
        |row| Cursor {
            at: row.last_activity_at,
            id: row.id,
        },
        wire::conversation,
        // No images.
        |_| 0,
    );
    Ok(proto::ListConversationsResponse {
        conversations,
        next_page_token,
    })
}

pub async fn get(
    state: &State,
    user_id: &str,
    request: proto::GetConversationRequest,
) -> Result<proto::GetConversationResponse, ServiceError> {
    let id = requests::id("conversation_id", &request.conversation_id)?;
    let row = db::conversations::get(&state.pool, user_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("conversation", id))?;
    Ok(proto::GetConversationResponse {
        conversation: Some(wire::conversation(row)),
    })
}

pub async fn rename(
    state: &State,
    user_id: &str,
    request: proto::RenameConversationRequest,
) -> Result<proto::RenameConversationResponse, ServiceError> {
    let rename = Rename::try_from(request)?;
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
    let renamed = db::conversations::rename(
        &state.pool,
        user_id,
        rename.conversation_id,
        &rename.title,
        &event,
        now,
    )
    .await?;
    match renamed {
        Some(row) => {
            state.relay.hand_off(vec![event]);
            Ok(proto::RenameConversationResponse {
                conversation: Some(wire::conversation(row)),
            })
        }
        None => Err(refusal(state, user_id, rename.conversation_id).await),
    }
}

pub async fn archive(
    state: &State,
    user_id: &str,
    request: proto::ArchiveConversationRequest,
) -> Result<proto::ArchiveConversationResponse, ServiceError> {
    let id = requests::id("conversation_id", &request.conversation_id)?;
    let row = db::conversations::archive(&state.pool, user_id, id)
        .await?
        .ok_or_else(|| ServiceError::not_found("conversation", id))?;
    Ok(proto::ArchiveConversationResponse {
        conversation: Some(wire::conversation(row)),
    })
}

/// Why a conditional write on an active conversation touched nothing: it is not the
/// caller's, or it is archived. Read only on this failure path.
pub async fn refusal(state: &State, user_id: &str, id: Uuid) -> ServiceError {
    match db::conversations::get(&state.pool, user_id, id).await {
        Ok(None) => ServiceError::not_found("conversation", id),
        Ok(Some(row)) if row.status == "archived" => ServiceError::Archived(id.to_string()),
        Ok(Some(_)) => ServiceError::Unexpected(anyhow::anyhow!(
            "conversation {id} refused a write but is active and owned by the caller"
        )),
        Err(err) => err.into(),
    }
}
