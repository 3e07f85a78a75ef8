//! Generated images: where they are stored, under which key, and the signed URLs clients
//! fetch them by.
//!
//! The generation worker writes images ([`ImageStore::put`]); the edge signs their URLs
//! ([`ImageUrls`]) and, for a local store, serves them. Both open the same store from the
//! same settings ([`Storage`]), and both derive an image's key from its owner and its
//! generation id alone ([`key_for`]), so no storage detail travels through the API.

mod store;
mod urls;

pub use store::{DEFAULT_STORAGE_DIR, ImageStore, Storage, StorageError, StoredImage, key_for};
pub use urls::{ImageUrls, Refusal, SignedUrl, SigningError};
