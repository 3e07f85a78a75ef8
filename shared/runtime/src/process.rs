//! The steps of every service's `main`, in order: parse config without binding anything
//! (exit 64 on a bad config), start telemetry, bind, serve until SIGTERM/SIGINT, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;

use crate::config::{self, ConfigError};

/// The shutdown trigger handed to a service's `run`.
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a service listens: `ATELIER_LISTEN_ADDR`, or `default` (a loopback port per
/// service so the local mesh needs no settings); loopback only in development.
pub fn listen_addr(default: &str) -> Result<SocketAddr, ConfigError> {
    let fallback = default
        .parse()
        .map_err(|err| ConfigError::new("ATELIER_LISTEN_ADDR", default, err))?;
    let addr = config::var_or("ATELIER_LISTEN_ADDR", fallback)?;
    config::Environment::from_env()?.check_listen("ATELIER_LISTEN_ADDR", addr)?;
    Ok(addr)
}

/// Runs a service process: `load` reads its config, `run` serves on the bound listener
/// until a signal. Returns the process exit code.
pub fn service_main<C, Run, Served>(
    name: &'static str,
    default_listen: &str,
    load: impl FnOnce() -> anyhow::Result<C>,
    run: Run,
) -> ExitCode
where
    Run: FnOnce(C, tokio::net::TcpListener, ShutdownSignal) -> Served,
    Served: Future<Output = anyhow::Result<()>>,
{
    let (config, addr) = match load().and_then(|config| {
        crate::shutdown::set_drain_grace(std::time::Duration::from_secs(config::var_or(
            "ATELIER_DRAIN_GRACE_SECS",
            0,
        )?));
        Ok((config, listen_addr(default_listen)?))
    }) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("atelier-{name}: bad configuration: {err:#}");
            return ExitCode::from(config::EXIT_BAD_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("atelier-{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let _telemetry = crate::telemetry::init(name)?;
        if config::Environment::from_env()? == config::Environment::Development {
            tracing::warn!(
                service = name,
                "development mode (ATELIER_ENV=development): built-in secrets allowed, loopback only"
            );
        }
        for warning in config::take_start_warnings() {
            tracing::warn!(service = name, "{warning}");
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
        tracing::info!(service = name, %addr, "listening");
        run(config, listener, Box::pin(crate::shutdown::signal())).await?;
        tracing::info!(service = name, "stopped");
        anyhow::Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("atelier-{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
