//! The contracts a client relies on, against a real PostgreSQL: free text is normalised
//! and invisible text refused before anything is charged, an idempotency key answers only
//! the request it was made for, and list responses stay within their byte budget.

mod common;

use std::collections::HashSet;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::error_reason;
use atelier_proto::limits::{PAGE_BYTES, SIGNED_URL_BYTES};
use atelier_proto::v1 as proto;
use common::{
    Client, TestApp, balance, create_conversation, get_message, reason, send_request, start,
};
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

/// Characters a user cannot see: zero-width space, BOM, word joiner, a bidi override and
/// isolate, a C0 control.
const INVISIBLE: &str = "\u{200B}\u{FEFF}\u{2060}\u{202E}\u{2066}\u{7}";

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    assert_eq!(violations.len(), 1, "{field}: {violations:?}");
    assert_eq!(violations[0].field, field);
    assert!(
        violations[0].description.contains("visible"),
        "{}",
        violations[0].description
    );
}

async fn counts(app: &TestApp) -> (i64, i64, i64) {
    let pool = app.db.pool().await.expect("pool");
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), \
                (SELECT count(*) FROM credit_ledger WHERE kind = 'reserve'), \
                (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts")
}

async fn title_of(client: &mut Client, conversation_id: &str) -> String {
    client
        .get_conversation(proto::GetConversationRequest {
            conversation_id: conversation_id.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation")
        .title
}

#[tokio::test]
async fn invisible_text_is_refused_naming_its_field_and_never_charged() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let before = counts(&app).await;
    assert_eq!(balance(&mut alice).await, 100);

    let padded = format!(" {INVISIBLE}\n\t{INVISIBLE} ");
    let cases = [
        ("prompt", send_request(&conversation.id, INVISIBLE)),
        ("prompt", send_request(&conversation.id, &padded)),
        (
            "settings.negative_prompt",
            proto::SendMessageRequest {
                settings: Some(proto::GenerationSettings {
                    negative_prompt: padded.clone(),
                    ..Default::default()
                }),
                ..send_request(&conversation.id, "a fox")
            },
        ),
    ];
    for (field, request) in cases {
        // With a key too: a refused request must not bind it.
        let request = proto::SendMessageRequest {
            client_request_id: "invisible".into(),
            ..request
        };
        let status = alice.send_message(request).await.expect_err(field);
        assert_invalid(&status, field);
    }
    assert_eq!(balance(&mut alice).await, 100, "nothing reserved");
    assert_eq!(
        counts(&app).await,
        before,
        "no message, reservation or event"
    );
    assert_eq!(title_of(&mut alice, &conversation.id).await, "");

    // Titles: at creation and at rename.
    let status = alice
        .create_conversation(proto::CreateConversationRequest {
            title: INVISIBLE.into(),
            max_generations: None,
        })
        .await
        .expect_err("invisible title");
    assert_invalid(&status, "title");
    let status = alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation.id.clone(),
            title: padded.clone(),
        })
        .await
        .expect_err("invisible rename");
    assert_invalid(&status, "title");
    let pool = app.db.pool().await.expect("pool");
    let (conversations, auto_titled): (i64, bool) =
        sqlx::query_as("SELECT count(*), bool_and(auto_titled) FROM conversations")
            .fetch_one(&pool)
            .await
            .expect("conversations");
    assert_eq!((conversations, auto_titled), (1, true));

    // The key was not bound by the refusals: a visible request with it is accepted once.
    let message = alice
        .send_message(proto::SendMessageRequest {
            client_request_id: "invisible".into(),
            ..send_request(&conversation.id, &format!("{INVISIBLE}a fox{INVISIBLE}"))
        })
        .await
        .expect("visible")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.content, "a fox");
    assert_eq!(balance(&mut alice).await, 98);

    // The title worker's title goes through the same rules.
    let status = alice
        .apply_title(internal::ApplyTitleRequest {
            conversation_id: conversation.id.clone(),
            title: INVISIBLE.into(),
        })
        .await
        .expect_err("invisible LLM title");
    assert_invalid(&status, "title");
    let applied = alice
        .apply_title(internal::ApplyTitleRequest {
            conversation_id: conversation.id.clone(),
            title: "\u{202E}Red\u{200B} fox\nin snow".into(),
        })
        .await
        .expect("title")
        .into_inner();
    assert!(applied.applied);
    assert_eq!(
        title_of(&mut alice, &conversation.id).await,
        "Red fox in snow"
    );
}

#[tokio::test]
async fn text_is_stored_in_nfc_and_counted_after_normalisation() {
    let app = TestApp::spawn_with(|config| config.starting_credits = 1000).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;

    // "e" + COMBINING ACUTE ACCENT is "é"; line breaks of any platform are "\n".
    let message = alice
        .send_message(proto::SendMessageRequest {
            settings: Some(proto::GenerationSettings {
                negative_prompt: "  blu\u{200B}rry\r\nnoise ".into(),
                ..Default::default()
            }),
            ..send_request(&conversation.id, " cafe\u{301}\r\n\u{2060}au lait\t ")
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.content, "caf\u{E9}\nau lait");
    let settings = message.settings.clone().expect("settings");
    assert_eq!(settings.negative_prompt, "blurry\nnoise");
    assert_eq!(get_message(&mut alice, &message.id).await, message);
    // The automatic title is one line of the normalised prompt.
    assert_eq!(
        title_of(&mut alice, &conversation.id).await,
        "caf\u{E9} au lait"
    );

    // 4000 decomposed characters are 8000 code points sent, 4000 characters stored.
    let prompt = "e\u{301}".repeat(4000);
    let negative = "a\u{30A}".repeat(2000);
    let message = alice
        .send_message(proto::SendMessageRequest {
            settings: Some(proto::GenerationSettings {
                negative_prompt: negative.clone(),
                ..Default::default()
            }),
            ..send_request(&conversation.id, &prompt)
        })
        .await
        .expect("at the limit after normalisation")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.content, "\u{E9}".repeat(4000));
    assert_eq!(
        message.settings.expect("settings").negative_prompt,
        "\u{E5}".repeat(2000)
    );
    // Invisible characters do not count towards the limit either.
    alice
        .send_message(send_request(
            &conversation.id,
            &format!("{}{}", "x".repeat(4000), "\u{200B}".repeat(100)),
        ))
        .await
        .expect("invisible padding is not counted");

    for (field, request) in [
        (
            "prompt",
            send_request(&conversation.id, &format!("{prompt}e")),
        ),
        (
            "settings.negative_prompt",
            proto::SendMessageRequest {
                settings: Some(proto::GenerationSettings {
                    negative_prompt: format!("{negative}a"),
                    ..Default::default()
                }),
                ..send_request(&conversation.id, "a fox")
            },
        ),
    ] {
        let status = alice.send_message(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violation = &status
            .get_details_bad_request()
            .expect("details")
            .field_violations[0];
        assert_eq!(violation.field, field);
        assert!(
            violation.description.contains("got 4001")
                || violation.description.contains("got 2001"),
            "{}",
            violation.description
        );
    }

    // Titles: NFC, one line, 200 characters after normalisation.
    let renamed = alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation.id.clone(),
            title: format!(" {}\n", "o\u{308}".repeat(200)),
        })
        .await
        .expect("200 characters after normalisation")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(renamed.title, "\u{F6}".repeat(200));
    let status = alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: conversation.id.clone(),
            title: "o\u{308}".repeat(201),
        })
        .await
        .expect_err("201 characters");
    assert_eq!(status.code(), Code::InvalidArgument);
    let created = alice
        .create_conversation(proto::CreateConversationRequest {
            title: "Fo\u{200B}xes\r\nand  hounds".into(),
            max_generations: None,
        })
        .await
        .expect("create")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(created.title, "Foxes and hounds");
}

#[tokio::test]
async fn a_reused_idempotency_key_is_refused_and_an_identical_retry_replays() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let request = proto::SendMessageRequest {
        client_request_id: "fox-1".into(),
        settings: Some(proto::GenerationSettings {
            image_count: Some(2),
            negative_prompt: "blurry".into(),
            ..Default::default()
        }),
        ..send_request(&conversation.id, "a red fox")
    };
    let first = alice
        .send_message(request.clone())
        .await
        .expect("first")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(balance(&mut alice).await, 96);
    let after_first = counts(&app).await;

    let changed_settings = |edit: fn(&mut proto::GenerationSettings)| {
        let mut changed = request.clone();
        edit(changed.settings.as_mut().expect("settings"));
        changed
    };
    let cases = [
        (
            proto::SendMessageRequest {
                prompt: "a red wolf".into(),
                ..request.clone()
            },
            "prompt",
        ),
        (
            changed_settings(|settings| settings.negative_prompt = "dark".into()),
            "settings.negative_prompt",
        ),
        (
            changed_settings(|settings| settings.image_count = Some(1)),
            "settings.image_count",
        ),
        (
            changed_settings(|settings| settings.seed = Some(42)),
            "settings.seed",
        ),
        (
            changed_settings(|settings| settings.width = Some(768)),
            "settings.width",
        ),
        (
            proto::SendMessageRequest {
                prompt: "a red wolf".into(),
                ..changed_settings(|settings| settings.style_preset = "anime".into())
            },
            "prompt,settings.style_preset",
        ),
    ];
    for (changed, fields) in cases {
        let status = alice.send_message(changed).await.expect_err(fields);
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason(&status), error_reason::IDEMPOTENCY_KEY_REUSED);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.domain, error_reason::DOMAIN);
        assert_eq!(info.metadata.get("message_id"), Some(&first.id));
        assert_eq!(
            info.metadata.get("fields").map(String::as_str),
            Some(fields)
        );
        assert!(status.message().contains("fox-1"), "{}", status.message());
    }
    assert_eq!(balance(&mut alice).await, 96, "no refusal is charged");
    assert_eq!(
        counts(&app).await,
        after_first,
        "no refusal writes anything"
    );

    // The same request, written differently (invisible characters, the default model
    // named, surrounding spaces), is the same request: the first message, charged once.
    let same = proto::SendMessageRequest {
        prompt: " a red\u{200B} fox\u{FEFF} ".into(),
        settings: Some(proto::GenerationSettings {
            model: "builtin".into(),
            image_count: Some(2),
            negative_prompt: "blurry ".into(),
            ..Default::default()
        }),
        ..request.clone()
    };
    for retry in [request.clone(), same] {
        let replayed = alice
            .send_message(retry)
            .await
            .expect("identical retry")
            .into_inner()
            .message
            .expect("message");
        assert_eq!(replayed, first);
    }
    assert_eq!(balance(&mut alice).await, 96);
    assert_eq!(counts(&app).await, after_first);

    // The key's scope is the conversation: elsewhere it is a new key.
    let other = create_conversation(&mut alice, None).await;
    let elsewhere = alice
        .send_message(proto::SendMessageRequest {
            conversation_id: other.id.clone(),
            prompt: "a red wolf".into(),
            ..request
        })
        .await
        .expect("another conversation")
        .into_inner()
        .message
        .expect("message");
    assert_ne!(elsewhere.id, first.id);
    assert_eq!(balance(&mut alice).await, 92);
}

/// Makes one message as large as the API lets it be: a maximal prompt and negative prompt
/// in 4-byte characters, a maximal resolved and enhanced prompt, four completed images.
async fn send_maximal(client: &mut Client, conversation_id: &str, index: usize) -> String {
    let wide = |chars: usize| "\u{1D54F}".repeat(chars);
    let prompt = format!("{index:04}{}", wide(4000 - 4));
    let message = client
        .send_message(proto::SendMessageRequest {
            settings: Some(proto::GenerationSettings {
                image_count: Some(4),
                negative_prompt: wide(2000),
                ..Default::default()
            }),
            client_request_id: format!("{index:04}{}", wide(100 - 4)),
            ..send_request(conversation_id, &prompt)
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    let started = start(client, &message.id).await;
    client
        .record_intent(internal::RecordIntentRequest {
            message_id: message.id.clone(),
            intent: Some(proto::ResolvedIntent {
                kind: proto::IntentKind::New.into(),
                resolved_prompt: wide(8000),
                ..Default::default()
            }),
            enhanced_prompt: wide(8000),
            negative_prompt: wide(4000),
            init_generation_id: String::new(),
            inherit_settings: false,
        })
        .await
        .expect("intent");
    for generation_id in &started.generation_ids {
        client
            .complete_generation(internal::CompleteGenerationRequest {
                generation_id: generation_id.clone(),
                image_key: format!("images/{generation_id}.png"),
            })
            .await
            .expect("complete");
    }
    message.id
}

#[tokio::test]
async fn list_messages_pages_of_maximal_messages_fit_the_budget_and_visit_each_once() {
    let app = TestApp::spawn_with(|config| config.starting_credits = 10_000).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let count = 12;
    let mut sent = Vec::new();
    for index in 0..count {
        sent.push(send_maximal(&mut alice, &conversation.id, index).await);
    }
    let largest = get_message(&mut alice, &sent[0]).await;
    assert_eq!(largest.status(), proto::MessageStatus::Completed);
    assert_eq!(largest.generations.len(), 4);
    // Each message is over 250 KB: 100 of them would be over 25 MB.
    assert!(largest.encoded_len() > 250_000, "{}", largest.encoded_len());

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let mut page = alice
            .list_messages(proto::ListMessagesRequest {
                conversation_id: conversation.id.clone(),
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(!page.messages.is_empty(), "a page always moves on");
        // What the edge adds before the client sees it: a signed URL on each image.
        let images: usize = page
            .messages
            .iter()
            .map(|message| message.generations.len())
            .sum();
        let as_sent = page.encoded_len();
        for generation in page
            .messages
            .iter_mut()
            .flat_map(|message| &mut message.generations)
        {
            generation.image_url = "u".repeat(SIGNED_URL_BYTES - 24);
            generation.image_url_expires_at = Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 999_999_999,
            });
        }
        assert!(as_sent + images * SIGNED_URL_BYTES <= PAGE_BYTES);
        assert!(
            page.encoded_len() <= PAGE_BYTES,
            "page {pages}: {} bytes once signed",
            page.encoded_len()
        );
        seen.extend(page.messages.into_iter().map(|message| message.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages >= 4, "{count} maximal messages in {pages} pages");
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every message once, in order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), count);
}
