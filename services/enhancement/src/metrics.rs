//! How EnhancePrompt answers, counted: the share of answers that came from the LLM, the
//! cache or the fallback tells whether the LLM is healthy and the cache pulls its weight.
//!
//! The counters are the runtime's [`LabelledCounters`], rendered in the Prometheus text
//! format by whoever serves `/metrics`.

use atelier_runtime::metrics::LabelledCounters;

use crate::enhance::Source;

const ANSWERS: &str = "atelier_enhancement_answers_total";

/// Answers per [`Source`] since the process started.
#[derive(Debug)]
pub struct EnhancementMetrics(LabelledCounters);

impl Default for EnhancementMetrics {
    fn default() -> Self {
        Self(LabelledCounters::new(
            ANSWERS,
            "EnhancePrompt answers, by the path that produced them.",
            "source",
            &Source::ALL.map(Source::as_str),
        ))
    }
}

impl EnhancementMetrics {
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
