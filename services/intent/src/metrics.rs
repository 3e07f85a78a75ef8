//! How AnalyzeIntent answers, counted: the share of answers that needed the LLM, came from
//! the cache or fell back is what tells whether the heuristics, the cache and the LLM pull
//! their weight.
//!
//! The counters are the runtime's [`LabelledCounters`], rendered in the Prometheus text
//! format by whoever serves `/metrics`.

use atelier_runtime::metrics::LabelledCounters;

use crate::analyze::Source;

const ANSWERS: &str = "atelier_intent_answers_total";

/// Answers per [`Source`] since the process started.
#[derive(Debug)]
pub struct IntentMetrics(LabelledCounters);

impl Default for IntentMetrics {
    fn default() -> Self {
        Self(LabelledCounters::new(
            ANSWERS,
            "AnalyzeIntent answers, by the path that produced them.",
            "source",
            &Source::ALL.map(Source::as_str),
        ))
    }
}

impl IntentMetrics {
    pub fn record(&self, source: Source) {
        self.0.increment(source.as_str());
    }

    pub fn count(&self, source: Source) -> u64 {
        self.0.get(source.as_str())
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.0.render()
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
