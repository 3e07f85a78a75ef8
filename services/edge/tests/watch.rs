//! WatchEvents against the real NATS server: events are published to the user's subject of
//! the events stream exactly as the conversation service and the workers publish them, and
//! read back through the edge as a client does.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use atelier_edge::auth::{JwtVerifier, mint_hs256};
use atelier_edge::config::{HttpConfig, ImagesConfig, WatchConfig};
use atelier_events::{Publisher, Subjects};
use atelier_proto::error_reason;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_runtime::internal_call::ServiceToken;
use atelier_runtime::mesh::{MeshConfig, NatsConfig, ServiceInstances};
use atelier_testkit::{RunningServer, TcpProxy, TestNats, spawn_server};
use prost::Message as _;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

const JWT_SECRET: &[u8] = b"watch-test-jwt-secret";

/// NATS streams of the test's own and a way to publish user events into them.
struct Events {
    nats: TestNats,
    js: jetstream::Context,
    subjects: Subjects,
    publisher: Publisher,
    images: ImagesDir,
}

struct ImagesDir(std::path::PathBuf);

impl Drop for ImagesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Events {
    async fn new() -> Self {
        atelier_testkit::init_logging();
        let nats = TestNats::new();
        let js = nats.jetstream().await.expect("NATS");
        let subjects = Subjects::new(&nats.prefix).expect("prefix");
        atelier_events::ensure_streams(&js, &subjects)
            .await
            .expect("streams");
        Self {
            publisher: Publisher::new(js.clone()),
            js,
            subjects,
            images: ImagesDir(
                std::env::temp_dir().join(format!("atelier-watch-{}", uuid::Uuid::now_v7())),
            ),
            nats,
        }
    }

    /// An edge on these streams, reaching NATS at `nats_url` and the conversation service
    /// at `conversation_url`.
    async fn edge_with(
        &self,
        nats_url: &str,
        conversation_url: &str,
        watch: WatchConfig,
    ) -> RunningServer {
        let config = atelier_edge::Config {
            mesh: MeshConfig {
                service_token: ServiceToken::new("watch-test-service-token"),
                nats: NatsConfig::local(nats_url, &self.nats.prefix),
                conversation: ServiceInstances::at(conversation_url),
            },
            jwt: JwtVerifier::hs256(JWT_SECRET),
            watch,
            http: HttpConfig {
                addr: "127.0.0.1:0".parse().expect("an address"),
                ..Default::default()
            },
            images: ImagesConfig {
                storage: atelier_images::Storage::Local(self.images.0.clone()),
                ..Default::default()
            },
            ..atelier_edge::Config::default()
        };
        spawn_server(|listener, shutdown| atelier_edge::run(config, listener, shutdown))
            .await
            .expect("edge")
    }

    /// An edge reaching NATS through `nats_url`, with no conversation service: these
    /// tests use no RPC but WatchEvents.
    async fn edge_via(&self, nats_url: &str, watch: WatchConfig) -> RunningServer {
        self.edge_with(nats_url, "http://127.0.0.1:9", watch).await
    }

    async fn edge(&self, watch: WatchConfig) -> RunningServer {
        self.edge_via(&self.nats.url, watch).await
    }

    /// Publishes `count` title events for `user` in `conversation`; returns their cursors.
    async fn publish(&self, user: &str, conversation: &str, count: usize) -> Vec<u64> {
        let mut acks = Vec::with_capacity(count);
        for index in 0..count {
            let event = event(
                user,
                conversation,
                proto::event::Payload::TitleUpdated(proto::TitleUpdated {
                    title: format!("title {index}"),
                }),
            );
            let ack = self
                .publisher
                .send(
                    self.subjects.user_events(user),
                    &event.id,
                    event.encode_to_vec().into(),
                    &atelier_events::TraceContext::default(),
                )
                .await
                .expect("sent");
            acks.push(ack);
        }
        let mut cursors = Vec::with_capacity(count);
        for ack in acks {
            cursors.push(ack.await.expect("stored"));
        }
        cursors
    }

    async fn publish_event(&self, event: &proto::Event) -> u64 {
        self.publisher
            .publish(
                self.subjects.user_events(&event.user_id),
                &event.id,
                event.encode_to_vec().into(),
            )
            .await
            .expect("stored")
    }
}

fn event(user: &str, conversation: &str, payload: proto::event::Payload) -> proto::Event {
    proto::Event {
        id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(std::time::SystemTime::now().into()),
        user_id: user.to_owned(),
        conversation_id: conversation.to_owned(),
        message_id: String::new(),
        payload: Some(payload),
    }
}

fn quick() -> WatchConfig {
    WatchConfig {
        heartbeat: Duration::from_secs(30),
        ..WatchConfig::default()
    }
}

async fn channel(edge: &RunningServer) -> Channel {
    Endpoint::from_shared(edge.url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

type Stream = tonic::Streaming<proto::WatchEventsResponse>;

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        AsciiMetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    request
}

async fn watch_on(channel: Channel, user: &str, resume_after: Option<u64>) -> Stream {
    let token = mint_hs256(JWT_SECRET, user, 600).expect("token");
    let request = authorized(
        proto::WatchEventsRequest {
            resume_after,
            conversation_id: String::new(),
        },
        &token,
    );
    ChatServiceClient::new(channel)
        .watch_events(request)
        .await
        .expect("a stream")
        .into_inner()
}

async fn watch(edge: &RunningServer, user: &str, resume_after: Option<u64>) -> Stream {
    watch_on(channel(edge).await, user, resume_after).await
}

/// The next response, whatever it is.
async fn next_response(stream: &mut Stream) -> Result<proto::WatchEventsResponse, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10 s")
        .map(|response| response.expect("the stream stays open"))
}

fn is_heartbeat(response: &proto::WatchEventsResponse) -> bool {
    matches!(
        response
            .event
            .as_ref()
            .and_then(|event| event.payload.as_ref()),
        Some(proto::event::Payload::Heartbeat(_))
    )
}

/// The next response that is not a heartbeat.
async fn next_event(stream: &mut Stream) -> proto::WatchEventsResponse {
    loop {
        let response = next_response(stream).await.expect("no error");
        if !is_heartbeat(&response) {
            return response;
        }
    }
}

async fn cursors(stream: &mut Stream, count: usize) -> Vec<u64> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        seen.push(next_event(stream).await.cursor);
    }
    seen
}

/// Nothing but heartbeats arrives for `wait`.
async fn assert_quiet(stream: &mut Stream, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(answer) = tokio::time::timeout_at(deadline, stream.message()).await {
        let response = answer.expect("no error").expect("open");
        assert!(is_heartbeat(&response), "unexpected {response:?}");
    }
}

#[tokio::test]
async fn a_thousand_events_arrive_complete_and_in_order() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    // A live stream starts with a heartbeat: the client holds a cursor at once.
    let hello = next_response(&mut stream).await.expect("hello");
    assert!(is_heartbeat(&hello), "{hello:?}");

    let published = events.publish("alice", "c", 1000).await;
    let mut received = Vec::new();
    while received.len() < published.len() {
        let response = next_event(&mut stream).await;
        let event = response.event.expect("an event");
        assert_eq!(event.user_id, "alice");
        received.push(response.cursor);
    }
    assert_eq!(received, published, "every event once, in stream order");
    assert!(hello.cursor < published[0]);
}

#[tokio::test]
async fn every_stream_of_a_user_gets_everything_and_other_users_nothing() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut first_tab = watch(&edge, "alice", None).await;
    let mut second_tab = watch(&edge, "alice", None).await;
    let mut bob = watch(&edge, "bob", None).await;

    let alices = events.publish("alice", "c", 50).await;
    let bobs = events.publish("bob", "d", 1).await;

    assert_eq!(cursors(&mut first_tab, 50).await, alices);
    assert_eq!(cursors(&mut second_tab, 50).await, alices);
    // Bob's first event is his own: none of Alice's reached him.
    let first = next_event(&mut bob).await;
    assert_eq!(first.cursor, bobs[0]);
    assert_eq!(first.event.expect("event").user_id, "bob");
    assert_quiet(&mut first_tab, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_resumed_stream_gets_exactly_what_it_missed_then_live_events() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    let before = events.publish("alice", "c", 30).await;
    assert_eq!(cursors(&mut stream, 30).await, before);
    drop(stream);

    let missed = events.publish("alice", "c", 20).await;
    // Another user's traffic in between changes nothing.
    events.publish("bob", "d", 5).await;
    let mut resumed = watch(&edge, "alice", Some(before[29])).await;
    assert_eq!(cursors(&mut resumed, 20).await, missed);
    let live = events.publish("alice", "c", 5).await;
    assert_eq!(cursors(&mut resumed, 5).await, live);
    assert_quiet(&mut resumed, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn reconnecting_while_events_are_published_loses_and_repeats_nothing() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    let hello = next_response(&mut stream).await.expect("hello");

    // Published in the background while the client disconnects and resumes three times.
    let publisher = {
        let publisher = events.publisher.clone();
        let subject = events.subjects.user_events("alice");
        tokio::spawn(async move {
            let mut cursors = Vec::new();
            for index in 0..400 {
                let event = event(
                    "alice",
                    "c",
                    proto::event::Payload::TitleUpdated(proto::TitleUpdated {
                        title: format!("{index}"),
                    }),
                );
                let cursor = publisher
                    .publish(subject.clone(), &event.id, event.encode_to_vec().into())
                    .await
                    .expect("stored");
                cursors.push(cursor);
                if index % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            cursors
        })
    };
    let mut received = Vec::new();
    let mut last = hello.cursor;
    for _ in 0..3 {
        for _ in 0..40 {
            let response = next_event(&mut stream).await;
            last = response.cursor;
            received.push(last);
        }
        stream = watch(&edge, "alice", Some(last)).await;
    }
    let published = publisher.await.expect("published");
    while received.len() < published.len() {
        received.push(next_event(&mut stream).await.cursor);
    }
    assert_eq!(received, published);
}

#[tokio::test]
async fn a_gap_on_the_live_side_is_filled_from_the_stream() {
    let events = Events::new().await;
    let nats_addr = events
        .nats
        .url
        .trim_start_matches("nats://")
        .parse()
        .expect("NATS address");
    let proxy = TcpProxy::start(nats_addr, true).await.expect("proxy");
    let edge = events.edge_via(&proxy.url("nats"), quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    let first = events.publish("alice", "c", 1).await;
    assert_eq!(cursors(&mut stream, 1).await, first);

    // The edge loses NATS: what is stored meanwhile never reaches it live.
    proxy.set_up(false);
    let mut published = events.publish("alice", "c", 3).await;
    proxy.set_up(true);
    // Once the edge is back, the next live event shows the gap: the stream reads the three
    // missed ones from the stream first. Keep publishing until one arrives (the reconnect
    // takes a moment, and events published before it are missed too).
    let mut received = Vec::new();
    for _ in 0..100 {
        published.extend(events.publish("alice", "c", 1).await);
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(answer) => {
                let response = answer.expect("no error").expect("open");
                if !is_heartbeat(&response) {
                    received.push(response.cursor);
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    while received.len() < published.len() {
        received.push(next_event(&mut stream).await.cursor);
    }
    assert_eq!(received, published, "the gap is filled in order");
}

#[tokio::test]
async fn a_cursor_older_than_the_stream_keeps_gets_resync_required_then_live() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let old = events.publish("alice", "c", 10).await;
    // Retention expired the first five.
    events
        .js
        .get_stream(events.subjects.events_stream())
        .await
        .expect("stream")
        .purge()
        .sequence(old[5])
        .await
        .expect("purged");

    let mut newest = old[9];
    for cursor in [old[1], old[9] + 1_000] {
        let mut stream = watch(&edge, "alice", Some(cursor)).await;
        let first = next_event(&mut stream).await;
        assert!(
            matches!(
                first
                    .event
                    .as_ref()
                    .and_then(|event| event.payload.as_ref()),
                Some(proto::event::Payload::ResyncRequired(_))
            ),
            "{first:?}"
        );
        assert_eq!(first.cursor, newest, "the newest cursor, to carry on from");
        let live = events.publish("alice", "c", 1).await;
        assert_eq!(cursors(&mut stream, 1).await, live);
        newest = live[0];
    }
    // A cursor whose successors are all still kept replays them.
    let mut stream = watch(&edge, "alice", Some(old[6])).await;
    assert_eq!(cursors(&mut stream, 3).await, old[7..].to_vec());
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_a_fast_one_gets_every_event() {
    let events = Events::new().await;
    let edge = events
        .edge(WatchConfig {
            buffer: 64,
            ..quick()
        })
        .await;
    // Each on a connection of its own, as two browsers would be. The slow one reads
    // nothing for now, and its small windows fill quickly.
    let slow_channel = Endpoint::from_shared(edge.url())
        .expect("url")
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .expect("connect");
    let mut slow = watch_on(slow_channel, "alice", None).await;
    let mut fast = watch(&edge, "alice", None).await;

    // In batches the fast one keeps up with; the slow one never reads meanwhile.
    let mut published = Vec::new();
    for _ in 0..40 {
        let batch = events.publish("alice", "c", 50).await;
        assert_eq!(cursors(&mut fast, 50).await, batch);
        published.extend(batch);
    }

    // The slow one gets what was in flight, in order, then the end, with where to resume.
    let mut received = Vec::new();
    let status = loop {
        match next_response(&mut slow).await {
            Ok(response) if is_heartbeat(&response) => {}
            Ok(response) => received.push(response.cursor),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, error_reason::SLOW_CONSUMER);
    assert!(received.len() < published.len(), "cut off before the end");
    assert_eq!(received, published[..received.len()].to_vec());
    let resume_after: u64 = info.metadata["resume_after"].parse().expect("a cursor");
    assert_eq!(Some(&resume_after), received.last());

    // Resuming from there gets the rest.
    let mut resumed = watch(&edge, "alice", Some(resume_after)).await;
    let rest = published.len() - received.len();
    assert_eq!(
        cursors(&mut resumed, rest).await,
        published[received.len()..].to_vec()
    );
}

#[tokio::test]
async fn two_edges_serve_one_user_the_same_stream() {
    let events = Events::new().await;
    let first = events.edge(quick()).await;
    let second = events.edge(quick()).await;
    let mut on_first = watch(&first, "alice", None).await;
    let mut on_second = watch(&second, "alice", None).await;
    let published = events.publish("alice", "c", 100).await;
    assert_eq!(cursors(&mut on_first, 100).await, published);
    assert_eq!(cursors(&mut on_second, 100).await, published);

    // A client of the first edge resumes on the second with its cursor.
    let more = events.publish("alice", "c", 10).await;
    let mut moved = watch(&second, "alice", Some(published[99])).await;
    assert_eq!(cursors(&mut moved, 10).await, more);
}

#[tokio::test]
async fn a_draining_edge_ends_its_streams_with_unavailable_and_their_cursor() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    let published = events.publish("alice", "c", 3).await;
    assert_eq!(cursors(&mut stream, 3).await, published);

    let stopped = tokio::spawn(edge.stop());
    let status = loop {
        match next_response(&mut stream).await {
            Ok(response) if is_heartbeat(&response) => {}
            Ok(response) => panic!("unexpected {response:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, error_reason::STREAM_CLOSED);
    assert_eq!(info.metadata["resume_after"], published[2].to_string());
    // The drain does not wait on open streams.
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the edge stops")
        .expect("no panic")
        .expect("a clean stop");
}

#[tokio::test]
async fn idle_streams_get_heartbeats_with_the_latest_cursor() {
    let events = Events::new().await;
    let edge = events
        .edge(WatchConfig {
            heartbeat: Duration::from_millis(150),
            ..WatchConfig::default()
        })
        .await;
    let mut stream = watch(&edge, "alice", None).await;
    let hello = next_response(&mut stream).await.expect("hello");
    assert!(is_heartbeat(&hello));
    let idle = next_response(&mut stream).await.expect("a heartbeat");
    assert!(is_heartbeat(&idle));
    assert_eq!(idle.cursor, hello.cursor);

    let published = events.publish("alice", "c", 1).await;
    assert_eq!(next_event(&mut stream).await.cursor, published[0]);
    // Another user's event moves the stream's cursor too (what follows it is not Alice's).
    let bobs = events.publish("bob", "d", 1).await;
    let after = next_response(&mut stream).await.expect("a heartbeat");
    assert!(is_heartbeat(&after), "{after:?}");
    assert!(after.cursor >= published[0] && after.cursor <= bobs[0]);
}

#[tokio::test]
async fn completed_images_in_events_carry_a_signed_url_the_edge_serves() {
    let events = Events::new().await;
    let edge = events.edge(quick()).await;
    let mut stream = watch(&edge, "alice", None).await;
    let generation_id = uuid::Uuid::now_v7().to_string();
    let png = b"\x89PNG\r\n\x1a\nan image".to_vec();
    atelier_images::ImageStore::local(&events.images.0)
        .expect("store")
        .put(
            &atelier_images::key_for("alice", &generation_id),
            png.clone().into(),
        )
        .await
        .expect("stored");
    let completed = |status: proto::GenerationStatus, id: &str| proto::Generation {
        id: id.to_owned(),
        status: status.into(),
        ..Default::default()
    };
    events
        .publish_event(&event(
            "alice",
            "c",
            proto::event::Payload::GenerationCompleted(proto::GenerationCompleted {
                generations: vec![
                    completed(proto::GenerationStatus::Completed, &generation_id),
                    completed(proto::GenerationStatus::Failed, "not-an-image"),
                ],
            }),
        ))
        .await;
    let response = next_event(&mut stream).await;
    let Some(proto::event::Payload::GenerationCompleted(done)) =
        response.event.and_then(|event| event.payload)
    else {
        panic!("a completion");
    };
    let url = &done.generations[0].image_url;
    assert!(done.generations[0].image_url_expires_at.is_some());
    assert!(
        done.generations[1].image_url.is_empty(),
        "only completed images"
    );
    let fetched = reqwest::get(url).await.expect("GET");
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.expect("body").to_vec(), png);
}

/// Counts events per kind in a replay: used by the conversation filter test.
fn kinds(responses: &[proto::WatchEventsResponse]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for response in responses {
        let conversation = response
            .event
            .as_ref()
            .map(|event| event.conversation_id.clone())
            .unwrap_or_default();
        *counts.entry(conversation).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_filtered_stream_shows_one_conversation_and_still_moves_its_cursor() {
    // The filter is checked against the conversation service: start one, and make the
    // conversation through the edge.
    let events = Events::new().await;
    let db = atelier_testkit::TestDatabase::create()
        .await
        .expect("database");
    let conversation_service = spawn_server(|listener, shutdown| {
        atelier_conversation::run(
            atelier_conversation::Config {
                database: db.options(),
                max_connections: 4,
                run_migrations: true,
                service_token: ServiceToken::new("watch-test-service-token"),
                nats: NatsConfig::local(&events.nats.url, &events.nats.prefix),
                starting_credits: 100,
                max_generations_per_conversation: 100,
                catalog: atelier_conversation::catalog::Catalog::embedded(),
                sweep_interval: Duration::from_millis(500),
                queue_report_interval: Duration::from_secs(1),
                reaper_interval: Duration::from_secs(3600),
                reaper_stale_after: Duration::from_secs(1800),
                metrics_addr: None,
            },
            listener,
            shutdown,
        )
    })
    .await
    .expect("conversation service");
    let edge = events
        .edge_with(
            &events.nats.url,
            &conversation_service.url(),
            WatchConfig {
                heartbeat: Duration::from_millis(300),
                ..WatchConfig::default()
            },
        )
        .await;
    let token = mint_hs256(JWT_SECRET, "alice", 600).expect("token");
    let watching = |message| authorized(message, &token);
    let mut client = ChatServiceClient::new(channel(&edge).await);
    let conversation = client
        .create_conversation(authorized(
            proto::CreateConversationRequest::default(),
            &token,
        ))
        .await
        .expect("created")
        .into_inner()
        .conversation
        .expect("conversation");
    let mut filtered = client
        .watch_events(watching(proto::WatchEventsRequest {
            resume_after: None,
            conversation_id: conversation.id.clone(),
        }))
        .await
        .expect("a stream")
        .into_inner();

    let other = uuid::Uuid::now_v7().to_string();
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.extend(events.publish("alice", &conversation.id, 1).await);
        events.publish("alice", &other, 2).await;
    }
    let last_other = events.publish("alice", &other, 1).await[0];
    let received: Vec<_> = {
        let mut received = Vec::new();
        while received.len() < mine.len() {
            received.push(next_event(&mut filtered).await);
        }
        received
    };
    assert_eq!(received.iter().map(|r| r.cursor).collect::<Vec<_>>(), mine);
    assert_eq!(
        kinds(&received),
        HashMap::from([(conversation.id.clone(), 5)])
    );
    // The heartbeat's cursor is past the other conversation's events: resuming from it
    // replays none of them.
    let heartbeat = next_response(&mut filtered).await.expect("no error");
    assert!(is_heartbeat(&heartbeat), "unexpected {heartbeat:?}");
    assert_eq!(heartbeat.cursor, last_other);
    // A resumed filtered stream replays only its conversation.
    let mut replayed = client
        .watch_events(watching(proto::WatchEventsRequest {
            resume_after: Some(mine[0]),
            conversation_id: conversation.id.clone(),
        }))
        .await
        .expect("a stream")
        .into_inner();
    let mut again = Vec::new();
    while again.len() < 4 {
        again.push(next_event(&mut replayed).await.cursor);
    }
    assert_eq!(again, mine[1..].to_vec());
}

/// Opens a stream for `user`, or answers how it was refused.
async fn try_watch(edge: &RunningServer, user: &str) -> Result<Stream, tonic::Status> {
    let token = mint_hs256(JWT_SECRET, user, 600).expect("token");
    ChatServiceClient::new(channel(edge).await)
        .watch_events(authorized(proto::WatchEventsRequest::default(), &token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_user_past_the_stream_limit_is_refused_until_one_of_theirs_closes() {
    let events = Events::new().await;
    let edge = events
        .edge(WatchConfig {
            max_streams_per_user: 2,
            ..quick()
        })
        .await;
    let mut first = watch(&edge, "alice", None).await;
    let _second = watch(&edge, "alice", None).await;

    let refused = try_watch(&edge, "alice").await.expect_err("a third stream");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, error_reason::TOO_MANY_STREAMS);
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
    // The limit is per user: another user is not refused, and Alice's streams still work.
    let _bobs = watch(&edge, "bob", None).await;
    let published = events.publish("alice", "c", 1).await;
    assert_eq!(next_event(&mut first).await.cursor, published[0]);

    // Once the client closes one of them, a new one is let in.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_watch(&edge, "alice").await {
            Ok(_third) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed stream still counts"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}
