//! `atelier_events::connect` logs in with the configured credentials: against a
//! nats-server of its own that requires a user and password (started here, on a free
//! port), the right ones connect and the wrong ones never do.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atelier_runtime::config::Secret;
use atelier_runtime::mesh::{NatsAuth, NatsConfig};

/// The nats-server binary: the one `deploy/local/ensure-deps.sh` installs, else the
/// one on `PATH`.
fn nats_server_binary() -> PathBuf {
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.dev/tools/bin/nats-server");
    if pinned.exists() {
        return pinned;
    }
    PathBuf::from("nats-server")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server_with_password(port: u16) -> Server {
    let child = Command::new(nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", "atelier", "--pass", "s3cret-nats-password"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server runs (deploy/local/ensure-deps.sh installs it)");
    Server(child)
}

fn config(port: u16, password: &str) -> NatsConfig {
    NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        subject_prefix: "auth-test".to_owned(),
        stream_replicas: 1,
        auth: NatsAuth::UserPassword {
            user: "atelier".to_owned(),
            password: Secret::new(password),
        },
    }
}

#[tokio::test]
async fn the_configured_user_and_password_log_in() {
    let port = atelier_testkit::free_local_addr().port();
    let _server = start_server_with_password(port);

    let client = atelier_events::connect(&config(port, "s3cret-nats-password"), "auth-test")
        .await
        .expect("a client");
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("connected within 10 s")
        .expect("flushed");
    let mut replies = client.subscribe("auth-test.ping").await.expect("subscribe");
    client
        .publish("auth-test.ping", "pong".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let message = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut replies),
    )
    .await
    .expect("delivered")
    .expect("a message");
    assert_eq!(message.payload.as_ref(), b"pong");

    // The wrong password never gets a connection (the client keeps retrying in the
    // background, as it does while a server is down).
    let refused = atelier_events::connect(&config(port, "wrong-password"), "auth-test")
        .await
        .expect("a client, connecting in the background");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(
        refused.connection_state(),
        async_nats::connection::State::Connected
    );
}
