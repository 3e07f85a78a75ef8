//! Cancellation: the ids of this message's cancelled generations, from the live copy of
//! the user's events, and the wait for them.

use std::collections::HashSet;

use atelier_events::trace::TraceContext;
use atelier_proto::jobs::v1::GenerateJob;
use atelier_proto::v1 as proto;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;

use super::{JobError, Worker};

/// Resolves once every one of `generation_ids` (the images of one provider call) is
/// cancelled; never, if the watcher is gone (a lost watcher must not abort a render: a
/// late cancel is still safe, CompleteGeneration then changes nothing).
pub(super) async fn cancellation_of_all(
    cancelled: &mut watch::Receiver<HashSet<String>>,
    generation_ids: &[String],
) {
    if cancelled
        .wait_for(|ids| generation_ids.iter().all(|id| ids.contains(id)))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// Subscribes to the user's live events and collects the ids of this message's cancelled
/// generations. Subscribed before StartGeneration, so no cancel slips between the two.
pub(super) async fn watch_cancellation(
    worker: &Worker,
    job: &GenerateJob,
) -> Result<watch::Receiver<HashSet<String>>, JobError> {
    let mut live = worker
        .nats
        .subscribe(worker.subjects.live_user_events(&job.user_id))
        .await
        .map_err(|err| JobError::Transient(format!("subscribing to cancellations: {err}")))?;
    // The subscription must be registered with the server before StartGeneration.
    worker
        .nats
        .flush()
        .await
        .map_err(|err| JobError::Transient(format!("flushing the subscription: {err}")))?;
    let (cancel, cancelled) = watch::channel(HashSet::new());
    let message_id = job.message_id.clone();
    // Called inside the job's span: what a cancel's span links to.
    let job_context = TraceContext::of(&tracing::Span::current());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Every job's receiver gone: the job is over.
                () = cancel.closed() => return,
                delivered = live.next() => {
                    let Some(delivered) = delivered else { return };
                    let Ok(event) = proto::Event::decode(delivered.payload) else { continue };
                    if event.message_id != message_id {
                        continue;
                    }
                    if let Some(proto::event::Payload::GenerationCancelled(ended)) = event.payload {
                        // In the cancel's trace (its CancelGeneration), linked to the job it
                        // stops, which is another trace: each leads to the other.
                        let received = tracing::info_span!(
                            "cancel.receive",
                            otel.kind = "consumer",
                            message_id = %message_id,
                            trace_id = tracing::field::Empty,
                        );
                        TraceContext::from_headers(delivered.headers.as_ref()).adopt(&received);
                        job_context.link(&received);
                        received.in_scope(|| {
                            tracing::info!(generations = ?ended.generation_ids, "generations cancelled");
                        });
                        cancel.send_modify(|ids| ids.extend(ended.generation_ids));
                    }
                }
            }
        }
    });
    Ok(cancelled)
}
