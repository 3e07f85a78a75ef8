//! The public edge in front of a real conversation service and PostgreSQL: JWT checks
//! (with a shared secret, and with a local identity provider whose keys rotate), the
//! per-user rate limit and the per-address limit of failed authentications, grpc-web over
//! HTTP/1.1 with CORS, reflection and health.

use std::time::Duration;

use atelier_conversation::catalog::Catalog;
use atelier_edge::auth::{JwtVerifier, mint_hs256};
use atelier_edge::rate_limit::RateLimit;
use atelier_proto::error_reason;
use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_runtime::internal_call::ServiceToken;
use atelier_runtime::mesh::{MeshConfig, NatsConfig, ServiceInstances};
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
    conversation: RunningServer,
    edge: RunningServer,
    channel: Channel,
}

impl Mesh {
    async fn start(rate_limit: RateLimit) -> Self {
        Self::start_with(rate_limit, |_| {}).await
    }

    /// The mesh, with `configure` applied to the edge's configuration last.
    async fn start_with(
        rate_limit: RateLimit,
        configure: impl FnOnce(&mut atelier_edge::Config),
    ) -> Self {
        atelier_testkit::init_logging();
        let db = TestDatabase::create().await.expect("database");
        let nats = TestNats::new();
        let images = ImagesDir::new();
        let conversation_config = atelier_conversation::Config {
            database: db.options(),
            max_connections: 8,
            run_migrations: true,
            service_token: ServiceToken::new(SERVICE_TOKEN),
            nats: NatsConfig::local(&nats.url, &nats.prefix),
            starting_credits: 100,
            max_generations_per_conversation: 100,
            catalog: Catalog::embedded(),
            sweep_interval: Duration::from_millis(500),
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
        let mut edge_config = atelier_edge::Config {
            mesh: MeshConfig {
                service_token: ServiceToken::new(SERVICE_TOKEN),
                nats: NatsConfig::local(&nats.url, &nats.prefix),
                conversation: ServiceInstances::at(&conversation.url()),
            },
            jwt: JwtVerifier::hs256(JWT_SECRET),
            cors_origins: vec![ALLOWED_ORIGIN.to_owned()],
            rate_limit,
            http: any_port(),
            images: images_in(&images),
            ..atelier_edge::Config::default()
        };
        configure(&mut edge_config);
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
            conversation,
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

    // The models a client can offer, with the price SendMessage charged.
    let models = client
        .list_models(with_token(proto::ListModelsRequest {}, &token))
        .await
        .expect("models")
        .into_inner();
    let default = models
        .models
        .iter()
        .find(|model| model.is_default)
        .expect("a default model");
    assert_eq!(
        message.settings.as_ref().expect("settings").model,
        default.name
    );
    assert_eq!(message.cost, default.default_image_price);
    assert!(models.models.iter().any(|model| model.name == "sdxl"));
    assert_eq!(models.max_images_per_message, 4);

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
async fn two_authorization_values_are_unauthenticated() {
    let mesh = Mesh::start(generous()).await;
    let mut client = mesh.client();
    let alice = token_for("alice");
    let bob = token_for("bob");
    for (case, second) in [("another user's", &bob), ("the same", &alice)] {
        let mut request = with_token(proto::GetBalanceRequest {}, &alice);
        request.metadata_mut().append(
            "authorization",
            AsciiMetadataValue::try_from(format!("Bearer {second}")).expect("ascii"),
        );
        let status = client.get_balance(request).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(status.message(), "send exactly one authorization header");
    }
    client
        .get_balance(with_token(proto::GetBalanceRequest {}, &alice))
        .await
        .expect("one token is fine");
}

#[tokio::test]
async fn a_flood_of_bad_tokens_from_one_address_is_limited_before_verification() {
    // Five failures per address, refilled too slowly to matter during the test.
    let mesh = Mesh::start_with(generous(), |config| {
        config.auth_failure_limit = RateLimit::refilling(0.01, 5);
    })
    .await;
    let mut client = mesh.client();
    let alice = token_for("alice");
    // Successful calls do not count.
    for _ in 0..10 {
        client
            .get_balance(with_token(proto::GetBalanceRequest {}, &alice))
            .await
            .expect("alice");
    }
    let forged =
        mint_hs256(b"an-attackers-guess-at-the-32-byte-secret", "alice", 600).expect("mint");
    for call in 1..=5 {
        let status = client
            .get_balance(with_token(proto::GetBalanceRequest {}, &forged))
            .await
            .expect_err("forged");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "call {call}: {status:?}"
        );
    }
    // The sixth bad call, and every one after, is refused without being verified; so is a
    // good one from the same address (in tests, every caller is 127.0.0.1).
    for (case, token) in std::iter::repeat_n(("forged", forged.as_str()), 100)
        .chain([("valid", alice.as_str()), ("garbage", "not.a.jwt")])
    {
        let status = client
            .get_balance(with_token(proto::GetBalanceRequest {}, token))
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::ResourceExhausted, "{case}: {status:?}");
        assert_eq!(
            status.get_details_error_info().map(|info| info.reason),
            Some(error_reason::AUTH_RATE_LIMITED.to_owned()),
            "{case}"
        );
        let wait = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .expect("retry delay");
        assert!(wait > Duration::from_secs(60), "{case}: {wait:?}");
    }
}

/// A local identity provider's JWKS endpoint whose keys can be swapped.
#[derive(Clone, Default)]
struct KeySetEndpoint {
    document: std::sync::Arc<std::sync::Mutex<serde_json::Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl wiremock::Respond for KeySetEndpoint {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let document = self.document.lock().expect("lock").clone();
        wiremock::ResponseTemplate::new(200)
            .insert_header("cache-control", "public, max-age=3600")
            .set_body_json(document)
    }
}

impl KeySetEndpoint {
    /// Publishes these RSA keys, each as (kid, private key PEM).
    fn publish(&self, keys: &[(&str, &[u8])]) {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, pem)| {
                let private = jsonwebtoken::EncodingKey::from_rsa_pem(pem).expect("a key");
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
                    &private,
                    jsonwebtoken::Algorithm::RS256,
                )
                .expect("a JWK");
                jwk.common.key_id = Some((*kid).to_owned());
                serde_json::to_value(jwk).expect("json")
            })
            .collect();
        *self.document.lock().expect("lock") = serde_json::json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

const KEY_A: &[u8] = include_bytes!("fixtures/rs256-test-private.pem");
const KEY_B: &[u8] = include_bytes!("fixtures/rs256-test-b-private.pem");
const ISSUER: &str = "https://idp.atelier.test/realms/atelier";
const AUDIENCE: &str = "atelier-api";

/// An RS256 token for `user` from the test identity provider, signed by `pem` as `kid`.
fn idp_token(user: &str, kid: &str, pem: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = serde_json::json!({
        "sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem).expect("a key"),
    )
    .expect("sign")
}

#[tokio::test]
async fn identity_provider_tokens_verify_across_a_key_rotation_and_an_outage() {
    let endpoint = KeySetEndpoint::default();
    endpoint.publish(&[("key-a", KEY_A)]);
    // Not from wiremock's pool, so dropping it closes the port: the provider is down.
    let provider = wiremock::MockServer::builder().start().await;
    wiremock::Mock::given(wiremock::matchers::path("/protocol/openid-connect/certs"))
        .respond_with(endpoint.clone())
        .mount(&provider)
        .await;
    let mut jwks = atelier_edge::auth::JwksConfig::new(&format!(
        "{}/protocol/openid-connect/certs",
        provider.uri()
    ))
    .expect("a loopback URL");
    jwks.unknown_key_interval = Duration::from_millis(300);
    jwks.fetch_timeout = Duration::from_secs(2);
    let mesh = Mesh::start_with(generous(), |config| {
        config.jwt = JwtVerifier::jwks(jwks)
            .with_issuer(Some(ISSUER.to_owned()))
            .with_audience(Some(AUDIENCE.to_owned()))
            .with_max_age(Some(Duration::from_secs(3600)));
    })
    .await;
    let mut client = mesh.client();
    let balance = |token: String| with_token(proto::GetBalanceRequest {}, &token);

    client
        .get_balance(balance(idp_token("alice", "key-a", KEY_A)))
        .await
        .expect("a token of the published key");
    // The shared secret is not a key of the provider's set.
    let status = client
        .get_balance(balance(token_for("alice")))
        .await
        .expect_err("HS256");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .get_balance(balance(idp_token("alice", "key-b", KEY_B)))
        .await
        .expect_err("not published yet");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Rotation: key B replaces key A.
    endpoint.publish(&[("key-b", KEY_B)]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    client
        .get_balance(balance(idp_token("bob", "key-b", KEY_B)))
        .await
        .expect("the new key after the refresh");
    let status = client
        .get_balance(balance(idp_token("alice", "key-a", KEY_A)))
        .await
        .expect_err("the retired key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let fetched = endpoint.fetches();
    assert!(fetched <= 3, "{fetched} fetches");

    // The provider goes down: the cached key still works, an unknown one is refused as
    // UNAUTHENTICATED, not INTERNAL.
    drop(provider);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let status = client
        .get_balance(balance(idp_token("carol", "key-c", KEY_A)))
        .await
        .expect_err("unknown key while the provider is down");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    client
        .get_balance(balance(idp_token("bob", "key-b", KEY_B)))
        .await
        .expect("the cached key while the provider is down");
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
    let metrics = atelier_testkit::free_local_addr();
    let mesh = Mesh::start_with(generous(), |config| config.metrics_addr = Some(metrics)).await;
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
    // Counted with the status of its trailers frame, as a gRPC call's would be.
    let page = atelier_testkit::scrape_metrics(metrics).await;
    let series = "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.ChatService/GetBalance\",code=\"OK\"} 1\n";
    assert!(page.contains(series), "{series} in {page}");

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

/// One reflection (v1) request on its own stream: the answer, or the status it ended with.
async fn reflect(
    channel: &Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Result<tonic_reflection::pb::v1::server_reflection_response::MessageResponse, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let response = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner()
        .next()
        .await
        .expect("one answer")?;
    Ok(response.message_response.expect("an answer"))
}

/// The same with reflection v1alpha, which grpcurl 1.8 speaks.
async fn reflect_v1alpha(
    channel: &Channel,
    request: tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest,
) -> Result<tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse, tonic::Status>
{
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let response = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner()
        .next()
        .await
        .expect("one answer")?;
    Ok(response.message_response.expect("an answer"))
}

/// The internal symbols the edge must not describe, and a file that declares them.
const INTERNAL_SYMBOLS: [&str; 4] = [
    "atelier.conversation.v1.ConversationService",
    "atelier.conversation.v1.GrantCreditsRequest",
    "atelier.jobs.v1.GenerateJob",
    "atelier.intent.v1.AnalyzeIntentRequest",
];
const INTERNAL_FILE: &str = "atelier/conversation/v1/conversation_service.proto";

#[tokio::test]
async fn reflection_lists_and_describes_only_the_public_api_and_health_reports_serving() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mesh = Mesh::start(generous()).await;
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mesh.channel, MessageRequest::ListServices(String::new()))
            .await
            .expect("list")
    else {
        panic!("not a list");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "atelier.v1.ChatService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );

    // The public API, its well-known types and the error details resolve...
    for symbol in [
        "atelier.v1.ChatService",
        "atelier.v1.WatchEventsRequest",
        "atelier.v1.Event",
        "google.protobuf.Timestamp",
        "google.rpc.ErrorInfo",
        "grpc.health.v1.Health",
    ] {
        let answer = reflect(
            &mesh.channel,
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await;
        assert!(
            matches!(answer, Ok(MessageResponse::FileDescriptorResponse(_))),
            "{symbol}: {answer:?}"
        );
    }
    // ...the internal APIs do not, by symbol or by file name.
    for symbol in INTERNAL_SYMBOLS {
        let status = reflect(
            &mesh.channel,
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await
        .expect_err(symbol);
        assert_eq!(status.code(), Code::NotFound, "{symbol}: {status:?}");
    }
    let status = reflect(
        &mesh.channel,
        MessageRequest::FileByFilename(INTERNAL_FILE.to_owned()),
    )
    .await
    .expect_err("internal file");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Nor does the file that declares the public messages leak an internal import: what
    // ChatService's file needs is public.
    let Ok(MessageResponse::FileDescriptorResponse(files)) = reflect(
        &mesh.channel,
        MessageRequest::FileContainingSymbol("atelier.v1.ChatService".to_owned()),
    )
    .await
    else {
        panic!("ChatService's file");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    assert!(
        file.dependency
            .iter()
            .all(|import| import.starts_with("atelier/v1/") || import.starts_with("google/")),
        "{:?}",
        file.dependency
    );

    // grpcurl 1.8 speaks only v1alpha: it lists the same services and is refused the same
    // symbols.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let MessageResponse::ListServicesResponse(list) =
            reflect_v1alpha(&mesh.channel, MessageRequest::ListServices(String::new()))
                .await
                .expect("v1alpha list")
        else {
            panic!("not a list");
        };
        let mut v1alpha_names: Vec<String> = list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect();
        v1alpha_names.sort();
        assert_eq!(v1alpha_names, names);
        for symbol in INTERNAL_SYMBOLS {
            let status = reflect_v1alpha(
                &mesh.channel,
                MessageRequest::FileContainingSymbol(symbol.to_owned()),
            )
            .await
            .expect_err(symbol);
            assert_eq!(
                status.code(),
                Code::NotFound,
                "v1alpha {symbol}: {status:?}"
            );
        }
        let answer = reflect_v1alpha(
            &mesh.channel,
            MessageRequest::FileContainingSymbol("atelier.v1.WatchEventsRequest".to_owned()),
        )
        .await;
        assert!(
            matches!(answer, Ok(MessageResponse::FileDescriptorResponse(_))),
            "{answer:?}"
        );
    }

    // The conversation service's internal port still describes everything it serves.
    let internal = Channel::from_shared(mesh.conversation.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    for symbol in INTERNAL_SYMBOLS {
        let answer = reflect(
            &internal,
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await;
        assert!(
            matches!(answer, Ok(MessageResponse::FileDescriptorResponse(_))),
            "internal port, {symbol}: {answer:?}"
        );
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
        mesh: MeshConfig {
            service_token: ServiceToken::new(SERVICE_TOKEN),
            conversation: ServiceInstances::at(&url),
            ..MeshConfig::default()
        },
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
    // With an identity provider's keys, the HS256 secret is not needed (it is read first,
    // so its refusal would come before the others').
    assert_secrets_required(
        binary,
        &secrets[..1],
        &[
            ("ATELIER_JWT_JWKS_URL", "https://idp.example/jwks.json"),
            (
                "ATELIER_IMAGE_URL_SECRET",
                &atelier_testkit::random_secret(),
            ),
        ],
    );
    assert_development_warns(binary, "ATELIER_SERVICE_TOKEN", &[]);
}
