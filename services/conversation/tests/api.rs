//! The conversation service against a real PostgreSQL: the fast path, validation,
//! isolation between users, exact credits and limits under concurrency, idempotency and
//! the statement budget of ListMessages.

mod common;

use std::collections::HashSet;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::error_reason;
use atelier_proto::v1 as proto;
use atelier_testkit::StatementCounter;
use common::{
    AsUser, TestApp, balance, create_conversation, get_message, reason, send_images, send_request,
};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic_types::StatusExt;

#[tokio::test]
async fn send_message_answers_with_queued_generations_and_reserves_their_cost() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    assert!(conversation.auto_titled);
    assert_eq!(balance(&mut alice).await, 100);

    let request = proto::SendMessageRequest {
        settings: Some(proto::GenerationSettings {
            model: "builtin".into(),
            width: Some(768),
            height: Some(512),
            image_count: Some(3),
            style_preset: "watercolor".into(),
            seed: Some(7),
            negative_prompt: "blurry".into(),
        }),
        ..send_request(&conversation.id, "  a red fox in the snow ")
    };
    let message = alice
        .send_message(request)
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");

    assert_eq!(message.content, "a red fox in the snow");
    assert_eq!(message.status(), proto::MessageStatus::Queued);
    // 768x512 = 0.39 MP: 1 per image + 1 per started megapixel.
    assert_eq!(message.cost, 3 * 2);
    assert_eq!(message.generations.len(), 3);
    for (index, generation) in message.generations.iter().enumerate() {
        assert_eq!(generation.index as usize, index);
        assert_eq!(generation.status(), proto::GenerationStatus::Queued);
        assert_eq!((generation.width, generation.height), (768, 512));
        assert_eq!(generation.seed, 7 + index as u64);
        assert_eq!(generation.cost, 2);
        assert_eq!(generation.negative_prompt, "blurry");
    }
    assert_eq!(balance(&mut alice).await, 100 - 6);

    // The stored message reads back exactly as it was answered.
    let stored = get_message(&mut alice, &message.id).await;
    assert_eq!(stored, message);

    // The first prompt titled the conversation and bumped its counters.
    let conversation = alice
        .get_conversation(proto::GetConversationRequest {
            conversation_id: conversation.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(conversation.title, "a red fox in the snow");
    assert_eq!(conversation.message_count, 1);
    assert_eq!(conversation.generation_count, 3);

    // The outbox holds the jobs and events, in causal order, in the same transaction.
    let pool = app.db.pool().await.expect("pool");
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("outbox");
    let events = atelier_conversation::outbox::user_events_subject("alice");
    assert_eq!(
        subjects,
        [
            events.as_str(),
            &events,
            "jobs.generate",
            &events,
            "jobs.title"
        ]
    );

    // A second prompt neither retitles nor queues another title job.
    alice
        .send_message(send_request(&conversation.id, "make it night"))
        .await
        .expect("second send");
    let title_jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'jobs.title'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(title_jobs, 1);
}

#[tokio::test]
async fn each_bad_input_is_invalid_argument_naming_its_field() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let id = conversation.id.clone();
    let settings = |edit: fn(&mut proto::GenerationSettings)| {
        let mut settings = proto::GenerationSettings::default();
        edit(&mut settings);
        Some(settings)
    };

    let send_cases: Vec<(&str, proto::SendMessageRequest)> = vec![
        ("conversation_id", send_request("", "fox")),
        ("conversation_id", send_request("not-a-uuid", "fox")),
        ("prompt", send_request(&id, "")),
        ("prompt", send_request(&id, " \n\t ")),
        ("prompt", send_request(&id, &"x".repeat(4001))),
        // Control characters (NUL included, which PostgreSQL cannot store) are removed, so
        // a prompt of nothing else is refused.
        ("prompt", send_request(&id, "\0\u{200B}")),
        (
            "settings.model",
            proto::SendMessageRequest {
                settings: settings(|s| s.model = "dall-e-9".into()),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.width",
            proto::SendMessageRequest {
                settings: settings(|s| s.width = Some(32)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.width",
            proto::SendMessageRequest {
                settings: settings(|s| s.width = Some(513)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.height",
            proto::SendMessageRequest {
                settings: settings(|s| s.height = Some(4096)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.height",
            proto::SendMessageRequest {
                settings: settings(|s| {
                    s.model = "gpt-image-1".into();
                    s.height = Some(512);
                }),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.image_count",
            proto::SendMessageRequest {
                settings: settings(|s| s.image_count = Some(0)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.image_count",
            proto::SendMessageRequest {
                settings: settings(|s| s.image_count = Some(5)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.style_preset",
            proto::SendMessageRequest {
                settings: settings(|s| s.style_preset = "baroque".into()),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.seed",
            proto::SendMessageRequest {
                settings: settings(|s| s.seed = Some(u64::from(u32::MAX) + 1)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.negative_prompt",
            proto::SendMessageRequest {
                settings: settings(|s| s.negative_prompt = "n".repeat(2001)),
                ..send_request(&id, "fox")
            },
        ),
        (
            "client_request_id",
            proto::SendMessageRequest {
                client_request_id: "r".repeat(101),
                ..send_request(&id, "fox")
            },
        ),
        (
            "client_request_id",
            proto::SendMessageRequest {
                client_request_id: "key\0".into(),
                ..send_request(&id, "fox")
            },
        ),
        (
            "settings.negative_prompt",
            proto::SendMessageRequest {
                settings: settings(|s| s.negative_prompt = "\0\u{FEFF}".into()),
                ..send_request(&id, "fox")
            },
        ),
    ];
    for (field, request) in send_cases {
        let status = alice.send_message(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations.len(), 1, "{field}: {violations:?}");
        assert_eq!(violations[0].field, field);
        assert!(status.message().starts_with(field), "{}", status.message());
    }

    // The other RPCs' rules.
    let expect_field = |result: Result<_, tonic::Status>, field: &str| {
        let status = result.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("details")
            .field_violations;
        assert_eq!(violations[0].field, field);
    };
    expect_field(
        alice
            .create_conversation(proto::CreateConversationRequest {
                title: String::new(),
                max_generations: Some(0),
            })
            .await
            .map(drop),
        "max_generations",
    );
    expect_field(
        alice
            .create_conversation(proto::CreateConversationRequest {
                title: "t".repeat(201),
                max_generations: None,
            })
            .await
            .map(drop),
        "title",
    );
    for title in ["   ", "\0\u{200B}"] {
        expect_field(
            alice
                .rename_conversation(proto::RenameConversationRequest {
                    conversation_id: id.clone(),
                    title: title.into(),
                })
                .await
                .map(drop),
            "title",
        );
    }
    expect_field(
        app.admin()
            .grant_credits(internal::GrantCreditsRequest {
                user_id: "has space".into(),
                amount: 10,
                reference: "order-1".into(),
            })
            .await
            .map(drop),
        "user_id",
    );
    expect_field(
        alice
            .list_conversations(proto::ListConversationsRequest {
                page_token: "bogus".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "page_token",
    );
    expect_field(
        alice
            .list_messages(proto::ListMessagesRequest {
                conversation_id: "x".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "conversation_id",
    );
    expect_field(
        alice
            .get_message(proto::GetMessageRequest {
                message_id: "42".into(),
            })
            .await
            .map(drop),
        "message_id",
    );
    expect_field(
        alice
            .set_favorite(proto::SetFavoriteRequest {
                generation_id: String::new(),
                favorite: true,
            })
            .await
            .map(drop),
        "generation_id",
    );
    expect_field(
        alice
            .cancel_generation(proto::CancelGenerationRequest { target: None })
            .await
            .map(drop),
        "target",
    );
    expect_field(
        app.admin()
            .grant_credits(internal::GrantCreditsRequest {
                user_id: "alice".into(),
                amount: 0,
                reference: "order-1".into(),
            })
            .await
            .map(drop),
        "amount",
    );

    // Nothing was charged for any of it.
    assert_eq!(balance(&mut alice).await, 100);
}

#[tokio::test]
async fn another_users_ids_are_not_found_for_every_rpc() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let mut bob = app.client("bob");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "a fox", 1).await;
    let generation_id = message.generations[0].id.clone();
    let pool = app.db.pool().await.expect("pool");
    sqlx::query("UPDATE generations SET status = 'completed' WHERE id = $1::uuid")
        .bind(&generation_id)
        .execute(&pool)
        .await
        .expect("complete");
    alice
        .set_favorite(proto::SetFavoriteRequest {
            generation_id: generation_id.clone(),
            favorite: true,
        })
        .await
        .expect("alice may favourite her image");

    let conversation_id = conversation.id.clone();
    let not_found = |result: Result<(), tonic::Status>, rpc: &str| {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
    };
    not_found(
        bob.get_conversation(proto::GetConversationRequest {
            conversation_id: conversation_id.clone(),
        })
        .await
        .map(drop),
        "GetConversation",
    );
    not_found(
        bob.rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation_id.clone(),
            title: "mine now".into(),
        })
        .await
        .map(drop),
        "RenameConversation",
    );
    not_found(
        bob.archive_conversation(proto::ArchiveConversationRequest {
            conversation_id: conversation_id.clone(),
        })
        .await
        .map(drop),
        "ArchiveConversation",
    );
    not_found(
        bob.send_message(send_request(&conversation_id, "hijack"))
            .await
            .map(drop),
        "SendMessage",
    );
    not_found(
        bob.list_messages(proto::ListMessagesRequest {
            conversation_id: conversation_id.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
        "ListMessages",
    );
    not_found(
        bob.get_message(proto::GetMessageRequest {
            message_id: message.id.clone(),
        })
        .await
        .map(drop),
        "GetMessage",
    );
    not_found(
        bob.cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::MessageId(
                message.id.clone(),
            )),
        })
        .await
        .map(drop),
        "CancelGeneration(message)",
    );
    not_found(
        bob.cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::GenerationId(
                generation_id.clone(),
            )),
        })
        .await
        .map(drop),
        "CancelGeneration(generation)",
    );
    not_found(
        bob.set_favorite(proto::SetFavoriteRequest {
            generation_id: generation_id.clone(),
            favorite: false,
        })
        .await
        .map(drop),
        "SetFavorite",
    );

    // Bob's lists never show Alice's things, and nothing of hers changed.
    let bobs = bob
        .list_conversations(proto::ListConversationsRequest {
            include_archived: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.conversations.is_empty());
    let favorites = bob
        .list_favorites(proto::ListFavoritesRequest::default())
        .await
        .expect("favorites")
        .into_inner();
    assert!(favorites.generations.is_empty());
    let hers = alice
        .get_conversation(proto::GetConversationRequest { conversation_id })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(hers.status(), proto::ConversationStatus::Active);
    assert_eq!(hers.message_count, 1);
    assert_ne!(hers.title, "mine now");
    let alices_favorites = alice
        .list_favorites(proto::ListFavoritesRequest::default())
        .await
        .expect("favorites")
        .into_inner();
    assert_eq!(alices_favorites.generations.len(), 1);
    assert!(alices_favorites.generations[0].is_favorite);
}

#[tokio::test]
async fn archived_conversations_refuse_messages_and_renames() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let archived = alice
        .archive_conversation(proto::ArchiveConversationRequest {
            conversation_id: conversation.id.clone(),
        })
        .await
        .expect("archive")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(archived.status(), proto::ConversationStatus::Archived);

    let status = alice
        .send_message(send_request(&conversation.id, "fox"))
        .await
        .expect_err("archived");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation.id.clone(),
            title: "new".into(),
        })
        .await
        .expect_err("archived");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(balance(&mut alice).await, 100);

    // Archived conversations leave the default list but not the full one.
    let default_list = alice
        .list_conversations(proto::ListConversationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(default_list.conversations.is_empty());
    let full_list = alice
        .list_conversations(proto::ListConversationsRequest {
            include_archived: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(full_list.conversations.len(), 1);
}

#[tokio::test]
async fn two_hundred_concurrent_sends_spend_a_balance_for_fifty_exactly() {
    // The default model at its default size costs 2 credits: 100 credits pay for 50.
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let mut conversations = Vec::new();
    for _ in 0..4 {
        conversations.push(create_conversation(&mut alice, None).await.id);
    }

    let mut calls = tokio::task::JoinSet::new();
    for call in 0..200 {
        let mut client = app.client("alice");
        let conversation_id = conversations[call % conversations.len()].clone();
        calls.spawn(async move {
            client
                .send_message(send_request(
                    &conversation_id,
                    &format!("fox number {call}"),
                ))
                .await
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.expect("task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), error_reason::CREDITS_EXHAUSTED);
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (50, 150));
    assert_eq!(balance(&mut alice).await, 0);

    let pool = app.db.pool().await.expect("pool");
    let (grants, reserves, messages): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
             (SELECT COALESCE(sum(amount), 0)::bigint FROM credit_ledger WHERE kind = 'grant'), \
             (SELECT COALESCE(sum(amount), 0)::bigint FROM credit_ledger WHERE kind = 'reserve'), \
             (SELECT count(*) FROM messages)",
    )
    .fetch_one(&pool)
    .await
    .expect("sums");
    assert_eq!(grants, 100);
    assert_eq!(reserves, 100);
    assert_eq!(grants - reserves, 0, "the ledger must explain the balance");
    assert_eq!(messages, 50);
    // Refused sends left no trace in the conversations' counters either.
    let counted: i64 = sqlx::query_scalar("SELECT sum(message_count)::bigint FROM conversations")
        .fetch_one(&pool)
        .await
        .expect("sum");
    assert_eq!(counted, 50);
}

#[tokio::test]
async fn fifty_concurrent_sends_to_a_ten_image_conversation_accept_ten() {
    let app = TestApp::spawn_with(|config| config.starting_credits = 10_000).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, Some(10)).await;
    assert_eq!(conversation.max_generations, 10);

    let mut calls = tokio::task::JoinSet::new();
    for call in 0..50 {
        let mut client = app.client("alice");
        let id = conversation.id.clone();
        calls.spawn(async move {
            client
                .send_message(send_request(&id, &format!("fox {call}")))
                .await
        });
    }
    let mut accepted = 0;
    while let Some(result) = calls.join_next().await {
        match result.expect("task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), error_reason::GENERATION_LIMIT_REACHED);
            }
        }
    }
    assert_eq!(accepted, 10);
    let conversation = alice
        .get_conversation(proto::GetConversationRequest {
            conversation_id: conversation.id,
        })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(conversation.generation_count, 10);
    assert_eq!(balance(&mut alice).await, 10_000 - 10 * 2);
}

#[tokio::test]
async fn insufficient_credits_leave_no_trace() {
    let app = TestApp::spawn_with(|config| config.starting_credits = 5).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let request = proto::SendMessageRequest {
        settings: Some(proto::GenerationSettings {
            image_count: Some(3),
            ..Default::default()
        }),
        ..send_request(&conversation.id, "three foxes")
    };
    let status = alice.send_message(request).await.expect_err("6 > 5");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), error_reason::CREDITS_EXHAUSTED);
    let info = status.get_details_error_info().expect("info");
    assert_eq!(info.metadata.get("balance").map(String::as_str), Some("5"));
    assert_eq!(info.metadata.get("cost").map(String::as_str), Some("6"));

    let pool = app.db.pool().await.expect("pool");
    let (messages, outbox, count, title): (i64, i64, i32, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM outbox), \
                message_count, title FROM conversations",
    )
    .fetch_one(&pool)
    .await
    .expect("state");
    assert_eq!((messages, outbox, count, title.as_str()), (0, 0, 0, ""));
    assert_eq!(balance(&mut alice).await, 5);
}

#[tokio::test]
async fn a_repeated_client_request_id_returns_the_first_answer_and_charges_once() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let request = proto::SendMessageRequest {
        client_request_id: "retry-me".into(),
        ..send_request(&conversation.id, "a fox")
    };
    let first = alice
        .send_message(request.clone())
        .await
        .expect("first")
        .into_inner();
    let second = alice
        .send_message(request)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(balance(&mut alice).await, 98);

    // Twenty at once with a fresh key: one message, one charge, one answer.
    let request = proto::SendMessageRequest {
        client_request_id: "concurrent-key".into(),
        ..send_request(&conversation.id, "a second fox")
    };
    let answers = send_at_once(&app, "alice", 20, request, "every call succeeds").await;
    assert!(answers.iter().all(|answer| answer == &answers[0]));
    assert_eq!(balance(&mut alice).await, 96);
    let pool = app.db.pool().await.expect("pool");
    let (messages, reserves): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), \
                (SELECT count(*) FROM credit_ledger WHERE kind = 'reserve')",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((messages, reserves), (2, 2));

    // The same key in another conversation is another message.
    let other = create_conversation(&mut alice, None).await;
    let elsewhere = alice
        .send_message(proto::SendMessageRequest {
            client_request_id: "retry-me".into(),
            ..send_request(&other.id, "a fox")
        })
        .await
        .expect("other conversation")
        .into_inner();
    assert_ne!(elsewhere.message, first.message);
}

#[tokio::test]
async fn list_messages_pages_100_messages_of_4_images_in_two_statements() {
    let statements = StatementCounter::install();
    let app = TestApp::spawn_with(|config| config.starting_credits = 10_000).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let mut sent = Vec::new();
    for index in 0..100 {
        let message = alice
            .send_message(proto::SendMessageRequest {
                settings: Some(proto::GenerationSettings {
                    image_count: Some(4),
                    ..Default::default()
                }),
                ..send_request(&conversation.id, &format!("fox {index}"))
            })
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message");
        sent.push(message);
    }
    let request = |page_size, page_token: &str| proto::ListMessagesRequest {
        conversation_id: conversation.id.clone(),
        page_size,
        page_token: page_token.to_owned(),
    };

    // Warm the connection (its first statements prepare the queries).
    alice
        .list_messages(request(100, ""))
        .await
        .expect("warm-up");
    let (page, count) = statements
        .during(alice.list_messages(request(100, "")))
        .await;
    let page = page.expect("list").into_inner();
    assert!(count <= 2, "ListMessages ran {count} statements");
    assert!(
        count >= 1,
        "the counter saw no statement: it is not counting"
    );
    assert_eq!(page.messages.len(), 100);
    assert!(
        page.messages
            .iter()
            .all(|message| message.generations.len() == 4)
    );
    assert!(page.next_page_token.is_empty());
    // Newest first, each with its own generations.
    let newest_first: Vec<_> = sent.iter().rev().cloned().collect();
    assert_eq!(page.messages, newest_first);

    // Paging by 30 visits every message once, in order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = alice
            .list_messages(request(30, &token))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.messages.into_iter().map(|message| message.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = newest_first
        .iter()
        .map(|message| message.id.clone())
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn conversations_list_by_last_activity_and_page() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_conversation(&mut alice, None).await.id);
    }
    // Activity in the oldest moves it to the top.
    alice
        .send_message(send_request(&ids[0], "fox"))
        .await
        .expect("send");
    let mut expected: Vec<String> = ids[1..].iter().rev().cloned().collect();
    expected.insert(0, ids[0].clone());

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = alice
            .list_conversations(proto::ListConversationsRequest {
                page_size: 2,
                page_token: token.clone(),
                include_archived: false,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.conversations.len() <= 2);
        seen.extend(page.conversations.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
}

#[tokio::test]
async fn a_rename_ends_automatic_titles() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let renamed = alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation.id.clone(),
            title: "  Foxes  ".into(),
        })
        .await
        .expect("rename")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(renamed.title, "Foxes");
    assert!(!renamed.auto_titled);

    alice
        .send_message(send_request(&conversation.id, "a red fox"))
        .await
        .expect("send");
    let after = alice
        .get_conversation(proto::GetConversationRequest {
            conversation_id: conversation.id,
        })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(after.title, "Foxes");
    let pool = app.db.pool().await.expect("pool");
    let title_jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = 'jobs.title'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(title_jobs, 0, "a user's title is never replaced");
}

#[tokio::test]
async fn favourites_need_a_completed_image_and_list_newest_first() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "two foxes", 2).await;
    let [first, second] = [&message.generations[0].id, &message.generations[1].id];

    let status = alice
        .set_favorite(proto::SetFavoriteRequest {
            generation_id: first.clone(),
            favorite: true,
        })
        .await
        .expect_err("still queued");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let pool = app.db.pool().await.expect("pool");
    sqlx::query("UPDATE generations SET status = 'completed'")
        .execute(&pool)
        .await
        .expect("complete");
    for id in [first, second] {
        let generation = alice
            .set_favorite(proto::SetFavoriteRequest {
                generation_id: id.clone(),
                favorite: true,
            })
            .await
            .expect("favourite")
            .into_inner()
            .generation
            .expect("generation");
        assert!(generation.is_favorite);
    }
    alice
        .set_favorite(proto::SetFavoriteRequest {
            generation_id: first.clone(),
            favorite: false,
        })
        .await
        .expect("unfavourite");
    let favorites = alice
        .list_favorites(proto::ListFavoritesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = favorites.generations.iter().map(|g| &g.id).collect();
    assert_eq!(ids, [second]);
}

#[tokio::test]
async fn grants_are_idempotent_by_reference() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin();
    let grant = |reference: &str| internal::GrantCreditsRequest {
        user_id: "carol".into(),
        amount: 50,
        reference: reference.into(),
    };
    let first = admin
        .grant_credits(grant("order-1"))
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((first.balance, first.granted), (150, true));
    let again = admin
        .grant_credits(grant("order-1"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((again.balance, again.granted), (150, false));
    let next = admin
        .grant_credits(grant("order-2"))
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((next.balance, next.granted), (200, true));
    assert_eq!(balance(&mut app.client("carol")).await, 200);
}

#[tokio::test]
async fn the_internal_port_refuses_calls_without_the_service_credential() {
    let app = TestApp::spawn().await;
    for token in [None, Some(AsciiMetadataValue::from_static("wrong"))] {
        let mut client = ConversationServiceClient::with_interceptor(
            app.channel.clone(),
            AsUser {
                user: Some("alice".into()),
                token,
            },
        );
        let status = client
            .get_balance(proto::GetBalanceRequest {})
            .await
            .expect_err("no credential");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // With the credential but without a user, user calls are refused too.
    let status = app
        .admin()
        .get_balance(proto::GetBalanceRequest {})
        .await
        .expect_err("no user");
    assert_eq!(status.code(), Code::Unauthenticated);
    drop(app.server);
}

#[tokio::test]
async fn concurrent_retries_of_the_last_affordable_message_all_get_it() {
    // Two credits: exactly one message. Every retry must see that message, not
    // CREDITS_EXHAUSTED, even when it waited behind the first call's locks.
    let app = TestApp::spawn_with(|config| config.starting_credits = 2).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let request = proto::SendMessageRequest {
        client_request_id: "only-one".into(),
        ..send_request(&conversation.id, "the last fox")
    };
    let answers = send_at_once(&app, "alice", 30, request, "a retry is never refused").await;
    assert!(answers.iter().all(|answer| answer == &answers[0]));
    assert_eq!(balance(&mut alice).await, 0);
}

#[tokio::test]
async fn another_users_idempotency_key_reveals_nothing() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let request = proto::SendMessageRequest {
        client_request_id: "alices-key".into(),
        ..send_request(&conversation.id, "a fox")
    };
    let hers = alice
        .send_message(request.clone())
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    let status = app
        .client("bob")
        .send_message(request)
        .await
        .expect_err("not his conversation");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("conversation"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&hers.id), "{}", status.message());
}

#[tokio::test]
async fn a_new_users_first_calls_at_once_all_see_the_starting_balance() {
    let app = TestApp::spawn().await;
    let mut calls = tokio::task::JoinSet::new();
    for call in 0..20 {
        let mut client = app.client("newcomer");
        calls.spawn(async move {
            if call % 2 == 0 {
                balance(&mut client).await
            } else {
                create_conversation(&mut client, None).await;
                balance(&mut client).await
            }
        });
    }
    while let Some(balance) = calls.join_next().await {
        assert_eq!(balance.expect("no call fails"), 100);
    }
    let pool = app.db.pool().await.expect("pool");
    let welcome: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE kind = 'grant'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(welcome, 1, "the welcome grant is made once");
}

/// `count` copies of `request` from `user`, all at once, each on its own client; every
/// call must succeed (`expectation` says why).
async fn send_at_once(
    app: &TestApp,
    user: &str,
    count: usize,
    request: proto::SendMessageRequest,
    expectation: &str,
) -> Vec<proto::SendMessageResponse> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut client = app.client(user);
        let request = request.clone();
        calls.spawn(async move { client.send_message(request).await });
    }
    let mut answers = Vec::new();
    while let Some(result) = calls.join_next().await {
        answers.push(result.expect("task").expect(expectation).into_inner());
    }
    answers
}

/// Outside development the service refuses to start without its service credential, or with a built-in or
/// short one; development mode warns, and listens on loopback only.
#[test]
fn refuses_to_start_unsafely() {
    use atelier_testkit::startup::{
        RequiredSecret, assert_development_is_loopback_only, assert_development_warns,
        assert_secrets_required,
    };
    let binary = env!("CARGO_BIN_EXE_atelier-conversation");
    let secrets = [RequiredSecret {
        variable: "ATELIER_SERVICE_TOKEN",
        development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
    }];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}

#[tokio::test]
async fn connections_ended_by_a_database_restart_are_unavailable_then_replaced() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    create_conversation(&mut alice, None).await;
    // Several pooled connections, idle.
    futures::future::join_all((0..8).map(|_| {
        let mut client = app.client("alice");
        async move { balance(&mut client).await }
    }))
    .await;

    // What a restart does to every open connection: "terminating connection due to
    // administrator command" (57P01).
    let pool = app.db.pool().await.expect("pool");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ( \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
         ) ended",
    )
    .fetch_one(&pool)
    .await
    .expect("terminate");
    assert!(terminated >= 2, "{terminated} connections");

    let mut codes = Vec::new();
    for _ in 0..40 {
        let code = match alice.get_balance(proto::GetBalanceRequest {}).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        codes.push(code);
    }
    assert!(
        codes
            .iter()
            .all(|code| matches!(code, Code::Ok | Code::Unavailable)),
        "a lost connection is UNAVAILABLE (retry), never INTERNAL: {codes:?}"
    );
    assert!(
        codes.contains(&Code::Unavailable),
        "the dead connections were handed out and failed: {codes:?}"
    );
    // Each dead connection fails once and is dropped: the pool is whole again.
    assert!(
        codes[codes.len() - 20..]
            .iter()
            .all(|code| *code == Code::Ok),
        "{codes:?}"
    );
}

#[tokio::test]
async fn a_send_its_caller_abandons_mid_transaction_still_ends_whole_and_a_retry_gets_it() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    assert_eq!(balance(&mut alice).await, 100);

    // Hold the conversation's row, so SendMessage's transaction waits inside its
    // statement, and let the caller's deadline pass meanwhile.
    let pool = app.db.pool().await.expect("pool");
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
        .bind(&conversation.id)
        .execute(&mut *holder)
        .await
        .expect("lock");
    let request = proto::SendMessageRequest {
        client_request_id: "abandoned-1".into(),
        ..send_request(&conversation.id, "a red fox")
    };
    let mut impatient = tonic::Request::new(request.clone());
    impatient.set_timeout(std::time::Duration::from_millis(300));
    let status = alice
        .send_message(impatient)
        .await
        .expect_err("the caller gave up");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    holder.rollback().await.expect("release");

    // The call went on without its caller and committed whole.
    let mut stored = 0;
    for _ in 0..50 {
        stored = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM messages WHERE client_request_id = 'abandoned-1'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if stored == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored, 1, "committed once the lock was free");
    let idle_in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .expect("activity");
    assert_eq!(idle_in_transaction, 0, "no transaction left open");

    // The client's retry with its key gets that message, charged once.
    let message = alice
        .send_message(request)
        .await
        .expect("the retry")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.client_request_id, "abandoned-1");
    assert_eq!(balance(&mut alice).await, 100 - message.cost);
}

/// An instance whose database stops answering reports NOT_SERVING (so the callers'
/// balancers route around it) and SERVING again once it answers.
#[tokio::test]
async fn an_instance_whose_database_does_not_answer_is_not_serving_until_it_does() {
    use std::time::Duration;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let app = TestApp::spawn().await;
    let options = app.db.options();
    let postgres = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .expect("resolve PostgreSQL")
        .next()
        .expect("an address");
    let proxy = atelier_testkit::TcpProxy::start(postgres, true)
        .await
        .expect("proxy");
    let port = proxy.addr.port();
    let replica = app
        .spawn_replica(|config| {
            config.database = config.database.clone().host("127.0.0.1").port(port);
        })
        .await;
    let status = || {
        let mut health = HealthClient::new(replica.channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: atelier_proto::CONVERSATION_SERVICE_NAME.to_owned(),
                })
                .await
                .expect("health answers")
                .into_inner()
                .status()
        }
    };
    let until = |wanted: ServingStatus| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while status().await != wanted {
            assert!(tokio::time::Instant::now() < deadline, "never {wanted:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until(ServingStatus::Serving).await;
    proxy.set_up(false);
    until(ServingStatus::NotServing).await;
    proxy.set_up(true);
    until(ServingStatus::Serving).await;
}
