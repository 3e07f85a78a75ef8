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
        // A client retrying after a lost answer gets the same message back (as it is now:
        // the pipeline may already be working on it), and is not charged again.
        let retried = chat
            .send_message(authorized(request, &bearer).expect("request"))
            .await
            .expect("retry")
            .into_inner()
            .message
            .expect("message");
        assert_eq!(retried.id, message.id);
        assert_eq!(retried.cost, message.cost);
        let generation_ids = |m: &proto::Message| {
            m.generations
                .iter()
                .map(|g| g.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(generation_ids(&retried), generation_ids(&message));
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
    let ids =
        |messages: &[proto::Message]| messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    let newest_first: Vec<_> = sent.iter().rev().cloned().collect();
    assert_eq!(ids(&history.messages), ids(&newest_first));

    // The pipeline makes every image: follow each message to its stored picture.
    for message in &sent {
        let mut settled = None;
        for _ in 0..300 {
            let current = chat
                .get_message(
                    authorized(
                        proto::GetMessageRequest {
                            message_id: message.id.clone(),
                        },
                        &bearer,
                    )
                    .expect("request"),
                )
                .await
                .expect("get")
                .into_inner()
                .message
                .expect("message");
            if current.status() == proto::MessageStatus::Completed {
                settled = Some(current);
                break;
            }
            assert_ne!(
                current.status(),
                proto::MessageStatus::Failed,
                "{current:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let settled = settled.expect("completed within 30 s");
        assert!(!settled.enhanced_prompt.is_empty());
        let store = mesh.images().expect("store");
        for generation in &settled.generations {
            assert_eq!(generation.status(), proto::GenerationStatus::Completed);
            let key = atelier_images::key_for("alice", &generation.id);
            let png = store.get(&key).await.expect("the image is in storage");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
        }
    }

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
