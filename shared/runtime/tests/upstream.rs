//! The balanced upstream channel against real servers on loopback: calls spread over the
//! instances, a dead or draining instance leaves the rotation, and with none left calls
//! fail fast with UNAVAILABLE until one is back.
//!
//! Each instance serves gRPC health with `test.Api` (what the prober asks about) and its
//! own name as services, so a health check through the balanced channel for "a" tells
//! which instance answered (the other one answers NOT_FOUND).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use atelier_runtime::upstream::{ChannelSettings, Upstream};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

const SERVICE: &str = "test.Api";

struct Instance {
    addr: SocketAddr,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    async fn start(name: &'static str, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (health, service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(atelier_runtime::grpc::incoming(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("served");
        });
        Self {
            addr,
            health,
            stop: Some(stop),
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and closes its connections, as a killed process would.
    async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
        let _ = self.server.await;
    }
}

fn settings() -> ChannelSettings {
    ChannelSettings {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Some(Duration::from_secs(2)),
        probe_interval: Duration::from_millis(100),
    }
}

/// Which instance answered one call through `channel`: "a", "b", or the error's code.
async fn who_answers(channel: &Channel) -> Result<&'static str, tonic::Code> {
    let mut client = HealthClient::new(channel.clone());
    let asked_a = client
        .check(HealthCheckRequest {
            service: "a".to_owned(),
        })
        .await;
    match asked_a {
        Ok(_) => Ok("a"),
        Err(status) if status.code() == tonic::Code::NotFound => Ok("b"),
        Err(status) => Err(status.code()),
    }
}

async fn tally(channel: &Channel, calls: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..calls {
        let key = match who_answers(channel).await {
            Ok(name) => name.to_owned(),
            Err(code) => format!("{code:?}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

/// Polls until `condition` holds on a tally of `calls` calls, for at most 5 s.
async fn eventually(
    channel: &Channel,
    calls: usize,
    condition: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = tally(channel, calls).await;
        if condition(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never held; last tally {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn calls_spread_over_instances_and_skip_a_dead_one() {
    let a = Instance::start("a", "127.0.0.1:0".parse().expect("addr")).await;
    let b = Instance::start("b", "127.0.0.1:0".parse().expect("addr")).await;
    let upstream = Upstream::new(&[a.url(), b.url()], SERVICE, settings())
        .await
        .expect("upstream");
    let channel = upstream.channel();

    let seen = eventually(&channel, 40, |seen| {
        seen.get("a").is_some() && seen.get("b").is_some()
    })
    .await;
    assert_eq!(
        seen.values().sum::<usize>(),
        seen["a"] + seen["b"],
        "{seen:?}"
    );

    b.kill().await;
    // Calls already routed to b when it died may fail (UNAVAILABLE, never INTERNAL) until
    // the next probe; after that every call goes to a.
    eventually(&channel, 20, |seen| seen.get("a") == Some(&20)).await;
    let seen = tally(&channel, 50).await;
    assert_eq!(seen.get("a"), Some(&50), "{seen:?}");
    assert!(*upstream.reachable().borrow());
    a.kill().await;
}

#[tokio::test]
async fn a_draining_instance_leaves_the_rotation_and_comes_back() {
    let a = Instance::start("a", "127.0.0.1:0".parse().expect("addr")).await;
    let b = Instance::start("b", "127.0.0.1:0".parse().expect("addr")).await;
    let upstream = Upstream::new(&[a.url(), b.url()], SERVICE, settings())
        .await
        .expect("upstream");
    let channel = upstream.channel();
    eventually(&channel, 40, |seen| {
        seen.contains_key("a") && seen.contains_key("b")
    })
    .await;

    b.health
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    eventually(&channel, 20, |seen| seen.get("a") == Some(&20)).await;

    b.health
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    eventually(&channel, 40, |seen| seen.contains_key("b")).await;
    a.kill().await;
    b.kill().await;
}

#[tokio::test]
async fn with_no_instance_left_calls_fail_fast_and_recover() {
    let a = Instance::start("a", "127.0.0.1:0".parse().expect("addr")).await;
    let addr = a.addr;
    let upstream = Upstream::new(&[a.url()], SERVICE, settings())
        .await
        .expect("upstream");
    let channel = upstream.channel();
    let mut reachable = upstream.reachable();
    tokio::time::timeout(Duration::from_secs(5), reachable.wait_for(|up| *up))
        .await
        .expect("the first probe finds a")
        .expect("prober running");
    eventually(&channel, 5, |seen| seen.get("a") == Some(&5)).await;

    a.kill().await;
    tokio::time::timeout(Duration::from_secs(5), reachable.wait_for(|up| !*up))
        .await
        .expect("the prober notices")
        .expect("prober running");
    // Not a wait for an instance that may never come: UNAVAILABLE within the connect
    // timeout.
    let started = tokio::time::Instant::now();
    assert_eq!(who_answers(&channel).await, Err(tonic::Code::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let a = Instance::start("a", addr).await;
    tokio::time::timeout(Duration::from_secs(5), reachable.wait_for(|up| *up))
        .await
        .expect("the prober notices")
        .expect("prober running");
    eventually(&channel, 5, |seen| seen.get("a") == Some(&5)).await;
    a.kill().await;
}

#[tokio::test]
async fn a_dns_name_stands_for_its_addresses() {
    let a = Instance::start("a", "127.0.0.1:0".parse().expect("addr")).await;
    let url = format!("http://localhost:{}", a.addr.port());
    let upstream = Upstream::new(&[url], SERVICE, settings())
        .await
        .expect("upstream");
    eventually(&upstream.channel(), 5, |seen| seen.get("a") == Some(&5)).await;
    a.kill().await;
}
