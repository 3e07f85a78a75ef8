//! What the conversation service announces, as outbox rows: jobs for the workers and
//! events for the user's stream, encoded once here and published unchanged by the relay.

use atelier_proto::jobs::v1 as jobs;
use atelier_proto::v1 as proto;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use prost::Message as _;
use uuid::Uuid;

use crate::db::OutboxRow;
use crate::wire::timestamp;

/// Subject of generation jobs, relative to the NATS subject prefix.
pub const GENERATE_JOB_SUBJECT: &str = "jobs.generate";
/// Subject of title jobs, relative to the NATS subject prefix.
pub const TITLE_JOB_SUBJECT: &str = "jobs.title";

/// The subject of a user's events, relative to the NATS subject prefix. User ids are JWT
/// subjects and may hold `.`, `*` or `>`, which NATS reads as subject syntax: base64url
/// keeps every id one safe, reversible token.
pub fn user_events_subject(user_id: &str) -> String {
    format!("events.user.{}", URL_SAFE_NO_PAD.encode(user_id))
}

/// The common part of every event of one user.
pub struct EventContext<'a> {
    pub user_id: &'a str,
    pub conversation_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

impl EventContext<'_> {
    /// An event row: its id is both the event id and the outbox id (the NATS message id).
    pub fn event(&self, payload: proto::event::Payload) -> OutboxRow {
        let id = Uuid::now_v7();
        let event = proto::Event {
            id: id.to_string(),
            occurred_at: Some(timestamp(self.at)),
            user_id: self.user_id.to_owned(),
            conversation_id: self
                .conversation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            message_id: self.message_id.map(|id| id.to_string()).unwrap_or_default(),
            payload: Some(payload),
        };
        OutboxRow {
            id,
            subject: user_events_subject(self.user_id),
            payload: event.encode_to_vec(),
        }
    }
}

pub fn generate_job(user_id: &str, conversation_id: Uuid, message_id: Uuid) -> OutboxRow {
    let job = jobs::GenerateJob {
        user_id: user_id.to_owned(),
        conversation_id: conversation_id.to_string(),
        message_id: message_id.to_string(),
    };
    OutboxRow {
        id: Uuid::now_v7(),
        subject: GENERATE_JOB_SUBJECT.to_owned(),
        payload: job.encode_to_vec(),
    }
}

pub fn title_job(user_id: &str, conversation_id: Uuid, prompt: &str) -> OutboxRow {
    let job = jobs::TitleJob {
        user_id: user_id.to_owned(),
        conversation_id: conversation_id.to_string(),
        prompt: prompt.to_owned(),
    };
    OutboxRow {
        id: Uuid::now_v7(),
        subject: TITLE_JOB_SUBJECT.to_owned(),
        payload: job.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_subjects_are_one_safe_token() {
        for user in ["alice", "a.b@example.com", "x*y>z", "üser"] {
            let subject = user_events_subject(user);
            let token = subject.strip_prefix("events.user.").expect("prefix");
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{subject}"
            );
            let decoded = URL_SAFE_NO_PAD.decode(token).expect("base64url");
            assert_eq!(decoded, user.as_bytes());
        }
    }

    #[test]
    fn an_event_row_carries_its_own_id() {
        let context = EventContext {
            user_id: "alice",
            conversation_id: Some(Uuid::now_v7()),
            message_id: None,
            at: Utc::now(),
        };
        let row = context.event(proto::event::Payload::Heartbeat(proto::Heartbeat {}));
        let event = proto::Event::decode(row.payload.as_slice()).expect("decodes");
        assert_eq!(event.id, row.id.to_string());
        assert_eq!(event.user_id, "alice");
    }
}
