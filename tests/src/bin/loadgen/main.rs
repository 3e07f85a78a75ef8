//! Load generator: drives SendMessage through the edge of an in-process mesh and prints
//! latency percentiles and throughput, next to the floor this machine allows (a bare gRPC
//! unary round trip on loopback and a bare one-INSERT PostgreSQL transaction).
//!
//! Then, on a second mesh with the whole pipeline and fakes at fixed latencies (the LLM
//! at 200 ms, AUTOMATIC1111 at 500 ms per image), the time from SendMessage to the
//! generation_completed event, beside the fakes' critical path, so the mesh's own
//! overhead shows. The client follows each message on WatchEvents, as a client does.
//!
//! Last, WatchEvents alone ([`watch`]), against an edge process of its own (the release
//! binary `atelier-edge`, built beside this one): each event's delay from its publish to
//! a client with 1 to 10,000 streams open, and the edge's memory per idle stream.
//!
//! `cargo run --release -p atelier-tests --bin loadgen [-- --quick] [--pipeline-only | --watch-only]`
//!
//! It needs the PostgreSQL of `ATELIER_TEST_DATABASE_URL` (the local one by default) and
//! creates, then drops, a database of its own (the WatchEvents part needs only NATS).
//! Numbers only: it asserts nothing.

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

mod bare;
mod fakes;
mod pipeline;
mod watch;

/// (concurrency, calls) of each SendMessage run.
const RUNS: [(usize, usize); 3] = [(1, 2_000), (16, 8_000), (64, 8_000)];
const FLOOR_CALLS: usize = 2_000;
const WARM_UP_CALLS: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // The WatchEvents benchmark runs this program as its bare stream server.
    if let Some((port, bare)) = bare::arguments(&args)? {
        return bare::serve(port, bare).await;
    }
    let quick = std::env::args().any(|arg| arg == "--quick");
    let per_sender = if quick { 3 } else { 13 };
    if std::env::args().any(|arg| arg == "--pipeline-only") {
        return pipeline::run(per_sender).await;
    }
    if std::env::args().any(|arg| arg == "--watch-only") {
        return watch::run(quick).await;
    }
    let scale = if quick { 10 } else { 1 };
    let statements = StatementCounter::install();

    let mesh = Mesh::start(MeshOptions {
        database_connections: 16,
        // The fast path alone: its jobs wait in the stream, no image is rendered here.
        run_generation: false,
        ..unlimited()
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
    println!();
    watch::run(quick).await?;
    Ok(())
}

/// A mesh whose credits, conversation length and rate limit never stop a benchmark:
/// they are not what is measured.
fn unlimited() -> MeshOptions {
    MeshOptions {
        starting_credits: 1_000_000_000,
        max_generations_per_conversation: 1_000_000,
        rate_limit: RateLimit {
            per_second: 1e9,
            burst: 1_000_000_000,
            idle_eviction: Duration::from_secs(600),
        },
        ..MeshOptions::default()
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
    /// The sender's HTTP/2 connection, which its WatchEvents stream shares.
    channel: Channel,
    client: ChatServiceClient<Channel>,
    bearer: String,
    conversation_id: String,
}

impl Sender {
    async fn new(mesh: &Mesh, user: &str) -> anyhow::Result<Self> {
        let bearer = mesh.bearer(user)?;
        let channel = mesh.connect().await?;
        let mut client = ChatServiceClient::new(channel.clone());
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
            channel,
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
