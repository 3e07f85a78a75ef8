//! SetFavorite and ListFavorites.

use atelier_proto::v1 as proto;

use crate::db;
use crate::error::ServiceError;
use crate::pagination::{Cursor, PageRequest};
use crate::requests;
use crate::{State, wire};

pub async fn set(
    state: &State,
    user_id: &str,
    request: proto::SetFavoriteRequest,
) -> Result<proto::SetFavoriteResponse, ServiceError> {
    let id = requests::id("generation_id", &request.generation_id)?;
    match db::generations::set_favorite(&state.pool, user_id, id, request.favorite).await? {
        Some(row) => Ok(proto::SetFavoriteResponse {
            generation: Some(wire::generation(row)),
        }),
        // Read only on this failure path: missing (or not theirs) versus not finished.
        None => match db::generations::get(&state.pool, user_id, id).await? {
            None => Err(ServiceError::not_found("generation", id)),
            Some(row) => Err(ServiceError::FailedPrecondition(format!(
                "generation {id} is {}; only completed images can be favourites",
                row.status
            ))),
        },
    }
}

pub async fn list(
    state: &State,
    user_id: &str,
    request: proto::ListFavoritesRequest,
) -> Result<proto::ListFavoritesResponse, ServiceError> {
    let page = PageRequest::parse(request.page_size, &request.page_token)?;
    let rows = db::generations::favorites(&state.pool, user_id, &page).await?;
    let (generations, next_page_token) = page.fill(
        rows,
        |row| Cursor {
            at: row.created_at,
            id: row.id,
        },
        wire::generation,
        // The edge signs a URL for every completed image.
        |generation| usize::from(generation.status() == proto::GenerationStatus::Completed),
    );
    Ok(proto::ListFavoritesResponse {
        generations,
        next_page_token,
    })
}
