//! A cancel and the job it stops are two traces (two requests), linked: the worker's
//! `cancel.receive` span belongs to the cancel's trace, under the relay's publish of the
//! cancel event, and links to the job's span. The subscriber is global, so this file holds
//! one test: its own binary.

mod pipeline;

use std::time::{Duration, Instant};

use atelier_proto::v1 as proto;
use atelier_testkit::SpanCollector;
use opentelemetry_sdk::trace::SpanData;

/// The ended spans, once `found` finds what it needs in them.
async fn spans_until(
    collected: &SpanCollector,
    what: &str,
    found: impl Fn(&[SpanData]) -> bool,
) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = collected.spans();
        if found(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "{what} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_cancel_received_by_the_worker_is_in_the_cancels_trace_and_links_to_the_job() {
    let collected = SpanCollector::default();
    let _telemetry = atelier_runtime::telemetry::init_with_exporter(
        "atelier-generation-test",
        collected.clone(),
    )
    .expect("the only subscriber of this process");
    let (_sd, pipeline, mut alice, message) =
        pipeline::a_render_under_way(Duration::from_secs(60)).await;

    pipeline
        .cancel(
            &mut alice,
            proto::cancel_generation_request::Target::MessageId(message.id.clone()),
        )
        .await;
    pipeline.wait_until_settled(&mut alice, &message.id).await;

    let is_job = |span: &SpanData| {
        span.name == "job"
            && span.attributes.iter().any(|attribute| {
                attribute.key.as_str() == "subject"
                    && attribute.value.as_str().ends_with("jobs.generate")
            })
    };
    let spans = spans_until(&collected, "the job and the cancel's receipt", |spans| {
        spans.iter().any(is_job) && spans.iter().any(|span| span.name == "cancel.receive")
    })
    .await;
    let job = spans.iter().find(|span| is_job(span)).expect("the job");
    let received: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.name == "cancel.receive")
        .collect();
    assert_eq!(received.len(), 1, "one cancel, received once");
    let received = received[0];

    // In the cancel's trace, under the publish of its event...
    let parent = spans
        .iter()
        .find(|span| span.span_context.span_id() == received.parent_span_id)
        .expect("the cancel's receipt has an ended parent");
    assert_eq!(parent.name, "outbox.publish");
    assert_eq!(
        parent.span_context.trace_id(),
        received.span_context.trace_id()
    );
    assert_ne!(
        received.span_context.trace_id(),
        job.span_context.trace_id(),
        "the cancel is a request of its own"
    );
    // ...and linked to the job it stopped.
    let linked: Vec<_> = received
        .links
        .iter()
        .map(|link| link.span_context.clone())
        .collect();
    assert_eq!(linked, vec![job.span_context.clone()]);
}
