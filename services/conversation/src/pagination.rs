//! Opaque page tokens for keyset pagination, and pages bounded by count and by bytes.
//!
//! A token is the sort key of the last row of a page, `(timestamp, id)`, so the next page is
//! one index range scan whatever the depth, unlike OFFSET. It is base64url so clients treat
//! it as opaque; the version prefix lets its shape change without breaking old tokens
//! silently.
//!
//! A page holds at most `page_size` items, and stops earlier when the next item would take
//! the encoded response over [`PAGE_BYTES`], counting [`SIGNED_URL_BYTES`] for every
//! completed image the edge will sign: the token then continues right after the last item
//! included. A page always holds at least one item, and one item always fits: the tests
//! below build the largest message the API can store.

use atelier_proto::limits::{PAGE_BYTES, SIGNED_URL_BYTES};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ServiceError;

const DEFAULT_PAGE_SIZE: u32 = 20;
/// Larger requests are served this many rows (AIP-158: coerce, do not fail).
const MAX_PAGE_SIZE: u32 = 100;
/// The bytes of a list response that are not its items: the `next_page_token` field (a
/// token is under 80 bytes) with its tag and length.
const RESPONSE_RESERVE: usize = 128;

/// Where a page starts, and how many items and bytes it may hold.
#[derive(Clone, Debug, PartialEq)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<Cursor>,
    /// The encoded size a page may reach, signed URLs included: [`PAGE_BYTES`].
    pub bytes: usize,
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
        Ok(Self {
            size,
            after,
            bytes: PAGE_BYTES,
        })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// The page made of `rows` (fetched with [`Self::fetch_limit`], in page order), and the
    /// token of the next page ("" on the last page).
    ///
    /// Each row becomes an item (`item`), added while the page holds fewer than `size`
    /// items and the encoded response, with [`SIGNED_URL_BYTES`] for each of the item's
    /// `signed_urls`, stays within `bytes`. The items are the first repeated field of the
    /// response (field 1, as in every list response of the API). The first item is always
    /// added, so every page moves on.
    pub fn fill<R, T: prost::Message>(
        &self,
        rows: Vec<R>,
        key: impl Fn(&R) -> Cursor,
        mut item: impl FnMut(R) -> T,
        signed_urls: impl Fn(&T) -> usize,
    ) -> (Vec<T>, String) {
        let budget = self.bytes.saturating_sub(RESPONSE_RESERVE);
        let mut items = Vec::new();
        let mut used = 0;
        let mut last = None;
        let mut rows = rows.into_iter();
        let more = loop {
            let Some(row) = rows.next() else {
                break false;
            };
            if items.len() >= self.size as usize {
                break true;
            }
            let cursor = key(&row);
            let item = item(row);
            let cost = field_len(&item) + signed_urls(&item) * SIGNED_URL_BYTES;
            if !items.is_empty() && used + cost > budget {
                break true;
            }
            used += cost;
            items.push(item);
            last = Some(cursor);
        };
        let token = match last {
            Some(cursor) if more => cursor.encode(),
            _ => String::new(),
        };
        (items, token)
    }
}

/// The encoded size of `item` as an entry of a repeated message field numbered 1 to 15:
/// its one-byte tag, its length and its bytes.
pub fn field_len(item: &impl prost::Message) -> usize {
    let len = item.encoded_len();
    1 + prost::length_delimiter_len(len) + len
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
    use atelier_proto::v1 as proto;
    use prost::Message as _;

    use super::*;
    use crate::catalog::MAX_MODEL_NAME_CHARS;
    use crate::pipeline::MAX_REASON_CHARS;
    use crate::requests::{
        MAX_CLIENT_REQUEST_ID_CHARS, MAX_IMAGES_PER_MESSAGE, MAX_NEGATIVE_PROMPT_CHARS,
        MAX_PROMPT_CHARS,
    };

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

    fn key(id: &Uuid) -> Cursor {
        Cursor {
            at: DateTime::from_timestamp_micros(0).expect("epoch"),
            id: *id,
        }
    }

    /// A conversation whose encoded entry in a list is `bytes` long, named by `id`.
    fn item(id: &Uuid, bytes: usize) -> proto::Conversation {
        let mut conversation = proto::Conversation {
            id: id.to_string(),
            ..Default::default()
        };
        let title = (0..bytes).find(|&chars| {
            conversation.title = "t".repeat(chars);
            field_len(&conversation) == bytes
        });
        assert!(title.is_some(), "no conversation is {bytes} bytes long");
        conversation
    }

    #[test]
    fn fill_trims_the_probe_row() {
        let page = PageRequest::parse(2, "").expect("ok");
        let rows = vec![Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let (items, token) = page.fill(rows.clone(), key, |id| item(&id, 200), |_| 0);
        assert_eq!(items.len(), 2);
        assert_eq!(token, key(&rows[1]).encode());
        let (short, token) = page.fill(vec![Uuid::now_v7()], key, |id| item(&id, 200), |_| 0);
        assert_eq!((short.len(), token.as_str()), (1, ""));
    }

    #[test]
    fn fill_stops_before_the_byte_budget_and_continues_after_the_last_item() {
        let page = PageRequest {
            bytes: RESPONSE_RESERVE + 1000,
            ..PageRequest::parse(100, "").expect("ok")
        };
        let rows: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
        // 300 bytes each: three fit in 1000, the fourth would not.
        let (items, token) = page.fill(rows.clone(), key, |id| item(&id, 300), |_| 0);
        assert_eq!(items.len(), 3);
        assert_eq!(token, key(&rows[2]).encode());
        let encoded = proto::ListConversationsResponse {
            conversations: items,
            next_page_token: token,
        }
        .encoded_len();
        assert!(encoded <= page.bytes, "{encoded} > {}", page.bytes);

        // Exactly at the budget: included.
        let (items, _) = page.fill(rows.clone(), key, |id| item(&id, 250), |_| 0);
        assert_eq!(items.len(), 4);

        // Signed URLs count: 100 bytes of item plus one URL each.
        let page = PageRequest {
            bytes: RESPONSE_RESERVE + 3 * (100 + SIGNED_URL_BYTES),
            ..page
        };
        let (items, token) = page.fill(rows.clone(), key, |id| item(&id, 100), |_| 1);
        assert_eq!(items.len(), 3);
        assert_eq!(token, key(&rows[2]).encode());
        let (items, _) = page.fill(rows.clone(), key, |id| item(&id, 100), |_| 0);
        assert_eq!(items.len(), 10);
    }

    #[test]
    fn an_item_larger_than_the_budget_still_makes_a_page() {
        let page = PageRequest {
            bytes: RESPONSE_RESERVE + 100,
            ..PageRequest::parse(10, "").expect("ok")
        };
        let rows = vec![Uuid::now_v7(), Uuid::now_v7()];
        let (items, token) = page.fill(rows.clone(), key, |id| item(&id, 300), |_| 0);
        assert_eq!(items.len(), 1);
        assert_eq!(token, key(&rows[0]).encode());
    }

    /// The largest string a field of `chars` characters can hold: 4 bytes each.
    fn widest(chars: usize) -> String {
        "\u{1D54F}".repeat(chars)
    }

    fn latest() -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: 253_402_300_799,
            nanos: 999_999_999,
        })
    }

    /// The largest message the API can store: every text at its limit in 4-byte
    /// characters, every number at its widest, four images.
    fn largest_message() -> proto::Message {
        let id = Uuid::max().to_string();
        let generation = proto::Generation {
            id: id.clone(),
            message_id: id.clone(),
            conversation_id: id.clone(),
            index: 3,
            status: proto::GenerationStatus::Completed.into(),
            model: widest(MAX_MODEL_NAME_CHARS),
            width: u32::MAX,
            height: u32::MAX,
            seed: u64::MAX,
            // RecordIntent's enhanced and effective negative prompts.
            prompt: widest(MAX_PROMPT_CHARS * 2),
            negative_prompt: widest(MAX_NEGATIVE_PROMPT_CHARS * 2),
            init_generation_id: id.clone(),
            strength: 1.0,
            // Signed by the edge: counted by SIGNED_URL_BYTES.
            image_url: String::new(),
            cost: i64::MIN,
            is_favorite: true,
            error: widest(MAX_REASON_CHARS),
            created_at: latest(),
            started_at: latest(),
            completed_at: latest(),
            image_url_expires_at: None,
        };
        proto::Message {
            id: id.clone(),
            conversation_id: id.clone(),
            content: widest(MAX_PROMPT_CHARS),
            settings: Some(proto::GenerationSettings {
                model: widest(MAX_MODEL_NAME_CHARS),
                width: Some(u32::MAX),
                height: Some(u32::MAX),
                image_count: Some(u32::MAX),
                style_preset: widest(20),
                seed: Some(u64::MAX),
                negative_prompt: widest(MAX_NEGATIVE_PROMPT_CHARS),
            }),
            status: proto::MessageStatus::Completed.into(),
            intent: Some(proto::ResolvedIntent {
                kind: proto::IntentKind::Edit.into(),
                resolved_prompt: widest(MAX_PROMPT_CHARS * 2),
                edit_type: widest(40),
                strength: 1.0,
            }),
            enhanced_prompt: widest(MAX_PROMPT_CHARS * 2),
            negative_prompt: widest(MAX_NEGATIVE_PROMPT_CHARS * 2),
            cost: i64::MIN,
            generations: vec![generation; MAX_IMAGES_PER_MESSAGE as usize],
            created_at: latest(),
            client_request_id: widest(MAX_CLIENT_REQUEST_ID_CHARS),
        }
    }

    #[test]
    fn the_largest_message_fits_a_page_with_room_to_spare() {
        let message = largest_message();
        let images = message.generations.len();
        let cost = field_len(&message) + images * SIGNED_URL_BYTES;
        // About 311 KB (each image about 50 KB): under a third of the budget.
        assert!(cost < PAGE_BYTES / 3, "{cost} bytes");

        // And a page of them is cut by bytes, each page within the budget once signed.
        let page = PageRequest::parse(100, "").expect("ok");
        let rows: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
        let (messages, token) = page.fill(
            rows.clone(),
            key,
            |_| largest_message(),
            |message| message.generations.len(),
        );
        assert_eq!(messages.len(), 3);
        assert_eq!(token, key(&rows[2]).encode());
        let mut response = proto::ListMessagesResponse {
            messages,
            next_page_token: token,
        };
        // What the edge adds: a 1000-byte URL and its expiry on every image.
        for generation in response
            .messages
            .iter_mut()
            .flat_map(|message| &mut message.generations)
        {
            generation.image_url = "u".repeat(1000);
            generation.image_url_expires_at = latest();
        }
        assert!(response.encoded_len() <= PAGE_BYTES);
    }

    #[test]
    fn the_largest_favourite_fits_too() {
        let generation = largest_message().generations.remove(0);
        let page = PageRequest::parse(100, "").expect("ok");
        let rows: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
        let (generations, token) = page.fill(rows, key, |_| generation.clone(), |_| 1);
        // About 50 KB each: 100 would be 5 MB, over every client's limit.
        assert!(generations.len() < 25, "{}", generations.len());
        assert!(!token.is_empty());
        let response = proto::ListFavoritesResponse {
            generations,
            next_page_token: token,
        };
        assert!(response.encoded_len() + 25 * SIGNED_URL_BYTES <= PAGE_BYTES);
    }
}
