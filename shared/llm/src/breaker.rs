//! A circuit breaker: stop calling a dependency that keeps failing, and probe it with one
//! call at a time until it recovers.
//!
//! While the LLM is down, a worker that still called it would wait out a whole deadline
//! per job before falling back to its heuristic, and would add load to a provider that
//! is trying to recover. The breaker turns that into an immediate fallback.
//!
//! - **Closed**: calls go through; `failure_threshold` consecutive failed calls open it.
//! - **Open**: calls are refused for `open_for`.
//! - **Half-open**: one trial call goes through and the others are refused; the trial's
//!   success closes the breaker, its failure opens it again.
//!
//! The breaker is pure state: the caller passes the time, so tests drive it with
//! explicit `Instant`s and no sleeps.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What the breaker does with the next call, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Every state's [`as_str`](Self::as_str).
    pub const NAMES: [&'static str; 3] = [
        Self::Closed.as_str(),
        Self::Open.as_str(),
        Self::HalfOpen.as_str(),
    ];

    /// The name in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker; at least 1.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it admits a trial.
    pub open_for: Duration,
    /// How long a trial may stay without an outcome before another is admitted. A trial
    /// whose caller gave up (its future dropped) never reports back; without this the
    /// breaker would stay half-open, refusing every call, for ever. Set it to the longest
    /// a call can take.
    pub trial_lease: Duration,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { since: Instant },
    HalfOpen { trial_since: Instant },
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    /// Whether a call may start now. A `true` in the open or half-open state makes this
    /// call the trial, so call it once per call, right before the call.
    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { since } => {
                if elapsed(since, now) >= self.config.open_for {
                    *state = State::HalfOpen { trial_since: now };
                    true
                } else {
                    false
                }
            }
            State::HalfOpen { trial_since } => {
                if elapsed(trial_since, now) >= self.config.trial_lease {
                    *state = State::HalfOpen { trial_since: now };
                    true
                } else {
                    false
                }
            }
        }
    }

    /// A call succeeded: the dependency works, whatever state the breaker was in.
    pub fn record_success(&self) {
        *self.lock() = State::Closed {
            consecutive_failures: 0,
        };
    }

    /// A call failed, after all its retries.
    pub fn record_failure(&self, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed {
                consecutive_failures,
            } => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                if consecutive_failures >= self.config.failure_threshold {
                    State::Open { since: now }
                } else {
                    State::Closed {
                        consecutive_failures,
                    }
                }
            }
            State::HalfOpen { .. } => State::Open { since: now },
            // A call that started before the breaker opened; the open period keeps its
            // start, so late failures cannot keep the breaker open for ever.
            open @ State::Open { .. } => open,
        };
    }

    /// The state as the next call would see it: an open breaker whose period is over
    /// reports half-open, since the next call will be its trial.
    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { since } if elapsed(since, now) >= self.config.open_for => {
                BreakerState::HalfOpen
            }
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is one assignment of a valid state, so a panic elsewhere while the
        // lock was held cannot have left it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn elapsed(since: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);
    const TRIAL_LEASE: Duration = Duration::from_secs(4);

    fn breaker(failure_threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold,
            open_for: OPEN_FOR,
            trial_lease: TRIAL_LEASE,
        })
    }

    /// A breaker that has just opened at `t0`.
    fn opened_at(t0: Instant) -> CircuitBreaker {
        let breaker = breaker(1);
        assert!(breaker.allow(t0));
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), BreakerState::Open);
        breaker
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let breaker = breaker(3);
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        assert!(breaker.allow(t0));
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), BreakerState::Open);
        assert!(!breaker.allow(t0));
        assert!(!breaker.allow(t0 + OPEN_FOR - Duration::from_millis(1)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let breaker = breaker(2);
        breaker.record_failure(t0);
        breaker.record_success();
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_one_trial_only() {
        let t0 = Instant::now();
        let breaker = opened_at(t0);
        let later = t0 + OPEN_FOR;
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert!(
            breaker.allow(later),
            "the first call after open_for is the trial"
        );
        assert!(
            !breaker.allow(later),
            "a second call must wait for the trial"
        );
        assert!(!breaker.allow(later + Duration::from_millis(1)));
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn a_successful_trial_closes() {
        let t0 = Instant::now();
        let breaker = opened_at(t0);
        let later = t0 + OPEN_FOR;
        assert!(breaker.allow(later));
        breaker.record_success();
        assert_eq!(breaker.state(later), BreakerState::Closed);
        assert!(breaker.allow(later));
        assert!(breaker.allow(later));
    }

    #[test]
    fn a_failed_trial_reopens_for_a_full_period() {
        let t0 = Instant::now();
        let breaker = opened_at(t0);
        let trial_at = t0 + OPEN_FOR;
        assert!(breaker.allow(trial_at));
        let failed_at = trial_at + Duration::from_secs(1);
        breaker.record_failure(failed_at);
        assert_eq!(breaker.state(failed_at), BreakerState::Open);
        assert!(!breaker.allow(failed_at));
        assert!(!breaker.allow(failed_at + OPEN_FOR - Duration::from_millis(1)));
        assert!(breaker.allow(failed_at + OPEN_FOR));
    }

    #[test]
    fn an_abandoned_trial_is_replaced_after_its_lease() {
        let t0 = Instant::now();
        let breaker = opened_at(t0);
        let trial_at = t0 + OPEN_FOR;
        assert!(breaker.allow(trial_at));
        // The trial's caller went away without an outcome.
        assert!(!breaker.allow(trial_at + TRIAL_LEASE - Duration::from_millis(1)));
        assert!(breaker.allow(trial_at + TRIAL_LEASE));
        assert!(!breaker.allow(trial_at + TRIAL_LEASE));
    }

    #[test]
    fn late_failures_do_not_extend_the_open_period() {
        let t0 = Instant::now();
        let breaker = opened_at(t0);
        breaker.record_failure(t0 + Duration::from_secs(5));
        assert!(breaker.allow(t0 + OPEN_FOR));
    }
}
