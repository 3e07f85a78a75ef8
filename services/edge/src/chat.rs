//! `atelier.v1.ChatService`: each RPC forwarded to the conversation service for the caller,
//! but WatchEvents, which the edge serves itself from NATS.
//!
//! The edge adds the user, the service credential and the trace context, carries the
//! client's deadline over, and drops every other client header: nothing a user sends
//! reaches an internal service but the request message itself. On the way back, every
//! completed image gets a signed URL for the caller.

use std::future::Future;
use std::sync::Arc;

use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_server::ChatService;
use atelier_runtime::internal_call::{OutgoingCall, on_behalf_of};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Extensions, Request, Response, Status};
use tonic_types::FieldViolation;

use crate::error::EdgeError;
use crate::gatekeeper::Caller;
use crate::links::ImageLinks;
use crate::watch::{EventStream, Watch};

pub type ConversationClient = ConversationServiceClient<InterceptedService<Channel, OutgoingCall>>;

pub struct ChatApi {
    pub conversation: ConversationClient,
    pub links: ImageLinks,
    pub watch: Arc<Watch>,
}

type Reply<T> = Result<Response<T>, Status>;

/// The caller the gatekeeper admitted.
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.0.clone())
        .ok_or_else(|| Status::internal("the gatekeeper did not run"))
}

/// The internal request for a public one: the message, the caller, the deadline.
fn forward<T>(request: Request<T>) -> Result<Request<T>, Status> {
    let caller = Caller(caller(&request)?);
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

/// A call that changes nothing, forwarded, and sent once more when the first attempt was
/// cut in transport before the conversation service answered (its instance died or
/// closed the connection): the balancer then picks another instance. Calls that change
/// state are not repeated here; SendMessage is made safe to repeat by its idempotency
/// key, which the client holds.
async fn read<T, R, Answer>(
    conversation: &ConversationClient,
    request: Request<T>,
    call: impl Fn(ConversationClient, Request<T>) -> Answer,
) -> Reply<R>
where
    T: Clone,
    Answer: Future<Output = Result<Response<R>, Status>>,
{
    let (metadata, _, message) = forward(request)?.into_parts();
    let attempt = || Request::from_parts(metadata.clone(), Extensions::default(), message.clone());
    match call(conversation.clone(), attempt()).await {
        Err(status) if atelier_runtime::grpc::cut_by_transport(&status) => {
            tracing::warn!(upstream = ?status, "a read was cut; trying another instance");
            relay(call(conversation.clone(), attempt()).await)
        }
        result => relay(result),
    }
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
        read(
            &self.conversation,
            request,
            |mut client, request| async move { client.list_conversations(request).await },
        )
        .await
    }

    async fn get_conversation(
        &self,
        request: Request<proto::GetConversationRequest>,
    ) -> Reply<proto::GetConversationResponse> {
        read(
            &self.conversation,
            request,
            |mut client, request| async move { client.get_conversation(request).await },
        )
        .await
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
        let user = caller(&request)?;
        let mut answer = relay(
            self.conversation
                .clone()
                .send_message(forward(request)?)
                .await,
        )?
        .into_inner();
        self.links
            .sign_message(&user, answer.message.as_mut())
            .await;
        Ok(Response::new(answer))
    }

    async fn list_messages(
        &self,
        request: Request<proto::ListMessagesRequest>,
    ) -> Reply<proto::ListMessagesResponse> {
        let user = caller(&request)?;
        let mut answer = read(
            &self.conversation,
            request,
            |mut client, request| async move { client.list_messages(request).await },
        )
        .await?
        .into_inner();
        for message in &mut answer.messages {
            self.links.sign_message(&user, Some(message)).await;
        }
        Ok(Response::new(answer))
    }

    async fn get_message(
        &self,
        request: Request<proto::GetMessageRequest>,
    ) -> Reply<proto::GetMessageResponse> {
        let user = caller(&request)?;
        let mut answer = read(
            &self.conversation,
            request,
            |mut client, request| async move { client.get_message(request).await },
        )
        .await?
        .into_inner();
        self.links
            .sign_message(&user, answer.message.as_mut())
            .await;
        Ok(Response::new(answer))
    }

    async fn cancel_generation(
        &self,
        request: Request<proto::CancelGenerationRequest>,
    ) -> Reply<proto::CancelGenerationResponse> {
        let user = caller(&request)?;
        let mut answer = relay(
            self.conversation
                .clone()
                .cancel_generation(forward(request)?)
                .await,
        )?
        .into_inner();
        self.links
            .sign_message(&user, answer.message.as_mut())
            .await;
        Ok(Response::new(answer))
    }

    async fn set_favorite(
        &self,
        request: Request<proto::SetFavoriteRequest>,
    ) -> Reply<proto::SetFavoriteResponse> {
        let user = caller(&request)?;
        let mut answer = relay(
            self.conversation
                .clone()
                .set_favorite(forward(request)?)
                .await,
        )?
        .into_inner();
        if let Some(generation) = answer.generation.as_mut() {
            self.links.sign(&user, generation).await;
        }
        Ok(Response::new(answer))
    }

    async fn list_favorites(
        &self,
        request: Request<proto::ListFavoritesRequest>,
    ) -> Reply<proto::ListFavoritesResponse> {
        let user = caller(&request)?;
        let mut answer = read(
            &self.conversation,
            request,
            |mut client, request| async move { client.list_favorites(request).await },
        )
        .await?
        .into_inner();
        self.links.sign_all(&user, &mut answer.generations).await;
        Ok(Response::new(answer))
    }

    async fn get_balance(
        &self,
        request: Request<proto::GetBalanceRequest>,
    ) -> Reply<proto::GetBalanceResponse> {
        read(
            &self.conversation,
            request,
            |mut client, request| async move { client.get_balance(request).await },
        )
        .await
    }

    async fn list_models(
        &self,
        request: Request<proto::ListModelsRequest>,
    ) -> Reply<proto::ListModelsResponse> {
        read(
            &self.conversation,
            request,
            |mut client, request| async move { client.list_models(request).await },
        )
        .await
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let user = caller(&request)?;
        let deadline = request.metadata().get("grpc-timeout").cloned();
        let watch = request.into_inner();
        let conversation_id = match watch.conversation_id.trim() {
            "" => None,
            id => {
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(atelier_runtime::grpc::invalid_argument(vec![
                        FieldViolation::new(
                            "conversation_id",
                            "must be a conversation id (a UUID)",
                        ),
                    ]));
                }
                // Another user's conversation (or none) is NOT_FOUND, as everywhere.
                let mut check = Request::new(proto::GetConversationRequest {
                    conversation_id: id.to_owned(),
                });
                if let Some(deadline) = deadline {
                    check.metadata_mut().insert("grpc-timeout", deadline);
                }
                on_behalf_of(&mut check, &user)?;
                relay(self.conversation.clone().get_conversation(check).await)?;
                Some(id.to_owned())
            }
        };
        let stream = self
            .watch
            .open(&user, watch.resume_after, conversation_id)
            .await?;
        Ok(Response::new(stream))
    }
}
