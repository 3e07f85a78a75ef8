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

    /// Publishes one job per id on the generation jobs subject.
    async fn publish_jobs(&self, ids: &[&str]) {
        let publisher = Publisher::new(self.js.clone());
        for id in ids {
            publisher
                .publish(self.subjects.generate_jobs(), id, "job".into())
                .await
                .expect("publish");
        }
    }

    /// A worker's consumer settings on the generation jobs subject; the tests vary only
    /// these four.
    fn worker(
        &self,
        max_attempts: i64,
        ack_wait: Duration,
        concurrency: usize,
        drain_timeout: Duration,
    ) -> atelier_events::jobs::JobConsumerConfig {
        atelier_events::jobs::JobConsumerConfig {
            durable_name: "test-worker".to_owned(),
            filter_subject: self.subjects.generate_jobs(),
            max_attempts,
            ack_wait,
            concurrency,
            drain_timeout,
            upstream_reachable: None,
        }
    }
}

impl Drop for TestStreams {
    fn drop(&mut self) {
        let names = [self.subjects.jobs_stream(), self.subjects.events_stream()];
        // Leave nothing behind on the shared server. A client of its own: the test's lives
        // on the test's runtime, which is blocked here.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let Ok(client) = async_nats::connect(nats_url()).await else {
                    return;
                };
                let js = jetstream::new(client);
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
async fn streams_are_kept_by_the_configured_replicas() {
    let streams = TestStreams::create().await;
    for name in [
        streams.subjects.jobs_stream(),
        streams.subjects.events_stream(),
    ] {
        let mut stream = streams.js.get_stream(&name).await.expect("stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.num_replicas, 1, "{name}");
    }
    // The test server is a single one: it refuses three copies, and the error names the
    // stream (a deployment that asks a lone server for a cluster's replicas is told why).
    let clustered = streams.subjects.clone().with_stream_replicas(3);
    assert_eq!(clustered.stream_replicas(), 3);
    let refused = ensure_streams(&streams.js, &clustered)
        .await
        .expect_err("a single server keeps one copy");
    assert!(
        refused
            .to_string()
            .contains(&streams.subjects.jobs_stream()),
        "{refused:#}"
    );
}

#[tokio::test]
async fn user_events_are_republished_live_with_their_sequence_and_predecessor() {
    let streams = TestStreams::create().await;
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let mut alice_live = client
        .subscribe(streams.subjects.live_user_events("alice"))
        .await
        .expect("subscribe");
    // A flush only empties the client's buffer: the server may not have the subscription
    // yet when the first event is republished (on another connection), and would drop
    // that copy. A message of our own through the subscription proves it is in place.
    client
        .publish(streams.subjects.live_user_events("alice"), "probe".into())
        .await
        .expect("probe");
    let probe = tokio::time::timeout(Duration::from_secs(5), alice_live.next())
        .await
        .expect("the probe in time")
        .expect("subscription open");
    assert_eq!(&probe.payload[..], b"probe");

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

#[tokio::test]
async fn jobs_are_handled_at_most_n_at_once_and_the_loop_stops_cleanly() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use atelier_events::jobs::{self, JobMetrics};

    let streams = TestStreams::create().await;
    streams
        .publish_jobs(&["job-0", "job-1", "job-2", "job-3", "job-4", "job-5"])
        .await;
    let config = streams.worker(3, Duration::from_secs(10), 2, Duration::from_secs(5));
    let consumer = jobs::consumer(&streams.js, &streams.subjects.jobs_stream(), &config)
        .await
        .expect("consumer");
    let (handled, in_flight, peak) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let counters = (
        Arc::clone(&handled),
        Arc::clone(&in_flight),
        Arc::clone(&peak),
    );
    let loop_task = tokio::spawn(jobs::run(
        consumer,
        config,
        JobMetrics::default(),
        async {
            let _ = stopped.await;
        },
        move |job| {
            let (handled, in_flight, peak) = counters.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                job.ack().await;
                handled.fetch_add(1, Ordering::SeqCst);
            }
        },
    ));
    for _ in 0..200 {
        if handled.load(Ordering::SeqCst) == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(handled.load(Ordering::SeqCst), 6);
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "at most the configured concurrency"
    );

    // Idle, waiting in a fetch: a shutdown ends the loop without a fuss.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), loop_task)
        .await
        .expect("the loop stops")
        .expect("no panic")
        .expect("no error");
    // Every job was acknowledged: the work queue is empty.
    let mut stream = streams
        .js
        .get_stream(streams.subjects.jobs_stream())
        .await
        .expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 0);
}

#[tokio::test]
async fn a_job_whose_last_attempt_was_lost_comes_back_to_be_settled() {
    use std::sync::{Arc, Mutex};

    use atelier_events::jobs::{self, JobMetrics};

    let streams = TestStreams::create().await;
    streams.publish_jobs(&["job-lost"]).await;
    // Short, so the deliveries a dead worker never acknowledges come back quickly.
    let config = streams.worker(2, Duration::from_secs(1), 1, Duration::from_secs(5));
    let consumer = jobs::consumer(&streams.js, &streams.subjects.jobs_stream(), &config)
        .await
        .expect("consumer");
    let server_side = consumer.pull.cached_info().config.max_deliver;
    assert_eq!(server_side, -1, "the server redelivers without limit");

    // Each delivery: (its number, whether it is the last attempt). The first three are
    // "lost" (never acknowledged, as by a worker that died); the fourth settles.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let record = Arc::clone(&seen);
    let loop_task = tokio::spawn(jobs::run(
        consumer,
        config,
        JobMetrics::default(),
        async {
            let _ = stopped.await;
        },
        move |job| {
            let record = Arc::clone(&record);
            async move {
                let delivery = (job.delivered(), job.is_last_attempt());
                record.lock().expect("unpoisoned").push(delivery);
                if job.delivered() >= 4 {
                    job.ack().await;
                }
            }
        },
    ));
    for _ in 0..200 {
        if seen.lock().expect("unpoisoned").len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), loop_task).await;
    assert_eq!(
        *seen.lock().expect("unpoisoned"),
        [(1, false), (2, true), (3, true), (4, true)],
        "past its limit a job still comes back, and every such delivery is told to settle"
    );
}

#[tokio::test]
async fn a_consumer_an_older_version_made_loses_its_server_side_limit() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use atelier_events::jobs;

    let streams = TestStreams::create().await;
    let stream = streams
        .js
        .get_stream(streams.subjects.jobs_stream())
        .await
        .expect("stream");
    // As the previous version created it: the limit in the server.
    stream
        .create_consumer(pull::Config {
            durable_name: Some("test-worker".to_owned()),
            filter_subject: streams.subjects.generate_jobs(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: 6,
            ..Default::default()
        })
        .await
        .expect("old consumer");
    let config = streams.worker(6, Duration::from_secs(60), 1, Duration::from_secs(5));
    let consumer = jobs::consumer(&streams.js, &streams.subjects.jobs_stream(), &config)
        .await
        .expect("consumer");
    assert_eq!(consumer.pull.cached_info().config.max_deliver, -1);
}

#[tokio::test]
async fn a_job_a_shutdown_abandons_is_handed_back_at_once() {
    use atelier_events::jobs::{self, JobMetrics};

    let streams = TestStreams::create().await;
    streams.publish_jobs(&["job-slow"]).await;
    // Long: without the hand-back the job would wait this out.
    let config = streams.worker(6, Duration::from_secs(60), 1, Duration::from_millis(200));
    let jobs_stream = streams.subjects.jobs_stream();
    let consumer = || jobs::consumer(&streams.js, &jobs_stream, &config);

    // A worker takes the job and is stopped while its handler still runs.
    let (started, mut handling) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(jobs::run(
        consumer().await.expect("consumer"),
        config.clone(),
        JobMetrics::default(),
        async {
            let _ = stopped.await;
        },
        move |_job| {
            let started = started.clone();
            async move {
                let _ = started.send(()).await;
                std::future::pending::<()>().await;
            }
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), handling.recv())
        .await
        .expect("the first worker took the job");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the drain is bounded")
        .expect("no panic")
        .expect("no error");

    // Another worker gets it at once, not after the 60 s ack_wait.
    let (delivered, mut deliveries) = tokio::sync::mpsc::channel::<i64>(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = JobMetrics::default();
    let second = tokio::spawn(jobs::run(
        consumer().await.expect("consumer"),
        config.clone(),
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
        move |job| {
            let delivered = delivered.clone();
            async move {
                job.ack().await;
                let _ = delivered.send(job.delivered()).await;
            }
        },
    ));
    let again = tokio::time::timeout(Duration::from_secs(5), deliveries.recv())
        .await
        .expect("redelivered within 5 s")
        .expect("a delivery");
    assert_eq!(again, 2);
    assert_eq!(metrics.redelivered(), 1, "counted as a redelivery");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), second).await;
}

/// The queue's depth and the age of its oldest unfinished job reach the metrics: with one
/// job running and two waiting, that is what they say.
#[tokio::test]
async fn the_job_metrics_sample_the_queue() {
    use atelier_events::jobs::{self, JobMetrics};

    let streams = TestStreams::create().await;
    streams.publish_jobs(&["job-0", "job-1", "job-2"]).await;
    let config = streams.worker(3, Duration::from_secs(30), 1, Duration::from_millis(100));
    let consumer = jobs::consumer(&streams.js, &streams.subjects.jobs_stream(), &config)
        .await
        .expect("consumer");
    let metrics = JobMetrics::default();
    let mut registry = atelier_runtime::metrics::registry();
    metrics.register(&mut registry);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let loop_task = tokio::spawn(jobs::run(
        consumer,
        config,
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
        // Holds its job: one running, the rest waiting.
        |_job| std::future::pending::<()>(),
    ));
    // Sampled at once, then every 5 s: the first sample may precede the first fetch.
    let mut text = String::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        text = atelier_runtime::metrics::encode(&registry);
        if text.contains("atelier_jobs_unacknowledged 1\n") {
            break;
        }
    }
    assert!(text.contains("atelier_jobs_unacknowledged 1\n"), "{text}");
    assert!(text.contains("atelier_jobs_waiting 2\n"), "{text}");
    let age: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("atelier_jobs_oldest_age_seconds "))
        .expect("the oldest job's age")
        .parse()
        .expect("a number");
    assert!(age > 0.0 && age < 60.0, "{age}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), loop_task).await;
}
