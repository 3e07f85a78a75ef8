//! Opaque page tokens for keyset pagination.
//!
//! A token is the sort key of the last row of a page, `(timestamp, id)`, so the next page is
//! one index range scan whatever the depth, unlike OFFSET. It is base64url so clients treat
//! it as opaque; the version prefix lets its shape change without breaking old tokens
//! silently.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ServiceError;

const DEFAULT_PAGE_SIZE: u32 = 20;
/// Larger requests are served this many rows (AIP-158: coerce, do not fail).
const MAX_PAGE_SIZE: u32 = 100;

/// Where a page starts and how long it is.
#[derive(Clone, Debug, PartialEq)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<Cursor>,
}

/// The sort key of the last row already seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl PageRequest {
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self, ServiceError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(page_token).ok_or_else(|| {
                ServiceError::invalid(
                    "page_token",
                    "not a token this service issued; pass next_page_token unchanged",
                )
            })?)
        };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Trims the extra row and returns the token of the next page ("" on the last page).
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> Cursor) -> String {
        if rows.len() > self.size as usize {
            rows.truncate(self.size as usize);
            rows.last().map(|row| key(row).encode()).unwrap_or_default()
        } else {
            String::new()
        }
    }
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.at.timestamp_micros(), self.id))
    }

    fn decode(token: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.splitn(3, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        // Rows are stamped by this service: a cursor outside 1970..10000 is forged, and
        // PostgreSQL would reject some such timestamps (before 4713 BC) as out of range.
        if !(0..=253_402_300_799_000_000).contains(&micros) {
            return None;
        }
        let id = Uuid::parse_str(parts.next()?).ok()?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("valid"),
            id: Uuid::now_v7(),
        };
        let page = PageRequest::parse(5, &cursor.encode()).expect("valid token");
        assert_eq!(page.after, Some(cursor));
        assert_eq!(page.size, 5);
    }

    #[test]
    fn sizes_default_and_coerce() {
        assert_eq!(PageRequest::parse(0, "").expect("ok").size, 20);
        assert_eq!(PageRequest::parse(1000, "").expect("ok").size, 100);
    }

    #[test]
    fn foreign_tokens_are_invalid_arguments() {
        let forged_time =
            URL_SAFE_NO_PAD.encode(format!("v1:-300000000000000000:{}", Uuid::now_v7()));
        for token in [
            "garbage!",
            "djI6MTox",
            &URL_SAFE_NO_PAD.encode("v1:x:y"),
            &forged_time,
        ] {
            match PageRequest::parse(10, token) {
                Err(ServiceError::InvalidArgument(violations)) => {
                    assert_eq!(violations[0].field, "page_token");
                }
                other => panic!("{token}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn finish_trims_the_probe_row() {
        let page = PageRequest::parse(2, "").expect("ok");
        let key = |id: &Uuid| Cursor {
            at: DateTime::from_timestamp_micros(0).expect("epoch"),
            id: *id,
        };
        let mut rows = vec![Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let token = page.finish(&mut rows, key);
        assert_eq!(rows.len(), 2);
        assert!(!token.is_empty());
        let mut short = vec![Uuid::now_v7()];
        assert_eq!(page.finish(&mut short, key), "");
    }
}
