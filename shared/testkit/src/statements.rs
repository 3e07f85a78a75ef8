use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

/// Counts the statements sqlx logs (its `sqlx::query` events: every statement and COMMIT,
/// but not BEGIN, which sqlx sends without logging) while a server handles an RPC, that
/// is inside the `rpc` span every Atelier server opens per call. Background work (the
/// outbox relay and sweeper) runs outside it and is not counted.
///
/// The subscriber is process-wide; nextest runs each test in its own process, so the
/// count is that test's alone. Under `cargo test` parallel tests of one binary would add
/// to each other's counts.
#[derive(Clone, Default)]
pub struct StatementCounter(Arc<AtomicUsize>);

impl StatementCounter {
    /// Installs the counter as the global subscriber. Call once, first thing in the test.
    pub fn install() -> Self {
        let counter = Self::default();
        // The grpc target lets this layer see the `rpc` spans its events sit in.
        let layer = CountingLayer(counter.0.clone()).with_filter(
            filter::Targets::new()
                .with_target("sqlx::query", tracing::Level::TRACE)
                .with_target("atelier_runtime::grpc", tracing::Level::INFO),
        );
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

impl<S> Layer<S> for CountingLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let in_rpc = ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|span| span.name() == "rpc"));
        if event.metadata().target() == "sqlx::query" && in_rpc {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
