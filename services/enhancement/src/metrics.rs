//! How EnhancePrompt answers, counted: the share of answers that came from the LLM, the
//! cache or the fallback tells whether the LLM is healthy and the cache pulls its weight;
//! the fallbacks a configured LLM caused, by reason, tell what to fix (the provider, the
//! model's JSON, or the rewrites it writes).
//!
//! The counters are the runtime's [`LabelledCounters`], rendered in the Prometheus text
//! format by whoever serves `/metrics`.

use atelier_runtime::metrics::LabelledCounters;

use crate::enhance::{FallbackReason, Source};

const ANSWERS: &str = "atelier_enhancement_answers_total";
const FALLBACKS: &str = "atelier_enhancement_llm_fallbacks_total";

/// Answers per [`Source`], and fallbacks per [`FallbackReason`], since the process
/// started.
#[derive(Debug)]
pub struct EnhancementMetrics {
    answers: LabelledCounters,
    fallbacks: LabelledCounters,
}

impl Default for EnhancementMetrics {
    fn default() -> Self {
        Self {
            answers: LabelledCounters::new(
                ANSWERS,
                "EnhancePrompt answers, by the path that produced them.",
                "source",
                &Source::ALL.map(Source::as_str),
            ),
            fallbacks: LabelledCounters::new(
                FALLBACKS,
                "Fallback answers given although an LLM is configured, by why its answer was not used.",
                "reason",
                &FallbackReason::ALL.map(FallbackReason::as_str),
            ),
        }
    }
}

impl EnhancementMetrics {
    pub fn record(&self, source: Source) {
        self.answers.increment(source.as_str());
    }

    pub fn record_fallback(&self, reason: FallbackReason) {
        self.fallbacks.increment(reason.as_str());
    }

    pub fn count(&self, source: Source) -> u64 {
        self.answers.get(source.as_str())
    }

    pub fn fallbacks(&self, reason: FallbackReason) -> u64 {
        self.fallbacks.get(reason.as_str())
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = self.answers.render();
        text.push_str(&self.fallbacks.render());
        text
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
        metrics.record_fallback(FallbackReason::Rejected(
            crate::check::Rejection::LostSubject,
        ));
        assert_eq!(
            metrics.render(),
            "# HELP atelier_enhancement_answers_total EnhancePrompt answers, by the path that produced them.\n\
             # TYPE atelier_enhancement_answers_total counter\n\
             atelier_enhancement_answers_total{source=\"llm\"} 2\n\
             atelier_enhancement_answers_total{source=\"cache\"} 0\n\
             atelier_enhancement_answers_total{source=\"fallback\"} 1\n\
             # HELP atelier_enhancement_llm_fallbacks_total Fallback answers given although an LLM is configured, by why its answer was not used.\n\
             # TYPE atelier_enhancement_llm_fallbacks_total counter\n\
             atelier_enhancement_llm_fallbacks_total{reason=\"unavailable\"} 0\n\
             atelier_enhancement_llm_fallbacks_total{reason=\"wrong_shape\"} 0\n\
             atelier_enhancement_llm_fallbacks_total{reason=\"lost_subject\"} 1\n\
             atelier_enhancement_llm_fallbacks_total{reason=\"starts_with_punctuation\"} 0\n\
             atelier_enhancement_llm_fallbacks_total{reason=\"length\"} 0\n"
        );
    }
}
