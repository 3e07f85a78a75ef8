//! The edge's settings, from the environment (see the README's table).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use atelier_runtime::config::{
    ConfigError, Environment, Secret, list_or, optional_var, positive_var, secret, var_or,
};
use atelier_runtime::mesh::MeshConfig;

use crate::auth::{JwksConfig, JwtVerifier};
use crate::rate_limit::RateLimit;

#[derive(Clone)]
pub struct Config {
    /// The service credential, NATS (where WatchEvents reads the users' events) and the
    /// conversation service's instances.
    pub mesh: MeshConfig,
    pub jwt: JwtVerifier,
    /// Browser origins allowed to call over grpc-web; no other origin gets CORS headers
    /// (but the edge's own web origin, [`HttpConfig::public_url`], always does).
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimit,
    /// Failed authentications allowed per peer address: past them, every call from the
    /// address is refused until its bucket refills (see `gatekeeper.rs`).
    pub auth_failure_limit: RateLimit,
    pub watch: WatchConfig,
    pub http: HttpConfig,
    pub images: ImagesConfig,
    /// Where Prometheus scrapes `/metrics`; `None` serves no metrics.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How WatchEvents streams behave.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// A heartbeat goes out on a stream that sent nothing for this long, so proxies keep
    /// it open and the client knows it is alive.
    pub heartbeat: Duration,
    /// Events waiting for one slow stream; one more ends that stream (it resumes from its
    /// cursor) rather than slowing the others or growing memory.
    pub buffer: usize,
    /// Streams one user may have open on this edge; one more is refused. Each holds a
    /// queue of `buffer` events, so this bounds what one user (or one leaking client)
    /// costs the edge.
    pub max_streams_per_user: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            buffer: 256,
            max_streams_per_user: 32,
        }
    }
}

/// The edge's plain HTTP port: signed image URLs (local storage), the web client, and
/// the `/config.json` the web client starts from.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// The root clients reach the HTTP port at (image URLs start with it); `None` means
    /// `http://<the bound address>`.
    pub public_url: Option<String>,
    /// The root clients reach the gRPC port at, told to the web client; `None` means
    /// `http://<the bound address>`.
    pub public_grpc_url: Option<String>,
    /// The built web client (`web/dist`), served at `/`; `None` serves no page.
    pub web_dir: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 50080)),
            public_url: None,
            public_grpc_url: None,
            web_dir: None,
        }
    }
}

/// Where images are and how their URLs are signed.
#[derive(Clone)]
pub struct ImagesConfig {
    pub storage: atelier_images::Storage,
    /// Signs the URLs of a local store (HMAC-SHA256); unused with S3, which presigns.
    pub url_secret: Secret,
    /// How long a URL works, at least.
    pub url_lifetime: Duration,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            storage: atelier_images::Storage::default(),
            url_secret: Secret::new(DEFAULT_IMAGE_URL_SECRET),
            url_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The HS256 secret of development mode (`ATELIER_ENV=development`): public, so refused
/// anywhere else.
pub const DEFAULT_JWT_SECRET: &str = "atelier-local-jwt-secret";
pub const DEFAULT_CORS_ORIGINS: &[&str] = &["http://localhost:5173", "http://127.0.0.1:5173"];
/// The image URL signing key of development mode: public, so refused anywhere else. Every
/// edge replica must share the real one.
pub const DEFAULT_IMAGE_URL_SECRET: &str = "atelier-local-image-url-secret";
/// 20 failed authentications per address at once, then one per second.
pub const DEFAULT_AUTH_FAILURE_LIMIT: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 20,
    idle_eviction: Duration::from_secs(20),
};

impl Default for Config {
    /// The local mesh: every service on its default loopback port, the development secrets.
    fn default() -> Self {
        Self {
            mesh: MeshConfig::default(),
            jwt: JwtVerifier::hs256(DEFAULT_JWT_SECRET.as_bytes()),
            cors_origins: DEFAULT_CORS_ORIGINS
                .iter()
                .map(|origin| (*origin).to_owned())
                .collect(),
            rate_limit: RateLimit {
                per_second: 20.0,
                burst: 40,
                idle_eviction: Duration::from_secs(600),
            },
            auth_failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
            watch: WatchConfig::default(),
            http: HttpConfig::default(),
            images: ImagesConfig::default(),
            metrics_addr: None,
        }
    }
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let environment = Environment::from_env()?;
        // One key source: an identity provider's key set, a static RS256 key, or, when
        // neither is set, the HS256 secret (only then is that secret required).
        let jwks = JwksConfig::from_env()?;
        let rs256_key_file = optional_var::<String>("ATELIER_JWT_RS256_PUBLIC_KEY_FILE")?;
        let jwt = match (jwks, rs256_key_file) {
            (Some(jwks), _) => JwtVerifier::jwks(jwks),
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|err| {
                    ConfigError::new("ATELIER_JWT_RS256_PUBLIC_KEY_FILE", &path, err)
                })?;
                JwtVerifier::rs256(&pem).map_err(|err| {
                    ConfigError::new("ATELIER_JWT_RS256_PUBLIC_KEY_FILE", &path, err)
                })?
            }
            (None, None) => JwtVerifier::hs256(
                secret("ATELIER_JWT_HS256_SECRET", DEFAULT_JWT_SECRET, environment)?
                    .expose()
                    .as_bytes(),
            ),
        };
        let jwt = jwt
            .with_issuer(optional_var("ATELIER_JWT_ISSUER")?)
            .with_audience(optional_var("ATELIER_JWT_AUDIENCE")?)
            .with_max_age(jwt_max_age_from_env()?);
        let per_second: f64 = var_or("ATELIER_RATE_LIMIT_PER_SECOND", 20.0)?;
        let burst: u32 = var_or("ATELIER_RATE_LIMIT_BURST", 40)?;
        if !(per_second > 0.0 && burst > 0) {
            Err(ConfigError::new(
                "ATELIER_RATE_LIMIT_PER_SECOND",
                per_second.to_string(),
                "the rate and ATELIER_RATE_LIMIT_BURST must be positive",
            ))?;
        }
        let http_addr = var_or("ATELIER_EDGE_HTTP_ADDR", HttpConfig::default().addr)?;
        environment.check_listen("ATELIER_EDGE_HTTP_ADDR", http_addr)?;
        let storage = atelier_images::Storage::from_env()?;
        Ok(Self {
            metrics_addr: environment.metrics_addr()?,
            mesh: MeshConfig::from_env(environment)?,
            jwt,
            cors_origins: list_or("ATELIER_CORS_ORIGINS", DEFAULT_CORS_ORIGINS)?,
            rate_limit: RateLimit {
                per_second,
                burst,
                idle_eviction: Duration::from_secs(600),
            },
            auth_failure_limit: auth_failure_limit_from_env()?,
            watch: WatchConfig {
                heartbeat: Duration::from_millis(positive_var(
                    "ATELIER_WATCH_HEARTBEAT_MS",
                    15_000,
                )?),
                buffer: usize::try_from(positive_var("ATELIER_WATCH_BUFFER", 256)?)
                    .unwrap_or(usize::MAX),
                max_streams_per_user: usize::try_from(positive_var(
                    "ATELIER_WATCH_MAX_STREAMS_PER_USER",
                    32,
                )?)
                .unwrap_or(usize::MAX),
            },
            http: HttpConfig {
                addr: http_addr,
                public_url: optional_var("ATELIER_EDGE_PUBLIC_HTTP_URL")?,
                public_grpc_url: optional_var("ATELIER_EDGE_PUBLIC_GRPC_URL")?,
                web_dir: optional_var::<String>("ATELIER_WEB_DIR")?.map(PathBuf::from),
            },
            images: ImagesConfig {
                url_secret: match &storage {
                    // Presigned by the bucket: the edge signs nothing itself.
                    atelier_images::Storage::S3FromEnv => Secret::new(""),
                    atelier_images::Storage::Local(_) => secret(
                        "ATELIER_IMAGE_URL_SECRET",
                        DEFAULT_IMAGE_URL_SECRET,
                        environment,
                    )?,
                },
                storage,
                url_lifetime: Duration::from_secs(positive_var(
                    "ATELIER_IMAGE_URL_TTL_SECONDS",
                    3600,
                )?),
            },
        })
    }
}

/// `ATELIER_AUTH_FAILURE_LIMIT_PER_SECOND` and `ATELIER_AUTH_FAILURE_LIMIT_BURST`.
fn auth_failure_limit_from_env() -> Result<RateLimit, ConfigError> {
    let per_second: f64 = var_or(
        "ATELIER_AUTH_FAILURE_LIMIT_PER_SECOND",
        DEFAULT_AUTH_FAILURE_LIMIT.per_second,
    )?;
    let burst: u32 = var_or(
        "ATELIER_AUTH_FAILURE_LIMIT_BURST",
        DEFAULT_AUTH_FAILURE_LIMIT.burst,
    )?;
    if !(per_second.is_finite() && per_second > 0.0 && burst > 0) {
        return Err(ConfigError::new(
            "ATELIER_AUTH_FAILURE_LIMIT_PER_SECOND",
            per_second.to_string(),
            "the rate and ATELIER_AUTH_FAILURE_LIMIT_BURST must be positive",
        ));
    }
    Ok(RateLimit::refilling(per_second, burst))
}

/// `ATELIER_JWT_MAX_AGE_SECS`: unset means no limit on a token's age.
fn jwt_max_age_from_env() -> Result<Option<Duration>, ConfigError> {
    const NAME: &str = "ATELIER_JWT_MAX_AGE_SECS";
    match optional_var::<u64>(NAME)? {
        Some(0) => Err(ConfigError::new(NAME, "0", "must be positive")),
        max_age => Ok(max_age.map(Duration::from_secs)),
    }
}
