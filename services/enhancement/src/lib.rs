//! The enhancement service: EnhancePrompt: a better prompt for the image model, from an LLM with a deadline, a cache and a deterministic fallback.
//!
//! Its pipeline work arrives with the background-pipeline capability (issue 3). Until then
//! the process is a full member of the mesh frame: it parses its config, serves gRPC
//! health and reflection, and drains on SIGTERM, so deploy/, probes and the local run
//! script treat it like every other service.

use std::future::Future;

use tokio::net::TcpListener;

/// The enhancement service's settings; none are needed before its pipeline work exists.
#[derive(Clone, Debug, Default)]
pub struct Config {}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {})
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    _config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    atelier_runtime::grpc::serve_frame(listener, shutdown).await
}
