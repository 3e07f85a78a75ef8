//! The process-level stop signal, and how long a stopping server keeps answering.
//!
//! Libraries take any `Future<Output = ()>` as their shutdown trigger (tests use a oneshot);
//! binaries pass [`signal`], which resolves on SIGTERM or SIGINT.
//!
//! On the signal a server first reports NOT_SERVING, and keeps accepting calls for the
//! drain grace ([`drain_grace`], `ATELIER_DRAIN_GRACE_SECS`, 0 by default) so that load
//! balancers and health probes see it leave before its port closes; then it stops
//! accepting and drains what is in flight.

use std::sync::OnceLock;
use std::time::Duration;

static DRAIN_GRACE: OnceLock<Duration> = OnceLock::new();

/// Sets the process's drain grace; the first call wins. `service_main` calls it from
/// `ATELIER_DRAIN_GRACE_SECS`; a library used in-process (tests) keeps 0.
pub fn set_drain_grace(grace: Duration) {
    let _ = DRAIN_GRACE.set(grace);
}

/// How long a stopping server reports NOT_SERVING while still accepting calls.
pub fn drain_grace() -> Duration {
    DRAIN_GRACE.get().copied().unwrap_or_default()
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
