//! Every service's `/metrics` after one completed message: the series an operator pages
//! on are there, with the values that message gave them.

use std::time::Duration;

use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_tests::{Mesh, MeshOptions, Watcher, authorized, new_conversation, send_prompt};

/// The value of the sample named exactly `series` (name and labels) in `page`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Scrapes `service` until every `(series, check)` holds (a counter may be raised just
/// after the event the test saw), for at most 10 s; returns the last page.
async fn scrape_until(
    mesh: &Mesh,
    service: &str,
    expected: &[(&str, &dyn Fn(f64) -> bool)],
) -> String {
    let addr = mesh
        .metrics
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, addr)| *addr)
        .expect("the service serves metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = atelier_testkit::scrape_metrics(addr).await;
        let missing: Vec<&str> = expected
            .iter()
            .filter(|(series, check)| !value(&page, series).is_some_and(check))
            .map(|(series, _)| *series)
            .collect();
        if missing.is_empty() {
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service}: {missing:?} not as expected in\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_service_serves_its_series_after_a_completed_message() {
    atelier_testkit::init_logging();
    let mesh = Mesh::start(MeshOptions::default()).await.expect("mesh");
    let bearer = mesh.bearer("alice").expect("token");
    let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));
    let mut watcher = Watcher::open(mesh.connect().await.expect("connect"), &bearer, None)
        .await
        .expect("watch");
    let conversation = new_conversation(&mut chat, &bearer)
        .await
        .expect("conversation");
    // A caller's mistake, to be counted under its code.
    let refused = chat
        .send_message(
            authorized(
                proto::SendMessageRequest {
                    conversation_id: conversation.id.clone(),
                    prompt: String::new(),
                    ..Default::default()
                },
                &bearer,
            )
            .expect("request"),
        )
        .await
        .expect_err("an empty prompt");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A first picture, then an edit of it: the edit is what asks for the intent.
    let mut cost = 0;
    for prompt in ["a red fox in the snow", "make it night-time"] {
        let message = send_prompt(&mut chat, &bearer, &conversation.id, prompt)
            .await
            .expect("send");
        cost += message.cost;
        loop {
            let event = watcher
                .next(Duration::from_secs(30))
                .await
                .expect("the pipeline's next event");
            if event.message_id != message.id {
                continue;
            }
            match event.payload {
                Some(proto::event::Payload::GenerationCompleted(_)) => break,
                Some(proto::event::Payload::GenerationFailed(failed)) => panic!("{failed:?}"),
                _ => {}
            }
        }
    }
    let cost = cost as f64;
    let one = |v: f64| v == 1.0;
    let two = |v: f64| v == 2.0;
    // An edit that inherits a style is enhanced again with it.
    let at_least_two = |v: f64| v >= 2.0;
    let zero = |v: f64| v == 0.0;
    let some = |v: f64| v >= 1.0;
    let the_cost = move |v: f64| v == cost;
    let recent = |v: f64| (0.0..60.0).contains(&v);

    scrape_until(
        &mesh,
        "edge",
        &[
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.ChatService/SendMessage\",code=\"OK\"}",
                &two,
            ),
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.ChatService/SendMessage\",code=\"InvalidArgument\"}",
                &one,
            ),
            ("atelier_watch_streams_open", &one),
            ("atelier_watch_slow_consumers_total", &zero),
        ],
    )
    .await;
    scrape_until(
        &mesh,
        "conversation",
        &[
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.conversation.v1.ConversationService/SendMessage\",code=\"OK\"}",
                &two,
            ),
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.conversation.v1.ConversationService/CompleteGeneration\",code=\"OK\"}",
                &two,
            ),
            ("atelier_credits_total{movement=\"reserved\"}", &the_cost),
            ("atelier_credits_total{movement=\"captured\"}", &the_cost),
            ("atelier_credits_total{movement=\"released\"}", &zero),
            // message_created, credits_changed, the job, the title's event and job, ...
            ("atelier_outbox_lag_seconds_count", &some),
            ("atelier_conversation_reaped_total{action=\"failed\"}", &zero),
        ],
    )
    .await;
    scrape_until(
        &mesh,
        "intent",
        &[
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.intent.v1.IntentService/AnalyzeIntent\",code=\"OK\"}",
                &one,
            ),
            ("atelier_intent_answers_total{source=\"heuristic\"}", &one),
        ],
    )
    .await;
    scrape_until(
        &mesh,
        "enhancement",
        &[
            (
                "atelier_rpc_server_duration_seconds_count{method=\"/atelier.enhancement.v1.EnhancementService/EnhancePrompt\",code=\"OK\"}",
                &at_least_two,
            ),
            ("atelier_enhancement_answers_total{source=\"fallback\"}", &at_least_two),
        ],
    )
    .await;
    for worker in ["generation", "title"] {
        scrape_until(
            &mesh,
            worker,
            &[
                ("atelier_jobs_redelivered_total", &zero),
                ("atelier_jobs_waiting", &zero),
                ("atelier_jobs_oldest_age_seconds", &recent),
            ],
        )
        .await;
    }
    scrape_until(
        &mesh,
        "generation",
        &[(
            "atelier_provider_call_duration_seconds_count{provider=\"builtin\",outcome=\"ok\"}",
            &two,
        )],
    )
    .await;
}
