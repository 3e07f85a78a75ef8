//! The conversation service started on port 0 against a fresh database and a NATS
//! prefix of its own, with clients that call it as the edge or a worker would.

#![allow(dead_code)]

use atelier_conversation::catalog::Catalog;
use atelier_conversation::{Config, run};
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1 as proto;
use atelier_runtime::internal_call::{SERVICE_TOKEN_HEADER, ServiceToken, on_behalf_of};
use atelier_testkit::{RunningServer, TestDatabase, TestNats, spawn_server};
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
        let mut config = Config {
            database: db.options(),
            max_connections: 16,
            run_migrations: true,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            starting_credits: 100,
            max_generations_per_conversation: 1000,
            catalog: Catalog::embedded(),
            nats_url: nats.url.clone(),
            subject_prefix: nats.prefix.clone(),
            sweep_interval: std::time::Duration::from_millis(200),
            queue_report_interval: std::time::Duration::from_millis(100),
        };
        configure(&mut config);
        let server = spawn_server(|listener, shutdown| run(config, listener, shutdown))
            .await
            .expect("server starts");
        let channel = Channel::from_shared(server.url())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        Self {
            db,
            nats,
            server,
            channel,
        }
    }

    pub fn client(&self, user: &str) -> Client {
        ConversationServiceClient::with_interceptor(
            self.channel.clone(),
            AsUser {
                user: Some(user.to_owned()),
                token: Some(AsciiMetadataValue::from_static(SERVICE_TOKEN)),
            },
        )
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
