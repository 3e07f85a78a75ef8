//! The identity provider's key set, in memory: read without waiting by every call, and
//! fetched by one background task.
//!
//! Calls read the current [`Snapshot`] from a `tokio::sync::watch` channel (a read lock
//! and an `Arc` clone). The task ([`JwksCache::refresh_until`]) fetches the set when the
//! [`Schedule`] says so: at start, when the set expires, and when a call meets an unknown
//! `kid` (at most once per `unknown_key_interval`). A failed fetch keeps the cached keys,
//! so an identity provider that is down does not stop users whose tokens it already
//! signed.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atelier_runtime::config::{ConfigError, optional_var, positive_var};
use reqwest::header::{ACCEPT, AGE, CACHE_CONTROL};
use reqwest::{Url, redirect};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::keys::KeySet;
use super::refresh::{RefreshPolicy, Schedule, UnknownKey, freshness};

/// The largest key set document read. Real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where the key set is and how it is kept fresh.
#[derive(Clone, Debug)]
pub struct JwksConfig {
    pub url: Url,
    /// How long a fetched set is used when the response gives no `Cache-Control`
    /// `max-age` (`ATELIER_JWT_JWKS_REFRESH_SECS`).
    pub refresh: Duration,
    /// The limit of one fetch, connection and body included (`ATELIER_JWT_JWKS_TIMEOUT_MS`).
    pub fetch_timeout: Duration,
    /// The shortest time between a fetch and one asked for by a token naming an unknown
    /// key: a flood of made-up `kid`s costs the provider at most one fetch per interval
    /// (`ATELIER_JWT_JWKS_MIN_REFETCH_SECS`).
    pub unknown_key_interval: Duration,
}

impl JwksConfig {
    /// A key set at `url` with the default timings. The URL must be `https`, or `http` to a
    /// loopback host: keys fetched in the clear from elsewhere could be anyone's.
    pub fn new(url: &str) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|err| err.to_string())?;
        let loopback = url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => return Err("must be https (http only to a loopback host)".to_owned()),
            _ => return Err("must be an https URL".to_owned()),
        }
        Ok(Self {
            url,
            refresh: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(5),
            unknown_key_interval: Duration::from_secs(10),
        })
    }

    /// `ATELIER_JWT_JWKS_URL` and its timings; `None` when the URL is unset.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        const URL: &str = "ATELIER_JWT_JWKS_URL";
        let Some(url) = optional_var::<String>(URL)? else {
            return Ok(None);
        };
        if optional_var::<String>("ATELIER_JWT_RS256_PUBLIC_KEY_FILE")?.is_some() {
            return Err(ConfigError::new(
                URL,
                &url,
                "set it or ATELIER_JWT_RS256_PUBLIC_KEY_FILE, not both",
            ));
        }
        let config = Self::new(&url).map_err(|reason| ConfigError::new(URL, &url, reason))?;
        Ok(Some(Self {
            refresh: Duration::from_secs(positive_var("ATELIER_JWT_JWKS_REFRESH_SECS", 600)?),
            fetch_timeout: Duration::from_millis(positive_var(
                "ATELIER_JWT_JWKS_TIMEOUT_MS",
                5000,
            )?),
            unknown_key_interval: Duration::from_secs(positive_var(
                "ATELIER_JWT_JWKS_MIN_REFETCH_SECS",
                10,
            )?),
            ..config
        }))
    }
}

/// The HTTP client of the key set fetches.
pub(crate) fn http_client(config: &JwksConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.fetch_timeout)
        .connect_timeout(config.fetch_timeout)
        // A key set URL does not move; following a redirect could lead to keys from
        // elsewhere (or over http). The log names the status instead.
        .redirect(redirect::Policy::none())
        .user_agent("atelier-edge")
        .build()
        .context("building the JWKS HTTP client")
}

/// The key set calls verify with.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub keys: Arc<KeySet>,
    /// Whether a fetch ever succeeded. Until one does, no token can be verified, which is
    /// the edge's trouble, not the caller's.
    pub loaded: bool,
}

pub struct JwksCache {
    config: JwksConfig,
    /// The current set; every fetch's end (success or failure) sends, which wakes the
    /// calls waiting for it.
    current: watch::Sender<Snapshot>,
    schedule: Mutex<Schedule>,
    /// Wakes the task when a call asks for a fetch.
    wake: Notify,
}

impl JwksCache {
    pub fn new(config: JwksConfig) -> Self {
        let policy = RefreshPolicy {
            default_ttl: config.refresh,
            unknown_key_interval: config.unknown_key_interval,
        };
        Self {
            config,
            current: watch::Sender::new(Snapshot::default()),
            schedule: Mutex::new(Schedule::new(policy)),
            wake: Notify::new(),
        }
    }

    /// The cached set: no I/O, no waiting.
    pub fn snapshot(&self) -> Snapshot {
        self.current.borrow().clone()
    }

    /// For a token naming a key the cached set lacks: the set after the fetch this call
    /// asks for, or the one under way (waiting at most the fetch timeout and a second);
    /// at once the current set when a fetch started less than `unknown_key_interval` ago.
    pub async fn refreshed(&self) -> Snapshot {
        let mut updates = {
            // Subscribing under the schedule's lock, which the task holds while it
            // publishes a fetch's end, means this call either sees that fetch's set or
            // decides while the fetch is still under way, and then is woken by its end.
            let mut schedule = self.schedule();
            let updates = self.current.subscribe();
            match schedule.on_unknown_key(Instant::now()) {
                UnknownKey::Refuse => return self.snapshot(),
                UnknownKey::Fetch => self.wake.notify_one(),
                UnknownKey::Wait => {}
            }
            updates
        };
        let bound = self.config.fetch_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, updates.changed()).await;
        self.snapshot()
    }

    /// Fetches the set whenever the schedule says so, until `stop` is cancelled.
    pub async fn refresh_until(self: Arc<Self>, client: reqwest::Client, stop: CancellationToken) {
        loop {
            let wait_until = {
                let mut schedule = self.schedule();
                let now = Instant::now();
                (!schedule.start_if_due(now)).then(|| schedule.next_due(now))
            };
            if let Some(at) = wait_until {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            let fetched = tokio::select! {
                () = stop.cancelled() => return,
                fetched = fetch(&client, &self.config.url) => fetched,
            };
            let now = Instant::now();
            let mut schedule = self.schedule();
            match fetched {
                Ok(Fetched {
                    keys,
                    skipped,
                    fresh_for,
                }) => {
                    for skip in skipped {
                        tracing::debug!(kid = ?skip.kid, reason = skip.reason, "JWKS key not used");
                    }
                    tracing::info!(
                        keys = keys.len(),
                        refresh_in_secs = schedule.ttl(fresh_for).as_secs(),
                        "fetched the identity provider's signing keys"
                    );
                    self.current.send_replace(Snapshot {
                        keys: Arc::new(keys),
                        loaded: true,
                    });
                    schedule.succeeded(now, fresh_for);
                }
                Err(err) => {
                    let loaded = self.current.borrow().loaded;
                    tracing::warn!(
                        url = %self.config.url,
                        error = format!("{err:#}"),
                        cached_keys_in_use = loaded,
                        "cannot fetch the identity provider's signing keys"
                    );
                    // Wakes the calls waiting for this fetch; the set is unchanged.
                    self.current.send_modify(|_| {});
                    schedule.failed(now);
                }
            }
        }
    }

    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        // Every update of the schedule is a few assignments: a poisoned lock is still
        // consistent.
        self.schedule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Fetched {
    keys: KeySet,
    skipped: Vec<super::keys::Skipped>,
    fresh_for: Option<Duration>,
}

async fn fetch(client: &reqwest::Client, url: &Url) -> anyhow::Result<Fetched> {
    let mut response = client
        .get(url.clone())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .context("request failed")?;
    let status = response.status();
    if status.is_redirection() {
        anyhow::bail!("answered HTTP {status}: set ATELIER_JWT_JWKS_URL to the final URL");
    }
    if !status.is_success() {
        anyhow::bail!("answered HTTP {status}");
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
    };
    let fresh_for = freshness(header(CACHE_CONTROL), header(AGE));
    if response
        .content_length()
        .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
    {
        anyhow::bail!("the key set is larger than {MAX_JWKS_BYTES} bytes");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the key set")? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            anyhow::bail!("the key set is larger than {MAX_JWKS_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    let (keys, skipped) = KeySet::parse(&body)?;
    Ok(Fetched {
        keys,
        skipped,
        fresh_for,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "ATELIER_EDGE_JWKS_FROM_ENV_PROBE";

    #[test]
    fn print_from_env() {
        if std::env::var_os(PROBE).is_none() {
            return;
        }
        let printed = match JwksConfig::from_env() {
            Ok(None) => "none".to_owned(),
            Ok(Some(config)) => format!(
                "{} refresh={:?} timeout={:?} unknown_key_interval={:?}",
                config.url, config.refresh, config.fetch_timeout, config.unknown_key_interval
            ),
            Err(err) => format!("error: {err}"),
        };
        println!("from_env: {printed}");
    }

    fn from_env(vars: &[(&str, &str)]) -> String {
        atelier_testkit::rerun_with_env(
            "auth::jwks::tests::print_from_env",
            PROBE,
            &["ATELIER_JWT_"],
            vars,
        )
    }

    #[test]
    fn a_key_set_url_is_read_with_its_timings() {
        assert_eq!(from_env(&[]), "none");
        assert_eq!(
            from_env(&[(
                "ATELIER_JWT_JWKS_URL",
                "https://idp.example/realms/atelier/protocol/openid-connect/certs"
            )]),
            "https://idp.example/realms/atelier/protocol/openid-connect/certs \
             refresh=600s timeout=5s unknown_key_interval=10s"
        );
        assert_eq!(
            from_env(&[
                ("ATELIER_JWT_JWKS_URL", "http://127.0.0.1:8080/jwks.json"),
                ("ATELIER_JWT_JWKS_REFRESH_SECS", "120"),
                ("ATELIER_JWT_JWKS_TIMEOUT_MS", "1500"),
                ("ATELIER_JWT_JWKS_MIN_REFETCH_SECS", "30"),
            ]),
            "http://127.0.0.1:8080/jwks.json refresh=120s timeout=1.5s unknown_key_interval=30s"
        );
        assert!(
            from_env(&[("ATELIER_JWT_JWKS_URL", "http://localhost:8080/jwks")])
                .starts_with("http://localhost")
        );
        assert!(
            from_env(&[("ATELIER_JWT_JWKS_URL", "http://[::1]:8080/jwks")])
                .starts_with("http://[::1]")
        );
    }

    #[test]
    fn a_key_set_in_the_clear_or_beside_a_static_key_is_refused() {
        for (vars, reason) in [
            (
                vec![("ATELIER_JWT_JWKS_URL", "http://idp.example/jwks")],
                "must be https",
            ),
            (
                vec![("ATELIER_JWT_JWKS_URL", "ftp://idp.example/jwks")],
                "must be an https URL",
            ),
            (
                vec![("ATELIER_JWT_JWKS_URL", "not a url")],
                "ATELIER_JWT_JWKS_URL",
            ),
            (
                vec![
                    ("ATELIER_JWT_JWKS_URL", "https://idp.example/jwks"),
                    ("ATELIER_JWT_RS256_PUBLIC_KEY_FILE", "/etc/atelier/key.pem"),
                ],
                "not both",
            ),
            (
                vec![
                    ("ATELIER_JWT_JWKS_URL", "https://idp.example/jwks"),
                    ("ATELIER_JWT_JWKS_REFRESH_SECS", "0"),
                ],
                "ATELIER_JWT_JWKS_REFRESH_SECS",
            ),
        ] {
            let printed = from_env(&vars);
            assert!(
                printed.starts_with("error:") && printed.contains(reason),
                "{vars:?}: {printed}"
            );
        }
    }
}
