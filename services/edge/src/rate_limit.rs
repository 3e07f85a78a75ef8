//! A token bucket per user: `burst` calls at once, refilled at `per_second`.
//!
//! In memory, per edge replica: N replicas allow N times the rate, which is acceptable for
//! abuse protection (credits, not the rate limit, bound what a user can spend). Idle
//! buckets are evicted so memory follows active users, not all users ever seen.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    /// Buckets untouched this long are dropped (they would be full anyway).
    pub idle_eviction: Duration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_user: HashMap<String, Bucket>,
    calls: usize,
}

/// How often, in calls, idle buckets are swept.
const SWEEP_EVERY: usize = 4096;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new(Buckets::default()),
        }
    }

    /// Takes one token for `user`, or says how long until one is available.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        // A panic elsewhere cannot leave a bucket half-updated: every update below is one
        // assignment, so a poisoned lock is still consistent.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.calls = state.calls.wrapping_add(1);
        if state.calls.is_multiple_of(SWEEP_EVERY) {
            state.by_user.retain(|_, bucket| {
                now.saturating_duration_since(bucket.updated) < limit.idle_eviction
            });
        }
        let bucket = state.by_user.entry(user.to_owned()).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limit.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second,
            burst,
            idle_eviction: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_burst_passes_then_the_next_call_waits_one_refill() {
        let limiter = limiter(10.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("alice", start), Ok(()));
        }
        let wait = limiter.check("alice", start).expect_err("bucket empty");
        assert_eq!(wait, Duration::from_millis(100));
        // After the advertised wait the call passes.
        assert_eq!(limiter.check("alice", start + wait), Ok(()));
    }

    #[test]
    fn users_have_their_own_buckets() {
        let limiter = limiter(1.0, 1);
        let now = Instant::now();
        assert_eq!(limiter.check("alice", now), Ok(()));
        assert!(limiter.check("alice", now).is_err());
        assert_eq!(limiter.check("bob", now), Ok(()));
    }

    #[test]
    fn refills_never_exceed_the_burst() {
        let limiter = limiter(100.0, 2);
        let start = Instant::now();
        assert_eq!(limiter.check("alice", start), Ok(()));
        let later = start + Duration::from_secs(3600);
        assert_eq!(limiter.check("alice", later), Ok(()));
        assert_eq!(limiter.check("alice", later), Ok(()));
        assert!(limiter.check("alice", later).is_err());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limiter = limiter(1.0, 1);
        let start = Instant::now();
        for user in 0..SWEEP_EVERY - 1 {
            let _ = limiter.check(&format!("user-{user}"), start);
        }
        // The sweeping call comes after every other bucket has been idle too long.
        let later = start + Duration::from_secs(120);
        let _ = limiter.check("fresh", later);
        let state = limiter.state.lock().expect("lock");
        assert_eq!(state.by_user.len(), 1);
    }
}
