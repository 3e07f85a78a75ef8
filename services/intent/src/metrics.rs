//! How AnalyzeIntent answers, counted: the share of answers that needed the LLM, came from
//! the cache or fell back is what tells whether the heuristics, the cache and the LLM pull
//! their weight.
//!
//! Plain atomic counters rendered in the Prometheus text format, so the process needs no
//! metrics registry and whoever serves `/metrics` only calls [`IntentMetrics::render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::analyze::Source;

const ANSWERS: &str = "atelier_intent_answers_total";

/// Answers per [`Source`] since the process started.
#[derive(Debug, Default)]
pub struct IntentMetrics {
    heuristic: AtomicU64,
    llm: AtomicU64,
    cache: AtomicU64,
    fallback: AtomicU64,
}

impl IntentMetrics {
    pub fn record(&self, source: Source) {
        // Relaxed: each counter stands alone; no reader needs them mutually consistent.
        self.counter(source).fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, source: Source) -> u64 {
        self.counter(source).load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# HELP {ANSWERS} AnalyzeIntent answers, by the path that produced them.\n\
             # TYPE {ANSWERS} counter\n"
        );
        for source in Source::ALL {
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "{ANSWERS}{{source=\"{}\"}} {}",
                source.as_str(),
                self.count(source)
            );
        }
        text
    }

    fn counter(&self, source: Source) -> &AtomicU64 {
        match source {
            Source::Heuristic => &self.heuristic,
            Source::Llm => &self.llm,
            Source::Cache => &self.cache,
            Source::Fallback => &self.fallback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_source_in_the_text_format() {
        let metrics = IntentMetrics::default();
        metrics.record(Source::Heuristic);
        metrics.record(Source::Heuristic);
        metrics.record(Source::Fallback);
        assert_eq!(
            metrics.render(),
            "# HELP atelier_intent_answers_total AnalyzeIntent answers, by the path that produced them.\n\
             # TYPE atelier_intent_answers_total counter\n\
             atelier_intent_answers_total{source=\"heuristic\"} 2\n\
             atelier_intent_answers_total{source=\"llm\"} 0\n\
             atelier_intent_answers_total{source=\"cache\"} 0\n\
             atelier_intent_answers_total{source=\"fallback\"} 1\n"
        );
    }
}
