//! A channel that balances over every instance of an upstream service and leaves out the
//! ones that do not answer.
//!
//! tonic's balanced channel alone keeps a dead instance in rotation: its connection
//! reports ready and fails each call it is given, so half the calls of a two-instance
//! mesh would fail for as long as one instance is down. Here a prober resolves every
//! configured URL (a DNS name may stand for several instances, as a Kubernetes headless
//! Service does), asks each address for its gRPC health, and keeps only the SERVING ones
//! in the balancer. An instance that drains (NOT_SERVING) or dies leaves the rotation
//! within one probe interval, and comes back when it answers again.
//!
//! When no instance answers, every resolved address stays in: calls then fail at once
//! with UNAVAILABLE instead of waiting for an instance that may never come. Callers that
//! would only waste work meanwhile (the job workers) watch [`Upstream::reachable`] and
//! stop taking jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How a channel to an upstream behaves.
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// Longest wait for a TCP (and HTTP/2) connection to one instance.
    pub connect_timeout: Duration,
    /// Longest wait for one call's answer; `None` for a channel that carries streams.
    pub request_timeout: Option<Duration>,
    /// How often every instance is resolved and asked for its health.
    pub probe_interval: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: None,
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// A balanced channel to the instances of one service, kept current by a prober task that
/// ends when the last clone of the channel is dropped.
#[derive(Clone, Debug)]
pub struct Upstream {
    channel: Channel,
    reachable: watch::Receiver<bool>,
}

impl Upstream {
    /// Starts balancing over the instances behind `urls` (`http://host:port`), judged by
    /// the health of `service` (its fully qualified gRPC name). Every address the URLs
    /// resolve to now is in the rotation at once, as a plain channel would be; the
    /// prober then keeps only those that answer, from its first probe on.
    pub async fn new(
        urls: &[String],
        service: &'static str,
        settings: ChannelSettings,
    ) -> anyhow::Result<Self> {
        let targets = urls
            .iter()
            .map(|url| Target::parse(url, &settings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!targets.is_empty(), "no upstream instance configured");
        let (channel, changes) = Channel::balance_channel(16);
        let (reachable_tx, reachable) = watch::channel(false);
        let mut prober = Prober {
            targets,
            service,
            settings,
            changes,
            reachable: reachable_tx,
            probes: BTreeMap::new(),
            in_rotation: BTreeSet::new(),
        };
        let resolved = prober.resolve().await;
        let everything: BTreeSet<SocketAddr> = resolved.keys().copied().collect();
        prober
            .rotate(&resolved, everything)
            .await
            .map_err(|()| anyhow::anyhow!("the balanced channel closed at once"))?;
        tokio::spawn(prober.run());
        Ok(Self { channel, reachable })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `true` while at least one instance answers SERVING; `false` until the first probe
    /// has found one.
    pub fn reachable(&self) -> watch::Receiver<bool> {
        self.reachable.clone()
    }
}

/// One configured URL: what it resolves and how to build an endpoint for each address.
struct Target {
    /// `host:port`, resolved on every probe.
    authority: String,
    /// The configured URL, kept as every address's `:authority`, so a name-based virtual
    /// host or certificate still matches.
    origin: http::Uri,
    scheme: String,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    /// The addresses last resolved: a failed lookup keeps them rather than emptying the
    /// rotation on a DNS hiccup.
    last_resolved: Vec<SocketAddr>,
}

impl Target {
    fn parse(url: &str, settings: &ChannelSettings) -> anyhow::Result<Self> {
        let origin: http::Uri = url
            .parse()
            .map_err(|err| anyhow::anyhow!("upstream URL {url:?}: {err}"))?;
        let authority = origin
            .authority()
            .filter(|authority| authority.port_u16().is_some())
            .ok_or_else(|| anyhow::anyhow!("upstream URL {url:?} needs a host and a port"))?
            .to_string();
        let target = Self {
            authority,
            scheme: origin.scheme_str().unwrap_or("http").to_owned(),
            origin,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            last_resolved: Vec::new(),
        };
        // The TLS settings fail now, at start-up, if they ever do.
        target.endpoint(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(target)
    }

    /// The endpoint of one address, over TLS for an `https://` URL
    /// ([`crate::tls::TlsConfig::client`]: the certificate is checked for the URL's host).
    fn endpoint(&self, addr: SocketAddr) -> anyhow::Result<Endpoint> {
        let uri: http::Uri = format!("{}://{addr}", self.scheme).parse()?;
        let endpoint = Endpoint::from(uri)
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout)
            .origin(self.origin.clone());
        let endpoint = match self.request_timeout {
            Some(timeout) => endpoint.timeout(timeout),
            None => endpoint,
        };
        crate::tls::current().client(endpoint, &self.origin)
    }
}

struct Prober {
    targets: Vec<Target>,
    service: &'static str,
    settings: ChannelSettings,
    changes: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    reachable: watch::Sender<bool>,
    /// A health client per address, reused across probes (one connection each).
    probes: BTreeMap<SocketAddr, HealthClient<Channel>>,
    in_rotation: BTreeSet<SocketAddr>,
}

impl Prober {
    async fn run(mut self) {
        loop {
            if self.probe_once().await.is_err() {
                // The channel is gone: nobody calls this upstream any more.
                return;
            }
            tokio::select! {
                () = self.changes.closed() => return,
                () = tokio::time::sleep(self.settings.probe_interval) => {}
            }
        }
    }

    /// Resolves, probes and updates the rotation; `Err` when the channel was dropped.
    async fn probe_once(&mut self) -> Result<(), ()> {
        let resolved = self.resolve().await;
        self.probes.retain(|addr, _| resolved.contains_key(addr));
        let mut serving = BTreeSet::new();
        let mut checks = tokio::task::JoinSet::new();
        for (addr, index) in &resolved {
            if !self.probes.contains_key(addr) {
                match self.targets[*index].endpoint(*addr) {
                    Ok(endpoint) => {
                        self.probes
                            .insert(*addr, HealthClient::new(endpoint.connect_lazy()));
                    }
                    Err(err) => {
                        tracing::warn!(upstream = %addr, error = %err, "cannot probe");
                        continue;
                    }
                }
            }
            let client = self.probes[addr].clone();
            let (addr, service) = (*addr, self.service);
            let deadline = self.settings.connect_timeout;
            checks.spawn(async move { (addr, is_serving(client, service, deadline).await) });
        }
        while let Some(checked) = checks.join_next().await {
            if let Ok((addr, true)) = checked {
                serving.insert(addr);
            }
        }
        let wanted: BTreeSet<SocketAddr> = if serving.is_empty() {
            resolved.keys().copied().collect()
        } else {
            serving.clone()
        };
        self.rotate(&resolved, wanted).await?;
        self.reachable.send_if_modified(|reachable| {
            let now = !serving.is_empty();
            std::mem::replace(reachable, now) != now
        });
        Ok(())
    }

    /// Every address the URLs resolve to now, with the index of its URL. A failed
    /// lookup keeps that URL's last addresses.
    async fn resolve(&mut self) -> BTreeMap<SocketAddr, usize> {
        let mut resolved = BTreeMap::new();
        for (index, target) in self.targets.iter_mut().enumerate() {
            match tokio::net::lookup_host(&target.authority).await {
                Ok(addrs) => target.last_resolved = addrs.collect(),
                Err(err) => tracing::warn!(
                    upstream = %target.authority,
                    error = %err,
                    "cannot resolve an upstream; keeping its last addresses"
                ),
            }
            for addr in &target.last_resolved {
                resolved.entry(*addr).or_insert(index);
            }
        }
        resolved
    }

    /// Makes `wanted` the rotation; `Err` when the channel was dropped.
    async fn rotate(
        &mut self,
        resolved: &BTreeMap<SocketAddr, usize>,
        wanted: BTreeSet<SocketAddr>,
    ) -> Result<(), ()> {
        for gone in self.in_rotation.difference(&wanted) {
            tracing::warn!(upstream = %gone, "upstream instance left the rotation");
            self.changes
                .send(Change::Remove(*gone))
                .await
                .map_err(drop)?;
        }
        let mut in_rotation = BTreeSet::new();
        for kept in self.in_rotation.intersection(&wanted) {
            in_rotation.insert(*kept);
        }
        for new in wanted.difference(&self.in_rotation) {
            let endpoint = match self.targets[resolved[new]].endpoint(*new) {
                Ok(endpoint) => endpoint,
                Err(err) => {
                    tracing::warn!(upstream = %new, error = %err, "cannot reach an upstream");
                    continue;
                }
            };
            tracing::info!(upstream = %new, "upstream instance joined the rotation");
            self.changes
                .send(Change::Insert(*new, endpoint))
                .await
                .map_err(drop)?;
            in_rotation.insert(*new);
        }
        self.in_rotation = in_rotation;
        Ok(())
    }
}

/// Whether the instance behind `client` answers SERVING for `service` within `deadline`.
async fn is_serving(
    mut client: HealthClient<Channel>,
    service: &'static str,
    deadline: Duration,
) -> bool {
    let check = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    match tokio::time::timeout(deadline, check).await {
        Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}
