//! WatchEvents through one edge process: how late an event reaches its client with 1 to
//! 10,000 streams open, how long opening them takes, and what an idle stream costs the
//! edge in resident memory.
//!
//! The edge is the release binary `atelier-edge` next to this program, run as a child
//! process, so its memory is its own. Every stream belongs to a user of its own (the
//! edge's worst case: one NATS subscription per stream), and 100 streams share one HTTP/2
//! connection (hyper's server allows 200). The program publishes the events itself,
//! straight to the events stream on the user's subject, as the conversation service does;
//! each carries its publish time in `occurred_at`, and the client that receives it
//! subtracts that from its own clock (the same machine's). Steps add streams to those
//! already open, so the last step's streams are exactly the ones the memory is counted
//! for.
//!
//! Two references are printed beside the edge's numbers: the same events' delay at a
//! plain NATS subscriber of the live subjects (the part of the way that is NATS's), and
//! the memory per idle stream of a bare tonic server-streaming RPC ([`bare`]) with
//! tonic's 8 KiB encode buffer and with the 1 KiB one Atelier's codec uses (the part that
//! is tonic's, hyper's and h2's).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use atelier_events::{Publisher, Subjects};
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_testkit::TestNats;
use atelier_tests::authorized;
use futures::StreamExt as _;
use prost::Message as _;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use super::{Latencies, bare};

/// What one run does.
struct Plan {
    /// Streams open at each step, ascending; each step opens the streams the previous one
    /// did not have. The last step's are the ones whose memory is counted.
    steps: &'static [usize],
    /// Events published at each step.
    events: usize,
    /// Events published per second.
    rate: f64,
}

const FULL: Plan = Plan {
    steps: &[1, 100, 1_000, 10_000],
    events: 3_000,
    rate: 300.0,
};

const QUICK: Plan = Plan {
    steps: &[1, 100, 1_000],
    events: 600,
    rate: 300.0,
};

const STREAMS_PER_CONNECTION: usize = 100;
/// Streams being opened at once (a reconnect storm, bounded).
const OPENING_AT_ONCE: usize = 200;
/// Streams, and events to them, that run before the first memory reading: whatever the
/// edge initialises lazily on its first streams is not counted per stream.
const WARM_UP_STREAMS: usize = 10;
const WARM_UP_EVENTS: usize = 100;
/// Time given to the edge to settle before each memory reading.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a stream may take to open and send its first heartbeat.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the events of a step may take to arrive after the last one is published.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The HS256 secret the child edge verifies, and this program signs with.
/// The HS256 key of the benchmark's edge (it is refused under 32 bytes).
const JWT_SECRET: &str = "loadgen-watch-jwt-secret-of-thirty-two-bytes-or-more";

/// The targets this benchmark reports against.
const TARGET_P99_STREAMS: usize = 1_000;
const TARGET_P99_MS: f64 = 5.0;
const TARGET_BYTES_PER_STREAM: f64 = 16.0 * 1024.0;

/// Runs the WatchEvents benchmark; the edge is killed and the streams deleted however it
/// ends, Ctrl-C included.
pub async fn run(quick: bool) -> anyhow::Result<()> {
    let plan = if quick { &QUICK } else { &FULL };
    tokio::select! {
        measured = measure(plan) => measured,
        Ok(()) = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}

async fn measure(plan: &Plan) -> anyhow::Result<()> {
    // A prefix of its own: streams nobody else uses, deleted when this is dropped (after
    // the edge, which is declared later and so dropped first).
    let nats = TestNats::new();
    let subjects = Subjects::new(&nats.prefix)?;
    let client = async_nats::connect(&nats.url)
        .await
        .with_context(|| format!("cannot reach NATS at {}", nats.url))?;
    let js = async_nats::jetstream::new(client.clone());
    atelier_events::ensure_streams(&js, &subjects).await?;
    // The NATS part of the way, apart: the same events at a core subscriber of every
    // live subject, as the edge subscribes to one user's.
    let at_subscriber: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut live = client
        .subscribe(format!("{}.live.user.*", nats.prefix))
        .await?;
    client.flush().await?;
    let subscriber = {
        let at_subscriber = Arc::clone(&at_subscriber);
        tokio::spawn(async move {
            while let Some(message) = live.next().await {
                let arrived = SystemTime::now();
                if let Some(delay) = proto::Event::decode(message.payload)
                    .ok()
                    .and_then(|event| delay_since_published(&event, arrived))
                {
                    lock(&at_subscriber).push(delay);
                }
            }
        })
    };
    let _subscriber = AbortOnDrop(subscriber);
    let publisher = Publisher::new(js);
    let mut edge = ServerProcess::edge(&nats)?;
    edge.wait_ready().await?;
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let load_at_start = load_average();

    println!(
        "watch  WatchEvents through one edge process ({}, pid {})",
        edge.binary.display(),
        edge.pid()
    );
    println!(
        "       every stream a user of its own (one NATS subscription each), {STREAMS_PER_CONNECTION} streams per HTTP/2 connection, {OPENING_AT_ONCE} opened at once"
    );
    println!(
        "       per step: {} events at {:.0}/s to random open streams, published to JetStream on the user's subject; delay = receipt - occurred_at",
        plan.events, plan.rate
    );

    // Warm-up, on a connection of its own that is closed before the first reading.
    {
        let warm = connect(&edge.url).await?;
        let received = Arc::new(Received::default());
        let mut readers = JoinSet::new();
        let users: Vec<String> = (0..WARM_UP_STREAMS)
            .map(|index| format!("loadgen-warm-up-{index}"))
            .collect();
        open_streams(&[warm], &users, 0, &received, &mut readers).await?;
        publish(
            &publisher,
            &subjects,
            &users,
            WARM_UP_EVENTS,
            plan.rate,
            &mut random,
        )
        .await?;
        received.wait_for(WARM_UP_EVENTS, DELIVERY_TIMEOUT).await;
        readers.shutdown().await;
    }
    tokio::time::sleep(SETTLE).await;
    let warmed = edge.memory()?;

    let largest = plan.steps.iter().copied().max().unwrap_or(0);
    let connection_count = largest.div_ceil(STREAMS_PER_CONNECTION);
    let connections =
        futures::future::try_join_all((0..connection_count).map(|_| connect(&edge.url))).await?;
    tokio::time::sleep(SETTLE).await;
    let connected = edge.memory()?;

    println!();
    println!(
        "{:>8} {:>6} {:>8} {:>7} {:>8} {:>9} {:>9} {:>7} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "streams",
        "conns",
        "opened",
        "open s",
        "opens/s",
        "open p50",
        "open p99",
        "events",
        "lost",
        "ev/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "edge CPU"
    );
    let received = Arc::new(Received::default());
    let mut readers = JoinSet::new();
    let mut users: Vec<String> = Vec::with_capacity(largest);
    let mut idle = None;
    let mut p99_at_target = None;
    let mut opening_total = Duration::ZERO;
    let mut at_nats = Vec::new();
    for &streams in plan.steps {
        let first = users.len();
        let added: Vec<String> = (first..streams)
            .map(|index| format!("loadgen-watch-{index}"))
            .collect();
        let opening = Instant::now();
        let open_latencies =
            open_streams(&connections, &added, first, &received, &mut readers).await?;
        let open_took = opening.elapsed();
        opening_total += open_took;
        users.extend(added);
        if streams == largest {
            tokio::time::sleep(SETTLE).await;
            idle = Some(edge.memory()?);
        }

        received.take_delays();
        lock(&at_subscriber).clear();
        let cpu_before = edge.cpu_time()?;
        let started = Instant::now();
        let publishing = publish(
            &publisher,
            &subjects,
            &users,
            plan.events,
            plan.rate,
            &mut random,
        )
        .await?;
        let delivered = received.wait_for(plan.events, DELIVERY_TIMEOUT).await;
        let cpu = edge.cpu_time()?.saturating_sub(cpu_before);
        let busy = cpu.as_secs_f64() / started.elapsed().as_secs_f64();
        let delays = Latencies::new(received.take_delays());
        // The subscriber had each event before the edge did, but this program may not
        // have read the last ones yet.
        let deadline = Instant::now() + Duration::from_secs(1);
        while lock(&at_subscriber).len() < plan.events && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        at_nats.push((
            streams,
            Latencies::new(std::mem::take(&mut *lock(&at_subscriber))),
        ));
        if streams == TARGET_P99_STREAMS {
            p99_at_target = Some(delays.percentile_ms(99.0));
        }
        println!(
            "{:>8} {:>6} {:>8} {:>7.2} {:>8.0} {:>9.2} {:>9.2} {:>7} {:>5} {:>6.0} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.0}%",
            streams,
            streams.div_ceil(STREAMS_PER_CONNECTION),
            format!("+{}", streams - first),
            open_took.as_secs_f64(),
            (streams - first) as f64 / open_took.as_secs_f64(),
            open_latencies.percentile_ms(50.0),
            open_latencies.percentile_ms(99.0),
            plan.events,
            plan.events - delivered.min(plan.events),
            plan.events as f64 / publishing.as_secs_f64(),
            delays.percentile_ms(50.0),
            delays.percentile_ms(90.0),
            delays.percentile_ms(99.0),
            delays.percentile_ms(100.0),
            busy * 100.0,
        );
    }
    let after_traffic = edge.memory()?;
    let ended = received.ended.load(Ordering::Relaxed);
    println!(
        "       open: from the call to the first heartbeat, ms; opening all {largest} streams took {:.2} s over the steps; edge CPU: of one core while publishing",
        opening_total.as_secs_f64()
    );
    if ended > 0 {
        println!(
            "       {ended} streams ended early; the first: {}",
            lock(&received.first_end).as_deref().unwrap_or("?")
        );
    }

    println!();
    println!(
        "the same events at a plain NATS subscriber of {}.live.user.* in this process (publish -> stored -> RePublished), ms:",
        nats.prefix
    );
    println!(
        "{:>8} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "streams", "events", "p50", "p90", "p99", "max"
    );
    for (streams, delays) in &at_nats {
        println!(
            "{:>8} {:>7} {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            streams,
            delays.count(),
            delays.percentile_ms(50.0),
            delays.percentile_ms(90.0),
            delays.percentile_ms(99.0),
            delays.percentile_ms(100.0),
        );
    }

    println!();
    println!(
        "edge memory (/proc/{}/status: VmRSS, and RssAnon: heap and stacks)",
        edge.pid()
    );
    let line = |label: String, memory: Memory, note: String| {
        println!("  {label:<52} {}   {note}", memory.show());
    };
    line(
        format!("after a warm-up ({WARM_UP_STREAMS} streams, {WARM_UP_EVENTS} events, closed)"),
        warmed,
        String::new(),
    );
    line(
        format!("+ {connection_count} idle HTTP/2 connections"),
        connected,
        format!(
            "{} per connection",
            per(connected.rss, warmed.rss, connection_count)
        ),
    );
    let idle = idle.context("no step opened the largest number of streams")?;
    let per_stream = (idle.rss as f64 - connected.rss as f64) / largest as f64;
    line(
        format!("+ {largest} idle streams, after their first heartbeat"),
        idle,
        format!(
            "{} per stream (RssAnon {})",
            per(idle.rss, connected.rss, largest),
            per(idle.anon, connected.anon, largest)
        ),
    );
    line(
        format!("after the events at {largest} streams"),
        after_traffic,
        format!(
            "{} per stream",
            per(after_traffic.rss, connected.rss, largest)
        ),
    );

    println!(
        "machine load average (1, 5, 15 min): {load_at_start} at the start, {} now",
        load_average()
    );

    // The readers go before the edge, so its end is not counted as streams ending.
    readers.shutdown().await;
    drop(connections);
    drop(edge);

    // The floor: what the same streams cost a server with nothing behind them.
    println!();
    println!(
        "the floor: a bare tonic server-streaming RPC in a process of its own (this program, {}), {largest} idle streams, {STREAMS_PER_CONNECTION} per connection",
        bare::SERVE_FLAG
    );
    let mut tonic_floor = None;
    for buffer in [bare::TONIC_DEFAULT_BUFFER, SMALL_ENCODE_BUFFER] {
        for heartbeats in [1, MANY_HEARTBEATS] {
            let per_stream = floor(largest, bare::Bare { buffer, heartbeats }).await?;
            println!(
                "  {:<52} {:+.1} KiB per stream",
                format!(
                    "encode buffer {} KiB, after {heartbeats} heartbeat{}",
                    buffer / 1024,
                    if heartbeats == 1 { "" } else { "s" }
                ),
                per_stream / 1024.0
            );
            // The edge's own codec starts its buffers at 1 KiB (atelier_proto::codec).
            if buffer == SMALL_ENCODE_BUFFER && heartbeats == 1 {
                tonic_floor = Some(per_stream);
            }
        }
    }
    if let Some(tonic_floor) = tonic_floor {
        println!(
            "  {:<52} {:+.1} KiB per stream",
            "the edge past the floor (its 1 KiB buffer, 1 heartbeat)",
            (per_stream - tonic_floor) / 1024.0
        );
    }

    println!();
    println!("targets");
    match p99_at_target {
        Some(p99) => println!(
            "  {:<40} {p99:>8.2} ms   {}",
            format!("event p99 at {TARGET_P99_STREAMS} streams < {TARGET_P99_MS} ms"),
            verdict(p99 < TARGET_P99_MS)
        ),
        None => println!("  event p99 at {TARGET_P99_STREAMS} streams: not measured by this plan"),
    }
    println!(
        "  {:<40} {:>8.1} KiB  {} (at {largest} streams)",
        format!(
            "edge memory per idle stream < {:.0} KiB",
            TARGET_BYTES_PER_STREAM / 1024.0
        ),
        per_stream / 1024.0,
        verdict(per_stream < TARGET_BYTES_PER_STREAM)
    );

    Ok(())
}

/// The first three fields of /proc/loadavg: how busy the machine was besides.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|line| {
            line.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// The encode buffer of Atelier's codec (`atelier_proto::codec`), beside tonic's default.
const SMALL_ENCODE_BUFFER: usize = 1024;
/// Heartbeats of the bare server (the first of ~100 bytes, the others of ~500) that go
/// once through an 8 KiB encode buffer, as ~100 of the edge's do: 25 minutes of an idle
/// stream, at one every 15 s.
const MANY_HEARTBEATS: usize = 20;

/// The resident memory per idle stream of the bare stream server: `streams` streams,
/// spread and warmed up as the edge's are.
async fn floor(streams: usize, bare: bare::Bare) -> anyhow::Result<f64> {
    let mut server = ServerProcess::bare(bare)?;
    server.wait_ready().await?;
    let received = Arc::new(Received::default());
    {
        let warm = connect(&server.url).await?;
        let mut readers = JoinSet::new();
        let users: Vec<String> = (0..WARM_UP_STREAMS)
            .map(|index| format!("loadgen-warm-up-{index}"))
            .collect();
        open_streams(&[warm], &users, 0, &received, &mut readers).await?;
        readers.shutdown().await;
    }
    let connections = futures::future::try_join_all(
        (0..streams.div_ceil(STREAMS_PER_CONNECTION)).map(|_| connect(&server.url)),
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let before = server.memory()?;
    let users: Vec<String> = (0..streams)
        .map(|index| format!("loadgen-floor-{index}"))
        .collect();
    let mut readers = JoinSet::new();
    open_streams(&connections, &users, 0, &received, &mut readers).await?;
    tokio::time::sleep(SETTLE).await;
    let after = server.memory()?;
    readers.shutdown().await;
    Ok((after.rss as f64 - before.rss as f64) / streams as f64)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// `(after - before) / count` bytes, in KiB.
fn per(after: u64, before: u64, count: usize) -> String {
    let bytes = after as f64 - before as f64;
    format!("{:+.1} KiB", bytes / 1024.0 / count.max(1) as f64)
}

/// A new HTTP/2 connection to the server at `url`.
async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Opens a stream for each of `users` (user `i` on connection `(first + i) / 100`), at
/// most [`OPENING_AT_ONCE`] at a time, waits for each one's first heartbeat, then reads
/// each on a task of its own. Returns the time each took to open.
async fn open_streams(
    connections: &[Channel],
    users: &[String],
    first: usize,
    received: &Arc<Received>,
    readers: &mut JoinSet<()>,
) -> anyhow::Result<Latencies> {
    let mut opening = futures::stream::iter(users.iter().enumerate())
        .map(|(index, user)| {
            let connection = (first + index) / STREAMS_PER_CONNECTION;
            let channel = connections[connection.min(connections.len() - 1)].clone();
            async move {
                let bearer = format!(
                    "Bearer {}",
                    atelier_edge::auth::mint_hs256(JWT_SECRET.as_bytes(), user, 3600)?
                );
                open_stream(channel, &bearer)
                    .await
                    .with_context(|| format!("cannot open the stream of {user}"))
            }
        })
        .buffer_unordered(OPENING_AT_ONCE);
    let mut took = Vec::with_capacity(users.len());
    while let Some(opened) = opening.next().await {
        let (open_took, stream) = opened?;
        took.push(open_took);
        readers.spawn(read(stream, Arc::clone(received)));
    }
    Ok(Latencies::new(took))
}

type Events = tonic::Streaming<proto::WatchEventsResponse>;

/// A live-only stream, once its first response (a heartbeat) arrived; and how long that
/// took from the call.
async fn open_stream(channel: Channel, bearer: &str) -> anyhow::Result<(Duration, Events)> {
    let started = Instant::now();
    let request = authorized(
        proto::WatchEventsRequest {
            resume_after: None,
            conversation_id: String::new(),
        },
        bearer,
    )?;
    let mut stream = ChatServiceClient::new(channel)
        .watch_events(request)
        .await?
        .into_inner();
    let first = tokio::time::timeout(OPEN_TIMEOUT, stream.message())
        .await
        .context("no first heartbeat in time")??
        .context("the stream ended before its first response")?;
    anyhow::ensure!(
        first.event.as_ref().is_some_and(is_heartbeat),
        "the first response of a live-only stream was not a heartbeat"
    );
    Ok((started.elapsed(), stream))
}

fn is_heartbeat(event: &proto::Event) -> bool {
    matches!(event.payload, Some(proto::event::Payload::Heartbeat(_)))
}

/// Reads a stream as a client does, recording each event's delay since it was published.
async fn read(mut stream: Events, received: Arc<Received>) {
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                let arrived = SystemTime::now();
                if let Some(delay) = response
                    .event
                    .filter(|event| !is_heartbeat(event))
                    .and_then(|event| delay_since_published(&event, arrived))
                {
                    received.record(delay);
                }
            }
            Ok(None) => return received.end("the stream ended".to_owned()),
            Err(status) => return received.end(format!("{status:?}")),
        }
    }
}

/// `arrived` less the event's `occurred_at`, which this program set when publishing it.
fn delay_since_published(event: &proto::Event, arrived: SystemTime) -> Option<Duration> {
    let at = event.occurred_at.as_ref()?;
    let published = UNIX_EPOCH
        + Duration::new(
            u64::try_from(at.seconds).ok()?,
            u32::try_from(at.nanos).ok()?,
        );
    Some(arrived.duration_since(published).unwrap_or_default())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the clients received.
#[derive(Default)]
struct Received {
    /// Delays of the events received since the last [`Received::take_delays`].
    delays: Mutex<Vec<Duration>>,
    /// Streams that ended, and how the first one did.
    ended: AtomicUsize,
    first_end: Mutex<Option<String>>,
}

impl Received {
    fn record(&self, delay: Duration) {
        lock(&self.delays).push(delay);
    }

    fn end(&self, how: String) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_end).get_or_insert(how);
    }

    fn take_delays(&self) -> Vec<Duration> {
        std::mem::take(&mut *lock(&self.delays))
    }

    /// Waits until `count` events were received since the last take, at most `wait` past
    /// the call; returns how many were.
    async fn wait_for(&self, count: usize, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        loop {
            let received = lock(&self.delays).len();
            if received >= count || Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes `count` events at `rate` a second, each to a user drawn from `users`, as the
/// conversation service does: to the user's subject in the events stream, with the event
/// id as `Nats-Msg-Id`, awaiting the stream's acknowledgement. Returns how long it took.
async fn publish(
    publisher: &Publisher,
    subjects: &Subjects,
    users: &[String],
    count: usize,
    rate: f64,
    random: &mut Random,
) -> anyhow::Result<Duration> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let conversation_id = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    for index in 0..count {
        ticks.tick().await;
        let user = &users[random.below(users.len())];
        let id = uuid::Uuid::now_v7().to_string();
        // The size of a real progress event: every id filled in.
        let event = proto::Event {
            id: id.clone(),
            occurred_at: Some(SystemTime::now().into()),
            user_id: user.clone(),
            conversation_id: conversation_id.clone(),
            message_id: uuid::Uuid::now_v7().to_string(),
            payload: Some(proto::event::Payload::GenerationProgress(
                proto::GenerationProgress {
                    generation_id: uuid::Uuid::now_v7().to_string(),
                    stage: "rendering".to_owned(),
                    percent: u32::try_from(index % 100).unwrap_or(0),
                    attempt: 1,
                    ..Default::default()
                },
            )),
        };
        publisher
            .publish(
                subjects.user_events(user),
                &id,
                event.encode_to_vec().into(),
            )
            .await?;
    }
    Ok(started.elapsed())
}

/// xorshift64: a reproducible choice of users, without a dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound.max(1) as u64) as usize
    }
}

/// A reading of the edge's memory, in bytes.
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
}

impl Memory {
    fn show(&self) -> String {
        format!(
            "{:>7.1} MiB (RssAnon {:>6.1} MiB)",
            self.rss as f64 / 1048576.0,
            self.anon as f64 / 1048576.0
        )
    }
}

/// A server under test in a child process: the edge, or the bare stream server. Dropping
/// it kills it and removes its image directory, however the benchmark ends.
struct ServerProcess {
    child: Child,
    binary: PathBuf,
    url: String,
    storage: Option<PathBuf>,
}

/// The edge's settings a caller may pass through to try other values; every other
/// variable of this program's environment is kept from the edge.
const PASSED_THROUGH: &[&str] = &["ATELIER_WATCH_HEARTBEAT_MS", "ATELIER_WATCH_BUFFER"];

/// A free port on loopback, released for a child to bind.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ServerProcess {
    /// The edge, configured through its environment as in deployment.
    fn edge(nats: &TestNats) -> anyhow::Result<Self> {
        let binary = edge_binary()?;
        let port = free_port()?;
        let storage = std::env::temp_dir().join(format!(
            "atelier-loadgen-watch-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("ATELIER_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("ATELIER_EDGE_HTTP_ADDR", "127.0.0.1:0")
            .env("ATELIER_NATS_URL", &nats.url)
            .env("ATELIER_SUBJECT_PREFIX", &nats.prefix)
            .env("ATELIER_JWT_HS256_SECRET", JWT_SECRET)
            .env("ATELIER_SERVICE_TOKEN", atelier_testkit::random_secret())
            .env("ATELIER_IMAGE_URL_SECRET", atelier_testkit::random_secret())
            .env("ATELIER_STORAGE_DIR", &storage)
            // WatchEvents without a conversation filter never calls it.
            .env("ATELIER_CONVERSATION_URL", "http://127.0.0.1:9")
            .env("RUST_LOG", "warn");
        for name in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(name) {
                println!(
                    "       {name}={} passed to the edge",
                    value.to_string_lossy()
                );
                command.env(name, value);
            }
        }
        Self::start(command, binary, port, Some(storage))
    }

    /// This program as a bare tonic stream server.
    fn bare(bare: bare::Bare) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?;
        let port = free_port()?;
        let mut command = Command::new(&binary);
        command.env_clear().args([
            bare::SERVE_FLAG.to_owned(),
            port.to_string(),
            bare.buffer.to_string(),
            bare.heartbeats.to_string(),
        ]);
        Self::start(command, binary, port, None)
    }

    fn start(
        mut command: Command,
        binary: PathBuf,
        port: u16,
        storage: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            child,
            binary,
            url: format!("http://127.0.0.1:{port}"),
            storage,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server answers its health check.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("{} exited at start ({status})", self.binary.display());
            }
            if let Ok(channel) = Endpoint::from_shared(self.url.clone())?.connect().await {
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if answer
                    .is_ok_and(|answer| answer.into_inner().status == ServingStatus::Serving as i32)
                {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not answer within 30 s",
                self.binary.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            anon: field("RssAnon:")?,
        })
    }

    /// The CPU time the edge used so far (user and system).
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // Fields after the command name (in parentheses, which may hold spaces): the
        // state is field 3, utime 14 and stime 15, in clock ticks of 1/100 s.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| {
            fields
                .get(index)
                .and_then(|value| value.parse::<u64>().ok())
                .with_context(|| format!("unexpected {path}"))
        };
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(storage) = &self.storage {
            let _ = std::fs::remove_dir_all(storage);
        }
    }
}

/// The `atelier-edge` binary built with this program (same directory, same profile).
fn edge_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("atelier-edge");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --release -p atelier-edge --bin atelier-edge`",
        binary.display()
    );
    // A binary older than the edge's sources measures an older edge.
    let built = std::fs::metadata(&binary)?.modified()?;
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/edge/src");
    if newest_change(&sources).is_some_and(|changed| changed > built) {
        println!(
            "       warning: {} is older than {}: rebuild it (`cargo build --release -p atelier-edge --bin atelier-edge`)",
            binary.display(),
            sources.display()
        );
    }
    Ok(binary)
}

/// The newest modification time of the files under `dir`.
fn newest_change(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let changed = if path.is_dir() {
            newest_change(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(changed);
    }
    newest
}
