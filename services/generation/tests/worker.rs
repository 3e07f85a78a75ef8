//! The generation worker in a real pipeline: PostgreSQL, NATS JetStream, the conversation,
//! intent and enhancement services in-process, and HTTP fakes speaking the public shapes
//! of an OpenAI-compatible LLM and of AUTOMATIC1111.

mod pipeline;

use std::time::Duration;

use atelier_proto::conversation::v1 as internal;
use atelier_proto::v1 as proto;
use base64::Engine as _;
use pipeline::{Pipeline, PipelineOptions};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_message_goes_from_queued_to_a_stored_image_with_captured_credits() {
    let pipeline = Pipeline::start(PipelineOptions::default()).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox in the snow", None)
        .await;

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    let generation = &done.generations[0];
    assert_eq!(generation.status(), proto::GenerationStatus::Completed);
    // Enhanced by the fallback (no LLM configured): the prompt plus quality terms.
    assert!(
        done.enhanced_prompt.starts_with("a red fox in the snow"),
        "{}",
        done.enhanced_prompt
    );

    // The image is in storage, a PNG of the requested size.
    let key = pipeline.image_key(&generation.id).await;
    let png = pipeline.store().get(&key).await.expect("stored image");
    let decoded = png::Decoder::new(std::io::Cursor::new(png.to_vec()))
        .read_info()
        .expect("a PNG");
    assert_eq!((decoded.info().width, decoded.info().height), (512, 512));

    // Captured once: the reservation stands, and the ledger says so.
    assert_eq!(pipeline.balance(&mut alice).await, 100 - done.cost);
    assert_eq!(pipeline.ledger_count("capture").await, 1);
    assert_eq!(pipeline.ledger_count("release").await, 0);

    // Every step reached the user's event stream, in causal order.
    let kinds = pipeline
        .event_kinds_once("alice", "generation_completed")
        .await;
    let position = |kind: &str| {
        kinds
            .iter()
            .position(|seen| seen == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
    };
    assert!(position("message_created") < position("generation_started"));
    assert!(position("generation_started") < position("intent_resolved"));
    assert!(position("intent_resolved") < position("generation_completed"));
}

#[tokio::test]
async fn no_image_event_overtakes_the_recorded_intent() {
    let llm = pipeline::enhancing_llm(Duration::from_millis(300)).await;
    let pipeline = Pipeline::with_llm(&llm).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox in the snow", None)
        .await;

    // The worker has started the message and waits 300 ms for its enhancement. Holding
    // the message's row from now makes RecordIntent wait, while the image (the builtin
    // renderer: milliseconds) is made and stored meanwhile.
    pipeline::wait_for_request(&llm, "/chat/completions", 1).await;
    pipeline
        .wait_for_status(&mut alice, &message.id, proto::MessageStatus::Processing)
        .await;
    let hold = pipeline.hold_message_row(&message.id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    hold.rollback().await.expect("release");

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    pipeline
        .assert_first_before("alice", "intent_resolved", "generation_progress")
        .await;
}

/// A pipeline asking an enhancing LLM fake, and Alice's message sent while no worker
/// runs: its job waits in the stream until the test starts one.
async fn a_message_waiting_for_a_worker() -> (MockServer, Pipeline, pipeline::Client, proto::Message)
{
    let llm = pipeline::enhancing_llm(Duration::ZERO).await;
    let mut pipeline = Pipeline::with_llm(&llm).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    pipeline.kill_worker();
    let message = pipeline
        .send(&mut alice, &conversation, "a red fox in the snow", None)
        .await;
    (llm, pipeline, alice, message)
}

#[tokio::test]
async fn the_llm_is_asked_while_the_start_waits_to_commit() {
    // The row is held before the worker starts: StartGeneration, which locks it, waits.
    let (llm, mut pipeline, mut alice, message) = a_message_waiting_for_a_worker().await;
    let hold = pipeline.hold_message_row(&message.id).await;
    pipeline.start_worker().await;

    // Enhancement reaches the LLM while the start cannot commit.
    pipeline::wait_for_request(&llm, "/chat/completions", 1).await;
    let waiting = pipeline.message(&mut alice, &message.id).await;
    assert_eq!(
        waiting.status(),
        proto::MessageStatus::Queued,
        "the start is still waiting"
    );
    hold.rollback().await.expect("release");

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    assert!(
        done.enhanced_prompt.contains("vivid"),
        "the LLM's enhancement was used: {}",
        done.enhanced_prompt
    );
    pipeline
        .assert_first_before("alice", "generation_started", "intent_resolved")
        .await;
}

#[tokio::test]
async fn the_job_of_a_message_cancelled_before_it_ran_asks_nothing() {
    let (llm, mut pipeline, mut alice, message) = a_message_waiting_for_a_worker().await;
    pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::MessageId(message.id.clone()),
        )
        .await;

    // The worker reads the message, sees it ended and acknowledges the job: no LLM call,
    // no start, no second refund.
    pipeline.start_worker().await;
    pipeline.wait_until_jobs_settled().await;
    let asked = llm.received_requests().await.expect("recorded").len();
    assert_eq!(asked, 0, "the LLM was not asked");
    let kinds = pipeline.event_kinds("alice").await;
    assert!(
        kinds.iter().any(|kind| kind == "generation_cancelled"),
        "{kinds:?}"
    );
    assert!(
        !kinds.iter().any(|kind| kind == "generation_started"),
        "{kinds:?}"
    );
    assert_eq!(pipeline.balance(&mut alice).await, 100);
    assert_eq!(pipeline.ledger_count("release").await, 1);
}

#[tokio::test]
async fn intent_and_enhancement_run_at_the_same_time() {
    let llm = pipeline::PairingLlm::start().await;
    let pipeline = Pipeline::start(PipelineOptions {
        llm_url: Some(llm.url()),
        ..PipelineOptions::default()
    })
    .await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    // A first picture (enhancement alone asks the LLM; answered at once).
    let first = pipeline
        .send(&mut alice, &conversation, "a red fox in the snow", None)
        .await;
    pipeline.wait_until_settled(&mut alice, &first.id).await;

    // An ambiguous follow-up: intent needs the LLM too. The fake now holds each answer
    // until a second request is in flight: sequential calls would leave one alone, time
    // out in the fake and never pair.
    llm.hold_for_pairs();
    let second = pipeline
        .send(
            &mut alice,
            &conversation,
            "a dog like that one but in a park",
            None,
        )
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &second.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    assert_eq!(llm.peak_in_flight(), 2, "intent and enhancement overlapped");
    assert!(done.intent.is_some());
    assert!(
        done.enhanced_prompt.contains("vivid"),
        "the LLM's enhancement was used: {}",
        done.enhanced_prompt
    );
}

#[tokio::test]
async fn an_edit_uses_img2img_from_the_previous_image() {
    let sd = pipeline::automatic1111(pipeline::png_answer(1024, 1024, 10)).await;
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/img2img"))
        .respond_with(pipeline::png_answer(1024, 1024, 200))
        .mount(&sd)
        .await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let first = pipeline
        .send(
            &mut alice,
            &conversation,
            "a red fox in the snow",
            Some("sdxl"),
        )
        .await;
    let first = pipeline.wait_until_settled(&mut alice, &first.id).await;
    assert_eq!(first.status(), proto::MessageStatus::Completed);

    let edit = pipeline
        .send(
            &mut alice,
            &conversation,
            "make it night-time",
            Some("sdxl"),
        )
        .await;
    let edit = pipeline.wait_until_settled(&mut alice, &edit.id).await;
    assert_eq!(edit.status(), proto::MessageStatus::Completed);
    let intent = edit.intent.clone().expect("intent");
    assert_eq!(intent.kind(), proto::IntentKind::Edit);
    assert!(
        intent.resolved_prompt.contains("red fox"),
        "{}",
        intent.resolved_prompt
    );
    assert_eq!(
        edit.generations[0].init_generation_id,
        first.generations[0].id
    );

    // The img2img call started from the stored previous image, with the suggested strength.
    let requests = sd.received_requests().await.expect("recorded");
    let img2img = requests
        .iter()
        .find(|request| request.url.path() == "/sdapi/v1/img2img")
        .expect("an img2img call");
    let body: serde_json::Value = serde_json::from_slice(&img2img.body).expect("json");
    let previous_key = pipeline.image_key(&first.generations[0].id).await;
    let previous_png = pipeline.store().get(&previous_key).await.expect("stored");
    let sent = base64::engine::general_purpose::STANDARD
        .decode(body["init_images"][0].as_str().expect("init image"))
        .expect("base64");
    assert_eq!(sent, previous_png.to_vec());
    let strength = body["denoising_strength"].as_f64().expect("strength");
    assert!(
        (strength - f64::from(intent.strength)).abs() < 1e-6 && strength > 0.0 && strength < 1.0
    );
}

#[tokio::test]
async fn a_provider_failing_for_good_fails_the_message_and_refunds_once() {
    let sd = pipeline::automatic1111(
        ResponseTemplate::new(422)
            .set_body_json(serde_json::json!({ "detail": "prompt rejected" })),
    )
    .await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Failed);
    assert!(!done.generations[0].error.is_empty());
    assert_eq!(
        pipeline.balance(&mut alice).await,
        100,
        "the reservation came back"
    );
    assert_eq!(pipeline.ledger_count("release").await, 1);

    pipeline
        .event_kinds_once("alice", "generation_failed")
        .await;
    let failed = pipeline
        .events("alice")
        .await
        .into_iter()
        .find_map(|event| match event.payload {
            Some(proto::event::Payload::GenerationFailed(failed)) => Some(failed),
            _ => None,
        })
        .expect("a generation_failed event");
    // The event says why: the provider's own refusal.
    assert!(
        failed.reason.contains("prompt rejected"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.refunded, done.cost);
    assert!(done.generations[0].error.contains("prompt rejected"));
}

#[tokio::test]
async fn a_provider_being_retried_shows_it_in_the_progress_events() {
    let sd = pipeline::automatic1111(pipeline::png_answer(1024, 1024, 90)).await;
    // The first attempt meets an overloaded server; the retry succeeds.
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/txt2img"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(serde_json::json!({ "error": "busy" })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&sd)
        .await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);

    pipeline
        .event_kinds_once("alice", "generation_completed")
        .await;
    let events = pipeline.events("alice").await;
    let retrying = events
        .iter()
        .position(|event| {
            matches!(&event.payload, Some(proto::event::Payload::GenerationProgress(progress))
                if progress.stage == "retrying")
        })
        .expect("a retrying progress event");
    let Some(proto::event::Payload::GenerationProgress(notice)) = &events[retrying].payload else {
        unreachable!("found above");
    };
    assert_eq!(notice.generation_id, done.generations[0].id);
    // The second attempt of the pipeline's two.
    assert_eq!((notice.attempt, notice.max_attempts), (2, 2));
    assert_eq!(notice.detail, "the image provider failed (HTTP 503)");
    assert!(notice.retry_in_ms > 0);
    let completed = events
        .iter()
        .position(|event| {
            matches!(
                event.payload,
                Some(proto::event::Payload::GenerationCompleted(_))
            )
        })
        .expect("a completion");
    assert!(retrying < completed);
}

/// A fake AUTOMATIC1111 whose first render takes `render` and whose next are quick.
async fn automatic1111_whose_first_render_takes(render: Duration) -> MockServer {
    let sd = pipeline::automatic1111(pipeline::png_answer(1024, 1024, 2)).await;
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/txt2img"))
        .respond_with(pipeline::png_answer(1024, 1024, 1).set_delay(render))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&sd)
        .await;
    sd
}

/// Alice's message on a pipeline started with `options` and a fake AUTOMATIC1111 whose
/// first render hangs (its worker is to be stopped or killed) and whose next is quick,
/// once the first render has begun.
async fn a_first_render_hanging(
    options: PipelineOptions,
) -> (MockServer, Pipeline, pipeline::Client, proto::Message) {
    let sd = automatic1111_whose_first_render_takes(Duration::from_secs(60)).await;
    let pipeline = Pipeline::start(PipelineOptions {
        automatic1111_url: Some(sd.uri()),
        ..options
    })
    .await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 1).await;
    (sd, pipeline, alice, message)
}

/// Waits for `message` to settle and checks it completed exactly once: charged once, one
/// completion event however many deliveries its job had, nothing refunded.
async fn assert_completed_once(
    pipeline: &Pipeline,
    alice: &mut pipeline::Client,
    message: &proto::Message,
) {
    let done = pipeline.wait_until_settled(alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    assert_eq!(pipeline.balance(alice).await, 100 - done.cost);
    let kinds = pipeline
        .event_kinds_once("alice", "generation_completed")
        .await;
    let completions = kinds
        .iter()
        .filter(|kind| *kind == "generation_completed")
        .count();
    assert_eq!(completions, 1, "{kinds:?}");
    assert_eq!(pipeline.ledger_count("capture").await, 1);
    assert_eq!(
        pipeline.ledger_count("release").await,
        0,
        "nothing refunded"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_another_which_completes_it_once() {
    let (_sd, mut pipeline, mut alice, message) = a_first_render_hanging(PipelineOptions {
        ack_wait: Duration::from_secs(2),
        ..PipelineOptions::default()
    })
    .await;

    // Kill the rendering worker: no ack, no nak, nothing; the job comes back after its
    // ack wait.
    pipeline.kill_worker();
    pipeline.start_worker().await;
    assert_completed_once(&pipeline, &mut alice, &message).await;
}

#[tokio::test]
async fn a_worker_stopped_mid_job_hands_it_back_to_another_which_completes_it_once() {
    let (sd, mut pipeline, mut alice, message) = a_first_render_hanging(PipelineOptions {
        // Far longer than the test waits: only the hand-back can bring the job back soon.
        ack_wait: Duration::from_secs(120),
        drain_timeout: Duration::from_millis(500),
        ..PipelineOptions::default()
    })
    .await;

    // Stop the rendering worker as SIGTERM does: the drain ends the render it cannot
    // finish (the server is told to stop) and hands the job back.
    pipeline.stop_worker().await;
    pipeline::wait_for_request(&sd, "/sdapi/v1/interrupt", 1).await;
    let restarted = std::time::Instant::now();
    pipeline.start_worker().await;
    assert_completed_once(&pipeline, &mut alice, &message).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(30),
        "taken again at once, not after the ack wait: {:?}",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn a_last_delivery_that_cannot_settle_comes_back_and_settles_once() {
    // Every delivery is the last (one attempt). The first render ends while the worker
    // cannot reach the conversation service; the next is quick.
    let sd = automatic1111_whose_first_render_takes(Duration::from_secs(2)).await;
    let mut pipeline = Pipeline::start(PipelineOptions {
        automatic1111_url: Some(sd.uri()),
        max_deliver: 1,
        ..PipelineOptions::default()
    })
    .await;
    // The worker reaches the conversation service through a link the test can cut.
    pipeline.kill_worker();
    let link = atelier_testkit::TcpProxy::start(pipeline.conversation_addr(), true)
        .await
        .expect("proxy");
    pipeline.start_worker_reaching(&link.url("http")).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;

    // While the render runs, the conversation service goes out of reach: the image cannot
    // be recorded, nor the message failed and refunded. The job must come back.
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 1).await;
    link.set_up(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        pipeline.message(&mut alice, &message.id).await.status(),
        proto::MessageStatus::Processing,
        "nothing settled while the service was away"
    );
    link.set_up(true);
    assert_completed_once(&pipeline, &mut alice, &message).await;
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 2).await;
}

#[tokio::test]
async fn cancelling_during_a_slow_render_stops_it_and_refunds() {
    let (sd, pipeline, mut alice, message) =
        pipeline::a_render_under_way(Duration::from_secs(60)).await;

    let cancelled = pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::MessageId(message.id.clone()),
        )
        .await;
    assert_eq!(cancelled.status(), proto::MessageStatus::Cancelled);
    assert_eq!(pipeline.balance(&mut alice).await, 100);
    // The worker saw the cancellation and dropped the render: the server is told to stop.
    pipeline::wait_for_request(&sd, "/sdapi/v1/interrupt", 1).await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Cancelled);
    assert_eq!(pipeline.ledger_count("capture").await, 0);
}

#[tokio::test]
async fn an_image_cancelled_while_it_was_stored_is_removed_from_the_store() {
    let (_sd, pipeline, _alice, message) =
        pipeline::a_render_under_way(Duration::from_secs(1)).await;
    // The image ends while it renders, and the worker does not hear of it (as when the
    // cancel lands after it last looked): only CompleteGeneration's answer tells it.
    let generation_id = message.generations[0].id.clone();
    let pool = pipeline.pool().await;
    sqlx::query("UPDATE generations SET status = 'cancelled' WHERE id = $1::uuid")
        .bind(&generation_id)
        .execute(&pool)
        .await
        .expect("ended behind the worker's back");

    pipeline.wait_until_jobs_settled().await;
    let key = atelier_images::key_for("alice", &generation_id);
    assert!(
        matches!(
            pipeline.store().get(&key).await,
            Err(atelier_images::StorageError::NotFound { .. })
        ),
        "the stored image of a cancelled generation is gone"
    );
    assert_eq!(pipeline.ledger_count("capture").await, 0);
}

#[tokio::test]
async fn with_the_llm_down_every_step_falls_back_and_the_breaker_recovers() {
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&llm)
        .await;
    let pipeline = Pipeline::start(PipelineOptions {
        llm_url: Some(llm.uri()),
        breaker_open_for: Duration::from_secs(6),
        ..PipelineOptions::default()
    })
    .await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;

    // Failures open the enhancement service's breaker; images are made all the same.
    for index in 0..2 {
        let message = pipeline
            .send(
                &mut alice,
                &conversation,
                &format!("a red fox number {index}"),
                None,
            )
            .await;
        let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
        assert_eq!(done.status(), proto::MessageStatus::Completed);
        assert!(
            done.enhanced_prompt
                .starts_with(&format!("a red fox number {index}"))
        );
    }
    let seen_while_failing = llm.received_requests().await.expect("recorded").len();
    assert!(
        seen_while_failing >= 2,
        "the LLM was tried: {seen_while_failing}"
    );
    // Open: the next message does not even reach the LLM.
    let message = pipeline
        .send(&mut alice, &conversation, "a blue fox", None)
        .await;
    pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(
        llm.received_requests().await.expect("recorded").len(),
        seen_while_failing
    );

    // The LLM comes back; after the open period a trial call closes the breaker.
    llm.reset().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(pipeline::completion(
                r#"{"prompt":"a vivid green fox, golden light","negative_prompt":""}"#,
            )),
        )
        .mount(&llm)
        .await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let message = pipeline
        .send(&mut alice, &conversation, "a green fox", None)
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert!(
        done.enhanced_prompt.contains("vivid green fox"),
        "{}",
        done.enhanced_prompt
    );
}

#[tokio::test]
async fn a_repeated_start_after_completion_changes_nothing() {
    let pipeline = Pipeline::start(PipelineOptions::default()).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", None)
        .await;
    pipeline.wait_until_settled(&mut alice, &message.id).await;
    // A late redelivery of the same job finds nothing to do.
    let again = alice
        .start_generation(internal::StartGenerationRequest {
            message_id: message.id.clone(),
        })
        .await
        .expect("start")
        .into_inner();
    assert!(again.generation_ids.is_empty());
}

#[tokio::test]
async fn cancelling_one_image_leaves_the_others_to_finish() {
    let sd = pipeline::automatic1111(
        pipeline::png_answer(1024, 1024, 1).set_delay(Duration::from_secs(3)),
    )
    .await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let message = alice
        .send_message(proto::SendMessageRequest {
            conversation_id: conversation,
            prompt: "two red foxes".into(),
            settings: Some(proto::GenerationSettings {
                model: "sdxl".into(),
                image_count: Some(2),
                ..Default::default()
            }),
            client_request_id: String::new(),
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 2).await;
    let cancelled_id = message.generations[0].id.clone();
    pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::GenerationId(cancelled_id.clone()),
        )
        .await;

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(
        done.status(),
        proto::MessageStatus::Completed,
        "the other image was made"
    );
    assert_eq!(
        done.generations[0].status(),
        proto::GenerationStatus::Cancelled
    );
    assert_eq!(
        done.generations[1].status(),
        proto::GenerationStatus::Completed
    );
    // One image refunded, one paid.
    assert_eq!(
        pipeline.balance(&mut alice).await,
        100 - done.generations[1].cost
    );
    assert_eq!(pipeline.ledger_count("release").await, 1);
    assert_eq!(pipeline.ledger_count("capture").await, 1);
}

/// Sends Alice's `image_count` sdxl (AUTOMATIC1111, `max_batch` 4) images of one
/// prompt, from `seed` or with random seeds.
async fn send_sdxl(
    alice: &mut pipeline::Client,
    conversation_id: &str,
    image_count: u32,
    seed: Option<u64>,
) -> proto::Message {
    alice
        .send_message(proto::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            prompt: "red foxes in the snow".into(),
            settings: Some(proto::GenerationSettings {
                model: "sdxl".into(),
                image_count: Some(image_count),
                seed,
                ..Default::default()
            }),
            client_request_id: String::new(),
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

/// The bodies of the txt2img calls `sd` has received.
async fn txt2img_bodies(sd: &MockServer) -> Vec<serde_json::Value> {
    sd.received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|request| request.url.path() == "/sdapi/v1/txt2img")
        .map(|request| serde_json::from_slice(&request.body).expect("json"))
        .collect()
}

/// Asserts that `generation` is completed with the batch fake's image of its seed.
async fn assert_stored_image_of_its_seed(pipeline: &Pipeline, generation: &proto::Generation) {
    assert_eq!(generation.status(), proto::GenerationStatus::Completed);
    let key = pipeline.image_key(&generation.id).await;
    let stored = pipeline.store().get(&key).await.expect("stored image");
    let shade = u8::try_from(generation.seed % 256).expect("a grey level");
    let expected = base64::engine::general_purpose::STANDARD
        .decode(pipeline::png_base64(8, 8, shade))
        .expect("base64");
    assert_eq!(
        stored.to_vec(),
        expected,
        "image of seed {}",
        generation.seed
    );
}

#[tokio::test]
async fn images_of_consecutive_seeds_are_rendered_in_one_batch() {
    // Slow enough for the progress polls to report.
    let sd = pipeline::automatic1111(pipeline::batch_answer(Duration::from_secs(1))).await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let message = send_sdxl(&mut alice, &conversation, 3, Some(41)).await;

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    let seeds: Vec<u64> = done.generations.iter().map(|g| g.seed).collect();
    assert_eq!(seeds, [41, 42, 43]);

    // One call for the three, from the first seed (the web UI gives image i seed + i).
    let calls = txt2img_bodies(&sd).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["batch_size"], 3);
    assert_eq!(calls[0]["seed"], 41);
    // Each image stored under its own generation (the grid skipped), and paid once.
    for generation in &done.generations {
        assert_stored_image_of_its_seed(&pipeline, generation).await;
    }
    assert_eq!(pipeline.balance(&mut alice).await, 100 - done.cost);
    assert_eq!(pipeline.ledger_count("capture").await, 3);
    assert_eq!(pipeline.ledger_count("release").await, 0);

    // Every image heard of the call's progress, and was completed once.
    pipeline
        .event_kinds_once("alice", "generation_completed")
        .await;
    let events = pipeline.events("alice").await;
    for generation in &done.generations {
        let rendering = events.iter().any(|event| {
            matches!(&event.payload, Some(proto::event::Payload::GenerationProgress(progress))
                if progress.generation_id == generation.id && progress.stage == "rendering")
        });
        assert!(rendering, "no rendering progress for {}", generation.id);
    }
    let completed: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.payload {
            Some(proto::event::Payload::GenerationCompleted(completed)) => Some(completed),
            _ => None,
        })
        .flat_map(|completed| completed.generations.iter().map(|g| g.id.as_str()))
        .collect();
    assert_eq!(completed.len(), 3, "{completed:?}");
    for generation in &done.generations {
        assert!(completed.contains(&generation.id.as_str()), "{completed:?}");
    }
}

#[tokio::test]
async fn images_of_random_seeds_are_rendered_one_per_call() {
    let sd = pipeline::automatic1111(pipeline::batch_answer(Duration::ZERO)).await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let message = send_sdxl(&mut alice, &conversation, 3, None).await;

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    let calls = txt2img_bodies(&sd).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|call| call["batch_size"] == 1),
        "{calls:?}"
    );
    for generation in &done.generations {
        assert_stored_image_of_its_seed(&pipeline, generation).await;
    }
    assert_eq!(pipeline.ledger_count("capture").await, 3);
}

#[tokio::test]
async fn cancelling_one_image_of_a_batch_lets_the_call_make_the_others() {
    let sd = pipeline::automatic1111(pipeline::batch_answer(Duration::from_secs(3))).await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let message = send_sdxl(&mut alice, &conversation, 3, Some(41)).await;
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 1).await;
    let cancelled_id = message.generations[0].id.clone();
    pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::GenerationId(cancelled_id.clone()),
        )
        .await;

    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Completed);
    assert_eq!(
        done.generations[0].status(),
        proto::GenerationStatus::Cancelled
    );
    for generation in &done.generations[1..] {
        assert_stored_image_of_its_seed(&pipeline, generation).await;
    }
    // The call went on (no interrupt), and the cancelled image was not stored.
    assert_eq!(txt2img_bodies(&sd).await.len(), 1);
    let interrupts = sd
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|request| request.url.path() == "/sdapi/v1/interrupt")
        .count();
    assert_eq!(interrupts, 0);
    let key = atelier_images::key_for("alice", &cancelled_id);
    assert!(pipeline.store().get(&key).await.is_err(), "not stored");
    assert_eq!(
        pipeline.balance(&mut alice).await,
        100 - done.generations[1].cost - done.generations[2].cost
    );
    assert_eq!(pipeline.ledger_count("release").await, 1);
    assert_eq!(pipeline.ledger_count("capture").await, 2);
}

#[tokio::test]
async fn cancelling_every_image_of_a_batch_stops_the_call() {
    let sd = pipeline::automatic1111(pipeline::batch_answer(Duration::from_secs(60))).await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let message = send_sdxl(&mut alice, &conversation, 2, Some(41)).await;
    pipeline::wait_for_request(&sd, "/sdapi/v1/txt2img", 1).await;
    pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::MessageId(message.id.clone()),
        )
        .await;

    // The worker dropped the batch's call: the server is told to stop.
    pipeline::wait_for_request(&sd, "/sdapi/v1/interrupt", 1).await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Cancelled);
    assert_eq!(pipeline.balance(&mut alice).await, 100);
    assert_eq!(pipeline.ledger_count("capture").await, 0);
}

#[tokio::test]
async fn the_last_delivery_fails_the_message_and_refunds() {
    // Unavailable every time: retryable, until the deliveries run out.
    let sd = pipeline::automatic1111(ResponseTemplate::new(503)).await;
    let pipeline = Pipeline::start(PipelineOptions {
        automatic1111_url: Some(sd.uri()),
        max_deliver: 2,
        ..PipelineOptions::default()
    })
    .await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Failed);
    assert!(
        done.generations[0].error.contains("unavailable"),
        "{}",
        done.generations[0].error
    );
    assert_eq!(pipeline.balance(&mut alice).await, 100, "refunded");
    assert_eq!(pipeline.ledger_count("release").await, 1);
    // Two deliveries of two provider attempts each.
    let renders = sd
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|request| request.url.path() == "/sdapi/v1/txt2img")
        .count();
    assert_eq!(renders, 4);
}

#[tokio::test]
async fn a_provider_down_for_good_fails_and_refunds_within_the_deadline() {
    // Unavailable every time, with deliveries to spare: only the deadline ends it.
    let sd = pipeline::automatic1111(ResponseTemplate::new(503)).await;
    let pipeline = Pipeline::start(PipelineOptions {
        automatic1111_url: Some(sd.uri()),
        max_deliver: 20,
        provider_deadline: Duration::from_secs(3),
        ..PipelineOptions::default()
    })
    .await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let started = std::time::Instant::now();
    let message = pipeline
        .send(&mut alice, &conversation, "a red fox", Some("sdxl"))
        .await;
    let done = pipeline.wait_until_settled(&mut alice, &message.id).await;
    assert_eq!(done.status(), proto::MessageStatus::Failed);
    assert!(
        done.generations[0].error.contains("refunded"),
        "{}",
        done.generations[0].error
    );
    assert_eq!(pipeline.balance(&mut alice).await, 100, "refunded");
    assert_eq!(pipeline.ledger_count("release").await, 1);
    // Not a timing check: twenty deliveries with their backoff would take an hour.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_edit_on_a_model_without_image_input_is_drawn_anew_from_its_prompt() {
    // An OpenAI-compatible images API: dall-e-3 answers generations; it has no edits.
    let openai = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "created": 1,
            "data": [{ "b64_json": atelier_testkit::fakes::png_base64(1024, 1024, 90) }],
        })))
        .mount(&openai)
        .await;
    let pipeline = Pipeline::start(PipelineOptions {
        openai_url: Some(format!("{}/v1", openai.uri())),
        ..PipelineOptions::default()
    })
    .await;
    let mut alice = pipeline.client("alice");
    let conversation = pipeline.conversation(&mut alice).await;
    let picture = pipeline
        .send(
            &mut alice,
            &conversation,
            "a lighthouse at dusk",
            Some("dall-e-3"),
        )
        .await;
    let picture = pipeline.wait_until_settled(&mut alice, &picture.id).await;
    assert_eq!(picture.status(), proto::MessageStatus::Completed);

    // No model named: the edit stays on dall-e-3, which takes no image.
    let edit = pipeline
        .send(&mut alice, &conversation, "make it night-time", None)
        .await;
    let edit = pipeline.wait_until_settled(&mut alice, &edit.id).await;
    assert_eq!(edit.status(), proto::MessageStatus::Completed, "{edit:?}");
    assert_eq!(
        edit.intent.as_ref().expect("intent").kind(),
        proto::IntentKind::Edit
    );
    let made = &edit.generations[0];
    assert_eq!(made.model, "dall-e-3");
    assert_eq!(made.init_generation_id, "", "drawn from scratch");
    let requests = openai.received_requests().await.expect("recorded");
    let paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert_eq!(paths, ["/v1/images/generations", "/v1/images/generations"]);
    let sent: serde_json::Value = serde_json::from_slice(&requests[1].body).expect("json");
    assert!(
        sent["prompt"]
            .as_str()
            .is_some_and(|prompt| prompt.contains("night")),
        "the resolved prompt: {sent}"
    );
}

/// Outside development the service refuses to start without its service credential, or with a built-in or
/// short one; development mode warns, and listens on loopback only.
#[test]
fn refuses_to_start_unsafely() {
    use atelier_testkit::startup::{
        RequiredSecret, assert_development_is_loopback_only, assert_development_warns,
        assert_secrets_required,
    };
    let binary = env!("CARGO_BIN_EXE_atelier-generation");
    let secrets = [RequiredSecret {
        variable: "ATELIER_SERVICE_TOKEN",
        development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
    }];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}

/// A storage directory the worker cannot write stops it before it listens, naming the
/// variable: it must not report healthy and then fail every image.
#[test]
fn refuses_to_start_without_a_writable_storage_directory() {
    let binary = env!("CARGO_BIN_EXE_atelier-generation");
    let dir = std::env::temp_dir().join(format!("atelier-storage-check-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A directory under a regular file cannot be made, even by root.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").expect("a file");
    atelier_testkit::startup::assert_refused(
        binary,
        &[
            ("ATELIER_SERVICE_TOKEN", atelier_testkit::random_secret()),
            (
                "ATELIER_STORAGE_DIR",
                file.join("images").display().to_string(),
            ),
        ],
        "ATELIER_STORAGE_DIR",
        "a storage directory under a file",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
