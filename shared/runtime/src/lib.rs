//! What every Atelier service process shares, and nothing more: typed config from the
//! environment, telemetry start-up, the shutdown signal, the gRPC server frame (health,
//! reflection, tracing layer) and the metadata an internal call carries.
//!
//! Service crates depend on this so that each `main.rs` stays a few plain steps and each
//! `run(config, listener, shutdown)` builds its server the same way.

pub mod config;
pub mod grpc;
pub mod internal_call;
pub mod metrics;
pub mod process;
pub mod shutdown;
pub mod telemetry;
