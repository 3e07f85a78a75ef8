//! The one rule for which HTTP answers are worth another try, shared by every client of
//! an outside HTTP API (the LLM client behind intent, enhancement and title, and the
//! image providers), so that a 503 is retried, and a 401 is not, the same everywhere.

use std::time::Duration;

use http::header::{HeaderMap, RETRY_AFTER};

/// Whether an error status may succeed if the same request is sent again: 408 (the
/// server gave up waiting for us), 429 (busy) and every 5xx (broken for now). Every
/// other 4xx (a bad key, an unknown model, a refused prompt) and the 3xx a wrong base
/// URL produces fail the same way every time.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// `Retry-After` in seconds. The HTTP-date form is not used by the APIs we call; without
/// a usable value the caller falls back to its own backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_broken_servers_are_worth_a_retry() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [200, 301, 400, 401, 403, 404, 409, 413, 422, 600] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 7 ".parse().expect("a header value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT"
                .parse()
                .expect("a header value"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
