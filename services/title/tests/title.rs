//! The title worker end to end against the real PostgreSQL and NATS: the conversation
//! service and the worker run in-process on port 0 with a fresh database and a NATS
//! prefix of their own, and wiremock plays the OpenAI-compatible LLM.
//!
//! The job travels the real way: SendMessage writes it to the outbox, the relay publishes
//! it to the jobs stream, the worker takes it, asks the fake LLM and calls ApplyTitle.
//! Every wait is a bounded polling loop on an observable outcome, never a sleep that
//! hopes the work is done.

use std::future::Future;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use async_nats::jetstream::consumer::{self, pull};
use atelier_conversation::catalog::Catalog;
use atelier_events::Subjects;
use atelier_llm::LlmConfig;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{SERVICE_TOKEN_HEADER, ServiceToken, on_behalf_of};
use atelier_runtime::mesh::{MeshConfig, NatsConfig, ServiceInstances};
use atelier_testkit::{RunningServer, TcpProxy, TestDatabase, TestNats, spawn_server};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SERVICE_TOKEN: &str = "test-service-token";
const USER: &str = "alice";
const LLM_TITLE: &str = "Foxes in Snow";
/// Longer than an automatic title, so the automatic one is visibly truncated.
const PROMPT: &str = "a red fox standing in deep fresh snow at the edge of a pine forest, \
                      golden hour light, photographed with a long lens";
/// How long a test waits for an outcome before it fails.
const PATIENCE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// The conversation service and the title worker, sharing a database, a NATS prefix and
/// a service token.
struct Mesh {
    // Fields drop in order: the servers stop before their streams and database go away.
    /// The conversation service, then the title worker.
    servers: [RunningServer; 2],
    conversation: Client,
    /// The link the test cuts, if any: it starts down.
    outage: Option<TcpProxy>,
    nats: TestNats,
    _db: TestDatabase,
}

/// Which of the worker's links starts cut (through a proxy that is down).
enum Outage {
    None,
    /// The worker starts without NATS; the conversation service has it.
    Nats,
    /// The worker cannot reach the conversation service.
    Conversation,
}

/// Adds what the edge adds: the service credential and the user.
#[derive(Clone)]
struct AsUser(&'static str);

impl tonic::service::Interceptor for AsUser {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(
            SERVICE_TOKEN_HEADER,
            AsciiMetadataValue::from_static(SERVICE_TOKEN),
        );
        on_behalf_of(&mut request, self.0)?;
        Ok(request)
    }
}

type Client = ConversationServiceClient<InterceptedService<Channel, AsUser>>;

impl Mesh {
    /// The title worker's grpc.health.v1 status.
    async fn worker_health(&self) -> ServingStatus {
        let channel = tonic::transport::Endpoint::from_shared(self.servers[1].url())
            .expect("url")
            .connect()
            .await
            .expect("the worker's port");
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health answers")
            .into_inner()
            .status()
    }

    async fn start(llm: LlmConfig) -> Self {
        Self::start_with(llm, Outage::None).await
    }

    async fn start_with(llm: LlmConfig, outage: Outage) -> Self {
        atelier_testkit::init_logging();
        let db = TestDatabase::create().await.expect("test database");
        let nats = TestNats::new();
        let nats_proxy = match outage {
            Outage::Nats => Some(proxy_down(&nats.url).await),
            Outage::None | Outage::Conversation => None,
        };
        let conversation_config = atelier_conversation::Config {
            database: db.options(),
            max_connections: 8,
            run_migrations: true,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            nats: NatsConfig::local(&nats.url, &nats.prefix),
            starting_credits: 100,
            max_generations_per_conversation: 100,
            catalog: Catalog::embedded(),
            sweep_interval: Duration::from_millis(100),
            queue_report_interval: Duration::from_millis(100),
            reaper_interval: Duration::from_secs(3600),
            reaper_stale_after: Duration::from_secs(1800),
            metrics_addr: None,
        };
        let conversation = spawn_server(|listener, shutdown| {
            atelier_conversation::run(conversation_config, listener, shutdown)
        })
        .await
        .expect("conversation service starts");
        let conversation_proxy = match outage {
            Outage::Conversation => Some(proxy_down(&conversation.url()).await),
            Outage::None | Outage::Nats => None,
        };
        let title_config = atelier_title::Config {
            mesh: MeshConfig {
                service_token: ServiceToken::new(SERVICE_TOKEN),
                nats: NatsConfig::local(
                    &nats_proxy
                        .as_ref()
                        .map_or_else(|| nats.url.clone(), |proxy| proxy.url("nats")),
                    &nats.prefix,
                ),
                conversation: ServiceInstances::at(
                    &conversation_proxy
                        .as_ref()
                        .map_or_else(|| conversation.url(), |proxy| proxy.url("http")),
                ),
            },
            llm: Some(llm),
            ..atelier_title::Config::default()
        };
        let title =
            spawn_server(|listener, shutdown| atelier_title::run(title_config, listener, shutdown))
                .await
                .expect("title worker starts");
        let channel = Channel::from_shared(conversation.url())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        Self {
            nats,
            outage: nats_proxy.or(conversation_proxy),
            conversation: ConversationServiceClient::with_interceptor(channel, AsUser(USER)),
            servers: [conversation, title],
            _db: db,
        }
    }

    /// A new auto-titled conversation with `PROMPT` as its first message.
    async fn first_message(&self) -> proto::Conversation {
        let mut client = self.conversation.clone();
        let conversation = client
            .create_conversation(proto::CreateConversationRequest {
                title: String::new(),
                max_generations: None,
            })
            .await
            .expect("create conversation")
            .into_inner()
            .conversation
            .expect("conversation");
        client
            .send_message(proto::SendMessageRequest {
                conversation_id: conversation.id.clone(),
                prompt: PROMPT.to_owned(),
                settings: None,
                client_request_id: String::new(),
            })
            .await
            .expect("send message");
        conversation
    }

    async fn conversation(&self, id: &str) -> proto::Conversation {
        self.conversation
            .clone()
            .get_conversation(proto::GetConversationRequest {
                conversation_id: id.to_owned(),
            })
            .await
            .expect("get conversation")
            .into_inner()
            .conversation
            .expect("conversation")
    }

    /// Waits until the title consumer exists and has nothing pending or unacknowledged,
    /// and returns its state then.
    async fn title_jobs_settled(&self) -> consumer::Info {
        let js = self.nats.jetstream().await.expect("jetstream");
        let stream = Subjects::new(&self.nats.prefix)
            .expect("prefix")
            .jobs_stream();
        eventually("the title jobs to be settled", || async {
            let info = js
                .get_stream(&stream)
                .await
                .ok()?
                .get_consumer::<pull::Config>("title")
                .await
                .ok()?
                .get_info()
                .await
                .ok()?;
            let settled = info.delivered.stream_sequence > 0
                && info.num_pending == 0
                && info.num_ack_pending == 0;
            settled.then_some(info)
        })
        .await
    }
}

/// Polls `check` until it gives a value, for at most [`PATIENCE`].
async fn eventually<T, Checked>(what: &str, mut check: impl FnMut() -> Checked) -> T
where
    Checked: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the fake LLM has received a request, and returns how many it has.
async fn llm_called(llm: &MockServer) -> usize {
    eventually("the LLM to be asked", || async {
        let received = llm.received_requests().await.unwrap_or_default().len();
        (received > 0).then_some(received)
    })
    .await
}

/// A proxy to `url` (`scheme://host:port`), down until the test brings it up.
async fn proxy_down(url: &str) -> TcpProxy {
    let authority = url.split_once("://").map_or(url, |(_scheme, rest)| rest);
    let target = tokio::net::lookup_host(authority)
        .await
        .expect("an address")
        .next()
        .expect("it resolves");
    TcpProxy::start(target, false).await.expect("proxy starts")
}

/// The LLM fake, answering every chat completion with `LLM_TITLE`.
async fn llm_answering() -> MockServer {
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion(LLM_TITLE)))
        .mount(&llm)
        .await;
    llm
}

fn completion(title: &str) -> serde_json::Value {
    let content = serde_json::json!({ "title": title }).to_string();
    serde_json::json!({ "choices": [{ "message": { "content": content } }] })
}

#[tokio::test]
async fn a_first_message_gets_the_llm_title() {
    let llm = llm_answering().await;
    let mesh = Mesh::start(LlmConfig::new(llm.uri())).await;

    let created = mesh.first_message().await;

    let titled = eventually("the LLM title", || async {
        let conversation = mesh.conversation(&created.id).await;
        (conversation.title == LLM_TITLE).then_some(conversation)
    })
    .await;
    assert!(
        titled.auto_titled,
        "an LLM title is still Atelier's, not the user's"
    );
    let request = &llm.received_requests().await.expect("recorded")[0];
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.last().expect("user message")["content"], PROMPT);
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
}

#[tokio::test]
async fn a_rename_before_the_title_is_ready_wins() {
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion(LLM_TITLE))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&llm)
        .await;
    let mesh = Mesh::start(LlmConfig::new(llm.uri())).await;
    let created = mesh.first_message().await;

    // The worker is now waiting for the model: the user renames meanwhile.
    llm_called(&llm).await;
    mesh.conversation
        .clone()
        .rename_conversation(proto::RenameConversationRequest {
            conversation_id: created.id.clone(),
            title: "Mine".to_owned(),
        })
        .await
        .expect("rename");

    mesh.title_jobs_settled().await;
    let conversation = mesh.conversation(&created.id).await;
    assert_eq!(conversation.title, "Mine");
    assert!(!conversation.auto_titled);
    assert_eq!(
        llm.received_requests().await.unwrap_or_default().len(),
        1,
        "the job was settled, not retried"
    );
}

#[tokio::test]
async fn with_the_llm_down_the_automatic_title_stays() {
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(500).set_body_string("model overloaded"))
        .mount(&llm)
        .await;
    let mesh = Mesh::start(LlmConfig {
        max_retries: 0,
        ..LlmConfig::new(llm.uri())
    })
    .await;
    let created = mesh.first_message().await;

    llm_called(&llm).await;
    let consumer = mesh.title_jobs_settled().await;

    assert_eq!(
        consumer.num_redelivered, 0,
        "an LLM failure is settled at once"
    );
    let conversation = mesh.conversation(&created.id).await;
    let automatic = atelier_conversation::automatic_title(PROMPT);
    assert!(automatic.ends_with('…'), "the prompt is long enough to cut");
    assert_eq!(conversation.title, automatic);
    assert!(conversation.auto_titled);
    assert_eq!(llm.received_requests().await.unwrap_or_default().len(), 1);
}

#[tokio::test]
async fn the_worker_serves_and_stops_while_nats_is_unreachable() {
    atelier_testkit::init_logging();
    let nats = TestNats::new();
    let proxy = proxy_down(&nats.url).await;
    let config = atelier_title::Config {
        mesh: MeshConfig {
            nats: NatsConfig::local(&proxy.url("nats"), &nats.prefix),
            ..MeshConfig::default()
        },
        ..atelier_title::Config::default()
    };
    let worker = spawn_server(|listener, shutdown| atelier_title::run(config, listener, shutdown))
        .await
        .expect("title worker starts");

    // The gRPC frame answers although the consumer cannot be set up.
    Channel::from_shared(worker.url())
        .expect("url")
        .connect()
        .await
        .expect("the worker accepts connections");

    // Shutdown stops the server and the set-up retries alike.
    tokio::time::timeout(PATIENCE, worker.stop())
        .await
        .expect("the worker stops")
        .expect("the worker stops cleanly");
}

#[tokio::test]
async fn title_jobs_wait_for_nats_to_come_back() {
    let llm = llm_answering().await;
    // Only the worker goes through the proxy: the conversation service publishes the job
    // while the worker cannot reach NATS.
    let mesh = Mesh::start_with(LlmConfig::new(llm.uri()), Outage::Nats).await;
    let created = mesh.first_message().await;
    // Without NATS the worker cannot consume: its health says so.
    assert_eq!(mesh.worker_health().await, ServingStatus::NotServing);
    assert_eq!(
        mesh.conversation(&created.id).await.title,
        atelier_conversation::automatic_title(PROMPT)
    );

    mesh.outage.as_ref().expect("proxy").set_up(true);

    eventually("the LLM title once NATS is back", || async {
        (mesh.conversation(&created.id).await.title == LLM_TITLE).then_some(())
    })
    .await;
    // Consuming again: SERVING.
    eventually("the worker to report SERVING", || async {
        (mesh.worker_health().await == ServingStatus::Serving).then_some(())
    })
    .await;
}

#[tokio::test]
async fn no_job_is_taken_while_the_conversation_service_is_unreachable() {
    let llm = llm_answering().await;
    let mesh = Mesh::start_with(LlmConfig::new(llm.uri()), Outage::Conversation).await;
    let created = mesh.first_message().await;

    // The job waits in the stream: the worker would only ask the model for a title it
    // cannot apply. (It would take the job within milliseconds if it did not wait.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(llm.received_requests().await.unwrap_or_default().len(), 0);
    assert_eq!(
        mesh.conversation(&created.id).await.title,
        atelier_conversation::automatic_title(PROMPT)
    );
    mesh.outage.as_ref().expect("proxy").set_up(true);

    eventually("the LLM title once the service is back", || async {
        (mesh.conversation(&created.id).await.title == LLM_TITLE).then_some(())
    })
    .await;
    assert_eq!(llm.received_requests().await.unwrap_or_default().len(), 1);
}

/// Outside development the service refuses to start without its service credential, or with a built-in or
/// short one; development mode warns, and listens on loopback only.
#[test]
fn refuses_to_start_unsafely() {
    use atelier_testkit::startup::{
        RequiredSecret, assert_development_is_loopback_only, assert_development_warns,
        assert_secrets_required,
    };
    let binary = env!("CARGO_BIN_EXE_atelier-title");
    let secrets = [RequiredSecret {
        variable: "ATELIER_SERVICE_TOKEN",
        development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
    }];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}
