//! When the edge fetches the identity provider's key set: a pure schedule, driven by the
//! caller's clock, so tests step through it without sleeping.
//!
//! - **First fetch:** at once.
//! - **Expiry:** a fetched set is used for the response's `Cache-Control: max-age`
//!   (less its `Age`), held within [`MIN_TTL`] and [`MAX_TTL`], or for the configured
//!   interval when the response gives none (`no-cache` and `no-store` count as none:
//!   Keycloak sends `no-cache`, and the edge cannot revalidate per token).
//! - **Unknown key:** a token naming a key the set lacks asks for a fetch, at most once per
//!   `unknown_key_interval` since the last fetch started, so a flood of made-up `kid`s
//!   cannot make the edge hammer the provider. Calls that arrive while a fetch is under
//!   way wait for it instead of asking for another.
//! - **Failure:** the cached keys stay in use, and the fetch is retried after 1 s, doubling
//!   up to [`MAX_BACKOFF`].

use std::time::{Duration, Instant};

/// The shortest time a fetched key set is used before the next scheduled fetch, whatever
/// the provider's `max-age` (Auth0 sends 15 s).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// The longest, so a key the provider withdrew stops working within the hour.
pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// The longest wait between two attempts while fetches fail.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// How long a key set is used when its response names no `max-age`.
    pub default_ttl: Duration,
    /// The shortest time between a fetch and one asked for by an unknown key.
    pub unknown_key_interval: Duration,
}

/// What a call whose token names an unknown key should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownKey {
    /// This call asked for a fetch: wake the refresher, then wait for it.
    Fetch,
    /// A fetch is already asked for or under way: wait for it.
    Wait,
    /// A fetch started too recently: answer now.
    Refuse,
}

#[derive(Debug)]
pub struct Schedule {
    policy: RefreshPolicy,
    /// When the last fetch started, for any reason.
    last_started: Option<Instant>,
    /// A call asked for a fetch that has not started yet.
    requested: bool,
    /// A fetch is under way.
    fetching: bool,
    /// When the next scheduled fetch is due (the set's expiry, or a retry); `None` until
    /// the first fetch ended, which means at once.
    next: Option<Instant>,
    /// Failed fetches since the last success.
    failures: u32,
}

impl Schedule {
    pub fn new(policy: RefreshPolicy) -> Self {
        Self {
            policy,
            last_started: None,
            requested: false,
            fetching: false,
            next: None,
            failures: 0,
        }
    }

    /// For the refresher: whether to fetch now. A `true` marks the fetch started; report
    /// its end with [`Schedule::succeeded`] or [`Schedule::failed`].
    pub fn start_if_due(&mut self, now: Instant) -> bool {
        if self.fetching {
            return false;
        }
        let due = self.requested || self.next.is_none_or(|at| now >= at);
        if due {
            self.fetching = true;
            self.requested = false;
            self.last_started = Some(now);
        }
        due
    }

    /// For the refresher: when to look again if nothing wakes it earlier.
    pub fn next_due(&self, now: Instant) -> Instant {
        match self.next {
            Some(at) if !self.requested => at,
            _ => now,
        }
    }

    /// A fetch gave a key set, to be used for `fresh_for` (the response's own lifetime,
    /// from [`freshness`], if it gave one).
    pub fn succeeded(&mut self, now: Instant, fresh_for: Option<Duration>) {
        self.fetching = false;
        self.failures = 0;
        self.next = Some(now + self.ttl(fresh_for));
    }

    /// A fetch failed: the cached keys stay, and the next attempt backs off.
    pub fn failed(&mut self, now: Instant) {
        self.fetching = false;
        self.failures = self.failures.saturating_add(1);
        self.next = Some(now + backoff(self.failures));
    }

    /// For a call whose token names a key the set lacks.
    pub fn on_unknown_key(&mut self, now: Instant) -> UnknownKey {
        if self.fetching || self.requested {
            return UnknownKey::Wait;
        }
        let too_soon = self.last_started.is_some_and(|started| {
            now.saturating_duration_since(started) < self.policy.unknown_key_interval
        });
        if too_soon {
            UnknownKey::Refuse
        } else {
            self.requested = true;
            UnknownKey::Fetch
        }
    }

    /// How long a set fetched with this freshness is used.
    pub fn ttl(&self, fresh_for: Option<Duration>) -> Duration {
        fresh_for.map_or(self.policy.default_ttl, |fresh| {
            fresh.clamp(MIN_TTL, MAX_TTL)
        })
    }
}

/// The wait before attempt `failures + 1`: 1 s, 2 s, 4 s… up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// How long a response stays fresh by its `Cache-Control` and `Age` headers: `max-age`
/// less `Age`. `None` when there is no `max-age`, or when `no-cache` or `no-store` say not
/// to reuse it as is.
pub fn freshness(cache_control: Option<&str>, age: Option<&str>) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control?.split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return None;
        }
        if name.eq_ignore_ascii_case("max-age") {
            max_age = value.and_then(|value| value.parse::<u64>().ok());
        }
    }
    let age = age
        .and_then(|age| age.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|max_age| Duration::from_secs(max_age.saturating_sub(age)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn schedule() -> Schedule {
        Schedule::new(RefreshPolicy {
            default_ttl: Duration::from_secs(600),
            unknown_key_interval: Duration::from_secs(10),
        })
    }

    #[test]
    fn the_first_fetch_is_at_once_and_the_next_when_the_set_expires() {
        let mut schedule = schedule();
        let start = Instant::now();
        assert_eq!(schedule.next_due(start), start);
        assert!(schedule.start_if_due(start));
        // One fetch at a time.
        assert!(!schedule.start_if_due(start));
        schedule.succeeded(start + SECOND, None);
        let expiry = start + SECOND + Duration::from_secs(600);
        assert_eq!(schedule.next_due(start + SECOND), expiry);
        assert!(!schedule.start_if_due(expiry - SECOND));
        assert!(schedule.start_if_due(expiry));
    }

    #[test]
    fn max_age_is_honoured_within_bounds() {
        let schedule = schedule();
        assert_eq!(schedule.ttl(None), Duration::from_secs(600));
        assert_eq!(
            schedule.ttl(Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(schedule.ttl(Some(Duration::from_secs(15))), MIN_TTL);
        assert_eq!(schedule.ttl(Some(Duration::ZERO)), MIN_TTL);
        assert_eq!(schedule.ttl(Some(Duration::from_secs(86_400))), MAX_TTL);
    }

    #[test]
    fn an_unknown_key_fetches_at_most_once_per_interval() {
        let mut schedule = schedule();
        let start = Instant::now();
        assert!(schedule.start_if_due(start));
        schedule.succeeded(start, None);

        // Within 10 s of the last fetch: refused, however many calls ask.
        for offset in [0, 1, 9] {
            assert_eq!(
                schedule.on_unknown_key(start + offset * SECOND),
                UnknownKey::Refuse
            );
        }
        // Then one call asks, and every other waits for that fetch.
        let later = start + 10 * SECOND;
        assert_eq!(schedule.on_unknown_key(later), UnknownKey::Fetch);
        assert_eq!(schedule.on_unknown_key(later), UnknownKey::Wait);
        assert_eq!(schedule.next_due(later), later);
        assert!(schedule.start_if_due(later));
        assert_eq!(schedule.on_unknown_key(later + SECOND), UnknownKey::Wait);
        schedule.succeeded(later + SECOND, None);
        // The interval counts from the start of that fetch.
        assert_eq!(
            schedule.on_unknown_key(later + 9 * SECOND),
            UnknownKey::Refuse
        );
        assert_eq!(
            schedule.on_unknown_key(later + 10 * SECOND),
            UnknownKey::Fetch
        );
    }

    #[test]
    fn a_scheduled_fetch_also_counts_against_the_unknown_key_interval() {
        let mut schedule = schedule();
        let start = Instant::now();
        assert!(schedule.start_if_due(start));
        schedule.succeeded(start, None);
        let expiry = start + Duration::from_secs(600);
        assert!(schedule.start_if_due(expiry));
        assert_eq!(schedule.on_unknown_key(expiry), UnknownKey::Wait);
        schedule.succeeded(expiry + SECOND, None);
        assert_eq!(
            schedule.on_unknown_key(expiry + 2 * SECOND),
            UnknownKey::Refuse
        );
    }

    #[test]
    fn failures_back_off_and_a_success_resets() {
        let mut schedule = schedule();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(schedule.start_if_due(now));
            schedule.failed(now);
            let next = schedule.next_due(now);
            waits.push((next - now).as_secs());
            assert!(!schedule.start_if_due(next - Duration::from_millis(1)));
            now = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(schedule.start_if_due(now));
        schedule.succeeded(now, Some(Duration::from_secs(120)));
        assert_eq!(schedule.next_due(now), now + Duration::from_secs(120));
        assert!(schedule.start_if_due(now + Duration::from_secs(120)));
        schedule.failed(now + Duration::from_secs(120));
        assert_eq!(
            schedule.next_due(now + Duration::from_secs(120)),
            now + Duration::from_secs(121)
        );
    }

    #[test]
    fn freshness_reads_max_age_less_age() {
        let secs = |s| Some(Duration::from_secs(s));
        // Auth0, Google, Entra ID, Cognito-like headers.
        assert_eq!(
            freshness(
                Some("public, max-age=15, stale-while-revalidate=15, stale-if-error=86400"),
                None
            ),
            secs(15)
        );
        assert_eq!(
            freshness(
                Some("public, max-age=22378, must-revalidate, no-transform"),
                None
            ),
            secs(22378)
        );
        assert_eq!(freshness(Some("max-age=86400"), Some("3600")), secs(82800));
        assert_eq!(freshness(Some("Max-Age=\"60\""), None), secs(60));
        assert_eq!(freshness(Some("max-age=60"), Some("600")), secs(0));
        // Keycloak: no-cache. And nothing usable.
        assert_eq!(freshness(Some("no-cache"), None), None);
        assert_eq!(freshness(Some("max-age=600, no-store"), None), None);
        assert_eq!(freshness(Some("public"), None), None);
        assert_eq!(freshness(Some("max-age=soon"), None), None);
        assert_eq!(freshness(Some("max-age=-5"), None), None);
        assert_eq!(freshness(None, Some("5")), None);
        assert_eq!(freshness(Some("max-age=100"), Some("junk")), secs(100));
    }
}
