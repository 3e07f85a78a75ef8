//! The `ConversationService` gRPC trait, each method a caller check and one call into the
//! module of its RPC group; the calls that write run to their end whatever the caller
//! does ([`to_completion`]). Every user-facing call names its user in metadata (set by the
//! edge after verifying the JWT); the service credential was checked by the interceptor.

use std::future::Future;
use std::sync::Arc;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_server::ConversationService;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::caller_user_id;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::error::ServiceError;
use crate::{State, conversations, credits, favorites, messages, models, pipeline};

pub struct ConversationApi {
    pub state: Arc<State>,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn create_conversation(
        &self,
        request: Request<proto::CreateConversationRequest>,
    ) -> Reply<proto::CreateConversationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { conversations::create(&state, &user, request).await }).await
    }

    async fn list_conversations(
        &self,
        request: Request<proto::ListConversationsRequest>,
    ) -> Reply<proto::ListConversationsResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            conversations::list(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn get_conversation(
        &self,
        request: Request<proto::GetConversationRequest>,
    ) -> Reply<proto::GetConversationResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            conversations::get(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn rename_conversation(
        &self,
        request: Request<proto::RenameConversationRequest>,
    ) -> Reply<proto::RenameConversationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { conversations::rename(&state, &user, request).await }).await
    }

    async fn archive_conversation(
        &self,
        request: Request<proto::ArchiveConversationRequest>,
    ) -> Reply<proto::ArchiveConversationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { conversations::archive(&state, &user, request).await }).await
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Reply<proto::SendMessageResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { messages::send(&state, &user, request).await }).await
    }

    async fn list_messages(
        &self,
        request: Request<proto::ListMessagesRequest>,
    ) -> Reply<proto::ListMessagesResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            messages::list(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn get_message(
        &self,
        request: Request<proto::GetMessageRequest>,
    ) -> Reply<proto::GetMessageResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            messages::get(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn cancel_generation(
        &self,
        request: Request<proto::CancelGenerationRequest>,
    ) -> Reply<proto::CancelGenerationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::cancel(&state, &user, request).await }).await
    }

    async fn set_favorite(
        &self,
        request: Request<proto::SetFavoriteRequest>,
    ) -> Reply<proto::SetFavoriteResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { favorites::set(&state, &user, request).await }).await
    }

    async fn list_favorites(
        &self,
        request: Request<proto::ListFavoritesRequest>,
    ) -> Reply<proto::ListFavoritesResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            favorites::list(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn get_balance(
        &self,
        request: Request<proto::GetBalanceRequest>,
    ) -> Reply<proto::GetBalanceResponse> {
        let user = caller_user_id(&request)?;
        // A first call opens the account (a write).
        let state = Arc::clone(&self.state);
        to_completion(async move { credits::balance(&state, &user).await }).await
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Reply<proto::ListModelsResponse> {
        // A user's call like the others, though the answer is the same for everyone.
        caller_user_id(&request)?;
        Ok(Response::new(models::list(&self.state.config.catalog)))
    }

    async fn grant_credits(
        &self,
        request: Request<internal::GrantCreditsRequest>,
    ) -> Reply<internal::GrantCreditsResponse> {
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { credits::grant(&state, request).await }).await
    }

    async fn get_generation_context(
        &self,
        request: Request<internal::GetGenerationContextRequest>,
    ) -> Reply<internal::GetGenerationContextResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            pipeline::context(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn start_generation(
        &self,
        request: Request<internal::StartGenerationRequest>,
    ) -> Reply<internal::StartGenerationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::start(&state, &user, request).await }).await
    }

    async fn record_intent(
        &self,
        request: Request<internal::RecordIntentRequest>,
    ) -> Reply<internal::RecordIntentResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::record_intent(&state, &user, request).await }).await
    }

    async fn complete_generation(
        &self,
        request: Request<internal::CompleteGenerationRequest>,
    ) -> Reply<internal::CompleteGenerationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::complete(&state, &user, request).await }).await
    }

    async fn fail_generation(
        &self,
        request: Request<internal::FailGenerationRequest>,
    ) -> Reply<internal::FailGenerationResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::fail(&state, &user, request).await }).await
    }

    async fn apply_title(
        &self,
        request: Request<internal::ApplyTitleRequest>,
    ) -> Reply<internal::ApplyTitleResponse> {
        let user = caller_user_id(&request)?;
        let (state, request) = (Arc::clone(&self.state), request.into_inner());
        to_completion(async move { pipeline::apply_title(&state, &user, request).await }).await
    }
}

/// Runs a call that writes to its end even if its caller goes away. A deadline, a cancel
/// or a dropped connection drops the handler's future; dropped inside a transaction, the
/// transaction would only be rolled back when the pool next touches its connection,
/// holding its row locks until then (and PostgreSQL would warn "there is already a
/// transaction in progress"). Detached, it commits or rolls back on its own terms, and
/// only the answer is lost: a retry with the same client_request_id gets it. Reads need
/// none of this and run in place.
async fn to_completion<T: Send + 'static>(
    call: impl Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> Reply<T> {
    match tokio::spawn(call.in_current_span()).await {
        Ok(answer) => answer.map(Response::new).map_err(Status::from),
        Err(err) => {
            tracing::error!(error = %err, "a call's task failed");
            Err(Status::internal("internal error; it has been logged"))
        }
    }
}
