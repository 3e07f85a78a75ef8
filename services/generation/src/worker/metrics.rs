//! What the worker counts for Prometheus: every provider call's duration by provider and
//! outcome (retries included, so a slow or failing provider shows as such), beside the
//! job queue's own series ([`atelier_events::jobs::JobMetrics`]).

use std::time::Instant;

use atelier_runtime::metrics::{self, Family, Histogram, Registry};

use crate::providers::{ProviderError, ProviderKind, Trouble};

type ProviderLabels = [(&'static str, &'static str); 2];

/// The worker's series; clones share them.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    provider_calls: Family<ProviderLabels, Histogram>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            provider_calls: Family::new_with_constructor(metrics::latency_histogram),
        }
    }
}

impl WorkerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "provider_call_duration_seconds",
            "Time of each image provider call, retries included, by provider and outcome (ok, or why it failed).",
            self.provider_calls.clone(),
        );
    }

    /// Records a provider call that ended (a cancelled one is not recorded).
    pub(super) fn provider_call<T>(
        &self,
        provider: ProviderKind,
        started: Instant,
        outcome: &Result<T, ProviderError>,
    ) {
        self.provider_calls
            .get_or_create(&[
                ("provider", provider.as_str()),
                ("outcome", outcome_of(outcome)),
            ])
            .observe(started.elapsed().as_secs_f64());
    }
}

fn outcome_of<T>(outcome: &Result<T, ProviderError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(ProviderError::Permanent { .. }) => "permanent",
        Err(ProviderError::Retryable { trouble, .. }) => match trouble {
            Trouble::TimedOut => "timed_out",
            Trouble::Unreachable => "unreachable",
            Trouble::Status(_) => "status",
            Trouble::BadAnswer => "bad_answer",
            Trouble::Deadline => "deadline",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_recorded_by_provider_and_outcome() {
        let metrics = WorkerMetrics::default();
        let started = Instant::now();
        metrics.provider_call(ProviderKind::Builtin, started, &Ok::<(), _>(()));
        metrics.provider_call::<()>(
            ProviderKind::Automatic1111,
            started,
            &Err(ProviderError::timed_out("slow")),
        );
        let mut registry = metrics::registry();
        metrics.register(&mut registry);
        let text = metrics::encode(&registry);
        for series in [
            "atelier_provider_call_duration_seconds_count{provider=\"builtin\",outcome=\"ok\"} 1\n",
            "atelier_provider_call_duration_seconds_count{provider=\"automatic1111\",outcome=\"timed_out\"} 1\n",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
