//! The reference web client in headless Chromium against the whole mesh: a prompt sent over
//! grpc-web, its progress followed live, the page reloaded mid-way, and every step of the
//! message shown exactly once with the image rendered.
//!
//! The browser is driven by `web/tests/browser.mjs` (playwright-core); this test starts the
//! mesh, runs the script, and checks what the page showed against the user's events as the
//! stream stored them. `deploy/local/test.sh` builds `web/` and installs Chromium first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use atelier_events::Subjects;
use atelier_proto::v1 as proto;
use atelier_tests::{Mesh, MeshOptions};
use futures::StreamExt as _;
use prost::Message as _;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// What must exist before the browser can run; a missing piece fails with what to do.
fn check_prerequisites(web: &Path) {
    let hint = "run `bash deploy/local/test.sh` (it installs Chromium and builds web/), \
                or `cd web && npm ci && npm run build` and `apt-get install chromium`";
    for needed in [
        web.join("dist/index.html"),
        web.join("node_modules/playwright-core"),
        PathBuf::from(chromium()),
    ] {
        assert!(needed.exists(), "{} is missing: {hint}", needed.display());
    }
}

#[tokio::test]
async fn the_web_client_follows_a_message_live_across_a_reload() {
    atelier_testkit::init_logging();
    let web = web_dir();
    check_prerequisites(&web);
    // Renders take long enough for the page to be reloaded while one runs.
    let sd = atelier_testkit::fakes::automatic1111(atelier_testkit::fakes::sized_answer(
        Duration::from_secs(4),
    ))
    .await;
    let mesh = Mesh::start(MeshOptions {
        automatic1111_url: Some(sd.uri()),
        web_dir: Some(web.join("dist")),
        ..MeshOptions::default()
    })
    .await
    .expect("mesh");
    let user = "browser-user";
    let token = mesh
        .bearer(user)
        .expect("token")
        .trim_start_matches("Bearer ")
        .to_owned();
    let page = format!("http://{}/#token={token}", mesh.edge_http);
    // Kept where ATELIER_SCREENSHOT says, for a person to look at; else thrown away.
    let keep = std::env::var_os("ATELIER_SCREENSHOT").map(PathBuf::from);
    let screenshot = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("atelier-web-{}.png", uuid::Uuid::now_v7()))
    });

    // The script bounds each of its waits (60 s at most), so it ends on its own.
    let mut node = std::process::Command::new("node");
    node.arg(web.join("tests/browser.mjs"))
        .env("ATELIER_WEB_URL", &page)
        .env("ATELIER_MODEL", "sdxl")
        .env("ATELIER_EXPECT_WIDTH", "1024")
        .env("ATELIER_SCREENSHOT", &screenshot)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .expect("no panic")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stderr}"
    );
    if keep.is_none() {
        let _ = std::fs::remove_file(&screenshot);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let shown: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no result line; stderr:\n{stderr}")),
    )
    .expect("one line of JSON");
    assert_eq!(shown["naturalWidth"], 1024);
    let message_id = shown["messageId"].as_str().expect("a message id");
    let mut cursors: Vec<u64> = shown["cursors"]
        .as_array()
        .expect("cursors")
        .iter()
        .map(|cursor| cursor.as_u64().expect("a cursor"))
        .collect();
    let kinds: Vec<&str> = shown["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .map(|kind| kind.as_str().expect("a kind"))
        .collect();
    assert!(kinds.contains(&"generationProgress"), "{kinds:?}");

    // Exactly the message's events as stored: none missing across the reload, none twice.
    let stored = stored_events(&mesh, user, message_id).await;
    let shown_count = cursors.len();
    cursors.sort_unstable();
    cursors.dedup();
    assert_eq!(cursors.len(), shown_count, "a step shown twice: {kinds:?}");
    assert_eq!(cursors, stored, "the page's timeline against the stream");
}

/// The stream sequences of `message_id`'s events in `user`'s stored events.
async fn stored_events(mesh: &Mesh, user: &str, message_id: &str) -> Vec<u64> {
    let subjects = Subjects::new(&mesh.nats.prefix).expect("prefix");
    let js = mesh.nats.jetstream().await.expect("NATS");
    let stream = js
        .get_stream(subjects.events_stream())
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects.user_events(user),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut sequences = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("stored events")
            .expect("open")
            .expect("a message");
        let info = message.info().expect("metadata");
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let event = proto::Event::decode(message.payload.clone()).expect("an event");
        if event.message_id == message_id {
            sequences.push(sequence);
        }
        if pending == 0 {
            return sequences;
        }
    }
}
