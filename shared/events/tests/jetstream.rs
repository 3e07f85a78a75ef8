//! The topology and publishing against the real NATS server (JetStream enabled), each test
//! under a prefix of its own.

use std::time::Duration;

use async_nats::jetstream;
use atelier_events::{Publisher, Subjects, ensure_streams};
use futures::StreamExt as _;

fn nats_url() -> String {
    std::env::var("ATELIER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

struct TestStreams {
    js: jetstream::Context,
    subjects: Subjects,
}

impl TestStreams {
    async fn create() -> Self {
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS reachable");
        let js = jetstream::new(client);
        let prefix = format!("test{}", uuid::Uuid::now_v7().simple());
        let subjects = Subjects::new(&prefix).expect("prefix");
        ensure_streams(&js, &subjects).await.expect("streams");
        Self { js, subjects }
    }
}

impl Drop for TestStreams {
    fn drop(&mut self) {
        let js = self.js.clone();
        let names = [self.subjects.jobs_stream(), self.subjects.events_stream()];
        // Leave nothing behind on the shared server.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                for name in names {
                    let _ = js.delete_stream(name).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn streams_are_created_idempotently_and_duplicates_are_dropped() {
    let streams = TestStreams::create().await;
    // A second replica starting up changes nothing.
    ensure_streams(&streams.js, &streams.subjects)
        .await
        .expect("idempotent");

    let publisher = Publisher::new(streams.js.clone());
    let subject = streams.subjects.generate_jobs();
    let first = publisher
        .publish(subject.clone(), "outbox-1", "job".into())
        .await
        .expect("publish");
    let again = publisher
        .publish(subject.clone(), "outbox-1", "job".into())
        .await
        .expect("republish");
    assert_eq!(
        first, again,
        "a republished outbox row is the same stream message"
    );
    publisher
        .publish(subject, "outbox-2", "job".into())
        .await
        .expect("publish");

    let mut jobs = streams
        .js
        .get_stream(streams.subjects.jobs_stream())
        .await
        .expect("stream");
    assert_eq!(jobs.info().await.expect("info").state.messages, 2);
}

#[tokio::test]
async fn user_events_are_republished_live_with_their_sequence_and_predecessor() {
    let streams = TestStreams::create().await;
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let mut alice_live = client
        .subscribe(streams.subjects.live_user_events("alice"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let publisher = Publisher::new(streams.js.clone());
    for (user, id) in [("alice", "a0"), ("bob", "b0"), ("alice", "a1")] {
        publisher
            .publish(streams.subjects.user_events(user), id, id.to_owned().into())
            .await
            .expect("publish");
    }

    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(5), alice_live.next())
            .await
            .expect("live event in time")
            .expect("subscription open");
        let headers = message.headers.expect("republish headers");
        let header = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
        seen.push((
            String::from_utf8_lossy(&message.payload).into_owned(),
            header("Nats-Sequence"),
            header("Nats-Last-Sequence"),
        ));
    }
    assert_eq!(
        seen,
        [
            ("a0".to_owned(), Some("1".to_owned()), Some("0".to_owned())),
            ("a1".to_owned(), Some("3".to_owned()), Some("1".to_owned())),
        ]
    );
}
