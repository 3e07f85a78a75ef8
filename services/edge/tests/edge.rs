//! The public edge in front of a real conversation service and PostgreSQL: JWT checks,
//! the per-user rate limit, grpc-web over HTTP/1.1 with CORS, reflection and health.

use std::time::Duration;

use atelier_conversation::catalog::Catalog;
use atelier_edge::auth::{JwtVerifier, mint_hs256};
use atelier_edge::rate_limit::RateLimit;
use atelier_proto::error_reason;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_runtime::internal_call::ServiceToken;
use atelier_testkit::{RunningServer, TestDatabase, TestNats, spawn_server};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const JWT_SECRET: &[u8] = b"edge-test-jwt-secret";
const SERVICE_TOKEN: &str = "edge-test-service-token";
const ALLOWED_ORIGIN: &str = "https://app.atelier.test";

struct Mesh {
    _images: ImagesDir,
    _db: TestDatabase,
    _nats: TestNats,
    _conversation: RunningServer,
    edge: RunningServer,
    channel: Channel,
}

impl Mesh {
    async fn start(rate_limit: RateLimit) -> Self {
        atelier_testkit::init_logging();
        let db = TestDatabase::create().await.expect("database");
        let nats = TestNats::new();
        let images = ImagesDir::new();
        let conversation_config = atelier_conversation::Config {
            database: db.options(),
            max_connections: 8,
            run_migrations: true,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            starting_credits: 100,
            max_generations_per_conversation: 100,
            catalog: Catalog::embedded(),
            nats_url: nats.url.clone(),
            subject_prefix: nats.prefix.clone(),
            sweep_interval: Duration::from_millis(500),
            queue_report_interval: Duration::from_millis(100),
        };
        let conversation = spawn_server(|listener, shutdown| {
            atelier_conversation::run(conversation_config, listener, shutdown)
        })
        .await
        .expect("conversation");
        let edge_config = atelier_edge::Config {
            conversation_url: conversation.url(),
            service_token: ServiceToken::new(SERVICE_TOKEN),
            jwt: JwtVerifier::hs256(JWT_SECRET),
            cors_origins: vec![ALLOWED_ORIGIN.to_owned()],
            rate_limit,
            nats_url: nats.url.clone(),
            subject_prefix: nats.prefix.clone(),
            http: any_port(),
            images: images_in(&images),
            ..atelier_edge::Config::default()
        };
        let edge =
            spawn_server(|listener, shutdown| atelier_edge::run(edge_config, listener, shutdown))
                .await
                .expect("edge");
        let channel = Channel::from_shared(edge.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Self {
            _images: images,
            _db: db,
            _nats: nats,
            _conversation: conversation,
            edge,
            channel,
        }
    }

    fn client(&self) -> ChatServiceClient<Channel> {
        ChatServiceClient::new(self.channel.clone())
    }
}

/// A temporary image directory, removed when dropped.
struct ImagesDir(std::path::PathBuf);

impl ImagesDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("atelier-edge-images-{}", uuid::Uuid::now_v7())))
    }
}

impl Drop for ImagesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn images_in(dir: &ImagesDir) -> atelier_edge::config::ImagesConfig {
    atelier_edge::config::ImagesConfig {
        storage: atelier_images::Storage::Local(dir.0.clone()),
        ..Default::default()
    }
}

/// The HTTP port on any free loopback port.
fn any_port() -> atelier_edge::config::HttpConfig {
    atelier_edge::config::HttpConfig {
        addr: "127.0.0.1:0".parse().expect("an address"),
        ..Default::default()
    }
}

fn generous() -> RateLimit {
    RateLimit {
        per_second: 1000.0,
        burst: 1000,
        idle_eviction: Duration::from_secs(60),
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        AsciiMetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    request
}

fn token_for(user: &str) -> String {
    mint_hs256(JWT_SECRET, user, 600).expect("mint")
}

#[tokio::test]
async fn a_user_creates_a_conversation_and_sends_a_message_through_the_edge() {
    let mesh = Mesh::start(generous()).await;
    let mut client = mesh.client();
    let token = token_for("alice");
    let conversation = client
        .create_conversation(with_token(
            proto::CreateConversationRequest::default(),
            &token,
        ))
        .await
        .expect("create")
        .into_inner()
        .conversation
        .expect("conversation");
    let message = client
        .send_message(with_token(
            proto::SendMessageRequest {
                conversation_id: conversation.id.clone(),
                prompt: "a red fox".into(),
                settings: None,
                client_request_id: String::new(),
            },
            &token,
        ))
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(message.generations.len(), 1);
    let balance = client
        .get_balance(with_token(proto::GetBalanceRequest {}, &token))
        .await
        .expect("balance")
        .into_inner()
        .balance;
    assert_eq!(balance, 100 - message.cost);

    // Statuses keep their details across the edge.
    let status = client
        .send_message(with_token(
            proto::SendMessageRequest {
                conversation_id: conversation.id.clone(),
                prompt: String::new(),
                settings: None,
                client_request_id: String::new(),
            },
            &token,
        ))
        .await
        .expect_err("empty prompt");
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status
        .get_details_bad_request()
        .expect("details")
        .field_violations;
    assert_eq!(violations[0].field, "prompt");

    // WatchEvents' conversation filter is checked like every other id: malformed is
    // INVALID_ARGUMENT naming the field, another user's is NOT_FOUND.
    let watch = |conversation_id: &str, token: &str| {
        with_token(
            proto::WatchEventsRequest {
                resume_after: None,
                conversation_id: conversation_id.to_owned(),
            },
            token,
        )
    };
    let status = client
        .watch_events(watch("not-a-uuid", &token))
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = status
        .get_details_bad_request()
        .expect("details")
        .field_violations;
    assert_eq!(violations[0].field, "conversation_id");
    let status = client
        .watch_events(watch(&conversation.id, &token_for("mallory")))
        .await
        .expect_err("not mallory's");
    assert_eq!(status.code(), Code::NotFound);
    client
        .watch_events(watch(&conversation.id, &token))
        .await
        .expect("alice watches her conversation");
}

#[tokio::test]
async fn missing_expired_forged_and_unsigned_tokens_are_unauthenticated() {
    let mesh = Mesh::start(generous()).await;
    let mut client = mesh.client();
    let expired = mint_hs256(JWT_SECRET, "alice", -3600).expect("mint");
    let wrong_key = mint_hs256(b"someone-elses-secret", "alice", 600).expect("mint");
    let unsigned = {
        use base64::Engine as _;
        let b64 = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"alice","exp":4102444800}"#)
        )
    };

    let status = client
        .get_balance(proto::GetBalanceRequest {})
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "missing: {status:?}");
    for (case, token) in [
        ("expired", expired),
        ("wrongly signed", wrong_key),
        ("alg none", unsigned),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let status = client
            .get_balance(with_token(proto::GetBalanceRequest {}, &token))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
    }
}

#[tokio::test]
async fn the_rate_limit_trips_per_user_and_recovers() {
    // One token a second: however slow this machine is, 50 calls outrun the refill.
    let mesh = Mesh::start(RateLimit {
        per_second: 1.0,
        burst: 3,
        idle_eviction: Duration::from_secs(60),
    })
    .await;
    let mut client = mesh.client();
    let alice = token_for("alice");
    let mut accepted = 0;
    let status = loop {
        match client
            .get_balance(with_token(proto::GetBalanceRequest {}, &alice))
            .await
        {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted < 50, "the rate limit never tripped");
    };
    assert!(accepted >= 3, "the burst of 3 was not honoured: {accepted}");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_error_info().map(|info| info.reason),
        Some(error_reason::RATE_LIMITED.to_owned())
    );
    let wait = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("retry delay");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );

    // Another user is not slowed by Alice.
    client
        .get_balance(with_token(proto::GetBalanceRequest {}, &token_for("bob")))
        .await
        .expect("bob has his own bucket");

    // After the advertised delay Alice may call again.
    tokio::time::sleep(wait).await;
    client
        .get_balance(with_token(proto::GetBalanceRequest {}, &alice))
        .await
        .expect("recovered");
}

/// One grpc-web frame: flag byte, big-endian length, payload.
fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn grpc_web_over_http1_works_for_allowed_origins() {
    let mesh = Mesh::start(generous()).await;
    let http1 = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let url = format!("{}/atelier.v1.ChatService/GetBalance", mesh.edge.url());

    let response = http1
        .post(&url)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", ALLOWED_ORIGIN)
        .header("authorization", format!("Bearer {}", token_for("alice")))
        .body(grpc_web_frame(
            0,
            &proto::GetBalanceRequest {}.encode_to_vec(),
        ))
        .send()
        .await
        .expect("grpc-web call");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(ALLOWED_ORIGIN.as_bytes())
    );
    let body = response.bytes().await.expect("body");
    // A data frame with the message, then a trailer frame with grpc-status: 0.
    assert_eq!(body[0], 0);
    let length = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    let reply = proto::GetBalanceResponse::decode(&body[5..5 + length]).expect("decode");
    assert_eq!(reply.balance, 100);
    let trailers = String::from_utf8_lossy(&body[5 + length + 5..]).to_lowercase();
    assert_eq!(body[5 + length], 0x80);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // A preflight from an allowed origin is answered; any other origin gets no CORS grant.
    let preflight = |origin: &'static str| {
        http1
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .send()
    };
    let allowed = preflight(ALLOWED_ORIGIN).await.expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(ALLOWED_ORIGIN.as_bytes())
    );
    let refused = preflight("https://evil.example").await.expect("preflight");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn reflection_lists_only_the_public_api_and_health_reports_serving() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mesh = Mesh::start(generous()).await;
    let mut reflection = ServerReflectionClient::new(mesh.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected answer: {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"atelier.v1.ChatService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|name| name.contains("conversation")),
        "internal API visible: {names:?}"
    );

    // grpcurl 1.8 speaks only v1alpha: it lists the same services.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(mesh.channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let response = reflection
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("v1alpha reflection")
            .into_inner()
            .next()
            .await
            .expect("one answer")
            .expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected answer: {response:?}");
        };
        let v1alpha_names: Vec<String> = list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect();
        assert_eq!(v1alpha_names, names);
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(mesh.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "atelier.v1.ChatService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn an_unreachable_conversation_service_is_unavailable_not_internal() {
    atelier_testkit::init_logging();
    // A port that was free a moment ago: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let images = ImagesDir::new();
    let edge_config = atelier_edge::Config {
        conversation_url: url,
        service_token: ServiceToken::new(SERVICE_TOKEN),
        jwt: JwtVerifier::hs256(JWT_SECRET),
        cors_origins: vec![],
        rate_limit: generous(),
        http: any_port(),
        images: images_in(&images),
        ..atelier_edge::Config::default()
    };
    let edge =
        spawn_server(|listener, shutdown| atelier_edge::run(edge_config, listener, shutdown))
            .await
            .expect("edge");
    let mut client = ChatServiceClient::connect(edge.url())
        .await
        .expect("connect");
    let status = client
        .get_balance(with_token(proto::GetBalanceRequest {}, &token_for("alice")))
        .await
        .expect_err("nothing behind the edge");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("127.0.0.1"),
        "{}",
        status.message()
    );
}

/// Outside development the service refuses to start without its service credential, its JWT secret and its image URL key, or with a built-in or
/// short one; development mode warns, and listens on loopback only.
#[test]
fn refuses_to_start_unsafely() {
    use atelier_testkit::startup::{
        RequiredSecret, assert_development_is_loopback_only, assert_development_warns,
        assert_secrets_required,
    };
    let binary = env!("CARGO_BIN_EXE_atelier-edge");
    let secrets = [
        RequiredSecret {
            variable: "ATELIER_SERVICE_TOKEN",
            development_value: atelier_runtime::internal_call::DEVELOPMENT_SERVICE_TOKEN,
        },
        RequiredSecret {
            variable: "ATELIER_JWT_HS256_SECRET",
            development_value: atelier_edge::config::DEFAULT_JWT_SECRET,
        },
        RequiredSecret {
            variable: "ATELIER_IMAGE_URL_SECRET",
            development_value: atelier_edge::config::DEFAULT_IMAGE_URL_SECRET,
        },
    ];
    assert_secrets_required(binary, &secrets, &[]);
    assert_development_is_loopback_only(binary, "ATELIER_LISTEN_ADDR", &[]);
    assert_development_is_loopback_only(binary, "ATELIER_EDGE_HTTP_ADDR", &[]);
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}
