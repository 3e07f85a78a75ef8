/// The NATS server tests use without `ATELIER_TEST_NATS_URL` and without
/// `.dev/nats-url` (which `deploy/local/ensure-deps.sh` writes).
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// `ATELIER_TEST_NATS_URL`; else the server the README's scripts made sure of (which may
/// be the pinned one beside a too-old server); else [`DEFAULT_URL`].
fn test_server_url() -> String {
    if let Ok(url) = std::env::var("ATELIER_TEST_NATS_URL") {
        return url;
    }
    let recorded = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.dev/nats-url");
    std::fs::read_to_string(recorded)
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// A subject prefix (and so stream names) of one test's own on the shared NATS server;
/// the streams under it are deleted when this is dropped.
pub struct TestNats {
    pub url: String,
    pub prefix: String,
}

impl TestNats {
    pub fn new() -> Self {
        Self {
            url: test_server_url(),
            prefix: format!("test{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// A JetStream context on the test server.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            async_nats::connect(&self.url).await?,
        ))
    }
}

impl Default for TestNats {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let url = self.url.clone();
        let stem = self.prefix.to_ascii_uppercase();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let js = async_nats::jetstream::new(async_nats::connect(url).await?);
                for suffix in ["JOBS", "EVENTS"] {
                    // Absent when the test never published: nothing to delete.
                    let _ = js.delete_stream(format!("{stem}_{suffix}")).await;
                }
                anyhow::Ok(())
            })
        })
        .join();
    }
}
