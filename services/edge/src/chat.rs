//! `atelier.v1.ChatService`: each RPC forwarded to the conversation service for the caller.
//!
//! The edge adds the user, the service credential and the trace context, carries the
//! client's deadline over, and drops every other client header: nothing a user sends
//! reaches an internal service but the request message itself.

use std::pin::Pin;

use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_server::ChatService;
use atelier_runtime::internal_call::{OutgoingCall, on_behalf_of};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::EdgeError;
use crate::gatekeeper::Caller;

pub type ConversationClient = ConversationServiceClient<InterceptedService<Channel, OutgoingCall>>;

pub struct ChatApi {
    pub conversation: ConversationClient,
}

type Reply<T> = Result<Response<T>, Status>;

/// The internal request for a public one: the message, the caller, the deadline.
fn forward<T>(request: Request<T>) -> Result<Request<T>, Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the gatekeeper did not run"))?;
    let deadline = request.metadata().get("grpc-timeout").cloned();
    let mut forwarded = Request::new(request.into_inner());
    if let Some(deadline) = deadline {
        forwarded.metadata_mut().insert("grpc-timeout", deadline);
    }
    on_behalf_of(&mut forwarded, &caller.0)?;
    Ok(forwarded)
}

/// The public response for an internal one: the message only, errors through [`EdgeError`].
fn relay<T>(result: Result<Response<T>, Status>) -> Reply<T> {
    result
        .map(|response| Response::new(response.into_inner()))
        .map_err(|status| EdgeError::Upstream(status).into())
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    async fn create_conversation(
        &self,
        request: Request<proto::CreateConversationRequest>,
    ) -> Reply<proto::CreateConversationResponse> {
        relay(
            self.conversation
                .clone()
                .create_conversation(forward(request)?)
                .await,
        )
    }

    async fn list_conversations(
        &self,
        request: Request<proto::ListConversationsRequest>,
    ) -> Reply<proto::ListConversationsResponse> {
        relay(
            self.conversation
                .clone()
                .list_conversations(forward(request)?)
                .await,
        )
    }

    async fn get_conversation(
        &self,
        request: Request<proto::GetConversationRequest>,
    ) -> Reply<proto::GetConversationResponse> {
        relay(
            self.conversation
                .clone()
                .get_conversation(forward(request)?)
                .await,
        )
    }

    async fn rename_conversation(
        &self,
        request: Request<proto::RenameConversationRequest>,
    ) -> Reply<proto::RenameConversationResponse> {
        relay(
            self.conversation
                .clone()
                .rename_conversation(forward(request)?)
                .await,
        )
    }

    async fn archive_conversation(
        &self,
        request: Request<proto::ArchiveConversationRequest>,
    ) -> Reply<proto::ArchiveConversationResponse> {
        relay(
            self.conversation
                .clone()
                .archive_conversation(forward(request)?)
                .await,
        )
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Reply<proto::SendMessageResponse> {
        relay(
            self.conversation
                .clone()
                .send_message(forward(request)?)
                .await,
        )
    }

    async fn list_messages(
        &self,
        request: Request<proto::ListMessagesRequest>,
    ) -> Reply<proto::ListMessagesResponse> {
        relay(
            self.conversation
                .clone()
                .list_messages(forward(request)?)
                .await,
        )
    }

    async fn get_message(
        &self,
        request: Request<proto::GetMessageRequest>,
    ) -> Reply<proto::GetMessageResponse> {
        relay(
            self.conversation
                .clone()
                .get_message(forward(request)?)
                .await,
        )
    }

    async fn cancel_generation(
        &self,
        request: Request<proto::CancelGenerationRequest>,
    ) -> Reply<proto::CancelGenerationResponse> {
        relay(
            self.conversation
                .clone()
                .cancel_generation(forward(request)?)
                .await,
        )
    }

    async fn set_favorite(
        &self,
        request: Request<proto::SetFavoriteRequest>,
    ) -> Reply<proto::SetFavoriteResponse> {
        relay(
            self.conversation
                .clone()
                .set_favorite(forward(request)?)
                .await,
        )
    }

    async fn list_favorites(
        &self,
        request: Request<proto::ListFavoritesRequest>,
    ) -> Reply<proto::ListFavoritesResponse> {
        relay(
            self.conversation
                .clone()
                .list_favorites(forward(request)?)
                .await,
        )
    }

    async fn get_balance(
        &self,
        request: Request<proto::GetBalanceRequest>,
    ) -> Reply<proto::GetBalanceResponse> {
        relay(
            self.conversation
                .clone()
                .get_balance(forward(request)?)
                .await,
        )
    }

    type WatchEventsStream =
        Pin<Box<dyn Stream<Item = Result<proto::WatchEventsResponse, Status>> + Send>>;

    async fn watch_events(
        &self,
        _request: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        Err(EdgeError::Unimplemented("WatchEvents").into())
    }
}
