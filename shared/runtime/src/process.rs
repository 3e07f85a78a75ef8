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

/// The argument that turns a service binary into its own health probe (see
/// [`health_check`]).
pub const HEALTH_CHECK_ARG: &str = "--health-check";

/// Runs a service process: `load` reads its config, `run` serves on the bound listener
/// until a signal. Returns the process exit code.
///
/// With the single argument `--health-check` the binary does not serve: it asks the
/// server of the same configuration whether it is serving ([`health_check`]), for
/// container health checks in images that hold no other probe.
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
    if std::env::args().nth(1).as_deref() == Some(HEALTH_CHECK_ARG) {
        return health_check(name, default_listen);
    }
    let (config, addr) = match load().and_then(|config| {
        crate::shutdown::set_drain_grace(std::time::Duration::from_secs(config::var_or(
            "ATELIER_DRAIN_GRACE_SECS",
            0,
        )?));
        crate::tls::set(crate::tls::TlsConfig::from_env()?);
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

/// Asks the server at `ATELIER_LISTEN_ADDR` (or `default_listen`; an unspecified address
/// such as `0.0.0.0` is asked on loopback) for `grpc.health.v1.Health/Check` of the whole
/// server, within 3 seconds. Exit code 0 when it answers SERVING, 1 otherwise (down,
/// draining, or no answer), with the reason on stderr. Reads no other setting, so it needs
/// no secret.
pub fn health_check(name: &str, default_listen: &str) -> ExitCode {
    let addr = match listen_addr_unchecked(default_listen) {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("atelier-{name}: bad configuration: {err}");
            return ExitCode::from(config::EXIT_BAD_CONFIG as u8);
        }
    };
    let target = probe_target(addr);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("atelier-{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let asked = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(3), async {
            let channel = probe_endpoint(target)?.connect().await?;
            let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            anyhow::Ok(answer.into_inner().status())
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 3 s"))?
    });
    match asked {
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("atelier-{name} at {target}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("atelier-{name} at {target}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The probe's endpoint: plaintext, or TLS when the server has a certificate
/// (`ATELIER_TLS_CERT_FILE`), verified against `ATELIER_TLS_CA_FILE` as `localhost` (so
/// the certificate must name `localhost` for the probe to pass), presenting this
/// process's certificate for an internal port's mutual TLS.
fn probe_endpoint(target: SocketAddr) -> anyhow::Result<tonic::transport::Endpoint> {
    let tls = crate::tls::TlsConfig::from_env()?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!(
        "{}://{target}",
        if tls.serves_tls() { "https" } else { "http" }
    ))?;
    if !tls.serves_tls() {
        return Ok(endpoint);
    }
    let origin: http::Uri = format!("https://localhost:{}", target.port()).parse()?;
    tls.client(endpoint, &origin)
}

/// `ATELIER_LISTEN_ADDR` without the development-mode loopback rule: the probe only
/// connects.
fn listen_addr_unchecked(default: &str) -> Result<SocketAddr, ConfigError> {
    let fallback = default
        .parse()
        .map_err(|err| ConfigError::new("ATELIER_LISTEN_ADDR", default, err))?;
    config::var_or("ATELIER_LISTEN_ADDR", fallback)
}

/// Where a probe reaches a server listening on `addr`: its loopback when it listens on
/// every address.
fn probe_target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_asks_a_server_on_every_address_on_loopback() {
        let target = |addr: &str| probe_target(addr.parse().expect("addr")).to_string();
        assert_eq!(target("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(target("[::]:50052"), "[::1]:50052");
        assert_eq!(target("10.1.2.3:50053"), "10.1.2.3:50053");
    }
}
