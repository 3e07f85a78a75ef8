//! End-to-end: the whole mesh in one process, driven only through the public API.

use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_tests::{Mesh, MeshOptions, authorized};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_conversation_from_first_prompt_to_listed_history() {
    atelier_testkit::init_logging();
    let mesh = Mesh::start(MeshOptions::default()).await.expect("mesh");
    let bearer = mesh.bearer("alice").expect("token");
    let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));

    let conversation = chat
        .create_conversation(
            authorized(proto::CreateConversationRequest::default(), &bearer).expect("request"),
        )
        .await
        .expect("create")
        .into_inner()
        .conversation
        .expect("conversation");

    let mut sent = Vec::new();
    for (prompt, count) in [("a red fox in the snow", 1), ("make it night-time", 2)] {
        let request = proto::SendMessageRequest {
            conversation_id: conversation.id.clone(),
            prompt: prompt.into(),
            settings: Some(proto::GenerationSettings {
                image_count: Some(count),
                ..Default::default()
            }),
            client_request_id: format!("client-{count}"),
        };
        let message = chat
            .send_message(authorized(request.clone(), &bearer).expect("request"))
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message");
        // A client retrying after a lost answer gets the same message back.
        let retried = chat
            .send_message(authorized(request, &bearer).expect("request"))
            .await
            .expect("retry")
            .into_inner()
            .message
            .expect("message");
        assert_eq!(retried, message);
        sent.push(message);
    }

    let history = chat
        .list_messages(
            authorized(
                proto::ListMessagesRequest {
                    conversation_id: conversation.id.clone(),
                    ..Default::default()
                },
                &bearer,
            )
            .expect("request"),
        )
        .await
        .expect("list")
        .into_inner();
    let newest_first: Vec<_> = sent.iter().rev().cloned().collect();
    assert_eq!(history.messages, newest_first);

    let listed = chat
        .list_conversations(
            authorized(proto::ListConversationsRequest::default(), &bearer).expect("request"),
        )
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.conversations.len(), 1);
    assert_eq!(listed.conversations[0].title, "a red fox in the snow");
    assert_eq!(listed.conversations[0].generation_count, 3);

    let balance = chat
        .get_balance(authorized(proto::GetBalanceRequest {}, &bearer).expect("request"))
        .await
        .expect("balance")
        .into_inner()
        .balance;
    let spent: i64 = sent.iter().map(|message| message.cost).sum();
    assert_eq!(balance, 100 - spent);

    // Every process of the mesh answers its health check: the edge and the conversation
    // service for their own API by name (they mark it SERVING once started), the workers
    // for the server as a whole.
    let checks = [
        (&mesh.edge, atelier_proto::CHAT_SERVICE_NAME),
        (&mesh.conversation, atelier_proto::CONVERSATION_SERVICE_NAME),
    ]
    .into_iter()
    .chain(mesh.workers.iter().map(|worker| (worker, "")));
    for (server, service) in checks {
        let mut health = HealthClient::new(
            tonic::transport::Channel::from_shared(server.url())
                .expect("url")
                .connect()
                .await
                .expect("connect"),
        );
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{}", server.url());
    }
}
