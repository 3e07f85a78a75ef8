//! End-to-end: the whole mesh in one process, driven only through the public API.

use std::collections::HashMap;
use std::time::Duration;

use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_tests::{Mesh, MeshOptions, Watcher, authorized, kind, new_conversation};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_conversation_from_first_prompt_to_listed_history() {
    atelier_testkit::init_logging();
    let mesh = Mesh::start(MeshOptions::default()).await.expect("mesh");
    let bearer = mesh.bearer("alice").expect("token");
    let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));
    // The client watches its events before it sends anything.
    let mut watcher = Watcher::open(mesh.connect().await.expect("connect"), &bearer, None)
        .await
        .expect("watch");

    let conversation = new_conversation(&mut chat, &bearer)
        .await
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

    // The pipeline makes every image: follow each message through WatchEvents, as a
    // client does, to its completed generations.
    let mut steps: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut unfinished: usize = sent.iter().map(|message| message.generations.len()).sum();
    while unfinished > 0 {
        let event = watcher
            .next(Duration::from_secs(30))
            .await
            .expect("the pipeline's next event");
        assert_eq!(event.user_id, "alice");
        if let Some(proto::event::Payload::GenerationCompleted(done)) = &event.payload {
            for generation in &done.generations {
                assert_eq!(generation.status(), proto::GenerationStatus::Completed);
                assert!(
                    generation.image_url.starts_with("http://"),
                    "{generation:?}"
                );
            }
            unfinished -= done.generations.len();
        }
        assert!(
            !matches!(
                event.payload,
                Some(proto::event::Payload::GenerationFailed(_))
            ),
            "{event:?}"
        );
        steps
            .entry(event.message_id.clone())
            .or_default()
            .push(kind(&event));
    }
    for message in &sent {
        let steps = &steps[&message.id];
        let at = |kind: &str| {
            steps
                .iter()
                .position(|step| *step == kind)
                .unwrap_or_else(|| panic!("{kind} in {steps:?}"))
        };
        // Each step once, in causal order; progress between the start and the end.
        assert!(
            at("message_created") < at("generation_started"),
            "{steps:?}"
        );
        assert!(
            at("generation_started") < at("intent_resolved"),
            "{steps:?}"
        );
        assert!(
            at("intent_resolved") < at("generation_progress"),
            "{steps:?}"
        );
        assert!(
            at("generation_progress") < at("generation_completed"),
            "{steps:?}"
        );
        for kind in ["message_created", "generation_started", "intent_resolved"] {
            assert_eq!(
                steps.iter().filter(|step| **step == kind).count(),
                1,
                "{steps:?}"
            );
        }
    }

    // Every completed image has a signed URL the edge serves: in GetMessage, ListMessages
    // and ListFavorites.
    let http = reqwest::Client::new();
    let mut image_urls = Vec::new();
    for message in &sent {
        let settled = chat
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
        assert_eq!(settled.status(), proto::MessageStatus::Completed);
        assert!(!settled.enhanced_prompt.is_empty());
        for generation in &settled.generations {
            assert_eq!(generation.status(), proto::GenerationStatus::Completed);
            assert!(generation.image_url_expires_at.is_some());
            let fetched = http.get(&generation.image_url).send().await.expect("GET");
            assert_eq!(fetched.status(), 200, "{}", generation.image_url);
            assert_eq!(fetched.headers()["content-type"], "image/png");
            let png = fetched.bytes().await.expect("body");
            let decoded = png::Decoder::new(std::io::Cursor::new(png.to_vec()))
                .read_info()
                .expect("a PNG");
            assert_eq!(decoded.info().width, generation.width);
            image_urls.push((generation.id.clone(), generation.image_url.clone()));
        }
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

    for generation in history.messages.iter().flat_map(|m| &m.generations) {
        assert!(!generation.image_url.is_empty(), "{generation:?}");
    }
    let (favorite_id, favorite_url) = image_urls[0].clone();
    chat.set_favorite(
        authorized(
            proto::SetFavoriteRequest {
                generation_id: favorite_id.clone(),
                favorite: true,
            },
            &bearer,
        )
        .expect("request"),
    )
    .await
    .expect("favourite");
    let favorites = chat
        .list_favorites(
            authorized(proto::ListFavoritesRequest::default(), &bearer).expect("request"),
        )
        .await
        .expect("favourites")
        .into_inner();
    assert_eq!(favorites.generations[0].id, favorite_id);
    // URLs are stable for a while, so a browser's cache keeps working across reloads.
    assert_eq!(favorites.generations[0].image_url, favorite_url);

    // A cache revalidates with the entity tag.
    let first = http.get(&favorite_url).send().await.expect("GET");
    let etag = first.headers()["etag"].clone();
    assert!(
        first.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .starts_with("private, max-age=")
    );
    let again = http
        .get(&favorite_url)
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 304);

    // Tampered, another user's and expired URLs are all a bare 403.
    let tampered = favorite_url.replace("signature=", "signature=A");
    let bobs = favorite_url.replace(
        &atelier_images::key_for("alice", &favorite_id),
        &atelier_images::key_for("bob", &favorite_id),
    );
    let expired = atelier_images::ImageUrls::local(
        &format!("http://{}", mesh.edge_http),
        mesh.image_url_secret.as_bytes(),
        Duration::from_secs(60),
    )
    .url_for(
        "alice",
        &favorite_id,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    )
    .await
    .expect("signed")
    .url;
    for refused in [tampered, bobs, expired] {
        let response = http.get(&refused).send().await.expect("GET");
        assert_eq!(response.status(), 403, "{refused}");
        assert!(response.bytes().await.expect("body").is_empty());
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

/// Follows `watcher` until every image of `message_id` is completed.
async fn until_completed(watcher: &mut Watcher, message_id: &str, images: usize) {
    let mut completed = 0;
    while completed < images {
        let event = watcher
            .next(Duration::from_secs(30))
            .await
            .expect("the pipeline's next event");
        if event.message_id != message_id {
            continue;
        }
        match &event.payload {
            Some(proto::event::Payload::GenerationCompleted(done)) => {
                completed += done.generations.len();
            }
            Some(proto::event::Payload::GenerationFailed(failed)) => {
                panic!("{failed:?}")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_edit_after_an_sdxl_picture_stays_on_sdxl_at_its_size_from_its_seed() {
    atelier_testkit::init_logging();
    let sd =
        atelier_testkit::fakes::automatic1111(atelier_testkit::fakes::sized_answer(Duration::ZERO))
            .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/sdapi/v1/img2img"))
        .respond_with(atelier_testkit::fakes::sized_answer(Duration::ZERO))
        .mount(&sd)
        .await;
    let mesh = Mesh::start(MeshOptions {
        automatic1111_url: Some(sd.uri()),
        ..MeshOptions::default()
    })
    .await
    .expect("mesh");
    let bearer = mesh.bearer("carol").expect("token");
    let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));
    let mut watcher = Watcher::open(mesh.connect().await.expect("connect"), &bearer, None)
        .await
        .expect("watch");
    let conversation = new_conversation(&mut chat, &bearer)
        .await
        .expect("conversation");
    let mut send = async |prompt: &str, settings: proto::GenerationSettings| {
        let request = proto::SendMessageRequest {
            conversation_id: conversation.id.clone(),
            prompt: prompt.into(),
            settings: Some(settings),
            client_request_id: String::new(),
        };
        chat.send_message(authorized(request, &bearer).expect("request"))
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message")
    };

    let picture = send(
        "a lighthouse on a cliff at dusk",
        proto::GenerationSettings {
            model: "sdxl".into(),
            width: Some(1024),
            height: Some(768),
            ..Default::default()
        },
    )
    .await;
    until_completed(&mut watcher, &picture.id, 1).await;
    // The edit names no setting at all.
    let edit = send("make it night-time", proto::GenerationSettings::default()).await;
    until_completed(&mut watcher, &edit.id, 1).await;

    let get = async |id: &str| {
        let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));
        let request = proto::GetMessageRequest {
            message_id: id.to_owned(),
        };
        chat.get_message(authorized(request, &bearer).expect("request"))
            .await
            .expect("get")
            .into_inner()
            .message
            .expect("message")
    };
    let (picture, edit) = (get(&picture.id).await, get(&edit.id).await);
    assert_eq!(
        edit.intent.as_ref().expect("intent").kind(),
        proto::IntentKind::Edit
    );
    let settings = edit.settings.as_ref().expect("settings");
    assert_eq!(settings.model, "sdxl");
    assert_eq!((settings.width, settings.height), (Some(1024), Some(768)));
    let (before, after) = (&picture.generations[0], &edit.generations[0]);
    assert_eq!(after.model, "sdxl");
    assert_eq!((after.width, after.height), (1024, 768));
    assert_eq!(after.seed, before.seed, "from its seed");
    assert_eq!(after.init_generation_id, before.id);
    assert_eq!(edit.cost, picture.cost, "priced as sdxl");

    // What AUTOMATIC1111 was asked: an img2img of the first picture, on sdxl's checkpoint,
    // at its size and seed.
    let requests = sd.received_requests().await.expect("recorded");
    let img2img: Vec<serde_json::Value> = requests
        .iter()
        .filter(|request| request.url.path() == "/sdapi/v1/img2img")
        .map(|request| serde_json::from_slice(&request.body).expect("json"))
        .collect();
    assert_eq!(img2img.len(), 1, "the edit, once");
    let sent = &img2img[0];
    assert_eq!(
        sent["override_settings"]["sd_model_checkpoint"],
        "sd_xl_base_1.0.safetensors"
    );
    assert_eq!(
        (&sent["width"], &sent["height"]),
        (&1024.into(), &768.into())
    );
    assert_eq!(sent["seed"], before.seed);
    assert_eq!(sent["init_images"].as_array().map(Vec::len), Some(1));

    let balance = chat
        .get_balance(authorized(proto::GetBalanceRequest {}, &bearer).expect("request"))
        .await
        .expect("balance")
        .into_inner()
        .balance;
    assert_eq!(balance, 100 - picture.cost - edit.cost);
}
