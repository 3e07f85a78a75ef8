//! Token buckets: `burst` at once, refilled at `per_second`, one bucket per key.
//!
//! The edge keeps two: one per user, taken by every authenticated call; and one per peer
//! address for failed authentications ([`peer_key`]), which the gatekeeper looks at
//! before it verifies anything (see `gatekeeper.rs`).
//!
//! In memory, per edge replica: N replicas allow N times the rate, which is acceptable for
//! abuse protection (credits, not the rate limit, bound what a user can spend). Idle
//! buckets are evicted so memory follows active keys, not all keys ever seen, and a
//! limiter keyed by something a caller chooses (an address) also has a hard cap on the
//! keys it remembers ([`RateLimiter::bounded`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    /// Buckets untouched this long are dropped (they would be full anyway).
    pub idle_eviction: Duration,
}

impl RateLimit {
    /// `burst` at once, refilled at `per_second`; a bucket is dropped once it would be
    /// full again (`burst / per_second` after its last use).
    pub fn refilling(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            idle_eviction: Duration::from_secs_f64(f64::from(burst) / per_second),
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter<K = String> {
    limit: RateLimit,
    /// The most buckets kept at once.
    max_keys: usize,
    state: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    calls: usize,
    /// When a full table was last swept, so a full table of busy keys is swept at most
    /// once per [`FULL_SWEEP_INTERVAL`], not once per new key.
    full_sweep: Option<Instant>,
}

/// How often, in calls, idle buckets are swept.
const SWEEP_EVERY: usize = 4096;
/// The shortest time between two sweeps made because the table is full.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter with no cap on its keys: for keys the edge vouches for (users).
    pub fn new(limit: RateLimit) -> Self {
        Self::bounded(limit, usize::MAX)
    }

    /// A limiter that remembers at most `max_keys` buckets. When all of them are in use, a
    /// new key is not remembered: it is not limited, and it costs no memory. Failing
    /// open is the lesser evil: filling the table takes `max_keys` distinct keys busy at
    /// once, a flood so wide that per-key limits cannot stop it anyway, while failing
    /// closed would let it lock out every newcomer.
    pub fn bounded(limit: RateLimit, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys,
            state: Mutex::new(Buckets {
                by_key: HashMap::new(),
                calls: 0,
                full_sweep: None,
            }),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let limit = self.limit;
        let mut state = self.lock(now);
        let Some(bucket) = state.bucket(key, limit, self.max_keys, now) else {
            return Ok(());
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(limit.wait_for_one(bucket.tokens))
        }
    }

    /// Whether `key` has a token left, without taking it, or how long until it has one. A
    /// key never seen (or long idle) has a full bucket, and is not remembered.
    pub fn peek<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let limit = self.limit;
        let state = self.lock(now);
        let Some(bucket) = state.by_key.get(key) else {
            return Ok(());
        };
        let tokens = limit.refilled(bucket, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(limit.wait_for_one(tokens))
        }
    }

    /// Takes one token for `key` after the fact, whatever is left: an empty bucket stays
    /// empty (it does not go into debt), so the wait after the last use is at most one
    /// refill.
    pub fn spend<Q>(&self, key: &Q, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let limit = self.limit;
        let mut state = self.lock(now);
        if let Some(bucket) = state.bucket(key, limit, self.max_keys, now) {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        }
    }

    /// The state, with idle buckets swept every [`SWEEP_EVERY`] calls.
    fn lock(&self, now: Instant) -> MutexGuard<'_, Buckets<K>> {
        // A panic elsewhere cannot leave a bucket half-updated: every update is one
        // assignment, so a poisoned lock is still consistent.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.calls = state.calls.wrapping_add(1);
        if state.calls.is_multiple_of(SWEEP_EVERY) {
            state.sweep(self.limit, now);
        }
        state
    }
}

impl<K: Hash + Eq> Buckets<K> {
    fn sweep(&mut self, limit: RateLimit, now: Instant) {
        self.by_key.retain(|_, bucket| {
            now.saturating_duration_since(bucket.updated) < limit.idle_eviction
        });
    }

    /// `key`'s bucket, created full, refilled up to `now`; `None` for a new key when
    /// `max_keys` buckets are in use.
    fn bucket<Q>(
        &mut self,
        key: &Q,
        limit: RateLimit,
        max_keys: usize,
        now: Instant,
    ) -> Option<&mut Bucket>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.by_key.len() >= max_keys && !self.by_key.contains_key(key) {
            let swept_lately = self
                .full_sweep
                .is_some_and(|at| now.saturating_duration_since(at) < FULL_SWEEP_INTERVAL);
            if !swept_lately {
                self.full_sweep = Some(now);
                self.sweep(limit, now);
            }
            if self.by_key.len() >= max_keys {
                return None;
            }
        }
        let bucket = self.by_key.entry(key.to_owned()).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            updated: now,
        });
        bucket.tokens = limit.refilled(bucket, now);
        bucket.updated = now;
        Some(bucket)
    }
}

impl RateLimit {
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(f64::from(self.burst))
    }

    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64((1.0 - tokens) / self.per_second)
    }
}

/// The key failed authentications are counted under for a peer: its IPv4 address, or the
/// /64 network of an IPv6 one (a single host commonly holds a whole /64, so counting
/// per IPv6 address would let it rotate addresses freely). An IPv4-mapped IPv6 address
/// counts as the IPv4 address.
pub fn peer_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
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
        assert_eq!(state.by_key.len(), 1);
    }

    #[test]
    fn failures_are_spent_after_the_fact_and_peeked_before() {
        let failures: RateLimiter<IpAddr> = RateLimiter::new(RateLimit::refilling(2.0, 3));
        let attacker = IpAddr::from([203, 0, 113, 7]);
        let neighbour = IpAddr::from([203, 0, 113, 8]);
        let start = Instant::now();
        // Peeking takes nothing and remembers nothing.
        for _ in 0..10 {
            assert_eq!(failures.peek(&attacker, start), Ok(()));
        }
        assert!(failures.state.lock().expect("lock").by_key.is_empty());
        for _ in 0..3 {
            assert_eq!(failures.peek(&attacker, start), Ok(()));
            failures.spend(&attacker, start);
        }
        // Three failures at once empty the bucket: the address must wait half a second.
        assert_eq!(
            failures.peek(&attacker, start),
            Err(Duration::from_millis(500))
        );
        // More failures recorded meanwhile (calls admitted concurrently) add no debt.
        failures.spend(&attacker, start);
        failures.spend(&attacker, start);
        assert_eq!(
            failures.peek(&attacker, start + Duration::from_millis(250)),
            Err(Duration::from_millis(250))
        );
        assert_eq!(
            failures.peek(&attacker, start + Duration::from_millis(500)),
            Ok(())
        );
        // Another address is not affected.
        assert_eq!(failures.peek(&neighbour, start), Ok(()));
    }

    #[test]
    fn a_bounded_limiter_remembers_at_most_its_cap_and_then_fails_open() {
        let failures: RateLimiter<IpAddr> = RateLimiter::bounded(RateLimit::refilling(1.0, 1), 2);
        let start = Instant::now();
        let [a, b, c] = [1, 2, 3].map(|last| IpAddr::from([192, 0, 2, last]));
        failures.spend(&a, start);
        failures.spend(&b, start);
        // Full of busy addresses: a third is neither remembered nor limited.
        failures.spend(&c, start);
        assert_eq!(failures.peek(&c, start), Ok(()));
        assert_eq!(failures.state.lock().expect("lock").by_key.len(), 2);
        // The remembered ones still are.
        assert!(failures.peek(&a, start).is_err());
        failures.spend(&a, start);
        assert!(failures.peek(&a, start).is_err());
        // Once they are idle (refilled), a full table makes room for a newcomer.
        let later = start + Duration::from_secs(2);
        failures.spend(&c, later);
        assert!(failures.peek(&c, later).is_err());
        assert_eq!(failures.state.lock().expect("lock").by_key.len(), 1);
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second() {
        let failures: RateLimiter<IpAddr> = RateLimiter::bounded(RateLimit::refilling(1.0, 1), 1);
        let start = Instant::now();
        let [a, b] = [1, 2].map(|last| IpAddr::from([192, 0, 2, last]));
        failures.spend(&a, start);
        // The sweep for b finds a busy and is not repeated for the next 1 s, even though
        // a becomes idle meanwhile.
        failures.spend(&b, start);
        failures.spend(&b, start + Duration::from_millis(999));
        assert!(
            failures
                .peek(&b, start + Duration::from_millis(999))
                .is_ok()
        );
        failures.spend(&b, start + Duration::from_secs(1));
        assert!(failures.peek(&b, start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_refilling_limit_forgets_a_bucket_once_it_would_be_full() {
        let limit = RateLimit::refilling(0.5, 10);
        assert_eq!(limit.idle_eviction, Duration::from_secs(20));
    }

    #[test]
    fn ipv6_peers_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(peer_key(a), peer_key(b));
        assert_eq!(peer_key(a), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        assert_ne!(peer_key(a), peer_key(other));
        let mapped: IpAddr = "::ffff:198.51.100.4".parse().expect("ip");
        assert_eq!(peer_key(mapped), IpAddr::from([198, 51, 100, 4]));
        let v4 = IpAddr::from([198, 51, 100, 4]);
        assert_eq!(peer_key(v4), v4);
    }
}
