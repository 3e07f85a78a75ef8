//! How AnalyzeIntent answers, counted: the share of answers that needed the LLM, came from
//! the cache or fell back is what tells whether the heuristics, the cache and the LLM pull
//! their weight.
//!
//! The fallbacks a configured LLM caused, by the kind of failure (timeout, status,
//! wrong_shape, ...), tell what to fix: the provider, or the model's JSON.
//!
//! The counters are the runtime's [`LabelledCounters`], rendered in the Prometheus text
//! format by whoever serves `/metrics`.

use atelier_llm::LlmError;
use atelier_runtime::metrics::LabelledCounters;

use crate::analyze::Source;

const ANSWERS: &str = "atelier_intent_answers_total";
const LLM_FALLBACKS: &str = "atelier_intent_llm_fallbacks_total";

/// Answers per [`Source`], and fallbacks per LLM failure, since the process started.
#[derive(Debug)]
pub struct IntentMetrics {
    answers: LabelledCounters,
    llm_fallbacks: LabelledCounters,
}

impl Default for IntentMetrics {
    fn default() -> Self {
        Self {
            answers: LabelledCounters::new(
                ANSWERS,
                "AnalyzeIntent answers, by the path that produced them.",
                "source",
                &Source::ALL.map(Source::as_str),
            ),
            llm_fallbacks: LabelledCounters::new(
                LLM_FALLBACKS,
                "Fallback answers given although an LLM is configured, by why its answer was not used.",
                "reason",
                &LlmError::KINDS,
            ),
        }
    }
}

impl IntentMetrics {
    pub fn record(&self, source: Source) {
        self.answers.increment(source.as_str());
    }

    /// `kind`: an [`LlmError::kind`].
    pub fn record_llm_failure(&self, kind: &str) {
        self.llm_fallbacks.increment(kind);
    }

    pub fn count(&self, source: Source) -> u64 {
        self.answers.get(source.as_str())
    }

    pub fn llm_fallbacks(&self, kind: &str) -> u64 {
        self.llm_fallbacks.get(kind)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = self.answers.render();
        text.push_str(&self.llm_fallbacks.render());
        text
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
        metrics.record_llm_failure("wrong_shape");
        assert_eq!(
            metrics.render(),
            "# HELP atelier_intent_answers_total AnalyzeIntent answers, by the path that produced them.\n\
             # TYPE atelier_intent_answers_total counter\n\
             atelier_intent_answers_total{source=\"heuristic\"} 2\n\
             atelier_intent_answers_total{source=\"llm\"} 0\n\
             atelier_intent_answers_total{source=\"cache\"} 0\n\
             atelier_intent_answers_total{source=\"fallback\"} 1\n\
             # HELP atelier_intent_llm_fallbacks_total Fallback answers given although an LLM is configured, by why its answer was not used.\n\
             # TYPE atelier_intent_llm_fallbacks_total counter\n\
             atelier_intent_llm_fallbacks_total{reason=\"timeout\"} 0\n\
             atelier_intent_llm_fallbacks_total{reason=\"circuit_open\"} 0\n\
             atelier_intent_llm_fallbacks_total{reason=\"status\"} 0\n\
             atelier_intent_llm_fallbacks_total{reason=\"transport\"} 0\n\
             atelier_intent_llm_fallbacks_total{reason=\"malformed\"} 0\n\
             atelier_intent_llm_fallbacks_total{reason=\"wrong_shape\"} 1\n"
        );
    }
}
