//! Signed image URLs on every completed generation the edge hands a client: in responses
//! (SendMessage, GetMessage, ListMessages, CancelGeneration, SetFavorite, ListFavorites)
//! and in events (WatchEvents).
//!
//! URLs are made here, at delivery, not where the rows or events are written: an event
//! replayed a day later still carries a URL that works, and no storage key or signing
//! secret leaves the edge. The key of an image follows from its owner (the caller) and its
//! generation id alone ([`atelier_images::key_for`]), so nothing else is needed.

use std::sync::Arc;
use std::time::SystemTime;

use atelier_images::ImageUrls;
use atelier_proto::v1 as proto;
use atelier_proto::v1::event::Payload;

/// Puts signed URLs on generations.
#[derive(Clone)]
pub struct ImageLinks {
    urls: Arc<ImageUrls>,
}

impl ImageLinks {
    pub fn new(urls: Arc<ImageUrls>) -> Self {
        Self { urls }
    }

    /// Signs `generation` for `user_id` if it is completed. A URL that cannot be made (S3
    /// credentials unavailable) is left empty and logged: the rest of the answer stands.
    pub async fn sign(&self, user_id: &str, generation: &mut proto::Generation) {
        if generation.status() != proto::GenerationStatus::Completed {
            return;
        }
        match self
            .urls
            .url_for(user_id, &generation.id, SystemTime::now())
            .await
        {
            Ok(signed) => {
                generation.image_url = signed.url;
                generation.image_url_expires_at = Some(signed.expires_at.into());
            }
            Err(err) => {
                tracing::warn!(error = %err, generation_id = %generation.id, "image URL not signed");
            }
        }
    }

    pub async fn sign_all(&self, user_id: &str, generations: &mut [proto::Generation]) {
        for generation in generations {
            self.sign(user_id, generation).await;
        }
    }

    pub async fn sign_message(&self, user_id: &str, message: Option<&mut proto::Message>) {
        if let Some(message) = message {
            self.sign_all(user_id, &mut message.generations).await;
        }
    }

    /// Signs the generations an event carries.
    pub async fn sign_event(&self, user_id: &str, event: &mut proto::Event) {
        match &mut event.payload {
            Some(Payload::MessageCreated(created)) => {
                self.sign_message(user_id, created.message.as_mut()).await;
            }
            Some(Payload::GenerationCompleted(completed)) => {
                self.sign_all(user_id, &mut completed.generations).await;
            }
            _ => {}
        }
    }
}
