//! Load generator: drives SendMessage through the edge of an in-process mesh and prints
//! latency percentiles and throughput, next to the floor this machine allows (a bare gRPC
//! unary round trip on loopback and a bare one-INSERT PostgreSQL transaction).
//!
//! Then, on a second mesh with the whole pipeline and fakes at fixed latencies (the LLM
//! at 200 ms, AUTOMATIC1111 at 500 ms per image), the time from SendMessage to the
//! generation_completed event, beside the fakes' critical path, so the mesh's own
//! overhead shows.
//!
//! `cargo run --release -p atelier-tests --bin loadgen [-- --quick] [--pipeline-only]`
//!
//! It needs the PostgreSQL of `ATELIER_TEST_DATABASE_URL` (the local one by default) and
//! creates, then drops, a database of its own. Numbers only: it asserts nothing.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use atelier_edge::rate_limit::RateLimit;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_testkit::StatementCounter;
use atelier_tests::{Mesh, MeshOptions, authorized};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// (concurrency, calls) of each SendMessage run.
const RUNS: [(usize, usize); 3] = [(1, 2_000), (16, 8_000), (64, 8_000)];
const FLOOR_CALLS: usize = 2_000;
const WARM_UP_CALLS: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let per_sender = if quick { 3 } else { 13 };
    if std::env::args().any(|arg| arg == "--pipeline-only") {
        return pipeline::run(per_sender).await;
    }
    let scale = if quick { 10 } else { 1 };
    let statements = StatementCounter::install();

    let mesh = Mesh::start(MeshOptions {
        starting_credits: 1_000_000_000,
        max_generations_per_conversation: 1_000_000,
        // The rate limit is not what is measured here.
        rate_limit: RateLimit {
            per_second: 1e9,
            burst: 1_000_000_000,
            idle_eviction: Duration::from_secs(600),
        },
        database_connections: 16,
        // The fast path alone: its jobs wait in the stream, no image is rendered here.
        run_generation: false,
        ..MeshOptions::default()
    })
    .await
    .context("cannot start the mesh (is PostgreSQL running?)")?;

    println!(
        "Atelier load generator ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    println!();

    let grpc_floor = grpc_floor(FLOOR_CALLS / scale).await?;
    let pg_floor = pg_floor(&mesh, FLOOR_CALLS / scale).await?;
    println!(
        "floor  bare gRPC unary round trip (loopback)   {}",
        grpc_floor.summary()
    );
    println!(
        "floor  bare one-INSERT PostgreSQL transaction  {}",
        pg_floor.summary()
    );

    let per_call = statements_per_send(&mesh, &statements).await?;
    // sqlx logs every statement but BEGIN, which it sends as one more round trip.
    println!(
        "SendMessage statements logged per call: {per_call:.2} (the write and COMMIT) \
         -> {:.2} database round trips with BEGIN",
        per_call + 1.0
    );
    println!();

    println!(
        "{:>11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "concurrency", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "calls/s", "errors"
    );
    let mut first_p50 = None;
    for (concurrency, calls) in RUNS {
        let run = send_messages(&mesh, concurrency, calls / scale).await?;
        let stats = &run.latencies;
        println!(
            "{:>11} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>7}",
            concurrency,
            stats.count(),
            stats.percentile_ms(50.0),
            stats.percentile_ms(90.0),
            stats.percentile_ms(99.0),
            stats.percentile_ms(100.0),
            stats.count() as f64 / run.elapsed.as_secs_f64(),
            run.errors,
        );
        first_p50.get_or_insert(stats.percentile_ms(50.0));
    }
    let floor = grpc_floor.percentile_ms(50.0) + pg_floor.percentile_ms(50.0);
    if let Some(p50) = first_p50 {
        println!();
        println!(
            "SendMessage p50 at concurrency 1 = {:.1} x the floor ({floor:.3} ms = gRPC p50 + PostgreSQL p50)",
            p50 / floor
        );
    }
    drop(mesh);

    println!();
    pipeline::run(per_sender).await?;
    Ok(())
}

/// SendMessage to generation_completed through the whole pipeline, with fakes.
mod pipeline {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use atelier_edge::rate_limit::RateLimit;
    use atelier_proto::v1 as proto;
    use atelier_tests::{Mesh, MeshOptions};
    use base64::Engine as _;
    use futures::StreamExt as _;
    use prost::Message as _;
    use tokio::sync::oneshot;
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::{Latencies, Sender};

    const LLM_LATENCY: Duration = Duration::from_millis(200);
    const IMAGE_LATENCY: Duration = Duration::from_millis(500);
    const CONCURRENCY: usize = 16;
    /// Follow-ups per sender before the measured ones.
    const WARM_UP_FOLLOW_UPS: usize = 3;

    fn completion(content: &str) -> serde_json::Value {
        serde_json::json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": content } }] })
    }

    fn png_base64() -> String {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, 1024, 1024);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().expect("header");
            writer
                .write_image_data(&vec![90u8; 1024 * 1024 * 3])
                .expect("pixels");
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The steps of a message a client sees, in pipeline order.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Step {
        Accepted,
        Started,
        IntentResolved,
        Storing,
        Completed,
    }

    /// When each step of each message reached the client (from the live event subject),
    /// and who waits for a message to end.
    #[derive(Default)]
    struct Timelines {
        seen: HashMap<String, Vec<(Step, Instant)>>,
        waiting: HashMap<String, oneshot::Sender<()>>,
    }

    type SharedTimelines = Arc<Mutex<Timelines>>;

    /// One measured message.
    struct Sample {
        message_id: String,
        sent: Instant,
    }

    pub async fn run(per_sender: usize) -> anyhow::Result<()> {
        let llm = MockServer::start().await;
        // Intent's request names the JSON it wants; enhancement's does not.
        Mock::given(method("POST"))
            .and(path("/chat/completions"))
            .and(body_string_contains("resolved_prompt"))
            .respond_with(ResponseTemplate::new(200).set_delay(LLM_LATENCY).set_body_json(completion(
                r#"{"kind":"new","resolved_prompt":"a dog in a park","edit_type":"","strength":0}"#,
            )))
            .with_priority(1)
            .mount(&llm)
            .await;
        Mock::given(method("POST"))
            .and(path("/chat/completions"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_delay(LLM_LATENCY)
                    .set_body_json(completion(
                        r#"{"prompt":"a dog in a sunny park, detailed","negative_prompt":""}"#,
                    )),
            )
            .with_priority(2)
            .mount(&llm)
            .await;
        let sd = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/sdapi/v1/txt2img"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_delay(IMAGE_LATENCY)
                    .set_body_json(serde_json::json!({ "images": [png_base64()] })),
            )
            .mount(&sd)
            .await;
        Mock::given(method("GET"))
            .and(path("/sdapi/v1/progress"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(serde_json::json!({ "progress": 0.5 })),
            )
            .mount(&sd)
            .await;

        // What the fakes themselves take beyond their nominal latency, seen by a direct
        // client with as many calls in flight as the pipeline makes at once.
        let http = reqwest::Client::new();
        let llm_observed = fake_latency(|| {
            http.post(format!("{}/chat/completions", llm.uri()))
                .json(&serde_json::json!({ "messages": [{ "role": "user", "content": "a fox" }] }))
        })
        .await?;
        let image_observed = fake_latency(|| {
            http.post(format!("{}/sdapi/v1/txt2img", sd.uri()))
                .json(&serde_json::json!({ "prompt": "a fox" }))
        })
        .await?;

        let mesh = Mesh::start(MeshOptions {
            starting_credits: 1_000_000_000,
            max_generations_per_conversation: 1_000_000,
            rate_limit: RateLimit {
                per_second: 1e9,
                burst: 1_000_000_000,
                idle_eviction: Duration::from_secs(600),
            },
            llm_url: Some(llm.uri()),
            automatic1111_url: Some(sd.uri()),
            ..MeshOptions::default()
        })
        .await?;

        // Completion times come from the events the pipeline publishes, as a client sees them.
        let timelines: SharedTimelines = Arc::default();
        let nats = async_nats::connect(&mesh.nats.url).await?;
        let mut live = nats
            .subscribe(format!("{}.live.user.*", mesh.nats.prefix))
            .await?;
        nats.flush().await?;
        let listening = Arc::clone(&timelines);
        let listener = tokio::spawn(async move {
            while let Some(message) = live.next().await {
                let arrived = Instant::now();
                let Ok(event) = proto::Event::decode(message.payload) else {
                    continue;
                };
                use proto::event::Payload;
                let step = match &event.payload {
                    Some(Payload::GenerationStarted(_)) => Step::Started,
                    Some(Payload::IntentResolved(_)) => Step::IntentResolved,
                    Some(Payload::GenerationProgress(progress)) if progress.stage == "storing" => {
                        Step::Storing
                    }
                    Some(Payload::GenerationCompleted(_) | Payload::GenerationFailed(_)) => {
                        Step::Completed
                    }
                    _ => continue,
                };
                let mut timelines = listening.lock().expect("lock");
                timelines
                    .seen
                    .entry(event.message_id.clone())
                    .or_default()
                    .push((step, arrived));
                if step == Step::Completed
                    && let Some(waiter) = timelines.waiting.remove(&event.message_id)
                {
                    let _ = waiter.send(());
                }
            }
        });

        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..CONCURRENCY {
            let mut sender = Sender::new(&mesh, &format!("pipeline-{index}")).await?;
            let timelines = Arc::clone(&timelines);
            tasks.spawn(async move {
                // A first picture, so that every measured prompt has a previous one and
                // intent, not only enhancement, asks the LLM.
                send_and_wait(&mut sender, &timelines, "a red fox in the snow").await?;
                // Then a few follow-ups, unmeasured: every connection of every service
                // (HTTP to the fakes, PostgreSQL with its prepared statements) is warm.
                for call in 0..WARM_UP_FOLLOW_UPS {
                    let prompt = format!("a cat like that one but on a roof, take {call}");
                    send_and_wait(&mut sender, &timelines, &prompt).await?;
                }
                let mut samples = Vec::with_capacity(per_sender);
                for call in 0..per_sender {
                    let prompt = format!("a dog like that one but in a park, take {call}");
                    samples.push(send_and_wait(&mut sender, &timelines, &prompt).await?);
                }
                anyhow::Ok(samples)
            });
        }
        let mut samples = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            samples.extend(joined??);
        }
        listener.abort();
        let timelines = std::mem::take(&mut timelines.lock().expect("lock").seen);
        let at = |sample: &Sample, step: Step| -> anyhow::Result<Instant> {
            timelines
                .get(&sample.message_id)
                .and_then(|steps| steps.iter().find(|(seen, _)| *seen == step))
                .map(|(_, at)| *at)
                .context("a step of a message was not seen")
        };
        let between = |from: Step, to: Step| -> anyhow::Result<Latencies> {
            let spans = samples
                .iter()
                .map(|sample| {
                    let start = if from == Step::Accepted {
                        sample.sent
                    } else {
                        at(sample, from)?
                    };
                    Ok(at(sample, to)?.saturating_duration_since(start))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Latencies::new(spans))
        };
        let latencies = between(Step::Accepted, Step::Completed)?;
        let critical = (LLM_LATENCY + IMAGE_LATENCY).as_secs_f64() * 1000.0;
        println!(
            "pipeline  SendMessage -> generation_completed, {} messages at concurrency {CONCURRENCY}",
            latencies.count()
        );
        println!(
            "          fakes: LLM {} ms (intent and enhancement), image {} ms -> critical path max(intent, enhancement) + image = {critical:.0} ms",
            LLM_LATENCY.as_millis(),
            IMAGE_LATENCY.as_millis()
        );
        println!(
            "          the fakes as a direct client sees them ({FAKE_PROBES} calls, {CONCURRENCY} at once): LLM p50 {:.1} p99 {:.1} ms, image p50 {:.1} p99 {:.1} ms",
            llm_observed.percentile_ms(50.0),
            llm_observed.percentile_ms(99.0),
            image_observed.percentile_ms(50.0),
            image_observed.percentile_ms(99.0),
        );
        // The fakes' own time past their nominal latency is not the mesh's: shown apart.
        let measured_critical =
            llm_observed.percentile_ms(50.0) + image_observed.percentile_ms(50.0);
        for (label, percentile) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
            let value = latencies.percentile_ms(percentile);
            println!(
                "          {label} {value:8.1} ms   mesh overhead {:6.1} ms   ({:6.1} ms over the fakes' measured p50s, {measured_critical:.1} ms)",
                value - critical,
                value - measured_critical,
            );
        }
        println!("          where the time goes, step by step (events as the client sees them):");
        for (label, from, to, fake) in [
            (
                "SendMessage -> generation_started",
                Step::Accepted,
                Step::Started,
                0,
            ),
            (
                "generation_started -> intent_resolved",
                Step::Started,
                Step::IntentResolved,
                LLM_LATENCY.as_millis(),
            ),
            (
                "intent_resolved -> progress storing",
                Step::IntentResolved,
                Step::Storing,
                IMAGE_LATENCY.as_millis(),
            ),
            (
                "progress storing -> generation_completed",
                Step::Storing,
                Step::Completed,
                0,
            ),
        ] {
            let step = between(from, to)?;
            println!(
                "          {label:<42} p50 {:7.1} ms  p99 {:7.1} ms  (fake {fake} ms)",
                step.percentile_ms(50.0),
                step.percentile_ms(99.0),
            );
        }
        Ok(())
    }

    /// Calls made to each fake to measure it.
    const FAKE_PROBES: usize = 64;

    /// `FAKE_PROBES` calls of `request`, `CONCURRENCY` at a time.
    async fn fake_latency(
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Latencies> {
        let mut samples = Vec::with_capacity(FAKE_PROBES);
        for _ in 0..FAKE_PROBES / CONCURRENCY {
            let calls = (0..CONCURRENCY).map(|_| {
                let call = request();
                async move {
                    let started = Instant::now();
                    call.send().await?.error_for_status()?.bytes().await?;
                    anyhow::Ok(started.elapsed())
                }
            });
            for sample in futures::future::join_all(calls).await {
                samples.push(sample?);
            }
        }
        Ok(Latencies::new(samples))
    }

    async fn send_and_wait(
        sender: &mut Sender,
        timelines: &SharedTimelines,
        prompt: &str,
    ) -> anyhow::Result<Sample> {
        let sent = Instant::now();
        let message = sender.send_prompt(prompt, "sdxl").await?;
        let (done, completed) = oneshot::channel();
        {
            let mut timelines = timelines.lock().expect("lock");
            let ended = timelines
                .seen
                .get(&message.id)
                .is_some_and(|steps| steps.iter().any(|(step, _)| *step == Step::Completed));
            if ended {
                let _ = done.send(());
            } else {
                timelines.waiting.insert(message.id.clone(), done);
            }
        }
        tokio::time::timeout(Duration::from_secs(30), completed)
            .await
            .context("no generation_completed within 30 s")??;
        Ok(Sample {
            message_id: message.id,
            sent,
        })
    }
}

/// Latencies of one run.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    fn count(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile_ms(&self, percentile: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((percentile / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1].as_secs_f64() * 1000.0
    }

    fn summary(&self) -> String {
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  ({} calls)",
            self.percentile_ms(50.0),
            self.percentile_ms(99.0),
            self.count()
        )
    }
}

/// Health checks against a server with nothing but the health service: tonic's own floor.
async fn grpc_floor(calls: usize) -> anyhow::Result<Latencies> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = atelier_testkit::spawn_server(|listener, shutdown| async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(atelier_runtime::grpc::incoming(listener), shutdown)
            .await?;
        Ok(())
    })
    .await?;
    let channel = Channel::from_shared(server.url())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let mut samples = Vec::with_capacity(calls);
    for call in 0..calls + WARM_UP_CALLS {
        let start = Instant::now();
        client.check(HealthCheckRequest::default()).await?;
        if call >= WARM_UP_CALLS {
            samples.push(start.elapsed());
        }
    }
    Ok(Latencies::new(samples))
}

/// BEGIN; INSERT one row; COMMIT: the least a durable write costs on this PostgreSQL.
async fn pg_floor(mesh: &Mesh, calls: usize) -> anyhow::Result<Latencies> {
    let pool = mesh.db.pool().await?;
    sqlx::query("CREATE TABLE floor_probe (id uuid PRIMARY KEY, at timestamptz NOT NULL)")
        .execute(&pool)
        .await?;
    let mut samples = Vec::with_capacity(calls);
    for call in 0..calls + WARM_UP_CALLS {
        let start = Instant::now();
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO floor_probe (id, at) VALUES ($1, now())")
            .bind(uuid::Uuid::now_v7())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if call >= WARM_UP_CALLS {
            samples.push(start.elapsed());
        }
    }
    Ok(Latencies::new(samples))
}

/// A user with a conversation and a connection of their own, as one browser tab would be.
struct Sender {
    client: ChatServiceClient<Channel>,
    bearer: String,
    conversation_id: String,
}

impl Sender {
    async fn new(mesh: &Mesh, user: &str) -> anyhow::Result<Self> {
        let bearer = mesh.bearer(user)?;
        let mut client = ChatServiceClient::new(mesh.connect().await?);
        let conversation = client
            .create_conversation(authorized(
                proto::CreateConversationRequest::default(),
                &bearer,
            )?)
            .await?
            .into_inner()
            .conversation
            .context("no conversation")?;
        Ok(Self {
            client,
            bearer,
            conversation_id: conversation.id,
        })
    }

    /// Sends `prompt` for `model` and returns the accepted message.
    async fn send_prompt(&mut self, prompt: &str, model: &str) -> anyhow::Result<proto::Message> {
        let request = proto::SendMessageRequest {
            conversation_id: self.conversation_id.clone(),
            prompt: prompt.to_owned(),
            settings: Some(proto::GenerationSettings {
                model: model.to_owned(),
                ..Default::default()
            }),
            client_request_id: String::new(),
        };
        self.client
            .send_message(authorized(request, &self.bearer)?)
            .await?
            .into_inner()
            .message
            .context("no message")
    }

    async fn send(&mut self, call: usize) -> Result<(), tonic::Status> {
        let request = proto::SendMessageRequest {
            conversation_id: self.conversation_id.clone(),
            prompt: format!("a red fox in the snow, take {call}"),
            settings: None,
            client_request_id: String::new(),
        };
        let request = authorized(request, &self.bearer)
            .map_err(|err| tonic::Status::internal(err.to_string()))?;
        self.client.send_message(request).await.map(drop)
    }
}

/// Statements the conversation service sends per SendMessage, averaged over a few calls.
async fn statements_per_send(mesh: &Mesh, counter: &StatementCounter) -> anyhow::Result<f64> {
    let mut sender = Sender::new(mesh, "statement-counter").await?;
    for call in 0..10 {
        sender.send(call).await?;
    }
    const SAMPLED: usize = 50;
    let (result, statements) = counter
        .during(async {
            for call in 0..SAMPLED {
                sender.send(call).await?;
            }
            anyhow::Ok(())
        })
        .await;
    result?;
    Ok(statements as f64 / SAMPLED as f64)
}

struct Run {
    latencies: Latencies,
    elapsed: Duration,
    errors: usize,
}

/// `calls` SendMessages from `concurrency` users at once, each waiting for its answer
/// before sending the next (closed loop).
async fn send_messages(mesh: &Mesh, concurrency: usize, calls: usize) -> anyhow::Result<Run> {
    let mut senders = Vec::with_capacity(concurrency);
    for index in 0..concurrency {
        let mut sender = Sender::new(mesh, &format!("load-{concurrency}-{index}")).await?;
        for call in 0..WARM_UP_CALLS / concurrency.min(WARM_UP_CALLS) {
            sender.send(call).await?;
        }
        senders.push(sender);
    }
    let per_sender = calls / concurrency;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut sender in senders {
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(per_sender);
            let mut errors = 0;
            for call in 0..per_sender {
                let sent = Instant::now();
                match sender.send(call).await {
                    Ok(()) => samples.push(sent.elapsed()),
                    Err(status) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("SendMessage failed: {status:?}");
                        }
                    }
                }
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::with_capacity(calls);
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (mut task_samples, task_errors) = joined?;
        samples.append(&mut task_samples);
        errors += task_errors;
    }
    Ok(Run {
        latencies: Latencies::new(samples),
        elapsed: start.elapsed(),
        errors,
    })
}
