//! `atelier_events::connect` logs in with the configured credentials, each test against a
//! nats-server of its own (started here, on a free port):
//!
//! - a user and password (`ATELIER_NATS_USER`): the right ones connect and the wrong ones
//!   never do;
//! - a `.creds` file (`ATELIER_NATS_CREDS_FILE`), against a server in operator (JWT) mode:
//!   a user of the account the server trusts connects, a user of an account it does not
//!   know never does, and a missing file is an error from `connect`. The operator, the
//!   account and the users, and their JWTs, are made here with `nkeys` as `nsc` would make
//!   them, so the test needs no tool beyond nats-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use atelier_runtime::config::Secret;
use atelier_runtime::mesh::{NatsAuth, NatsConfig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

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

fn start_server(args: &[&str]) -> Server {
    let child = Command::new(nats_server_binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server runs (deploy/local/ensure-deps.sh installs it)");
    Server(child)
}

fn start_server_with_password(port: u16) -> Server {
    start_server(&[
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--user",
        "atelier",
        "--pass",
        "s3cret-nats-password",
    ])
}

fn config(port: u16, auth: NatsAuth) -> NatsConfig {
    NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        subject_prefix: "auth-test".to_owned(),
        stream_replicas: 1,
        auth,
    }
}

fn password(password: &str) -> NatsAuth {
    NatsAuth::UserPassword {
        user: "atelier".to_owned(),
        password: Secret::new(password),
    }
}

/// Waits (10 s at most) for `client` to log in, then checks a message it publishes comes
/// back to its own subscription.
async fn assert_round_trip(client: &async_nats::Client) {
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
}

/// A refused login does not fail `connect`: the client keeps retrying in the background,
/// as it does while a server is down. So: still not connected a second later, against a
/// server the caller has seen take a login.
async fn assert_never_connects(client: &async_nats::Client) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
}

#[tokio::test]
async fn the_configured_user_and_password_log_in() {
    let port = atelier_testkit::free_local_addr().port();
    let _server = start_server_with_password(port);

    let client =
        atelier_events::connect(&config(port, password("s3cret-nats-password")), "auth-test")
            .await
            .expect("a client");
    assert_round_trip(&client).await;

    let refused = atelier_events::connect(&config(port, password("wrong-password")), "auth-test")
        .await
        .expect("a client, connecting in the background");
    assert_never_connects(&refused).await;
}

/// A fresh directory under the system temp dir, removed when dropped (so also when a
/// test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("atelier-nats-auth-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth a panic in a panic.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A NATS JWT (v2, as github.com/nats-io/jwt encodes one): header and claims as base64url
/// without padding, then the issuer's ed25519 signature over `header.claims`. The server
/// checks the signature against `iss`, and whether it trusts `iss` for the claim's type.
fn signed_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({ "typ": "JWT", "alg": "ed25519-nkey" });
    let issued_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let claims = json!({
        // nsc uses a hash of the claims; the server only needs an id.
        "jti": uuid::Uuid::now_v7().simple().to_string(),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("an ed25519 signature");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The account's limits as `nsc` sets them (jwt's `NewAccountClaims`): unlimited, but
/// no JetStream. Leaving them out is not unlimited: a missing limit reads as zero.
fn unlimited_account() -> Value {
    json!({
        "limits": {
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
        },
        "default_permissions": { "pub": {}, "sub": {} },
        "type": "account",
        "version": 2,
    })
}

/// A user JWT signed by `account`, with `nsc`'s defaults: no limits, no permissions
/// beyond the account's.
fn user_jwt(account: &KeyPair, user: &KeyPair) -> String {
    let nats = json!({
        "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1,
        "type": "user",
        "version": 2,
    });
    signed_jwt(account, &user.public_key(), "auth-test-user", nats)
}

/// A new user of `account`, as a `.creds` file in `dir` laid out as `nsc` writes one.
/// async-nats wants a line break after each closing line (Go's parser does not).
fn write_creds(dir: &Path, file_name: &str, account: &KeyPair) -> PathBuf {
    let user = KeyPair::new_user();
    let jwt = user_jwt(account, &user);
    let seed = user.seed().expect("a user seed");
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    let path = dir.join(file_name);
    std::fs::write(&path, creds).expect("the creds file written");
    path
}

/// An operator and the one account it signs: the trust a server in operator mode is
/// configured with.
struct Trust {
    operator: KeyPair,
    account: KeyPair,
}

impl Trust {
    fn new() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
        }
    }

    /// Operator mode: the server trusts the operator's self-signed JWT, and knows the
    /// account from the JWT the operator signed for it (`resolver: MEMORY` takes only
    /// preloaded accounts). No system account: the test needs none.
    fn server_config(&self, port: u16) -> String {
        let operator_key = self.operator.public_key();
        let operator_jwt = signed_jwt(
            &self.operator,
            &operator_key,
            "auth-test-operator",
            json!({ "type": "operator", "version": 2 }),
        );
        let account_key = self.account.public_key();
        let account_jwt = signed_jwt(
            &self.operator,
            &account_key,
            "auth-test-account",
            unlimited_account(),
        );
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             operator: \"{operator_jwt}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {account_key}: \"{account_jwt}\"\n}}\n"
        )
    }
}

fn start_server_trusting(trust: &Trust, dir: &Path, port: u16) -> Server {
    let config_file = dir.join("nats-server.conf");
    std::fs::write(&config_file, trust.server_config(port)).expect("the server config written");
    let config_file = config_file.to_str().expect("a UTF-8 temp path");
    start_server(&["-c", config_file])
}

fn creds(port: u16, path: PathBuf) -> NatsConfig {
    config(port, NatsAuth::CredsFile(path))
}

#[tokio::test]
async fn a_creds_file_of_the_trusted_account_logs_in() {
    let dir = TempDir::new();
    let trust = Trust::new();
    let port = atelier_testkit::free_local_addr().port();
    let _server = start_server_trusting(&trust, &dir.0, port);
    let path = write_creds(&dir.0, "user.creds", &trust.account);

    let client = atelier_events::connect(&creds(port, path), "auth-test")
        .await
        .expect("a client");
    assert_round_trip(&client).await;
}

#[tokio::test]
async fn a_creds_file_of_an_unknown_account_never_connects() {
    let dir = TempDir::new();
    let trust = Trust::new();
    let port = atelier_testkit::free_local_addr().port();
    let _server = start_server_trusting(&trust, &dir.0, port);
    // The server is up and takes its own account's users, so the refusal below is the
    // login's, not a server still starting.
    let trusted = write_creds(&dir.0, "trusted.creds", &trust.account);
    let client = atelier_events::connect(&creds(port, trusted), "auth-test")
        .await
        .expect("a client");
    assert_round_trip(&client).await;

    // A well-formed user, signed by an account the operator never signed.
    let stranger = write_creds(&dir.0, "stranger.creds", &KeyPair::new_account());
    let refused = atelier_events::connect(&creds(port, stranger), "auth-test")
        .await
        .expect("a client, connecting in the background");
    assert_never_connects(&refused).await;
}

#[tokio::test]
async fn a_missing_creds_file_is_an_error_from_connect() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.creds");
    let port = atelier_testkit::free_local_addr().port();

    let err = atelier_events::connect(&creds(port, missing), "auth-test")
        .await
        .expect_err("no client without its credentials");
    assert!(err.to_string().contains("missing.creds"), "{err:#}");
}
