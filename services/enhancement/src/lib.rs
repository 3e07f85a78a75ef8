//! The enhancement service: EnhancePrompt turns a user's prompt into a better one for the
//! image model, with the style preset applied, and extends the negative prompt.
//!
//! Why it is its own service: the generation worker asks it for every message, in
//! parallel with intent, and the answer must come within a bounded time and always. So
//! an LLM rewrites the prompt under the LLM client's deadline and circuit breaker, its
//! answers are cached, and whenever it is missing, slow or failing, the deterministic
//! template ([`fallback`]) answers instead: a call fails only on bad input ([`enhance`]
//! has the details).
//!
//! - [`check`]: whether an LLM's rewrite is still the user's picture.
//! - [`config`]: the environment variables; `Config::default()` is fallback-only mode.
//! - [`enhance`]: validation, the LLM prompt and its schema, the fallback.
//! - [`fallback`]: the template, also applied to every LLM answer.
//! - answers are counted by source and LLM fallbacks by reason
//!   ([`atelier_llm::answers`]), served on `/metrics` with the RPCs and the LLM's calls.
//! - `service`: the gRPC trait; `error`: the one mapping to `tonic::Status`.
//!
//! The API is internal: it sits behind the service credential, like the conversation
//! service's.

pub mod check;
pub mod config;
pub mod enhance;
mod error;
pub mod fallback;
mod service;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use atelier_llm::LlmClient;
use atelier_llm::answers::AnswerMetrics;
use atelier_proto::ENHANCEMENT_SERVICE_NAME;
use atelier_proto::enhancement::v1::enhancement_service_server::EnhancementServiceServer;
use atelier_runtime::internal_call::{RequireServiceToken, ServiceToken};
use atelier_runtime::metrics::{Registry, RpcMetrics};
use atelier_runtime::{grpc, load};
use moka::future::Cache;
use tokio::net::TcpListener;
use tonic::transport::Server;

pub use crate::config::Config;

/// What every EnhancePrompt call shares. Built once per process; hold an `Arc` of it to
/// read the metrics while [`serve`] runs.
pub struct State {
    /// `None` in fallback-only mode. One client per process, so its breaker sees every
    /// call.
    pub(crate) llm: Option<LlmClient>,
    pub(crate) cache: Cache<enhance::Input, fallback::Enhanced>,
    pub(crate) metrics: AnswerMetrics,
    /// Every call's latency and status, recorded by the server stack.
    rpc: RpcMetrics,
}

impl State {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let llm = config
            .llm
            .clone()
            .map(LlmClient::new)
            .transpose()
            .context("invalid LLM settings")?;
        let cache = Cache::builder()
            .max_capacity(config.cache_capacity)
            .time_to_live(config.cache_ttl)
            .build();
        Ok(Self {
            llm,
            cache,
            metrics: AnswerMetrics::new(
                "enhancement",
                &enhance::Source::ALL.map(enhance::Source::as_str),
                &enhance::FallbackReason::ALL.map(enhance::FallbackReason::as_str),
            ),
            rpc: RpcMetrics::default(),
        })
    }

    /// The answer counters, for a `/metrics` endpoint.
    pub fn metrics(&self) -> &AnswerMetrics {
        &self.metrics
    }

    /// Registers everything `/metrics` shows: the RPCs, the answers by source, and the
    /// LLM's calls and breaker.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.rpc.register(registry);
        self.metrics.register(registry);
        if let Some(llm) = &self.llm {
            llm.register_metrics(registry);
        }
    }
}

/// Serves the enhancement service on `listener` until `shutdown` resolves, then drains
/// in-flight calls.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(State::new(&config)?);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut registry = atelier_runtime::metrics::registry();
    state.register_metrics(&mut registry);
    atelier_runtime::metrics::serve_if_configured(config.metrics_addr, registry, async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    })
    .await?;
    serve(state, config.service_token, listener, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await
}

/// [`run`] with a state built by the caller, who keeps a handle on it (for the metrics).
pub async fn serve(
    state: Arc<State>,
    service_token: ServiceToken,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, reflection_and_health) = grpc::health_and_reflection(
        atelier_proto::FILE_DESCRIPTOR_SET,
        &[ENHANCEMENT_SERVICE_NAME],
    )?;
    let rpc_metrics = state.rpc.layer();
    let api = EnhancementServiceServer::with_interceptor(
        service::EnhancementApi { state },
        RequireServiceToken(service_token),
    );
    // TLS, and mutual TLS with the mesh's CA, when configured (atelier_runtime::tls).
    atelier_runtime::tls::current()
        .serve(Server::builder(), atelier_runtime::tls::Port::Internal)?
        // Every call's latency and status, refusals and timeouts included: outermost.
        .layer(rpc_metrics)
        // Bounded load (atelier_runtime::load): past MAX_IN_FLIGHT running calls the next
        // is refused at once with UNAVAILABLE, never queued; a stuck call ends after
        // REQUEST_TIMEOUT. Before the rest, so a refusal costs nothing.
        .timeout(load::REQUEST_TIMEOUT)
        .layer(load::ShedLoadLayer::default())
        // Then one span per RPC, joined to the caller's trace.
        .layer(grpc::trace_layer())
        // Health and reflection stay open, for probes and grpcurl; only the API needs
        // the credential.
        .add_routes(reflection_and_health)
        .add_service(api)
        .serve_with_incoming_shutdown(
            grpc::incoming(listener),
            grpc::serve_until(health, vec![ENHANCEMENT_SERVICE_NAME], shutdown),
        )
        .await
        .context("the enhancement server failed")
}
