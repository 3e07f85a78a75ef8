use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

/// Counts the statements sqlx logs (its `sqlx::query` events: every statement and COMMIT,
/// but not BEGIN, which sqlx sends without logging), process-wide. nextest runs each test
/// in its own process, so the count is that test's alone; under `cargo test` parallel
/// tests of one binary would add to each other's counts.
#[derive(Clone, Default)]
pub struct StatementCounter(Arc<AtomicUsize>);

impl StatementCounter {
    /// Installs the counter as the global subscriber. Call once, first thing in the test.
    pub fn install() -> Self {
        let counter = Self::default();
        let layer = CountingLayer(counter.0.clone())
            .with_filter(filter::Targets::new().with_target("sqlx::query", tracing::Level::TRACE));
        let _ = tracing_subscriber::registry().with(layer).try_init();
        counter
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Runs `work` and returns how many statements it sent.
    pub async fn during<T>(&self, work: impl Future<Output = T>) -> (T, usize) {
        let before = self.count();
        let output = work.await;
        (output, self.count() - before)
    }
}

struct CountingLayer(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
