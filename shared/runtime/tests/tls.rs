//! TLS and mutual TLS between services, over real sockets, with the test certificates of
//! `shared/testkit/certs` (a CA, a service certificate it signed for `localhost` and
//! 127.0.0.1, and a stranger's certificate signed by another CA): an internal port admits
//! only clients holding a certificate of the mesh's CA; the public port asks for none;
//! plaintext gets nowhere; the balanced upstream channel speaks it for `https://` URLs.

use std::net::SocketAddr;
use std::path::PathBuf;

use atelier_runtime::tls::{Port, TlsConfig};
use atelier_runtime::upstream::{ChannelSettings, Upstream};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "test.Api";

fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/certs")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(cert(name)).expect("a test certificate")
}

fn mesh_tls() -> TlsConfig {
    TlsConfig::from_files(
        &cert("service.pem"),
        &cert("service.key"),
        Some(&cert("ca.pem")),
    )
    .expect("the test certificates")
}

/// A health server on `port`'s terms; stops when the sender is dropped.
async fn serve(tls: &TlsConfig, port: Port) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let mut builder = tls.serve(Server::builder(), port).expect("TLS server");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = builder
            .add_service(service)
            .serve_with_incoming_shutdown(atelier_runtime::grpc::incoming(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    (addr, stop)
}

/// Asks `endpoint` for the health of the test service.
async fn check(endpoint: Endpoint) -> Result<i32, String> {
    let channel = endpoint.connect().await.map_err(|err| format!("{err:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .map(|answer| answer.into_inner().status)
        .map_err(|status| format!("{status:?}"))
}

fn tls_endpoint(addr: SocketAddr, identity: Option<(&str, &str)>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("ca.pem")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(pem(cert), pem(key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("client TLS")
}

#[tokio::test]
async fn an_internal_port_admits_only_certificates_of_the_mesh() {
    let (addr, _stop) = serve(&mesh_tls(), Port::Internal).await;
    let serving = ServingStatus::Serving as i32;

    // What every service does: the mesh's CA, its own certificate.
    let origin = format!("https://localhost:{}", addr.port())
        .parse()
        .expect("origin");
    let endpoint = mesh_tls()
        .client(
            Endpoint::from_shared(format!("https://{addr}")).expect("url"),
            &origin,
        )
        .expect("client");
    assert_eq!(check(endpoint).await, Ok(serving));

    // No certificate, a stranger's certificate, or no TLS at all: refused.
    assert!(check(tls_endpoint(addr, None)).await.is_err());
    assert!(
        check(tls_endpoint(addr, Some(("stranger.pem", "stranger.key"))))
            .await
            .is_err()
    );
    let plaintext = Endpoint::from_shared(format!("http://{addr}")).expect("url");
    assert!(check(plaintext).await.is_err());
}

#[tokio::test]
async fn the_public_port_serves_tls_without_asking_for_a_certificate() {
    let (addr, _stop) = serve(&mesh_tls(), Port::Public).await;
    assert_eq!(
        check(tls_endpoint(addr, None)).await,
        Ok(ServingStatus::Serving as i32)
    );
    let plaintext = Endpoint::from_shared(format!("http://{addr}")).expect("url");
    assert!(check(plaintext).await.is_err());
}

#[tokio::test]
async fn an_https_upstream_speaks_mutual_tls_with_the_process_settings() {
    // What service_main does with ATELIER_TLS_*.
    atelier_runtime::tls::set(mesh_tls());
    let (addr, _stop) = serve(&mesh_tls(), Port::Internal).await;
    let upstream = Upstream::new(
        &[format!("https://localhost:{}", addr.port())],
        SERVICE,
        ChannelSettings::default(),
    )
    .await
    .expect("upstream");
    let mut reachable = upstream.reachable();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reachable.wait_for(|up| *up),
    )
    .await
    .expect("the prober reaches it over mutual TLS")
    .expect("prober running");
    let answer = HealthClient::new(upstream.channel())
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .expect("a call over the balanced channel")
        .into_inner()
        .status;
    assert_eq!(answer, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn an_https_url_without_a_ca_is_refused_at_start() {
    let tls = TlsConfig::default();
    let origin = "https://conversation:50052".parse().expect("origin");
    let err = tls
        .client(
            Endpoint::from_shared("https://10.0.0.1:50052").expect("url"),
            &origin,
        )
        .expect_err("no CA to check the server with");
    assert!(err.to_string().contains("ATELIER_TLS_CA_FILE"), "{err}");
}
