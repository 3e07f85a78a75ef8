//! The conversation service started on port 0 against a fresh database and a NATS
//! prefix of its own, with clients that call it as the edge or a worker would.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use atelier_conversation::catalog::Catalog;
use atelier_conversation::{Config, run};
use atelier_events::Subjects;
use atelier_proto::conversation::v1 as internal;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{SERVICE_TOKEN_HEADER, ServiceToken, on_behalf_of};
use atelier_testkit::{RunningServer, TestDatabase, TestNats, spawn_server};
use futures::StreamExt as _;
use prost::Message as _;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub const SERVICE_TOKEN: &str = "test-service-token";

pub struct TestApp {
    pub db: TestDatabase,
    pub nats: TestNats,
    pub server: RunningServer,
    pub channel: Channel,
}

/// Another replica of the service, on the same database and NATS prefix as a [`TestApp`].
pub struct Replica {
    pub server: RunningServer,
    pub channel: Channel,
}

impl Replica {
    pub fn client(&self, user: &str) -> Client {
        client_on(&self.channel, user)
    }
}

/// Adds what the edge adds: the service credential and the user.
#[derive(Clone)]
pub struct AsUser {
    pub user: Option<String>,
    pub token: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for AsUser {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(SERVICE_TOKEN_HEADER, token.clone());
        }
        if let Some(user) = &self.user {
            on_behalf_of(&mut request, user)?;
        }
        Ok(request)
    }
}

pub type Client = ConversationServiceClient<InterceptedService<Channel, AsUser>>;

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        atelier_testkit::init_logging();
        let db = TestDatabase::create().await.expect("test database");
        let nats = TestNats::new();
        let mut config = config(&db, &nats);
        configure(&mut config);
        let (server, channel) = serve(config).await;
        Self {
            db,
            nats,
            server,
            channel,
        }
    }

    /// A second replica on this app's database and NATS prefix.
    pub async fn spawn_replica(&self, configure: impl FnOnce(&mut Config)) -> Replica {
        let mut config = config(&self.db, &self.nats);
        configure(&mut config);
        let (server, channel) = serve(config).await;
        Replica { server, channel }
    }

    pub fn client(&self, user: &str) -> Client {
        client_on(&self.channel, user)
    }

    pub fn admin(&self) -> Client {
        ConversationServiceClient::with_interceptor(
            self.channel.clone(),
            AsUser {
                user: None,
                token: Some(AsciiMetadataValue::from_static(SERVICE_TOKEN)),
            },
        )
    }
}

/// The tests' configuration of a replica on `db` and `nats`.
fn config(db: &TestDatabase, nats: &TestNats) -> Config {
    Config {
        database: db.options(),
        max_connections: 16,
        run_migrations: true,
        service_token: ServiceToken::new(SERVICE_TOKEN),
        starting_credits: 100,
        max_generations_per_conversation: 1000,
        catalog: Catalog::embedded(),
        nats_url: nats.url.clone(),
        subject_prefix: nats.prefix.clone(),
        stream_replicas: atelier_events::DEFAULT_STREAM_REPLICAS,
        sweep_interval: Duration::from_millis(200),
        queue_report_interval: Duration::from_millis(100),
        // Tests run the reaper themselves (reaper::run_once), with their own bound.
        reaper_interval: Duration::from_secs(3600),
        reaper_stale_after: Duration::from_secs(1800),
        metrics_addr: None,
    }
}

async fn serve(config: Config) -> (RunningServer, Channel) {
    let server = spawn_server(|listener, shutdown| run(config, listener, shutdown))
        .await
        .expect("server starts");
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    (server, channel)
}

fn client_on(channel: &Channel, user: &str) -> Client {
    ConversationServiceClient::with_interceptor(
        channel.clone(),
        AsUser {
            user: Some(user.to_owned()),
            token: Some(AsciiMetadataValue::from_static(SERVICE_TOKEN)),
        },
    )
}

pub async fn create_conversation(
    client: &mut Client,
    max_generations: Option<u32>,
) -> proto::Conversation {
    client
        .create_conversation(proto::CreateConversationRequest {
            title: String::new(),
            max_generations,
        })
        .await
        .expect("create conversation")
        .into_inner()
        .conversation
        .expect("conversation")
}

pub fn send_request(conversation_id: &str, prompt: &str) -> proto::SendMessageRequest {
    proto::SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        prompt: prompt.to_owned(),
        settings: None,
        client_request_id: String::new(),
    }
}

/// Sends `prompt` for `image_count` images of the default model and returns the message.
pub async fn send_images(
    client: &mut Client,
    conversation_id: &str,
    prompt: &str,
    image_count: u32,
) -> proto::Message {
    let settings = proto::GenerationSettings {
        image_count: Some(image_count),
        ..Default::default()
    };
    send_with_settings(client, conversation_id, prompt, settings).await
}

/// Sends `prompt` with `settings`; the message as SendMessage answered it.
pub async fn send_with_settings(
    client: &mut Client,
    conversation_id: &str,
    prompt: &str,
    settings: proto::GenerationSettings,
) -> proto::Message {
    client
        .send_message(proto::SendMessageRequest {
            settings: Some(settings),
            ..send_request(conversation_id, prompt)
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

pub async fn get_message(client: &mut Client, message_id: &str) -> proto::Message {
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

pub async fn balance(client: &mut Client) -> i64 {
    client
        .get_balance(proto::GetBalanceRequest {})
        .await
        .expect("balance")
        .into_inner()
        .balance
}

pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// StartGeneration, as the worker calls it.
pub async fn start(client: &mut Client, message_id: &str) -> internal::StartGenerationResponse {
    client
        .start_generation(internal::StartGenerationRequest {
            message_id: message_id.to_owned(),
        })
        .await
        .expect("start")
        .into_inner()
}

/// CancelGeneration of a whole message, as the edge forwards it.
pub async fn cancel_message(client: &mut Client, message_id: &str) -> proto::Message {
    client
        .cancel_generation(proto::CancelGenerationRequest {
            target: Some(proto::cancel_generation_request::Target::MessageId(
                message_id.to_owned(),
            )),
        })
        .await
        .expect("cancel")
        .into_inner()
        .message
        .expect("message")
}

/// Every event of `user` stored so far, in stream order.
pub async fn user_events(app: &TestApp, user: &str) -> Vec<proto::Event> {
    let subjects = Subjects::new(&app.nats.prefix).expect("prefix");
    let js = app.nats.jetstream().await.expect("jetstream");
    let Ok(mut stream) = js.get_stream(subjects.events_stream()).await else {
        return Vec::new(); // nothing published yet
    };
    let stored = stream.info().await.expect("stream info").state.messages;
    if stored == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subjects.user_events(user),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(usize::try_from(stored).expect("a test's stream is small"))
        .messages()
        .await
        .expect("fetch");
    let mut events = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.expect("message");
        events.push(proto::Event::decode(message.payload.clone()).expect("event"));
    }
    events
}

/// `user`'s events once `done` holds for them (polled, bounded to 10 s).
pub async fn user_events_once(
    app: &TestApp,
    user: &str,
    done: impl Fn(&[proto::Event]) -> bool,
) -> Vec<proto::Event> {
    for _ in 0..100 {
        let events = user_events(app, user).await;
        if done(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = user_events(app, user).await;
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    panic!("{user}'s events did not arrive within 10 s: {kinds:?}");
}

/// The name of an event's payload, as in the proto.
pub fn kind(event: &proto::Event) -> &'static str {
    use proto::event::Payload;
    match &event.payload {
        Some(Payload::MessageCreated(_)) => "message_created",
        Some(Payload::GenerationQueued(_)) => "generation_queued",
        Some(Payload::GenerationStarted(_)) => "generation_started",
        Some(Payload::IntentResolved(_)) => "intent_resolved",
        Some(Payload::GenerationProgress(_)) => "generation_progress",
        Some(Payload::GenerationCompleted(_)) => "generation_completed",
        Some(Payload::GenerationFailed(_)) => "generation_failed",
        Some(Payload::GenerationCancelled(_)) => "generation_cancelled",
        Some(Payload::TitleUpdated(_)) => "title_updated",
        Some(Payload::CreditsChanged(_)) => "credits_changed",
        Some(Payload::ResyncRequired(_)) => "resync_required",
        Some(Payload::Heartbeat(_)) => "heartbeat",
        None => "none",
    }
}

/// The generation_queued events of `message_id` among `events`, in order.
pub fn queued_reports<'a>(
    events: &'a [proto::Event],
    message_id: &str,
) -> Vec<&'a proto::GenerationQueued> {
    events
        .iter()
        .filter(|event| event.message_id == message_id)
        .filter_map(|event| match &event.payload {
            Some(proto::event::Payload::GenerationQueued(queued)) => Some(queued),
            _ => None,
        })
        .collect()
}
