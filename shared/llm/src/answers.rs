//! How a service that asks an LLM answered, counted: the intent and enhancement services
//! each answer from a heuristic, the LLM, a cache or a fallback, and the share of each is
//! what tells whether the heuristics, the cache and the LLM pull their weight. The
//! fallbacks a configured LLM caused, by reason, tell what to fix: the provider, the
//! model's JSON, or what it wrote.
//!
//! Both services count the same way under their own names
//! (`atelier_<service>_answers_total{source}`,
//! `atelier_<service>_llm_fallbacks_total{reason}`), so this is one type for both.

use atelier_runtime::metrics::{self, CounterBy, Registry};

/// Answers by source and fallbacks by reason, since the process started; every source
/// and reason is a series from the start, so a rate over it never starts from nothing.
#[derive(Debug)]
pub struct AnswerMetrics {
    service: &'static str,
    answers: CounterBy,
    fallbacks: CounterBy,
}

impl AnswerMetrics {
    /// `service` names the series (`intent` gives `atelier_intent_answers_total`);
    /// `sources` and `reasons` are every label value the service can record.
    pub fn new(service: &'static str, sources: &[&'static str], reasons: &[&'static str]) -> Self {
        Self {
            service,
            answers: metrics::counter_by("source", sources),
            fallbacks: metrics::counter_by("reason", reasons),
        }
    }

    pub fn record(&self, source: &'static str) {
        self.answers.get_or_create(&[("source", source)]).inc();
    }

    pub fn record_fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn count(&self, source: &'static str) -> u64 {
        self.answers
            .get(&[("source", source)])
            .map_or(0, |counter| counter.get())
    }

    pub fn fallbacks(&self, reason: &'static str) -> u64 {
        self.fallbacks
            .get(&[("reason", reason)])
            .map_or(0, |counter| counter.get())
    }

    /// Registers both counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            format!("{}_answers", self.service),
            "Answers, by the path that produced them.",
            self.answers.clone(),
        );
        registry.register(
            format!("{}_llm_fallbacks", self.service),
            "Fallback answers given although an LLM is configured, by why its answer was not used.",
            self.fallbacks.clone(),
        );
    }

    /// The two counters alone, in the Prometheus text format.
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
    fn counts_every_source_and_reason_under_the_service_name() {
        let metrics = AnswerMetrics::new("intent", &["heuristic", "llm"], &["timeout", "status"]);
        metrics.record("heuristic");
        metrics.record("heuristic");
        metrics.record_fallback("status");
        assert_eq!(metrics.count("heuristic"), 2);
        assert_eq!(metrics.fallbacks("status"), 1);
        let text = metrics.encode();
        for line in [
            "# TYPE atelier_intent_answers counter",
            "atelier_intent_answers_total{source=\"heuristic\"} 2",
            "atelier_intent_answers_total{source=\"llm\"} 0",
            "# TYPE atelier_intent_llm_fallbacks counter",
            "atelier_intent_llm_fallbacks_total{reason=\"timeout\"} 0",
            "atelier_intent_llm_fallbacks_total{reason=\"status\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
