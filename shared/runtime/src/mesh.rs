//! The settings the services of one mesh share, read and checked in one place before any
//! port is bound: the service credential, where NATS is and how to log in to it, the
//! subject prefix, and where the conversation service's instances are.
//!
//! Each service used to read its own copy of these; a typo in one of them then showed up
//! as a service that started and failed every job. Now a bad value stops the process
//! with the variable's name (exit 64), whichever service reads it.

use std::path::PathBuf;

use crate::config::{ConfigError, Environment, Secret, optional_var, var_or};
use crate::internal_call::{DEVELOPMENT_SERVICE_TOKEN, ServiceToken};

pub const NATS_URL: &str = "ATELIER_NATS_URL";
pub const NATS_USER: &str = "ATELIER_NATS_USER";
pub const NATS_PASSWORD: &str = "ATELIER_NATS_PASSWORD";
pub const NATS_CREDS_FILE: &str = "ATELIER_NATS_CREDS_FILE";
pub const SUBJECT_PREFIX: &str = "ATELIER_SUBJECT_PREFIX";
pub const NATS_STREAM_REPLICAS: &str = "ATELIER_NATS_STREAM_REPLICAS";
pub const CONVERSATION_URL: &str = "ATELIER_CONVERSATION_URL";

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_SUBJECT_PREFIX: &str = "atelier";
pub const DEFAULT_CONVERSATION_URL: &str = "http://127.0.0.1:50052";
/// Copies of each stream's data the JetStream cluster keeps, by default: one server.
pub const DEFAULT_STREAM_REPLICAS: usize = 1;
/// The most replicas JetStream allows a stream.
pub const MAX_STREAM_REPLICAS: usize = 5;

/// What a service that calls the conversation service and uses NATS needs to know about
/// the rest of the mesh (the edge and the workers).
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The credential internal calls carry and internal ports demand.
    pub service_token: ServiceToken,
    pub nats: NatsConfig,
    pub conversation: ServiceInstances,
}

impl MeshConfig {
    pub fn from_env(environment: Environment) -> Result<Self, ConfigError> {
        Ok(Self {
            service_token: ServiceToken::from_env(environment)?,
            nats: NatsConfig::from_env()?,
            conversation: ServiceInstances::from_env()?,
        })
    }

    /// A local mesh on the default ports, with the development credential: what tests
    /// and `deploy/local/run.sh` start, with the NATS URL and subject prefix given.
    pub fn local(nats_url: &str, subject_prefix: &str) -> Self {
        Self {
            service_token: ServiceToken::new(DEVELOPMENT_SERVICE_TOKEN),
            nats: NatsConfig::local(nats_url, subject_prefix),
            conversation: ServiceInstances::local(),
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self::local(DEFAULT_NATS_URL, DEFAULT_SUBJECT_PREFIX)
    }
}

/// Where NATS is, how to log in, and the prefix of every subject and stream name.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// One server or a comma-separated list of a cluster's servers (the client learns the
    /// rest of the cluster from the one it reaches).
    pub url: String,
    /// `atelier` in production; one per test, so tests share a server.
    pub subject_prefix: String,
    /// How many servers of a JetStream cluster keep each stream (1 to 5). On a single
    /// server only 1 works: it refuses more when the streams are created.
    pub stream_replicas: usize,
    pub auth: NatsAuth,
}

/// How a service logs in to NATS.
#[derive(Clone, Debug)]
pub enum NatsAuth {
    /// No credentials: a server on a private network, or a local one.
    None,
    /// `ATELIER_NATS_USER` and `ATELIER_NATS_PASSWORD` (the server's `authorization` or
    /// `accounts` users).
    UserPassword { user: String, password: Secret },
    /// `ATELIER_NATS_CREDS_FILE`: a `.creds` file (a user JWT and its NKey seed), as the
    /// decentralised (operator) mode and NGS hand out.
    CredsFile(PathBuf),
}

impl NatsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url: String = var_or(NATS_URL, DEFAULT_NATS_URL.to_owned())?;
        servers(&url).map_err(|reason| ConfigError::new(NATS_URL, &url, reason))?;
        let subject_prefix: String = var_or(SUBJECT_PREFIX, DEFAULT_SUBJECT_PREFIX.to_owned())?;
        check_subject_prefix(&subject_prefix)
            .map_err(|reason| ConfigError::new(SUBJECT_PREFIX, &subject_prefix, reason))?;
        let stream_replicas =
            checked_replicas(var_or(NATS_STREAM_REPLICAS, DEFAULT_STREAM_REPLICAS)?)?;
        Ok(Self {
            url,
            subject_prefix,
            stream_replicas,
            auth: NatsAuth::from_env()?,
        })
    }

    pub fn local(url: &str, subject_prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            subject_prefix: subject_prefix.to_owned(),
            stream_replicas: DEFAULT_STREAM_REPLICAS,
            auth: NatsAuth::None,
        }
    }

    /// The servers of [`NatsConfig::url`].
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        servers(&self.url)
    }
}

fn checked_replicas(replicas: usize) -> Result<usize, ConfigError> {
    if !(1..=MAX_STREAM_REPLICAS).contains(&replicas) {
        return Err(ConfigError::new(
            NATS_STREAM_REPLICAS,
            replicas.to_string(),
            format!("must be 1 to {MAX_STREAM_REPLICAS}"),
        ));
    }
    Ok(replicas)
}

fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|err| format!("{server:?}: {err}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("names no server".to_owned());
    }
    Ok(servers)
}

impl NatsAuth {
    fn from_env() -> Result<Self, ConfigError> {
        let user: Option<String> = optional_var(NATS_USER)?;
        let creds: Option<PathBuf> = optional_var(NATS_CREDS_FILE)?;
        let has_password = std::env::var_os(NATS_PASSWORD).is_some_and(|value| !value.is_empty());
        match (user, creds) {
            (Some(_), Some(path)) => Err(ConfigError::new(
                NATS_CREDS_FILE,
                path.display().to_string(),
                format!("set either {NATS_CREDS_FILE} or {NATS_USER}, not both"),
            )),
            (None, Some(path)) => {
                // Read now, so a wrong path stops the process before it binds rather than
                // leaving it to retry a login forever.
                std::fs::metadata(&path).map_err(|err| {
                    ConfigError::new(NATS_CREDS_FILE, path.display().to_string(), err)
                })?;
                Ok(Self::CredsFile(path))
            }
            (Some(user), None) => {
                // A NATS password is checked by the server, not guessed offline like an
                // HMAC key: any non-empty value is accepted.
                let password = std::env::var(NATS_PASSWORD)
                    .ok()
                    .filter(|password| !password.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            NATS_PASSWORD,
                            "",
                            format!("{NATS_USER} is set: set its password too"),
                        )
                    })?;
                Ok(Self::UserPassword {
                    user,
                    password: Secret::new(password),
                })
            }
            (None, None) if has_password => Err(ConfigError::new(
                NATS_USER,
                "",
                format!("{NATS_PASSWORD} is set: set the user it belongs to"),
            )),
            (None, None) => Ok(Self::None),
        }
    }
}

/// The one rule for a subject prefix: dot-separated tokens of letters, digits, `-` and
/// `_` (no wildcards, no spaces: it becomes part of every subject and stream name).
pub fn check_subject_prefix(prefix: &str) -> Result<(), String> {
    let valid = !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "subject prefix {prefix:?} must be dot-separated tokens of letters, digits, - and _"
        ))
    }
}

/// Where one service's instances are: a comma-separated list of URLs, each an instance
/// or a DNS name that resolves to several (a Kubernetes headless Service). Callers
/// balance over all of them ([`crate::upstream`]).
#[derive(Clone, Debug)]
pub struct ServiceInstances {
    pub urls: Vec<String>,
}

impl ServiceInstances {
    /// The conversation service's instances, `ATELIER_CONVERSATION_URL`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_var(CONVERSATION_URL, DEFAULT_CONVERSATION_URL)
    }

    /// The instances listed in variable `name`, or at `default`.
    pub fn from_var(name: &str, default: &str) -> Result<Self, ConfigError> {
        let raw: String = var_or(name, default.to_owned())?;
        Self::parse(&raw).map_err(|reason| ConfigError::new(name, &raw, reason))
    }

    pub fn local() -> Self {
        Self::at(DEFAULT_CONVERSATION_URL)
    }

    /// One instance at `url` (tests).
    pub fn at(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
        }
    }

    /// A comma-separated list of `http://host:port` (or `https://`) URLs.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let urls: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err("names no instance".to_owned());
        }
        for url in &urls {
            let uri: http::Uri = url.parse().map_err(|err| format!("{url:?}: {err}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(format!("{url:?}: the scheme must be http or https"));
            }
            if uri.host().is_none() || uri.port_u16().is_none() {
                return Err(format!("{url:?}: give a host and a port"));
            }
        }
        Ok(Self { urls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_prefixes_are_subject_tokens() {
        for good in ["atelier", "test-1.a_b", "A9"] {
            assert!(check_subject_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a.*", "a b", ">", "a."] {
            assert!(check_subject_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        for ok in 1..=5 {
            assert_eq!(checked_replicas(ok).expect("allowed"), ok);
        }
        for refused in [0, 6, 7] {
            let err = checked_replicas(refused).expect_err("refused");
            assert_eq!(err.name, NATS_STREAM_REPLICAS);
        }
    }

    #[test]
    fn nats_urls_may_list_a_cluster() {
        assert_eq!(servers("nats://a:4222").expect("one").len(), 1);
        assert_eq!(
            servers("nats://a:4222, nats://b:4222,nats://c:4222")
                .expect("three")
                .len(),
            3
        );
        assert!(servers("").is_err());
        assert!(servers(" , ").is_err());
        assert!(servers("nats://a:notaport").is_err());
    }

    #[test]
    fn conversation_urls_are_a_list_of_instances() {
        let upstream = ServiceInstances::parse("http://a:50052, http://conversation.ns.svc:50052")
            .expect("two");
        assert_eq!(upstream.urls.len(), 2);
        for bad in [
            "",
            "a:50052",
            "ftp://a:50052",
            "http://a",
            "http://a:50052,http:// b",
        ] {
            assert!(ServiceInstances::parse(bad).is_err(), "{bad:?}");
        }
    }
}
