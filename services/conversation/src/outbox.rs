//! What the conversation service announces, as outbox rows: jobs for the workers and
//! events for the user's stream, encoded once here and published unchanged by the relay.

use atelier_proto::jobs::v1 as jobs;
use atelier_proto::v1 as proto;
use chrono::{DateTime, Utc};
use prost::Message as _;
use uuid::Uuid;

use crate::db::OutboxRow;
use crate::wire::timestamp;

pub use atelier_events::subjects::{GENERATE_JOBS, TITLE_JOBS, user_events as user_events_subject};

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
            traceparent: atelier_events::current_traceparent(),
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
        subject: GENERATE_JOBS.to_owned(),
        payload: job.encode_to_vec(),
        traceparent: atelier_events::current_traceparent(),
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
        subject: TITLE_JOBS.to_owned(),
        payload: job.encode_to_vec(),
        traceparent: atelier_events::current_traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
