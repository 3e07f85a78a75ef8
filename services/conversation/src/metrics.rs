//! What the conversation service counts for Prometheus, besides every RPC's latency and
//! status: the credits it moves (the money), how long outbox rows wait before the stream
//! stores them (how far events and jobs trail their commits), and what the reaper did
//! (how often the pipeline loses a message).
//!
//! Credits are counted after the transaction that moved them commits, from the amounts
//! the statements returned, so the counters agree with the ledger (a replayed or
//! repeated call that moves nothing counts nothing).

use atelier_runtime::metrics::{self, CounterBy, Histogram, Registry, RpcMetrics};

use crate::reaper::Action;

/// How credits move: reserved when a message is accepted (or upgraded), captured when an
/// image is delivered, released when an image fails or is cancelled (or a message is
/// downgraded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movement {
    Reserved,
    Captured,
    Released,
}

impl Movement {
    pub const ALL: [Movement; 3] = [Self::Reserved, Self::Captured, Self::Released];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Captured => "captured",
            Self::Released => "released",
        }
    }
}

/// The service's series; clones share them.
#[derive(Clone, Debug)]
pub struct ConversationMetrics {
    pub rpc: RpcMetrics,
    credits: CounterBy,
    reaped: CounterBy,
    outbox_lag: Histogram,
}

impl Default for ConversationMetrics {
    fn default() -> Self {
        Self {
            rpc: RpcMetrics::default(),
            credits: metrics::counter_by("movement", &Movement::ALL.map(Movement::as_str)),
            reaped: metrics::counter_by("action", &Action::ALL.map(Action::as_str)),
            outbox_lag: metrics::latency_histogram(),
        }
    }
}

impl ConversationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        self.rpc.register(registry);
        registry.register(
            "credits",
            "Credits moved, by movement: reserved for accepted messages, captured for delivered images, released for failed or cancelled ones.",
            self.credits.clone(),
        );
        registry.register(
            "conversation_reaped",
            "Messages the pipeline lost, by what the reaper did: their job published again, or their images failed and refunded.",
            self.reaped.clone(),
        );
        registry.register(
            "outbox_lag_seconds",
            "Time from an outbox row's creation (its UUIDv7 id) to the stream's acknowledgement of it.",
            self.outbox_lag.clone(),
        );
    }

    /// Counts `amount` credits moved; zero or less counts nothing.
    pub fn credits_moved(&self, movement: Movement, amount: i64) {
        if let Ok(amount) = u64::try_from(amount)
            && amount > 0
        {
            self.credits
                .get_or_create(&[("movement", movement.as_str())])
                .inc_by(amount);
        }
    }

    pub fn credits(&self, movement: Movement) -> u64 {
        self.credits
            .get(&[("movement", movement.as_str())])
            .map_or(0, |counter| counter.get())
    }

    pub fn reaped(&self, action: Action) {
        self.reaped
            .get_or_create(&[("action", action.as_str())])
            .inc();
    }

    /// Records the lag of a row stored now, from its id's timestamp (a UUIDv7 holds its
    /// creation time, in milliseconds).
    pub fn outbox_row_stored(&self, id: uuid::Uuid) {
        if let Some((seconds, nanos)) = id.get_timestamp().map(|at| at.to_unix()) {
            let created = std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos);
            if let Ok(lag) = std::time::SystemTime::now().duration_since(created) {
                self.outbox_lag.observe(lag.as_secs_f64());
            }
        }
    }

    /// Every series, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut registry = metrics::registry();
        self.register(&mut registry);
        metrics::encode(&registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_count_what_moved_and_nothing_else() {
        let metrics = ConversationMetrics::default();
        metrics.credits_moved(Movement::Reserved, 16);
        metrics.credits_moved(Movement::Reserved, 0);
        metrics.credits_moved(Movement::Released, -4);
        metrics.credits_moved(Movement::Captured, 12);
        assert_eq!(metrics.credits(Movement::Reserved), 16);
        assert_eq!(metrics.credits(Movement::Released), 0);
        let text = metrics.encode();
        assert!(
            text.contains("atelier_credits_total{movement=\"captured\"} 12\n"),
            "{text}"
        );
    }

    #[test]
    fn outbox_lag_is_read_from_the_row_id() {
        let metrics = ConversationMetrics::default();
        let id = uuid::Uuid::now_v7();
        metrics.outbox_row_stored(id);
        let text = metrics.encode();
        assert!(
            text.contains("atelier_outbox_lag_seconds_count 1\n"),
            "{text}"
        );
        // Created just now: well inside the first bucket's second.
        assert!(
            text.contains("atelier_outbox_lag_seconds_bucket{le=\"1.024\"} 1\n"),
            "{text}"
        );
    }
}
