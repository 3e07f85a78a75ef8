//! The whole Atelier mesh started in one process, for the end-to-end tests and the load
//! generator: a fresh PostgreSQL database, every service on its own 127.0.0.1:0 port,
//! wired exactly as in deployment (the edge reaches the conversation service over gRPC
//! with the service credential).

use std::path::PathBuf;
use std::time::Duration;

use atelier_conversation::catalog::Catalog;
use atelier_edge::auth::{JwtVerifier, mint_hs256};
use atelier_edge::rate_limit::RateLimit;
use atelier_runtime::internal_call::ServiceToken;
use atelier_runtime::mesh::{MeshConfig, NatsConfig, ServiceInstances};
use atelier_testkit::{
    KillableServer, RunningServer, TestDatabase, TestNats, spawn_killable_server, spawn_server,
};
use tonic::transport::{Channel, Endpoint};

/// Knobs a mesh test or benchmark turns; everything else is the deployment default.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub starting_credits: i64,
    pub max_generations_per_conversation: u32,
    pub rate_limit: RateLimit,
    pub database_connections: u32,
    /// An OpenAI-compatible LLM for intent and enhancement; `None` is heuristic mode.
    pub llm_url: Option<String>,
    /// An AUTOMATIC1111 server for the `sdxl` model; `None` leaves only `builtin`.
    pub automatic1111_url: Option<String>,
    /// Start the generation worker (a fast-path benchmark leaves the jobs queued).
    pub run_generation: bool,
    pub watch: atelier_edge::config::WatchConfig,
    /// The built web client the edge serves on its HTTP port.
    pub web_dir: Option<PathBuf>,
    /// Conversation service instances on the one database; every caller balances over
    /// all of them. Each beyond the first runs on a runtime of its own, so that a test
    /// can kill it ([`Mesh::more_conversations`]).
    pub conversation_instances: usize,
    /// Instances of each other service (edge, intent, enhancement, title, generation);
    /// the extra ones are in [`Mesh::replicas`] and [`Mesh::more_edges`], without metrics.
    pub replicas: usize,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            starting_credits: 100,
            max_generations_per_conversation: 200,
            rate_limit: RateLimit {
                per_second: 20.0,
                burst: 40,
                idle_eviction: Duration::from_secs(600),
            },
            database_connections: 16,
            llm_url: None,
            automatic1111_url: None,
            run_generation: true,
            watch: atelier_edge::config::WatchConfig::default(),
            web_dir: None,
            conversation_instances: 1,
            replicas: 1,
        }
    }
}

/// A running mesh; dropping it stops every service, drops the database, deletes the
/// streams and the stored images.
pub struct Mesh {
    pub edge: RunningServer,
    /// The edge's HTTP port: images, the web client, `/config.json`.
    pub edge_http: std::net::SocketAddr,
    pub conversation: RunningServer,
    /// The instances beyond the first ([`MeshOptions::conversation_instances`]).
    pub more_conversations: Vec<KillableServer>,
    pub workers: Vec<RunningServer>,
    /// Edges beyond the first ([`MeshOptions::replicas`]): a test spreads its clients
    /// over them.
    pub more_edges: Vec<RunningServer>,
    /// The other services' extra instances.
    pub replicas: Vec<RunningServer>,
    pub db: TestDatabase,
    pub nats: TestNats,
    images: ImagesDir,
    /// This mesh's own HS256 key (random, like its service credential).
    jwt_secret: String,
    /// This mesh's own image URL key: a test signs with it to make a URL the edge would.
    pub image_url_secret: String,
    /// Where each service serves `/metrics`, by service name.
    pub metrics: Vec<(&'static str, std::net::SocketAddr)>,
}

/// The worker's image directory, removed with the mesh.
struct ImagesDir(PathBuf);

impl Drop for ImagesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Mesh {
    pub async fn start(options: MeshOptions) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        let nats = TestNats::new();
        // Secrets of this mesh's own, as run.sh generates them.
        let service_token = atelier_testkit::random_secret();
        let jwt_secret = atelier_testkit::random_secret();
        let image_url_secret = atelier_testkit::random_secret();
        let metrics: Vec<(&'static str, std::net::SocketAddr)> = [
            "edge",
            "conversation",
            "intent",
            "enhancement",
            "title",
            "generation",
        ]
        .into_iter()
        .map(|service| (service, atelier_testkit::free_local_addr()))
        .collect();
        let metrics_of = |service: &str| {
            metrics
                .iter()
                .find(|(name, _)| *name == service)
                .map(|(_, addr)| *addr)
        };
        let conversation_config = atelier_conversation::Config {
            database: db.options(),
            max_connections: options.database_connections,
            run_migrations: true,
            service_token: ServiceToken::new(&service_token),
            nats: NatsConfig::local(&nats.url, &nats.prefix),
            starting_credits: options.starting_credits,
            max_generations_per_conversation: options.max_generations_per_conversation,
            catalog: Catalog::embedded(),
            sweep_interval: Duration::from_millis(500),
            // The deployment default: the load generator measures what production runs.
            queue_report_interval: Duration::from_secs(1),
            reaper_interval: Duration::from_secs(60),
            reaper_stale_after: Duration::from_secs(1800),
            metrics_addr: metrics_of("conversation"),
        };
        let mut more_conversations = Vec::new();
        for _ in 1..options.conversation_instances {
            let config = atelier_conversation::Config {
                metrics_addr: None,
                ..conversation_config.clone()
            };
            more_conversations.push(spawn_killable_server(|listener, shutdown| {
                atelier_conversation::run(config, listener, shutdown)
            })?);
        }
        let conversation = spawn_server(|listener, shutdown| {
            atelier_conversation::run(conversation_config, listener, shutdown)
        })
        .await?;
        let conversation_upstream = ServiceInstances {
            urls: std::iter::once(conversation.url())
                .chain(more_conversations.iter().map(KillableServer::url))
                .collect(),
        };
        let images = ImagesDir(
            std::env::temp_dir().join(format!("atelier-mesh-images-{}", uuid::Uuid::now_v7())),
        );
        // Bound here, so the mesh knows where images and the web client are served.
        let edge_http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let edge_http = edge_http_listener.local_addr()?;
        let edge_config = atelier_edge::Config {
            mesh: MeshConfig {
                service_token: ServiceToken::new(&service_token),
                nats: NatsConfig::local(&nats.url, &nats.prefix),
                conversation: conversation_upstream.clone(),
            },
            jwt: JwtVerifier::hs256(jwt_secret.as_bytes()),
            cors_origins: vec![],
            rate_limit: options.rate_limit,
            auth_failure_limit: atelier_edge::config::DEFAULT_AUTH_FAILURE_LIMIT,
            watch: options.watch.clone(),
            http: atelier_edge::config::HttpConfig {
                addr: edge_http,
                web_dir: options.web_dir.clone(),
                ..Default::default()
            },
            images: atelier_edge::config::ImagesConfig {
                storage: atelier_images::Storage::Local(images.0.clone()),
                url_secret: atelier_runtime::config::Secret::new(&image_url_secret),
                ..Default::default()
            },
            metrics_addr: metrics_of("edge"),
        };
        let mut more_edges = Vec::new();
        for _ in 1..options.replicas {
            let config = atelier_edge::Config {
                metrics_addr: None,
                ..edge_config.clone()
            };
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            more_edges.push(
                spawn_server(|listener, shutdown| {
                    atelier_edge::serve(config, listener, http, shutdown)
                })
                .await?,
            );
        }
        let edge = spawn_server(|listener, shutdown| {
            atelier_edge::serve(edge_config, listener, edge_http_listener, shutdown)
        })
        .await?;
        let mut replicas = Vec::new();
        let token = || ServiceToken::new(&service_token);
        let llm = options.llm_url.as_deref().map(atelier_llm::LlmConfig::new);
        let intent_config = atelier_intent::Config {
            service_token: token(),
            llm: llm.clone(),
            metrics_addr: metrics_of("intent"),
            ..atelier_intent::Config::default()
        };
        let mut intents = ServiceInstances { urls: Vec::new() };
        for _ in 1..options.replicas {
            let config = atelier_intent::Config {
                metrics_addr: None,
                ..intent_config.clone()
            };
            let replica =
                spawn_server(|listener, shutdown| atelier_intent::run(config, listener, shutdown))
                    .await?;
            intents.urls.push(replica.url());
            replicas.push(replica);
        }
        let intent = spawn_server(|listener, shutdown| {
            atelier_intent::run(intent_config, listener, shutdown)
        })
        .await?;
        intents.urls.push(intent.url());
        let enhancement_config = atelier_enhancement::Config {
            service_token: token(),
            llm,
            metrics_addr: metrics_of("enhancement"),
            ..atelier_enhancement::Config::default()
        };
        let mut enhancements = ServiceInstances { urls: Vec::new() };
        for _ in 1..options.replicas {
            let config = atelier_enhancement::Config {
                metrics_addr: None,
                ..enhancement_config.clone()
            };
            let replica = spawn_server(|listener, shutdown| {
                atelier_enhancement::run(config, listener, shutdown)
            })
            .await?;
            enhancements.urls.push(replica.url());
            replicas.push(replica);
        }
        let enhancement = spawn_server(|listener, shutdown| {
            atelier_enhancement::run(enhancement_config, listener, shutdown)
        })
        .await?;
        enhancements.urls.push(enhancement.url());
        let title_config = atelier_title::Config {
            mesh: MeshConfig {
                service_token: token(),
                nats: NatsConfig::local(&nats.url, &nats.prefix),
                conversation: conversation_upstream.clone(),
            },
            metrics_addr: metrics_of("title"),
            ..atelier_title::Config::default()
        };
        for _ in 1..options.replicas {
            let config = atelier_title::Config {
                metrics_addr: None,
                ..title_config.clone()
            };
            replicas.push(
                spawn_server(|listener, shutdown| atelier_title::run(config, listener, shutdown))
                    .await?,
            );
        }
        let title =
            spawn_server(|listener, shutdown| atelier_title::run(title_config, listener, shutdown))
                .await?;
        let generation_config = atelier_generation::Config {
            mesh: MeshConfig {
                service_token: token(),
                nats: NatsConfig::local(&nats.url, &nats.prefix),
                conversation: conversation_upstream.clone(),
            },
            intent: intents,
            enhancement: enhancements,
            storage: atelier_images::Storage::Local(images.0.clone()),
            providers: atelier_generation::providers::ProvidersConfig {
                automatic1111_url: options.automatic1111_url.clone(),
                progress_interval: Duration::from_millis(100),
                ..Default::default()
            },
            metrics_addr: metrics_of("generation"),
            ..atelier_generation::Config::default()
        };
        let mut workers = vec![intent, enhancement, title];
        if options.run_generation {
            for _ in 1..options.replicas {
                let config = atelier_generation::Config {
                    metrics_addr: None,
                    ..generation_config.clone()
                };
                replicas.push(
                    spawn_server(|listener, shutdown| {
                        atelier_generation::run(config, listener, shutdown)
                    })
                    .await?,
                );
            }
            workers.push(
                spawn_server(|listener, shutdown| {
                    atelier_generation::run(generation_config, listener, shutdown)
                })
                .await?,
            );
        }
        Ok(Self {
            edge,
            edge_http,
            conversation,
            more_conversations,
            workers,
            more_edges,
            replicas,
            db,
            nats,
            images,
            jwt_secret,
            image_url_secret,
            metrics,
        })
    }

    /// A new HTTP/2 connection to the edge, as a separate client would open.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.edge.url())?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    /// The store the generation worker writes images to.
    pub fn images(&self) -> anyhow::Result<atelier_images::ImageStore> {
        atelier_images::ImageStore::local(&self.images.0)
    }

    /// A valid `authorization` value for `user`.
    pub fn bearer(&self, user: &str) -> anyhow::Result<String> {
        Ok(format!(
            "Bearer {}",
            mint_hs256(self.jwt_secret.as_bytes(), user, 3600)?
        ))
    }
}

/// A client's WatchEvents stream, read as a client reads it: heartbeats skipped, the
/// cursor kept.
pub struct Watcher {
    stream: tonic::Streaming<atelier_proto::v1::WatchEventsResponse>,
    /// The last cursor received (heartbeats included).
    pub cursor: Option<u64>,
}

impl Watcher {
    /// Opens a stream for the bearer's user on `channel`, live or after `resume_after`.
    pub async fn open(
        channel: Channel,
        bearer: &str,
        resume_after: Option<u64>,
    ) -> anyhow::Result<Self> {
        let request = authorized(
            atelier_proto::v1::WatchEventsRequest {
                resume_after,
                conversation_id: String::new(),
            },
            bearer,
        )?;
        let stream = atelier_proto::v1::chat_service_client::ChatServiceClient::new(channel)
            .watch_events(request)
            .await?
            .into_inner();
        Ok(Self {
            stream,
            cursor: resume_after,
        })
    }

    /// The next event that is not a heartbeat, within `wait`.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<atelier_proto::v1::Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let response = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .map_err(|_| anyhow::anyhow!("no event within {wait:?}"))??
                .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            self.cursor = Some(response.cursor);
            let event = response
                .event
                .ok_or_else(|| anyhow::anyhow!("a response without an event"))?;
            if !matches!(
                event.payload,
                Some(atelier_proto::v1::event::Payload::Heartbeat(_))
            ) {
                return Ok(event);
            }
        }
    }
}

/// The name of an event's payload, e.g. `generation_completed`.
pub fn kind(event: &atelier_proto::v1::Event) -> &'static str {
    use atelier_proto::v1::event::Payload;
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

/// Wraps `message` in a request carrying `bearer` as its authorization.
pub fn authorized<T>(message: T, bearer: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse()?);
    Ok(request)
}

/// Creates an untitled conversation for `bearer`'s user through the public API.
pub async fn new_conversation(
    chat: &mut atelier_proto::v1::chat_service_client::ChatServiceClient<Channel>,
    bearer: &str,
) -> anyhow::Result<atelier_proto::v1::Conversation> {
    chat.create_conversation(authorized(
        atelier_proto::v1::CreateConversationRequest::default(),
        bearer,
    )?)
    .await?
    .into_inner()
    .conversation
    .ok_or_else(|| anyhow::anyhow!("CreateConversation answered without a conversation"))
}

/// Sends `prompt` into the conversation as `bearer`'s user, with default settings, and
/// returns the message SendMessage answered with.
pub async fn send_prompt(
    chat: &mut atelier_proto::v1::chat_service_client::ChatServiceClient<Channel>,
    bearer: &str,
    conversation_id: &str,
    prompt: &str,
) -> anyhow::Result<atelier_proto::v1::Message> {
    chat.send_message(authorized(
        atelier_proto::v1::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            prompt: prompt.to_owned(),
            ..Default::default()
        },
        bearer,
    )?)
    .await?
    .into_inner()
    .message
    .ok_or_else(|| anyhow::anyhow!("SendMessage answered without a message"))
}
