//! A whole pipeline for the worker's tests: a fresh database, a NATS prefix of its own,
//! the conversation, intent and enhancement services and a generation worker, all
//! in-process on port 0, images in a temporary directory.

// Each test binary that includes it uses a part of it.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atelier_conversation::catalog::Catalog;
use atelier_events::Subjects;
use atelier_generation::providers::{ProvidersConfig, RetryPolicy};
use atelier_images::ImageStore;
use atelier_llm::LlmConfig;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{SERVICE_TOKEN_HEADER, ServiceToken, on_behalf_of};
use atelier_runtime::mesh::{MeshConfig, NatsConfig, ServiceInstances};
use atelier_testkit::{RunningServer, TestDatabase, TestNats, spawn_server};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const SERVICE_TOKEN: &str = "pipeline-test-token";

#[derive(Clone)]
pub struct PipelineOptions {
    pub llm_url: Option<String>,
    pub automatic1111_url: Option<String>,
    /// An OpenAI-compatible images API (`…/v1`) for the catalog's OpenAI models.
    pub openai_url: Option<String>,
    pub ack_wait: Duration,
    pub breaker_open_for: Duration,
    pub max_deliver: i64,
    /// The provider deadline per image.
    pub provider_deadline: Duration,
    /// How long a stopping worker waits for its running jobs before handing them back.
    pub drain_timeout: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            llm_url: None,
            automatic1111_url: None,
            openai_url: None,
            ack_wait: Duration::from_secs(10),
            breaker_open_for: Duration::from_secs(30),
            max_deliver: 6,
            provider_deadline: RetryPolicy::DEFAULT_DEADLINE,
            drain_timeout: atelier_generation::Config::default().drain_timeout,
        }
    }
}

pub struct Pipeline {
    pub db: TestDatabase,
    pub nats: TestNats,
    images: TempDir,
    conversation: RunningServer,
    intent: RunningServer,
    enhancement: RunningServer,
    worker: Option<RunningServer>,
    channel: Channel,
    options: PipelineOptions,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone)]
pub struct AsUser(String);

impl tonic::service::Interceptor for AsUser {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(
            SERVICE_TOKEN_HEADER,
            AsciiMetadataValue::from_static(SERVICE_TOKEN),
        );
        on_behalf_of(&mut request, &self.0)?;
        Ok(request)
    }
}

pub type Client = ConversationServiceClient<InterceptedService<Channel, AsUser>>;

fn llm_config(url: &str, options: &PipelineOptions) -> LlmConfig {
    LlmConfig {
        max_retries: 0,
        deadline: Duration::from_secs(3),
        call_timeout: Duration::from_secs(3),
        breaker_failure_threshold: 2,
        breaker_open_for: options.breaker_open_for,
        ..LlmConfig::new(url)
    }
}

impl Pipeline {
    /// A pipeline whose worker renders through the AUTOMATIC1111 fake `sd`, with no LLM.
    pub async fn with_automatic1111(sd: &wiremock::MockServer) -> Self {
        Self::start(PipelineOptions {
            automatic1111_url: Some(sd.uri()),
            ..PipelineOptions::default()
        })
        .await
    }

    /// A pipeline whose services ask the LLM fake `llm`.
    pub async fn with_llm(llm: &wiremock::MockServer) -> Self {
        Self::start(PipelineOptions {
            llm_url: Some(llm.uri()),
            ..PipelineOptions::default()
        })
        .await
    }

    pub async fn start(options: PipelineOptions) -> Self {
        atelier_testkit::init_logging();
        let db = TestDatabase::create().await.expect("database");
        let nats = TestNats::new();
        let images =
            TempDir(std::env::temp_dir().join(format!("atelier-images-{}", uuid::Uuid::now_v7())));

        let conversation_config = atelier_conversation::Config {
            database: db.options(),
            max_connections: 8,
            run_migrations: true,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            nats: NatsConfig::local(&nats.url, &nats.prefix),
            starting_credits: 100,
            max_generations_per_conversation: 100,
            catalog: Catalog::embedded(),
            sweep_interval: Duration::from_millis(300),
            queue_report_interval: Duration::from_millis(100),
            reaper_interval: Duration::from_secs(3600),
            reaper_stale_after: Duration::from_secs(1800),
            metrics_addr: None,
        };
        let conversation = spawn_server(|listener, shutdown| {
            atelier_conversation::run(conversation_config, listener, shutdown)
        })
        .await
        .expect("conversation");
        let llm = options
            .llm_url
            .as_deref()
            .map(|url| llm_config(url, &options));
        let intent_config = atelier_intent::Config {
            llm: llm.clone(),
            service_token: ServiceToken::new(SERVICE_TOKEN),
            ..atelier_intent::Config::default()
        };
        let intent = spawn_server(|listener, shutdown| {
            atelier_intent::run(intent_config, listener, shutdown)
        })
        .await
        .expect("intent");
        let enhancement_config = atelier_enhancement::Config {
            llm,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            ..atelier_enhancement::Config::default()
        };
        let enhancement = spawn_server(|listener, shutdown| {
            atelier_enhancement::run(enhancement_config, listener, shutdown)
        })
        .await
        .expect("enhancement");
        let channel = Channel::from_shared(conversation.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut pipeline = Self {
            db,
            nats,
            images,
            conversation,
            intent,
            enhancement,
            worker: None,
            channel,
            options,
        };
        pipeline.start_worker().await;
        pipeline
    }

    /// Starts a generation worker (another replica, if one runs).
    pub async fn start_worker(&mut self) {
        let conversation = self.conversation.url();
        self.start_worker_reaching(&conversation).await;
    }

    /// Where the conversation service listens (for a `TcpProxy` in front of it).
    pub fn conversation_addr(&self) -> SocketAddr {
        self.conversation.addr
    }

    /// Starts a generation worker that reaches the conversation service at
    /// `conversation_url`: a `TcpProxy` in front of it, to take it away and bring it back.
    pub async fn start_worker_reaching(&mut self, conversation_url: &str) {
        let config = atelier_generation::Config {
            mesh: MeshConfig {
                service_token: ServiceToken::new(SERVICE_TOKEN),
                nats: NatsConfig::local(&self.nats.url, &self.nats.prefix),
                conversation: ServiceInstances::at(conversation_url),
            },
            intent: ServiceInstances::at(&self.intent.url()),
            enhancement: ServiceInstances::at(&self.enhancement.url()),
            providers: ProvidersConfig {
                automatic1111_url: self.options.automatic1111_url.clone(),
                openai_base_url: self.options.openai_url.clone(),
                progress_interval: Duration::from_millis(50),
                ..ProvidersConfig::default()
            },
            provider_retries: RetryPolicy {
                max_attempts: 2,
                backoff_base: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                deadline: self.options.provider_deadline,
            },
            storage: atelier_images::Storage::Local(self.images.0.clone()),
            ack_wait: self.options.ack_wait,
            max_deliver: self.options.max_deliver,
            drain_timeout: self.options.drain_timeout,
            intent_deadline: Duration::from_secs(8),
            enhancement_deadline: Duration::from_secs(8),
            ..atelier_generation::Config::default()
        };
        let worker =
            spawn_server(|listener, shutdown| atelier_generation::run(config, listener, shutdown))
                .await
                .expect("worker");
        self.worker = Some(worker);
    }

    /// Stops the worker as SIGTERM does (its shutdown signal), and waits for it to end.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await.expect("the worker stops cleanly");
        }
    }

    /// Kills the worker as a crash would: its jobs stay unacknowledged.
    pub fn kill_worker(&mut self) {
        drop(self.worker.take());
    }

    pub fn client(&self, user: &str) -> Client {
        ConversationServiceClient::with_interceptor(self.channel.clone(), AsUser(user.to_owned()))
    }

    pub async fn conversation(&self, client: &mut Client) -> String {
        client
            .create_conversation(proto::CreateConversationRequest::default())
            .await
            .expect("create")
            .into_inner()
            .conversation
            .expect("conversation")
            .id
    }

    pub async fn send(
        &self,
        client: &mut Client,
        conversation_id: &str,
        prompt: &str,
        model: Option<&str>,
    ) -> proto::Message {
        client
            .send_message(proto::SendMessageRequest {
                conversation_id: conversation_id.to_owned(),
                prompt: prompt.to_owned(),
                settings: Some(proto::GenerationSettings {
                    model: model.unwrap_or_default().to_owned(),
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

    /// Cancels `target` (every image of a message, or one image) and returns the message
    /// as CancelGeneration answered it.
    pub async fn cancel(
        &self,
        client: &mut Client,
        target: proto::cancel_generation_request::Target,
    ) -> proto::Message {
        client
            .cancel_generation(proto::CancelGenerationRequest {
                target: Some(target),
            })
            .await
            .expect("cancel")
            .into_inner()
            .message
            .expect("message")
    }

    /// Sends `prompt` as the first message of a new conversation of `client`'s user.
    pub async fn send_in_new_conversation(
        &self,
        client: &mut Client,
        prompt: &str,
        model: Option<&str>,
    ) -> proto::Message {
        let conversation = self.conversation(client).await;
        self.send(client, &conversation, prompt, model).await
    }

    /// The message as GetMessage answers now.
    pub async fn message(&self, client: &mut Client, message_id: &str) -> proto::Message {
        client
            .get_message(proto::GetMessageRequest {
                message_id: message_id.to_owned(),
            })
            .await
            .expect("get")
            .into_inner()
            .message
            .expect("message")
    }

    /// Waits (bounded) until the message has completed, failed or been cancelled.
    pub async fn wait_until_settled(
        &self,
        client: &mut Client,
        message_id: &str,
    ) -> proto::Message {
        self.wait_for(client, message_id, |status| {
            matches!(
                status,
                proto::MessageStatus::Completed
                    | proto::MessageStatus::Failed
                    | proto::MessageStatus::Cancelled
            )
        })
        .await
    }

    /// Waits (bounded) until the message has `status`.
    pub async fn wait_for_status(
        &self,
        client: &mut Client,
        message_id: &str,
        status: proto::MessageStatus,
    ) -> proto::Message {
        self.wait_for(client, message_id, |now| now == status).await
    }

    async fn wait_for(
        &self,
        client: &mut Client,
        message_id: &str,
        reached: impl Fn(proto::MessageStatus) -> bool,
    ) -> proto::Message {
        for _ in 0..3_000 {
            let message = self.message(client, message_id).await;
            if reached(message.status()) {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("message {message_id} did not reach the awaited status within 60 s");
    }

    /// Holds the message's row (as the conversation service's writes lock it) until the
    /// returned transaction ends.
    pub async fn hold_message_row(
        &self,
        message_id: &str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let pool = self.db.pool().await.expect("pool");
        let mut hold = pool.begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM messages WHERE id = $1::uuid FOR UPDATE")
            .bind(message_id)
            .execute(&mut *hold)
            .await
            .expect("lock");
        hold
    }

    /// Asserts that the user's stream, read up to a generation_completed, has its first
    /// `earlier` before its first `later`.
    pub async fn assert_first_before(&self, user: &str, earlier: &str, later: &str) {
        let kinds = self.event_kinds_once(user, "generation_completed").await;
        let first = |kind: &str| {
            kinds
                .iter()
                .position(|seen| seen == kind)
                .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
        };
        assert!(first(earlier) < first(later), "{kinds:?}");
    }

    pub async fn balance(&self, client: &mut Client) -> i64 {
        client
            .get_balance(proto::GetBalanceRequest {})
            .await
            .expect("balance")
            .into_inner()
            .balance
    }

    /// A pool on the test's database, for a test that changes a row behind the services'
    /// backs.
    pub async fn pool(&self) -> sqlx::PgPool {
        self.db.pool().await.expect("pool")
    }

    pub async fn ledger_count(&self, kind: &str) -> i64 {
        let pool = self.db.pool().await.expect("pool");
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE kind = $1")
            .bind(kind)
            .fetch_one(&pool)
            .await
            .expect("count")
    }

    pub async fn image_key(&self, generation_id: &str) -> String {
        let pool = self.db.pool().await.expect("pool");
        sqlx::query_scalar("SELECT image_key FROM generations WHERE id = $1::uuid")
            .bind(generation_id)
            .fetch_one(&pool)
            .await
            .expect("image key")
    }

    pub fn store(&self) -> ImageStore {
        ImageStore::local(&self.images.0).expect("store")
    }

    /// Waits (bounded) until the worker's consumer has no job waiting or unacknowledged.
    pub async fn wait_until_jobs_settled(&self) {
        let subjects = Subjects::new(&self.nats.prefix).expect("prefix");
        let js = self.nats.jetstream().await.expect("jetstream");
        for _ in 0..300 {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream("generation", subjects.jobs_stream())
                .await
                .expect("consumer");
            let info = consumer.info().await.expect("info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the generation jobs were not all acknowledged within 15 s");
    }

    /// Every event of `user` stored so far, in stream order.
    pub async fn events(&self, user: &str) -> Vec<proto::Event> {
        let subjects = Subjects::new(&self.nats.prefix).expect("prefix");
        let js = self.nats.jetstream().await.expect("jetstream");
        let stream = js
            .get_stream(subjects.events_stream())
            .await
            .expect("stream");
        let count = stream.cached_info().state.messages;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: subjects.user_events(user),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(count).unwrap_or(1000).max(1))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        let mut events = Vec::new();
        while let Some(Ok(message)) = batch.next().await {
            events.push(proto::Event::decode(message.payload.clone()).expect("event"));
        }
        events
    }

    /// The user's event kinds once `kind` is among them: events are published just after
    /// the commit a status poll sees, so wait (bounded) for them.
    pub async fn event_kinds_once(&self, user: &str, kind: &str) -> Vec<String> {
        for _ in 0..100 {
            let kinds = self.event_kinds(user).await;
            if kinds.iter().any(|seen| seen == kind) {
                return kinds;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {kind} event for {user} within 10 s");
    }

    pub async fn event_kinds(&self, user: &str) -> Vec<String> {
        self.events(user)
            .await
            .into_iter()
            .map(|event| {
                match event.payload {
                    Some(proto::event::Payload::MessageCreated(_)) => "message_created",
                    Some(proto::event::Payload::GenerationStarted(_)) => "generation_started",
                    Some(proto::event::Payload::IntentResolved(_)) => "intent_resolved",
                    Some(proto::event::Payload::GenerationProgress(_)) => "generation_progress",
                    Some(proto::event::Payload::GenerationCompleted(_)) => "generation_completed",
                    Some(proto::event::Payload::GenerationFailed(_)) => "generation_failed",
                    Some(proto::event::Payload::GenerationCancelled(_)) => "generation_cancelled",
                    Some(proto::event::Payload::TitleUpdated(_)) => "title_updated",
                    Some(proto::event::Payload::CreditsChanged(_)) => "credits_changed",
                    _ => "other",
                }
                .to_owned()
            })
            .collect()
    }
}

pub use atelier_testkit::fakes::{automatic1111, batch_answer, png_answer, png_base64};

/// An OpenAI chat-completions answer whose message content is `content`.
pub fn completion(content: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }]
    })
}

/// An LLM fake answering every chat completion, after `delay`, with an enhancement that
/// adds "vivid".
pub async fn enhancing_llm(delay: Duration) -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(delay)
                .set_body_json(completion(
                    r#"{"prompt":"a red fox in the snow, vivid","negative_prompt":""}"#,
                )),
        )
        .mount(&llm)
        .await;
    llm
}

/// Waits (bounded) until `server` has received `count` requests on `path`.
pub async fn wait_for_request(server: &wiremock::MockServer, path: &str, count: usize) {
    for _ in 0..300 {
        let seen = server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|request| request.url.path() == path)
            .count();
        if seen >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} was not requested {count} time(s) within 15 s");
}

/// An OpenAI-compatible LLM fake that, when armed, holds each of the next two answers
/// until both requests are in flight, and records the peak number in flight. Two calls
/// made one after the other never pair: the first is released by the fake's own timeout,
/// alone, and the peak stays 1.
pub struct PairingLlm {
    addr: SocketAddr,
    state: Arc<PairingState>,
}

#[derive(Default)]
struct PairingState {
    to_hold: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    arrived: Notify,
}

impl PairingLlm {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(PairingState::default());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds the next two requests until they are in flight together.
    pub fn hold_for_pairs(&self) {
        self.state.to_hold.store(2, Ordering::SeqCst);
    }

    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }
}

async fn serve_connection(mut stream: tokio::net::TcpStream, state: Arc<PairingState>) {
    loop {
        let Some(body) = read_request(&mut stream).await else {
            return;
        };
        let held = state
            .to_hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if held {
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            state.peak.fetch_max(now, Ordering::SeqCst);
            state.arrived.notify_waiters();
            let paired = async {
                while state.in_flight.load(Ordering::SeqCst) < 2 {
                    let notified = state.arrived.notified();
                    if state.in_flight.load(Ordering::SeqCst) >= 2 {
                        break;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), paired).await;
        }
        // The intent request asks for a "kind"; everything else is an enhancement.
        let content = if body.contains("resolved_prompt") {
            r#"{"kind":"new","resolved_prompt":"a dog in a park","edit_type":"","strength":0}"#
        } else {
            r#"{"prompt":"a vivid dog in a sunny park, golden light","negative_prompt":""}"#
        };
        let answer = completion(content).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let written = stream.write_all(response.as_bytes()).await;
        if held {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if written.is_err() {
            return;
        }
    }
}

/// Reads one HTTP/1.1 request and returns its body; `None` when the connection closed.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let headers = String::from_utf8_lossy(&buffer[..header_end]).to_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(String::from_utf8_lossy(&buffer[header_end..header_end + length]).into_owned())
}

/// Alice's one-image message on AUTOMATIC1111, whose render (taking `render`) has begun.
pub async fn a_render_under_way(
    render: Duration,
) -> (wiremock::MockServer, Pipeline, Client, proto::Message) {
    let sd = automatic1111(png_answer(1024, 1024, 1).set_delay(render)).await;
    let pipeline = Pipeline::with_automatic1111(&sd).await;
    let mut alice = pipeline.client("alice");
    let message = pipeline
        .send_in_new_conversation(&mut alice, "a red fox", Some("sdxl"))
        .await;
    wait_for_request(&sd, "/sdapi/v1/txt2img", 1).await;
    (sd, pipeline, alice, message)
}
