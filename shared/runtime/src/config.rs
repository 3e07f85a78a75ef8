//! Reading typed settings from environment variables with local defaults.
//!
//! Every service parses its whole config before it binds a port, so a typo in a variable
//! stops the process with a message naming the variable (and exit code 64), not a
//! half-started mesh.

use std::fmt::Display;
use std::str::FromStr;

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &str, value: impl Into<String>, reason: impl Display) -> Self {
        Self {
            name: name.to_owned(),
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

/// The variable parsed as `T`, or `default` when it is unset or empty.
pub fn var_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(optional_var(name)?.unwrap_or(default))
}

/// The variable parsed as `T`, or `None` when it is unset or empty.
pub fn optional_var<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|err| ConfigError::new(name, value, err)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError::new(name, "<not unicode>", "not valid UTF-8"))
        }
    }
}

/// A number that must be positive, or `default` when unset: a zero (a cache that keeps
/// nothing, a timeout that fires at once) is a typo, not a setting.
pub fn positive_var(name: &str, default: u64) -> Result<u64, ConfigError> {
    let value = var_or(name, default)?;
    if value == 0 {
        return Err(ConfigError::new(name, "0", "must be positive"));
    }
    Ok(value)
}

/// A comma-separated list, or `default` when unset or empty.
pub fn list_or(name: &str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
    let raw: Option<String> = optional_var(name)?;
    Ok(match raw {
        Some(raw) => raw
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        None => default.iter().map(|item| (*item).to_owned()).collect(),
    })
}

/// Where the process runs, from `ATELIER_ENV`: `production` (the default) or `development`.
///
/// In production every secret must be set, long enough, and not a built-in development
/// value, or the process refuses to start. Development allows the built-in values (with a
/// warning at start-up), so a laptop runs with no settings, but refuses to listen on
/// anything but loopback, so those public values never guard a reachable port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Production,
    Development,
}

impl Environment {
    pub const VARIABLE: &str = "ATELIER_ENV";

    pub fn from_env() -> Result<Self, ConfigError> {
        match optional_var::<String>(Self::VARIABLE)?.as_deref() {
            None | Some("production") => Ok(Self::Production),
            Some("development") => Ok(Self::Development),
            Some(other) => Err(ConfigError::new(
                Self::VARIABLE,
                other,
                "must be production or development",
            )),
        }
    }

    /// Refuses to listen on `addr` (from variable `name`) when it is not loopback in
    /// development.
    pub fn check_listen(self, name: &str, addr: std::net::SocketAddr) -> Result<(), ConfigError> {
        if self == Self::Development && !addr.ip().is_loopback() {
            return Err(ConfigError::new(
                name,
                addr.to_string(),
                "development mode (ATELIER_ENV=development) listens on loopback only: its \
                 built-in secrets are public",
            ));
        }
        Ok(())
    }

    /// `ATELIER_METRICS_ADDR`: where Prometheus scrapes this process's `/metrics`, if
    /// anywhere (loopback only in development).
    pub fn metrics_addr(self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let addr = optional_var(METRICS_ADDR)?;
        if let Some(addr) = addr {
            self.check_listen(METRICS_ADDR, addr)?;
        }
        Ok(addr)
    }
}

const METRICS_ADDR: &str = "ATELIER_METRICS_ADDR";

/// The shortest secret accepted outside development: HS256 and HMAC keys of fewer than
/// 32 bytes (256 bits) are guessable offline.
pub const MIN_SECRET_BYTES: usize = 32;

/// The secret in variable `name`, checked for `environment` (see [`Environment`]).
/// `development_value` is what development uses when the variable is unset.
pub fn secret(
    name: &str,
    development_value: &str,
    environment: Environment,
) -> Result<Secret, ConfigError> {
    let value = std::env::var(name).ok().filter(|value| !value.is_empty());
    check_secret(name, value, development_value, environment)
}

/// [`secret`] on a value already read: the rules, without the environment.
pub fn check_secret(
    name: &str,
    value: Option<String>,
    development_value: &str,
    environment: Environment,
) -> Result<Secret, ConfigError> {
    let problem = match &value {
        None => Some("is not set"),
        Some(value) if value == development_value => Some("is the built-in development value"),
        Some(value) if value.len() < MIN_SECRET_BYTES => Some("is shorter than 32 bytes"),
        Some(_) => None,
    };
    match (problem, environment) {
        (None, _) => Ok(Secret::new(value.unwrap_or_default())),
        (Some(problem), Environment::Production) => Err(ConfigError::new(
            name,
            "<hidden>",
            format!(
                "{problem}: set a random secret of at least {MIN_SECRET_BYTES} bytes \
                 (e.g. `head -c 48 /dev/urandom | base64`), the same in every service \
                 that shares it, or run with ATELIER_ENV=development on loopback"
            ),
        )),
        (Some(problem), Environment::Development) => {
            warn_at_start(format!(
                "{name} {problem}: using {}; acceptable in development only",
                if value.is_some() {
                    "it"
                } else {
                    "the built-in development value"
                }
            ));
            Ok(Secret::new(
                value.unwrap_or_else(|| development_value.to_owned()),
            ))
        }
    }
}

/// Warnings found while the configuration was read, before logging started: the process
/// logs them once telemetry is up ([`take_start_warnings`]).
static START_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn warn_at_start(warning: String) {
    START_WARNINGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(warning);
}

/// The warnings found while reading the configuration, once.
pub fn take_start_warnings() -> Vec<String> {
    std::mem::take(
        &mut START_WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// A secret setting: its `Debug` never prints it, and reading it takes an explicit
/// [`Secret::expose`], so it does not reach a log by accident.
#[derive(Clone)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(std::sync::Arc::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The exit code for a configuration error (EX_USAGE, as in sysexits.h).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_take_the_default() {
        let value: u32 = var_or("ATELIER_TEST_SURELY_UNSET_VARIABLE", 7).expect("default");
        assert_eq!(value, 7);
    }

    #[test]
    fn positive_numbers_default_when_unset() {
        assert_eq!(
            positive_var("ATELIER_TEST_SURELY_UNSET_VARIABLE", 3).expect("default"),
            3
        );
    }

    const DEV: &str = "atelier-local-development-value";
    const GOOD: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

    #[test]
    fn production_refuses_missing_development_and_short_secrets() {
        for (value, problem) in [
            (None, "is not set"),
            (Some(DEV), "development value"),
            (Some("short-secret"), "shorter than 32 bytes"),
        ] {
            let err = check_secret(
                "ATELIER_X_SECRET",
                value.map(str::to_owned),
                DEV,
                Environment::Production,
            )
            .expect_err("refused");
            assert_eq!(err.name, "ATELIER_X_SECRET");
            assert!(err.reason.contains(problem), "{err}");
            // The value itself is never echoed.
            assert!(!err.to_string().contains("short-secret"), "{err}");
        }
        let good = check_secret(
            "ATELIER_X_SECRET",
            Some(GOOD.to_owned()),
            DEV,
            Environment::Production,
        )
        .expect("a good secret");
        assert_eq!(good.expose(), GOOD);
    }

    #[test]
    fn development_allows_them_with_a_warning() {
        let _ = take_start_warnings();
        let secret = check_secret("ATELIER_X_SECRET", None, DEV, Environment::Development)
            .expect("development default");
        assert_eq!(secret.expose(), DEV);
        let warnings = take_start_warnings();
        assert!(
            warnings
                .iter()
                .any(|warning| warning.contains("ATELIER_X_SECRET")),
            "{warnings:?}"
        );
        assert!(!warnings.iter().any(|warning| warning.contains(DEV)));
    }

    #[test]
    fn development_listens_on_loopback_only() {
        let loopback = "127.0.0.1:50051".parse().expect("an address");
        let anywhere = "0.0.0.0:50051".parse().expect("an address");
        assert!(Environment::Development.check_listen("A", loopback).is_ok());
        assert!(Environment::Production.check_listen("A", anywhere).is_ok());
        let err = Environment::Development
            .check_listen("ATELIER_LISTEN_ADDR", anywhere)
            .expect_err("refused");
        assert_eq!(err.name, "ATELIER_LISTEN_ADDR");
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn unparsable_values_name_the_variable() {
        // PATH is always set and is never a number.
        let err = var_or::<u32>("PATH", 1).expect_err("PATH is not a number");
        assert_eq!(err.name, "PATH");
        assert!(err.to_string().contains("PATH"));
    }
}
