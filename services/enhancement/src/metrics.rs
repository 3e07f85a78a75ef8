//! How EnhancePrompt answers, counted: the share of answers that came from the LLM, the
//! cache or the fallback tells whether the LLM is healthy and the cache pulls its weight.
//!
//! Plain atomic counters rendered in the Prometheus text format, so the process needs no
//! metrics registry and whoever serves `/metrics` only calls [`EnhancementMetrics::render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::enhance::Source;

const ANSWERS: &str = "atelier_enhancement_answers_total";

/// Answers per [`Source`] since the process started.
#[derive(Debug, Default)]
pub struct EnhancementMetrics {
    llm: AtomicU64,
    cache: AtomicU64,
    fallback: AtomicU64,
}

impl EnhancementMetrics {
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
            "# HELP {ANSWERS} EnhancePrompt answers, by the path that produced them.\n\
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
        let metrics = EnhancementMetrics::default();
        metrics.record(Source::Llm);
        metrics.record(Source::Llm);
        metrics.record(Source::Fallback);
        assert_eq!(
            metrics.render(),
            "# HELP atelier_enhancement_answers_total EnhancePrompt answers, by the path that produced them.\n\
             # TYPE atelier_enhancement_answers_total counter\n\
             atelier_enhancement_answers_total{source=\"llm\"} 2\n\
             atelier_enhancement_answers_total{source=\"cache\"} 0\n\
             atelier_enhancement_answers_total{source=\"fallback\"} 1\n"
        );
    }
}
