//! Start-up checks of a service binary: what it refuses before it listens.
//!
//! Every service reads its secrets before it binds, and refuses a missing, built-in or
//! short one outside development (`atelier_runtime::config::secret`). These helpers run
//! the real binary (`env!("CARGO_BIN_EXE_atelier-<service>")`) with an environment of
//! the test's making and nothing inherited, so a developer's own settings cannot make a
//! refusal pass or fail.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The exit code of a bad configuration (`atelier_runtime::config::EXIT_BAD_CONFIG`).
const EXIT_BAD_CONFIG: i32 = 64;

/// A secret a service needs: its variable and the built-in development value that is
/// refused outside development.
#[derive(Clone, Copy, Debug)]
pub struct RequiredSecret {
    pub variable: &'static str,
    pub development_value: &'static str,
}

/// Runs `binary` with exactly `env` (plus `PATH`) and returns its exit code and stderr,
/// killing it after 30 s.
fn run_with(binary: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let output = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts that `binary` refuses to start, as a bad configuration naming `variable`.
pub fn assert_refused(binary: &str, env: &[(&str, String)], variable: &str, why: &str) {
    let (code, stderr) = run_with(binary, env);
    assert_eq!(
        code,
        Some(EXIT_BAD_CONFIG),
        "{binary} with {why}: expected exit {EXIT_BAD_CONFIG}, stderr: {stderr}"
    );
    assert!(
        stderr.contains(variable),
        "{binary} with {why}: the refusal does not name {variable}: {stderr}"
    );
    let secrets = env
        .iter()
        .filter(|(name, _)| name.ends_with("_SECRET") || name.ends_with("_TOKEN"));
    for (_, value) in secrets {
        if value.len() >= 8 {
            assert!(
                !stderr.contains(value.as_str()),
                "{binary} with {why}: the refusal prints a secret: {stderr}"
            );
        }
    }
}

/// Asserts every start-up refusal of production mode for `secrets`: each one missing, set
/// to its development value, and shorter than 32 bytes, with the others good. `base`
/// is the rest of the environment the service needs to get that far.
pub fn assert_secrets_required(binary: &str, secrets: &[RequiredSecret], base: &[(&str, &str)]) {
    let good: Vec<(&str, String)> = secrets
        .iter()
        .map(|secret| (secret.variable, crate::random_secret()))
        .collect();
    for (index, secret) in secrets.iter().enumerate() {
        let others = || {
            base.iter()
                .map(|(name, value)| (*name, (*value).to_owned()))
                .chain(
                    good.iter()
                        .enumerate()
                        .filter(|(other, _)| *other != index)
                        .map(|(_, pair)| pair.clone()),
                )
                .collect::<Vec<_>>()
        };
        assert_refused(binary, &others(), secret.variable, "the secret missing");
        for (value, why) in [
            (secret.development_value.to_owned(), "the development value"),
            ("0123456789abcdef0123456789abcde".to_owned(), "31 bytes"),
        ] {
            let mut env = others();
            env.push((secret.variable, value));
            assert_refused(binary, &env, secret.variable, why);
        }
    }
}

/// Asserts that development mode refuses to listen on a non-loopback address given in
/// `variable` (e.g. `ATELIER_LISTEN_ADDR`), even with every secret left to its default.
pub fn assert_development_is_loopback_only(binary: &str, variable: &str, base: &[(&str, &str)]) {
    let mut env: Vec<(&str, String)> = base
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    env.push(("ATELIER_ENV", "development".to_owned()));
    env.push((variable, "0.0.0.0:0".to_owned()));
    assert_refused(binary, &env, variable, "development mode on 0.0.0.0");
}

/// Asserts that `binary` in development mode, with its built-in secrets, warns at start-up
/// that it runs in development mode and that `secret` is the built-in one. The process is killed once the warning is seen: it may not
/// get further without PostgreSQL or NATS, and need not.
pub fn assert_development_warns(binary: &str, secret: &str, base: &[(&str, &str)]) {
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(base.iter().copied())
        .env("ATELIER_ENV", "development")
        .env("ATELIER_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let (mut mode, mut named) = (false, false);
    while !(mode && named) {
        match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                mode |= line.contains("development mode");
                named |= line.contains(secret) && line.contains("development");
                seen.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        mode && named,
        "{binary} in development mode: expected warnings about development mode and {secret}, got: {seen:#?}"
    );
}
