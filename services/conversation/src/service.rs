//! The `ConversationService` gRPC trait, each method a caller check and one call into the
//! module of its RPC group. Every user-facing call names its user in metadata (set by the
//! edge after verifying the JWT); the service credential was checked by the interceptor.

use std::sync::Arc;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_server::ConversationService;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::caller_user_id;
use tonic::{Request, Response, Status};

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
        Ok(Response::new(
            conversations::create(&self.state, &user, request.into_inner()).await?,
        ))
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
        Ok(Response::new(
            conversations::rename(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn archive_conversation(
        &self,
        request: Request<proto::ArchiveConversationRequest>,
    ) -> Reply<proto::ArchiveConversationResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            conversations::archive(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Reply<proto::SendMessageResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            messages::send(&self.state, &user, request.into_inner()).await?,
        ))
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
        Ok(Response::new(
            pipeline::cancel(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn set_favorite(
        &self,
        request: Request<proto::SetFavoriteRequest>,
    ) -> Reply<proto::SetFavoriteResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            favorites::set(&self.state, &user, request.into_inner()).await?,
        ))
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
        Ok(Response::new(credits::balance(&self.state, &user).await?))
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
        Ok(Response::new(
            credits::grant(&self.state, request.into_inner()).await?,
        ))
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
        Ok(Response::new(
            pipeline::start(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn record_intent(
        &self,
        request: Request<internal::RecordIntentRequest>,
    ) -> Reply<internal::RecordIntentResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            pipeline::record_intent(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn complete_generation(
        &self,
        request: Request<internal::CompleteGenerationRequest>,
    ) -> Reply<internal::CompleteGenerationResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            pipeline::complete(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn fail_generation(
        &self,
        request: Request<internal::FailGenerationRequest>,
    ) -> Reply<internal::FailGenerationResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            pipeline::fail(&self.state, &user, request.into_inner()).await?,
        ))
    }

    async fn apply_title(
        &self,
        request: Request<internal::ApplyTitleRequest>,
    ) -> Reply<internal::ApplyTitleResponse> {
        let user = caller_user_id(&request)?;
        Ok(Response::new(
            pipeline::apply_title(&self.state, &user, request.into_inner()).await?,
        ))
    }
}
