//! The pipeline's side of the conversation service, against real PostgreSQL and NATS:
//! the outbox relay and sweeper, and the worker RPCs with their exactly-once credits.

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use atelier_events::Subjects;
use atelier_proto::conversation::v1 as internal;
use atelier_proto::jobs::v1 as jobs;
use atelier_proto::v1 as proto;
use atelier_testkit::TcpProxy;
use common::{
    TestApp, balance, create_conversation, get_message, send_images, send_request,
    send_with_settings, start, user_events_once,
};
use futures::StreamExt as _;
use prost::Message as _;
use tonic::Code;

/// The next `count` messages on `subject` of `stream`, from its start.
async fn read_stream(
    app: &TestApp,
    stream: &str,
    subject: String,
    count: usize,
) -> Vec<async_nats::jetstream::Message> {
    let js = app.nats.jetstream().await.expect("jetstream");
    let stream = js.get_stream(stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    // `batch`, not `fetch`: fetch answers with what is stored at once, and the queue
    // reporter's event may come a moment after SendMessage's.
    let mut messages = consumer
        .batch()
        .max_messages(count)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .expect("fetch");
    let mut read = Vec::new();
    while let Some(message) = messages.next().await {
        read.push(message.expect("message"));
        if read.len() == count {
            break;
        }
    }
    read
}

fn subjects(app: &TestApp) -> Subjects {
    Subjects::new(&app.nats.prefix).expect("prefix")
}

/// GetGenerationContext, as the worker calls it.
async fn context(
    client: &mut common::Client,
    message_id: &str,
) -> internal::GetGenerationContextResponse {
    client
        .get_generation_context(internal::GetGenerationContextRequest {
            message_id: message_id.to_owned(),
        })
        .await
        .expect("context")
        .into_inner()
}

/// Waits (bounded) until the outbox has no unpublished row.
async fn outbox_drained(app: &TestApp) {
    let pool = app.db.pool().await.expect("pool");
    for _ in 0..100 {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await
                .expect("count");
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the outbox was not drained within 10 s");
}

#[tokio::test]
async fn sent_messages_reach_the_streams_in_order() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "a red fox", 1).await;
    outbox_drained(&app).await;

    let subjects = subjects(&app);
    let job_messages =
        read_stream(&app, &subjects.jobs_stream(), subjects.generate_jobs(), 1).await;
    let job = jobs::GenerateJob::decode(job_messages[0].payload.clone()).expect("job");
    assert_eq!(job.message_id, message.id);
    assert_eq!(job.user_id, "alice");
    let msg_id = job_messages[0]
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Msg-Id"))
        .map(|value| value.as_str().to_owned())
        .expect("dedup id");
    assert!(
        uuid::Uuid::parse_str(&msg_id).is_ok(),
        "the outbox row id: {msg_id}"
    );

    // SendMessage's three events, then (once they are all published) the queue reporter's:
    // no worker runs, so the message waits at the head of the queue.
    let events = read_stream(
        &app,
        &subjects.events_stream(),
        subjects.user_events("alice"),
        4,
    )
    .await;
    let events: Vec<proto::Event> = events
        .iter()
        .map(|event| proto::Event::decode(event.payload.clone()).expect("event"))
        .collect();
    let kinds: Vec<_> = events.iter().map(common::kind).collect();
    assert_eq!(
        kinds,
        [
            "message_created",
            "credits_changed",
            "title_updated",
            "generation_queued"
        ]
    );
    let queued = common::queued_reports(&events, &message.id);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].position, 0);
    assert_eq!(
        queued[0].generation_ids,
        [message.generations[0].id.clone()]
    );
}

#[tokio::test]
async fn a_row_another_instance_left_unpublished_is_published_before_a_later_event() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "a red fox", 1).await;
    outbox_drained(&app).await;
    let subjects = subjects(&app);
    let published = read_stream(
        &app,
        &subjects.events_stream(),
        subjects.user_events("alice"),
        4,
    )
    .await
    .len();

    // An instance that committed this row and died before publishing it (the sweeper
    // would publish it only SWEEP_GRACE later).
    let pool = app.db.pool().await.expect("pool");
    let orphan = uuid::Uuid::now_v7();
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE subject = $1 ORDER BY id LIMIT 1")
            .bind(atelier_events::subjects::user_events("alice"))
            .fetch_one(&pool)
            .await
            .expect("an event row of alice's");
    sqlx::query("INSERT INTO outbox (id, subject, payload, created_at) VALUES ($1, $2, $3, now())")
        .bind(orphan)
        .bind(atelier_events::subjects::user_events("alice"))
        .bind(payload)
        .execute(&pool)
        .await
        .expect("orphan row");

    // The worker's retry reaches this instance, whose event comes after the orphan's.
    start(&mut alice, &message.id).await;
    let events = read_stream(
        &app,
        &subjects.events_stream(),
        subjects.user_events("alice"),
        published + 2,
    )
    .await;
    let ids: Vec<String> = events[published..]
        .iter()
        .map(|event| {
            event
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .map(|value| value.as_str().to_owned())
                .expect("dedup id")
        })
        .collect();
    assert_eq!(ids[0], orphan.to_string(), "{ids:?}");
    let started = proto::Event::decode(events[published + 1].payload.clone()).expect("event");
    assert_eq!(common::kind(&started), "generation_started");
}

#[tokio::test]
async fn messages_sent_while_nats_is_down_are_published_once_it_is_back() {
    let nats_addr = {
        let url = atelier_testkit::TestNats::new().url.clone();
        let host_port = url.trim_start_matches("nats://").to_owned();
        tokio::net::lookup_host(host_port)
            .await
            .expect("resolve")
            .next()
            .expect("an address")
    };
    let proxy = TcpProxy::start(nats_addr, false).await.expect("proxy");
    let nats_url = proxy.url("nats");
    let app = TestApp::spawn_with(|config| config.nats.url = nats_url).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;

    // NATS is unreachable: the fast path answers all the same.
    let mut sent = Vec::new();
    for index in 0..3 {
        let message = alice
            .send_message(send_request(&conversation.id, &format!("fox {index}")))
            .await
            .expect("SendMessage does not need NATS")
            .into_inner()
            .message
            .expect("message");
        sent.push(message.id);
    }
    let pool = app.db.pool().await.expect("pool");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(pending >= 9, "every row waits in the outbox: {pending}");

    proxy.set_up(true);
    outbox_drained(&app).await;
    let subjects = subjects(&app);
    let job_messages =
        read_stream(&app, &subjects.jobs_stream(), subjects.generate_jobs(), 3).await;
    let published: Vec<String> = job_messages
        .iter()
        .map(|message| {
            jobs::GenerateJob::decode(message.payload.clone())
                .expect("job")
                .message_id
        })
        .collect();
    assert_eq!(published, sent, "each job once, in order");
}

#[tokio::test]
async fn a_completed_image_captures_its_credits_once() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "two foxes", 2).await;
    assert_eq!(balance(&mut alice).await, 96);

    let started = start(&mut alice, &message.id).await;
    assert_eq!(started.generation_ids.len(), 2);
    assert_eq!(started.provider, "builtin");
    let running = started.message.clone().expect("message");
    assert_eq!(running.status(), proto::MessageStatus::Processing);
    assert_eq!(running.content, "two foxes");
    for generation in &running.generations {
        assert_eq!(generation.status(), proto::GenerationStatus::Running);
        assert!(generation.started_at.is_some());
    }
    assert!(
        context(&mut alice, &message.id).await.previous.is_none(),
        "a first message has no previous one"
    );
    // A redelivered job starts the same images again.
    let again = start(&mut alice, &message.id).await;
    assert_eq!(again.generation_ids, started.generation_ids);

    alice
        .record_intent(internal::RecordIntentRequest {
            message_id: message.id.clone(),
            intent: Some(proto::ResolvedIntent {
                kind: proto::IntentKind::New.into(),
                resolved_prompt: "two foxes".into(),
                ..Default::default()
            }),
            enhanced_prompt: "two red foxes, detailed".into(),
            negative_prompt: "blurry".into(),
            init_generation_id: String::new(),
            inherit_settings: false,
        })
        .await
        .expect("intent");

    for generation_id in &started.generation_ids {
        for attempt in 0..2 {
            let completed = alice
                .complete_generation(internal::CompleteGenerationRequest {
                    generation_id: generation_id.clone(),
                    image_key: format!("images/{generation_id}.png"),
                })
                .await
                .expect("complete")
                .into_inner();
            assert_eq!(
                completed.completed,
                attempt == 0,
                "only the first call completes"
            );
            let generation = completed.generation.expect("generation");
            assert_eq!(generation.status(), proto::GenerationStatus::Completed);
            assert_eq!(generation.prompt, "two red foxes, detailed");
        }
        let settled = generation_id == started.generation_ids.last().expect("two");
        let status = get_message(&mut alice, &message.id).await.status();
        let expected = if settled {
            proto::MessageStatus::Completed
        } else {
            proto::MessageStatus::Processing
        };
        assert_eq!(status, expected, "completed with its last image only");
    }

    let stored = get_message(&mut alice, &message.id).await;
    assert_eq!(stored.status(), proto::MessageStatus::Completed);
    assert_eq!(stored.enhanced_prompt, "two red foxes, detailed");
    assert_eq!(
        stored.intent.expect("intent").kind(),
        proto::IntentKind::New
    );
    // Captured, not refunded: the reservation stands, once per image.
    assert_eq!(balance(&mut alice).await, 96);
    let pool = app.db.pool().await.expect("pool");
    let captures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE kind = 'capture'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(captures, 2);

    // The next message sees this one as its previous, with its image.
    let next = send_images(&mut alice, &conversation.id, "make it night", 1).await;
    let previous = context(&mut alice, &next.id)
        .await
        .previous
        .expect("previous message");
    assert_eq!(previous.message_id, message.id);
    assert_eq!(previous.prompt, "two foxes");
    assert_eq!(previous.generation_id, started.generation_ids[0]);
    assert_eq!(
        previous.image_key,
        format!("images/{}.png", started.generation_ids[0])
    );
}

#[tokio::test]
async fn the_generation_context_is_a_read_of_the_owners_message() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let settings = proto::GenerationSettings {
        style_preset: "watercolor".into(),
        negative_prompt: "blurry".into(),
        ..Default::default()
    };
    let message = send_with_settings(
        &mut alice,
        &conversation.id,
        "  a fox in the snow ",
        settings,
    )
    .await;

    let pool = app.db.pool().await.expect("pool");
    let outbox_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    let rows_before = outbox_rows().await;

    let read = context(&mut alice, &message.id).await;
    assert_eq!(read.prompt, "a fox in the snow");
    assert_eq!(read.status(), proto::MessageStatus::Queued);
    let settings = read.settings.expect("settings");
    assert_eq!(settings.style_preset, "watercolor");
    assert_eq!(settings.negative_prompt, "blurry");
    assert_eq!(settings.image_count, Some(1));
    assert!(read.previous.is_none());
    // It changed nothing: the message is still queued, and no event was written.
    assert_eq!(
        get_message(&mut alice, &message.id).await.status(),
        proto::MessageStatus::Queued
    );
    assert_eq!(outbox_rows().await, rows_before);

    // A follow-up reads this one as its previous message, with no image yet.
    let next = send_images(&mut alice, &conversation.id, "make it night", 1).await;
    let previous = context(&mut alice, &next.id)
        .await
        .previous
        .expect("previous message");
    assert_eq!(previous.message_id, message.id);
    assert_eq!(previous.prompt, "a fox in the snow");
    assert!(previous.image_key.is_empty() && previous.generation_id.is_empty());

    // Someone else's message is not found; a malformed id names its field.
    let stranger = app
        .client("bob")
        .get_generation_context(internal::GetGenerationContextRequest {
            message_id: message.id.clone(),
        })
        .await
        .expect_err("not bob's");
    assert_eq!(stranger.code(), Code::NotFound);
    let malformed = alice
        .get_generation_context(internal::GetGenerationContextRequest {
            message_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("message_id"));
}

#[tokio::test]
async fn images_completing_at_once_complete_their_message() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    for round in 0..5 {
        let message = send_images(&mut alice, &conversation.id, &format!("foxes {round}"), 4).await;
        let started = start(&mut alice, &message.id).await;
        assert_eq!(started.generation_ids.len(), 4);
        // Four workers finish the four images at the same moment: each completion must see
        // the others, or the message would stay processing for good.
        let completions = started.generation_ids.iter().map(|generation_id| {
            let mut client = alice.clone();
            let request = internal::CompleteGenerationRequest {
                generation_id: generation_id.clone(),
                image_key: format!("images/{generation_id}.png"),
            };
            async move { client.complete_generation(request).await }
        });
        for completed in futures::future::join_all(completions).await {
            assert!(completed.expect("complete").into_inner().completed);
        }
        let stored = get_message(&mut alice, &message.id).await;
        assert_eq!(stored.status(), proto::MessageStatus::Completed);
    }
}

#[tokio::test]
async fn a_start_after_one_image_was_cancelled_makes_the_others() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "three owls", 3).await;
    let dropped = message.generations[1].id.clone();
    alice
        .cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::GenerationId(
                dropped.clone(),
            )),
        })
        .await
        .expect("cancel one");

    let started = start(&mut alice, &message.id).await;
    let expected: Vec<String> = [0, 2]
        .iter()
        .map(|&index| message.generations[index].id.clone())
        .collect();
    assert_eq!(started.generation_ids, expected);
    let statuses: Vec<proto::GenerationStatus> = started
        .message
        .expect("message")
        .generations
        .iter()
        .map(proto::Generation::status)
        .collect();
    assert_eq!(
        statuses,
        [
            proto::GenerationStatus::Running,
            proto::GenerationStatus::Cancelled,
            proto::GenerationStatus::Running
        ],
        "every image, in position order, as it is now"
    );
}

#[tokio::test]
async fn failed_images_release_their_credits_once() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "three foxes", 3).await;
    let ids: Vec<String> = message.generations.iter().map(|g| g.id.clone()).collect();
    assert_eq!(balance(&mut alice).await, 94);

    // One image made, two fail; the failure is reported twice (a retried worker call).
    alice
        .complete_generation(internal::CompleteGenerationRequest {
            generation_id: ids[0].clone(),
            image_key: "images/a.png".into(),
        })
        .await
        .expect("complete");
    for expected in [4, 0] {
        let failed = alice
            .fail_generation(internal::FailGenerationRequest {
                generation_ids: ids[1..].to_vec(),
                reason: "the image provider is down".into(),
            })
            .await
            .expect("fail")
            .into_inner();
        assert_eq!(failed.refunded, expected);
    }
    assert_eq!(balance(&mut alice).await, 98);
    let stored = get_message(&mut alice, &message.id).await;
    assert_eq!(
        stored.status(),
        proto::MessageStatus::Completed,
        "one image was made"
    );
    assert_eq!(stored.generations[1].error, "the image provider is down");

    let status = alice
        .fail_generation(internal::FailGenerationRequest {
            generation_ids: vec![],
            reason: "x".into(),
        })
        .await
        .expect_err("no ids");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn cancelling_releases_credits_and_a_late_completion_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let message = send_images(&mut alice, &conversation.id, "a fox", 1).await;
    start(&mut alice, &message.id).await;

    let cancelled = alice
        .cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::MessageId(
                message.id.clone(),
            )),
        })
        .await
        .expect("cancel")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(cancelled.status(), proto::MessageStatus::Cancelled);
    assert_eq!(balance(&mut alice).await, 100);

    // The worker finishes anyway: too late, nothing is captured or changed.
    let late = alice
        .complete_generation(internal::CompleteGenerationRequest {
            generation_id: message.generations[0].id.clone(),
            image_key: "images/late.png".into(),
        })
        .await
        .expect("late completion")
        .into_inner();
    assert!(!late.completed);
    assert_eq!(
        late.generation.expect("generation").status(),
        proto::GenerationStatus::Cancelled
    );
    assert_eq!(balance(&mut alice).await, 100);

    // Cancelling again is a no-op; a restart finds nothing to do.
    alice
        .cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::MessageId(
                message.id.clone(),
            )),
        })
        .await
        .expect("cancel again");
    let restarted = start(&mut alice, &message.id).await;
    assert!(restarted.generation_ids.is_empty());
    assert_eq!(balance(&mut alice).await, 100);
}

#[tokio::test]
async fn an_llm_title_never_replaces_a_users_rename() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let automatic = create_conversation(&mut alice, None).await;
    let applied = alice
        .apply_title(internal::ApplyTitleRequest {
            conversation_id: automatic.id.clone(),
            title: "Foxes in the Snow".into(),
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied);

    let renamed = create_conversation(&mut alice, None).await;
    alice
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: renamed.id.clone(),
            title: "Mine".into(),
        })
        .await
        .expect("rename");
    let applied = alice
        .apply_title(internal::ApplyTitleRequest {
            conversation_id: renamed.id.clone(),
            title: "Foxes in the Snow".into(),
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(!applied.applied);
    let kept = alice
        .get_conversation(proto::GetConversationRequest {
            conversation_id: renamed.id,
        })
        .await
        .expect("get")
        .into_inner()
        .conversation
        .expect("conversation");
    assert_eq!(kept.title, "Mine");

    // Another user cannot title Alice's conversation.
    let status = app
        .client("bob")
        .apply_title(internal::ApplyTitleRequest {
            conversation_id: automatic.id,
            title: "Bob's".into(),
        })
        .await
        .expect("a no-op for a stranger")
        .into_inner();
    assert!(!status.applied);
}

#[tokio::test]
async fn the_users_negative_prompt_stays_in_the_settings() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let settings = proto::GenerationSettings {
        negative_prompt: "blurry".into(),
        ..Default::default()
    };
    let message = send_with_settings(&mut alice, &conversation.id, "a fox", settings).await;
    alice
        .record_intent(internal::RecordIntentRequest {
            message_id: message.id.clone(),
            intent: Some(proto::ResolvedIntent {
                kind: proto::IntentKind::New.into(),
                resolved_prompt: "a fox".into(),
                ..Default::default()
            }),
            enhanced_prompt: "a fox, watercolor".into(),
            negative_prompt: "blurry, photograph".into(),
            init_generation_id: String::new(),
            inherit_settings: false,
        })
        .await
        .expect("intent");
    let stored = get_message(&mut alice, &message.id).await;
    assert_eq!(stored.settings.expect("settings").negative_prompt, "blurry");
    assert_eq!(stored.negative_prompt, "blurry, photograph");
    assert_eq!(stored.generations[0].negative_prompt, "blurry, photograph");
}

#[tokio::test]
async fn the_job_and_the_queue_report_of_a_message_continue_the_senders_trace() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    // What every service binary installs: spans with OpenTelemetry contexts.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .try_init()
        .expect("subscriber");

    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(send_request(&conversation.id, "a traced fox"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    alice.send_message(request).await.expect("send");
    outbox_drained(&app).await;

    let subjects = subjects(&app);
    let job = read_stream(&app, &subjects.jobs_stream(), subjects.generate_jobs(), 1).await;
    let traceparent = traceparent_of(&job[0]).expect("the job carries a trace context");
    assert!(traceparent.contains(trace_id), "{traceparent}");

    // The queue reporter runs outside any request, and reports many messages at once:
    // the message's generation_queued still joins the sender's trace.
    let events = read_stream(
        &app,
        &subjects.events_stream(),
        subjects.user_events("alice"),
        8,
    )
    .await;
    let queued = events
        .iter()
        .find(|message| {
            matches!(
                proto::Event::decode(message.payload.clone())
                    .expect("event")
                    .payload,
                Some(proto::event::Payload::GenerationQueued(_))
            )
        })
        .expect("the message's generation_queued");
    let traceparent = traceparent_of(queued).expect("generation_queued carries a trace context");
    assert!(traceparent.contains(trace_id), "{traceparent}");
}

/// The W3C trace context a stream message carries in its headers.
fn traceparent_of(message: &async_nats::jetstream::Message) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("traceparent"))
        .map(|value| value.as_str().to_owned())
}

/// RecordIntent for `message_id` as the worker sends it for an edit of the previous image.
fn edit_intent(message_id: &str, previous_generation_id: &str) -> internal::RecordIntentRequest {
    internal::RecordIntentRequest {
        message_id: message_id.to_owned(),
        intent: Some(proto::ResolvedIntent {
            kind: proto::IntentKind::Edit.into(),
            resolved_prompt: "a lighthouse at night".into(),
            edit_type: "lighting".into(),
            strength: 0.55,
        }),
        enhanced_prompt: "a lighthouse at night, moonlit".into(),
        negative_prompt: "text".into(),
        init_generation_id: previous_generation_id.to_owned(),
        inherit_settings: true,
    }
}

/// A completed `sdxl` picture at 1024x768 in cinematic style: the message and its image.
async fn an_sdxl_picture(
    alice: &mut common::Client,
    conversation_id: &str,
) -> (proto::Message, proto::Generation) {
    let settings = proto::GenerationSettings {
        model: "sdxl".into(),
        width: Some(1024),
        height: Some(768),
        style_preset: "cinematic".into(),
        negative_prompt: "text".into(),
        ..Default::default()
    };
    let first = send_with_settings(alice, conversation_id, "a lighthouse at dusk", settings).await;
    let started = start(alice, &first.id).await;
    let generation_id = started.generation_ids[0].clone();
    let image = alice
        .complete_generation(internal::CompleteGenerationRequest {
            generation_id: generation_id.clone(),
            image_key: format!("images/{generation_id}.png"),
        })
        .await
        .expect("complete")
        .into_inner()
        .generation
        .expect("generation");
    (first, image)
}

#[tokio::test]
async fn an_edit_sent_without_settings_takes_the_previous_model_size_and_seed_at_its_price() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let (_, picture) = an_sdxl_picture(&mut alice, &conversation.id).await;
    // sdxl at 0.79 megapixels: 4 + 4 credits.
    assert_eq!(balance(&mut alice).await, 92);

    // The follow-up names no setting: SendMessage prices it as the default model.
    let request = proto::SendMessageRequest {
        settings: Some(proto::GenerationSettings {
            image_count: Some(2),
            ..Default::default()
        }),
        client_request_id: "edit-1".into(),
        ..send_request(&conversation.id, "make it night-time")
    };
    let edit = alice
        .send_message(request.clone())
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(edit.settings.as_ref().expect("settings").model, "builtin");
    assert_eq!(edit.cost, 4);
    assert_eq!(balance(&mut alice).await, 88);

    // What it would take, offered to the worker before the intent is known.
    let offered = context(&mut alice, &edit.id)
        .await
        .inherited_settings
        .expect("inherited settings offered");
    assert_eq!(offered.model, "sdxl");
    assert_eq!((offered.width, offered.height), (Some(1024), Some(768)));
    assert_eq!(offered.style_preset, "cinematic");
    assert_eq!(offered.negative_prompt, "text");
    assert_eq!(offered.seed, Some(picture.seed));
    assert_eq!(offered.image_count, Some(2));

    start(&mut alice, &edit.id).await;
    let answer = alice
        .record_intent(edit_intent(&edit.id, &picture.id))
        .await
        .expect("intent")
        .into_inner();
    assert_eq!(answer.provider, "automatic1111");
    assert_eq!(
        answer.model_settings.expect("sdxl's settings").checkpoint,
        "sd_xl_base_1.0.safetensors"
    );
    let made = answer.message.expect("the message as settled");
    assert_eq!(made.cost, 16, "two sdxl images");
    for (index, generation) in made.generations.iter().enumerate() {
        assert_eq!(generation.model, "sdxl");
        assert_eq!((generation.width, generation.height), (1024, 768));
        assert_eq!(
            generation.seed,
            picture.seed + index as u64,
            "from its seed"
        );
        assert_eq!(generation.cost, 8);
        assert_eq!(generation.init_generation_id, picture.id);
    }
    // The difference is reserved: 100 - 8 - 16.
    assert_eq!(balance(&mut alice).await, 76);

    // A redelivered job records the same intent again: nothing moves twice.
    let again = alice
        .record_intent(edit_intent(&edit.id, &picture.id))
        .await
        .expect("intent again")
        .into_inner();
    assert_eq!(again.message.expect("message").cost, 16);
    assert_eq!(balance(&mut alice).await, 76);
    assert!(
        context(&mut alice, &edit.id)
            .await
            .inherited_settings
            .is_none(),
        "nothing left to inherit"
    );

    // The client learns the new settings and price from its events.
    let events = user_events_once(&app, "alice", |events| {
        events
            .iter()
            .any(|event| event.message_id == edit.id && common::kind(event) == "intent_resolved")
    })
    .await;
    let of_edit: Vec<&proto::Event> = events
        .iter()
        .filter(|event| event.message_id == edit.id)
        .collect();
    let moved = of_edit
        .iter()
        .filter_map(|event| match &event.payload {
            Some(proto::event::Payload::CreditsChanged(change))
                if change.reason() == proto::CreditsChangeReason::Reserve =>
            {
                Some(change.delta)
            }
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(moved, [-4, -12], "the reservation, then the difference");
    let resolved = of_edit
        .iter()
        .find_map(|event| match &event.payload {
            Some(proto::event::Payload::IntentResolved(resolved)) => Some(resolved.clone()),
            _ => None,
        })
        .expect("intent_resolved");
    assert_eq!(resolved.settings.expect("settings").model, "sdxl");
    assert_eq!(resolved.cost, 16);

    // The client's retry of the same request is still the same request.
    let retried = alice
        .send_message(request)
        .await
        .expect("a retry is not a reused key")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(retried.id, edit.id);
    assert_eq!(retried.cost, 16);
    assert_eq!(balance(&mut alice).await, 76);

    // Captured at the inherited price.
    for generation in &made.generations {
        alice
            .complete_generation(internal::CompleteGenerationRequest {
                generation_id: generation.id.clone(),
                image_key: format!("images/{}.png", generation.id),
            })
            .await
            .expect("complete");
    }
    assert_eq!(balance(&mut alice).await, 76);
    let pool = app.db.pool().await.expect("pool");
    let (reserved, captured): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(amount) FROM credit_ledger WHERE kind = 'reserve')::bigint, \
                (SELECT sum(amount) FROM credit_ledger WHERE kind = 'capture')::bigint",
    )
    .fetch_one(&pool)
    .await
    .expect("ledger");
    assert_eq!((reserved, captured), (24, 24));
}

#[tokio::test]
async fn a_follow_up_the_balance_cannot_upgrade_keeps_its_own_settings() {
    let app = TestApp::spawn_with(|config| config.starting_credits = 12).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let (_, picture) = an_sdxl_picture(&mut alice, &conversation.id).await;
    let reroll = send_images(&mut alice, &conversation.id, "another one", 1).await;
    assert_eq!(balance(&mut alice).await, 2, "12 - 8 - 2");
    assert!(
        context(&mut alice, &reroll.id)
            .await
            .inherited_settings
            .is_some()
    );

    start(&mut alice, &reroll.id).await;
    let answer = alice
        .record_intent(internal::RecordIntentRequest {
            intent: Some(proto::ResolvedIntent {
                kind: proto::IntentKind::New.into(),
                resolved_prompt: "a lighthouse at dusk".into(),
                edit_type: "reroll".into(),
                strength: 0.0,
            }),
            init_generation_id: String::new(),
            ..edit_intent(&reroll.id, &picture.id)
        })
        .await
        .expect("intent")
        .into_inner();
    let kept = answer.message.expect("message");
    assert_eq!(kept.settings.expect("settings").model, "builtin");
    assert_eq!(kept.cost, 2);
    assert_eq!(kept.generations[0].model, "builtin");
    assert_eq!(answer.provider, "builtin");
    assert_eq!(balance(&mut alice).await, 2);
    assert_eq!(
        get_message(&mut alice, &reroll.id)
            .await
            .intent
            .expect("the intent is recorded all the same")
            .edit_type,
        "reroll"
    );
}

/// The generate jobs of `message_id` in the jobs stream so far (read by sequence: a work
/// queue takes one consumer per subject, and the test must not become one).
async fn jobs_of(app: &TestApp, message_id: &str) -> usize {
    let subjects = subjects(app);
    let js = app.nats.jetstream().await.expect("jetstream");
    let mut stream = js.get_stream(subjects.jobs_stream()).await.expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    if state.messages == 0 {
        return 0;
    }
    let mut count = 0;
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(stored) = stream.get_raw_message(sequence).await else {
            continue;
        };
        if jobs::GenerateJob::decode(stored.payload.clone())
            .is_ok_and(|job| job.message_id == message_id)
        {
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn the_reaper_republishes_a_lost_job_then_fails_and_refunds_a_message_still_stuck() {
    let metrics_addr = atelier_testkit::free_local_addr();
    let app = TestApp::spawn_with(|config| {
        config.reaper_interval = Duration::from_millis(100);
        config.reaper_stale_after = Duration::from_secs(2);
        config.metrics_addr = Some(metrics_addr);
    })
    .await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let stuck = send_images(&mut alice, &conversation.id, "a red fox", 2).await;
    let waiting = send_images(&mut alice, &conversation.id, "a grey wolf", 1).await;
    outbox_drained(&app).await;
    assert_eq!(balance(&mut alice).await, 94);
    // A worker started the first and died; say its job was lost with it.
    start(&mut alice, &stuck.id).await;
    let pool = app.db.pool().await.expect("pool");
    let reap_count = async |id: &str| -> i16 {
        sqlx::query_scalar("SELECT reap_count FROM messages WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("reap_count")
    };

    // Unchanged past the bound: each gets its job published again, once.
    let mut republished = false;
    for _ in 0..100 {
        if jobs_of(&app, &stuck.id).await == 2 && jobs_of(&app, &waiting.id).await == 2 {
            republished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(republished, "both jobs published again within 10 s");

    // Still stuck one period later: the running message fails and is refunded; the queued
    // one may be waiting its turn, so it stays queued.
    let events = user_events_once(&app, "alice", |events| {
        events
            .iter()
            .any(|event| event.message_id == stuck.id && common::kind(event) == "generation_failed")
    })
    .await;
    let failed = events
        .iter()
        .find_map(|event| match &event.payload {
            Some(proto::event::Payload::GenerationFailed(failed))
                if event.message_id == stuck.id =>
            {
                Some(failed.clone())
            }
            _ => None,
        })
        .expect("generation_failed");
    assert_eq!(failed.generation_ids.len(), 2);
    assert_eq!(failed.refunded, 4);
    assert_eq!(failed.reason, atelier_conversation::reaper::REAPED_REASON);
    assert_eq!(
        get_message(&mut alice, &stuck.id).await.status(),
        proto::MessageStatus::Failed
    );
    assert_eq!(
        balance(&mut alice).await,
        98,
        "the stuck message's 4 credits back"
    );
    assert_eq!(reap_count(&stuck.id).await, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get_message(&mut alice, &waiting.id).await.status(),
        proto::MessageStatus::Queued
    );
    assert_eq!(jobs_of(&app, &waiting.id).await, 2, "republished once only");

    // Counted for the operator.
    let scraped = atelier_testkit::scrape_metrics(metrics_addr).await;
    for line in [
        "atelier_conversation_reaped_total{action=\"republished\"} 2",
        "atelier_conversation_reaped_total{action=\"failed\"} 1",
    ] {
        assert!(scraped.lines().any(|l| l == line), "{line} in\n{scraped}");
    }
}
