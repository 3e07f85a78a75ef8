//! What every Atelier service process shares, and nothing more: typed config from the
//! environment, telemetry start-up, the shutdown signal, the gRPC server frame (health,
//! reflection, tracing layer), the metadata an internal call carries and the one rule for
//! which HTTP failures of outside APIs are worth retrying.
//!
//! Service crates depend on this so that each `main.rs` stays a few plain steps and each
//! `run(config, listener, shutdown)` builds its server the same way.

pub mod config;
pub mod grpc;
pub mod http_retry;
pub mod internal_call;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod process;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod upstream;
