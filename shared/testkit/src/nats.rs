/// The NATS server tests use: `ATELIER_TEST_NATS_URL`, or the local one the README's
/// scripts start.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// A subject prefix (and so stream names) of one test's own on the shared NATS server;
/// the streams under it are deleted when this is dropped.
pub struct TestNats {
    pub url: String,
    pub prefix: String,
}

impl TestNats {
    pub fn new() -> Self {
        Self {
            url: std::env::var("ATELIER_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned()),
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
