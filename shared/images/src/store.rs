//! The image store: any `object_store` backend, a local directory by default and an
//! S3-compatible bucket in production.
//!
//! The worker writes each image once, under a key derived from its owner and its
//! generation ([`key_for`]), and the edge later reads it back to serve it (local) or signs
//! a URL of the bucket for it (S3). Going through `object_store` keeps both sides identical
//! whatever the backend, so the whole mesh runs on a laptop with a directory and in a
//! cluster with a bucket, with no code switch.
//!
//! Keys are built here and nowhere else, because they come partly from user ids, which
//! are not ours to trust: a `sub` claim may contain `/` or `..`, and a key built by
//! pasting it would let one user write over another's images, or outside the image
//! directory of a local store.

use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use atelier_runtime::config::{optional_var, var_or};
use base64::Engine as _;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

/// The directory of the local store when `ATELIER_STORAGE_DIR` is unset.
pub const DEFAULT_STORAGE_DIR: &str = ".data/objects";

/// Why an image could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no image is stored at {key:?}")]
    NotFound { key: String },
    /// A key that is not a valid object path (an empty segment, `.` or `..`, a control
    /// character). Keys from [`key_for`] never are.
    #[error("{key:?} is not a valid image key: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("the image store failed on {key:?}")]
    Backend {
        key: String,
        #[source]
        source: object_store::Error,
    },
}

/// Which backend holds the images, as configured: a local directory, or the S3 bucket the
/// environment names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    Local(std::path::PathBuf),
    S3FromEnv,
}

impl Storage {
    /// S3 when `ATELIER_S3_BUCKET` is set, else the directory `ATELIER_STORAGE_DIR`
    /// (default `.data/objects`). Nothing is opened or contacted here.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(match optional_var::<String>("ATELIER_S3_BUCKET")? {
            Some(_) => Self::S3FromEnv,
            None => Self::Local(
                var_or::<String>("ATELIER_STORAGE_DIR", DEFAULT_STORAGE_DIR.to_owned())?.into(),
            ),
        })
    }

    /// For a process that writes images, before it binds: the local directory exists (or
    /// is created) and takes a file, checked by writing and removing one. S3 is not
    /// contacted (a wrong credential shows on the first put).
    pub fn check_writable(&self) -> anyhow::Result<()> {
        let Self::Local(dir) = self else {
            return Ok(());
        };
        let unusable = |err: std::io::Error| {
            anyhow::anyhow!(
                "ATELIER_STORAGE_DIR: cannot write images to {}: {err}",
                dir.display()
            )
        };
        std::fs::create_dir_all(dir).map_err(unusable)?;
        let probe = dir.join(format!(".write-check-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(unusable)?;
        std::fs::remove_file(&probe).map_err(unusable)
    }

    /// Opens the store: creates the local directory, or configures the S3 client.
    pub fn open(&self) -> anyhow::Result<ImageStore> {
        match self {
            Self::Local(dir) => ImageStore::local(dir),
            Self::S3FromEnv => ImageStore::s3_from_env(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self::Local(DEFAULT_STORAGE_DIR.into())
    }
}

/// An image read back, with what an HTTP cache needs to know of it.
#[derive(Debug)]
pub struct StoredImage {
    pub bytes: Bytes,
    /// The backend's entity tag, when it has one.
    pub e_tag: Option<String>,
    pub last_modified: std::time::SystemTime,
}

/// The image store. Cloning is cheap and clones share the backend and its connections.
#[derive(Clone)]
pub struct ImageStore {
    store: Arc<dyn ObjectStore>,
    /// Presigns URLs of the bucket itself; `None` for a backend clients cannot reach (a
    /// local directory), whose images the edge serves under its own signed URLs.
    signer: Option<Arc<dyn Signer>>,
}

impl ImageStore {
    /// A store over any backend, e.g. `object_store::memory::InMemory` in tests.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            signer: None,
        }
    }

    /// The backend's own URL signer, for a backend clients fetch from directly (S3).
    pub fn signer(&self) -> Option<Arc<dyn Signer>> {
        self.signer.clone()
    }

    /// A store in the directory `dir`, created if missing.
    pub fn local(dir: impl AsRef<std::path::Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the image directory {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening the image directory {}", dir.display()))?;
        Ok(Self::new(Arc::new(store)))
    }

    /// A store in the S3 bucket named by `ATELIER_S3_BUCKET`, with everything else read
    /// from the standard AWS variables as `object_store` understands them:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL` (MinIO, R2, Ceph...), `AWS_ALLOW_HTTP=true` for a plain-http
    /// endpoint, and the container and web-identity credential variables.
    ///
    /// Nothing is contacted here: a wrong credential shows on the first put.
    pub fn s3_from_env() -> anyhow::Result<Self> {
        let bucket: String = optional_var("ATELIER_S3_BUCKET")?
            .context("ATELIER_S3_BUCKET is not set: the S3 image store needs a bucket")?;
        let store = Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .build()
                .with_context(|| format!("configuring the S3 image store for bucket {bucket:?}"))?,
        );
        Ok(Self {
            store: store.clone(),
            signer: Some(store),
        })
    }

    /// The store [`Storage::from_env`] names.
    pub fn from_env() -> anyhow::Result<Self> {
        Storage::from_env()?.open()
    }

    /// Stores `png` at `key`, replacing what was there. Atomic on every backend: a reader
    /// sees the old image, or the whole new one, never a part.
    pub async fn put(&self, key: &str, png: Bytes) -> Result<(), StorageError> {
        let path = parse_key(key)?;
        self.store
            .put(&path, PutPayload::from(png))
            .await
            .map_err(|source| backend_error(key, source))?;
        Ok(())
    }

    /// Removes the image at `key`; one already gone is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = parse_key(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(backend_error(key, source)),
        }
    }

    /// The image at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.get_stored(key).await?.bytes)
    }

    /// The image at `key` with its entity tag and modification time.
    pub async fn get_stored(&self, key: &str) -> Result<StoredImage, StorageError> {
        let path = parse_key(key)?;
        let found = self
            .store
            .get(&path)
            .await
            .map_err(|source| backend_error(key, source))?;
        let e_tag = found.meta.e_tag.clone();
        let last_modified = found.meta.last_modified.into();
        let bytes = found
            .bytes()
            .await
            .map_err(|source| backend_error(key, source))?;
        Ok(StoredImage {
            bytes,
            e_tag,
            last_modified,
        })
    }
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The backend's Display names it and its root (a directory or a bucket), which is
        // what a log needs; its Debug dumps client internals.
        f.debug_struct("ImageStore")
            .field("store", &format_args!("{}", self.store))
            .finish()
    }
}

/// The key of a generation's image: `images/<owner>/<generation>.png`.
///
/// The owner is the user id in unpadded base64url, so any id, whatever it contains,
/// becomes one safe path segment of its own: two users never share a folder and no id
/// escapes `images/`. Generation ids are ours (UUIDs) and stay readable; one that is not
/// a plain token is encoded too, behind a `b64.` marker that no plain token can start
/// with, so distinct ids keep distinct keys.
pub fn key_for(user_id: &str, generation_id: &str) -> String {
    let owner = if user_id.is_empty() {
        // base64 of nothing is nothing, which would be an empty segment; `_` alone is
        // never the encoding of anything, so it cannot collide.
        "_".to_owned()
    } else {
        base64url(user_id)
    };
    let generation = if is_plain_token(generation_id) {
        generation_id.to_owned()
    } else {
        format!("b64.{}", base64url(generation_id))
    };
    format!("images/{owner}/{generation}.png")
}

fn base64url(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.as_bytes())
}

fn is_plain_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn parse_key(key: &str) -> Result<Path, StorageError> {
    // `Path::from` would quietly percent-encode a bad key into some other key; parse
    // refuses it, so a caller bug shows as an error rather than a misplaced file.
    Path::parse(key).map_err(|err| StorageError::InvalidKey {
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

fn backend_error(key: &str, source: object_store::Error) -> StorageError {
    match source {
        object_store::Error::NotFound { .. } => StorageError::NotFound {
            key: key.to_owned(),
        },
        source => StorageError::Backend {
            key: key.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped (so also when a
    /// test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("atelier-images-{}", uuid::Uuid::now_v7()));
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            // Best effort: a leftover temp dir is not worth a panic in a panic.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Every file under `dir`, recursively.
    fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("a readable directory") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files
    }

    #[test]
    fn a_writable_directory_passes_the_check_and_keeps_nothing_of_it() {
        let dir = TempDir::new();
        let images = dir.0.join("nested/images");
        Storage::Local(images.clone())
            .check_writable()
            .expect("a directory that can be created is writable");
        assert!(files_under(&images).is_empty());
    }

    #[test]
    fn a_directory_that_cannot_exist_fails_the_check_naming_the_variable() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        // Under a regular file: refused even to root, unlike a read-only directory.
        let file = dir.0.join("a-file");
        std::fs::write(&file, b"").expect("a file");
        let err = Storage::Local(file.join("images"))
            .check_writable()
            .expect_err("no directory can be made under a file");
        assert!(err.to_string().contains("ATELIER_STORAGE_DIR"), "{err}");
    }

    #[tokio::test]
    async fn put_then_get_round_trips_and_creates_the_directory() {
        let dir = TempDir::new();
        let store = ImageStore::local(dir.0.join("nested/images")).expect("a local store");
        let key = key_for("user-1", "0190f0c4-9a5b-7cde-8f00-000000000001");
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\nnot really");

        store.put(&key, png.clone()).await.expect("stored");
        assert_eq!(store.get(&key).await.expect("read back"), png);

        let replacement = Bytes::from_static(b"second");
        store
            .put(&key, replacement.clone())
            .await
            .expect("replaced");
        assert_eq!(store.get(&key).await.expect("read back"), replacement);
    }

    #[tokio::test]
    async fn a_missing_image_is_not_found() {
        let dir = TempDir::new();
        let store = ImageStore::local(&dir.0).expect("a local store");
        let err = store
            .get(&key_for("user-1", "nothing"))
            .await
            .expect_err("nothing there");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn hostile_ids_stay_inside_the_store() {
        let dir = TempDir::new();
        let root = dir.0.join("store");
        let store = ImageStore::local(&root).expect("a local store");
        let hostile = [
            ("../../../etc", "passwd"),
            ("..", ".."),
            ("a/b", "c/d"),
            ("/abs", "../up"),
            ("", ""),
            ("nul\0byte", "new\nline"),
            ("üser", "é"),
            ("user-1", "gen-1"),
        ];

        let mut keys = Vec::new();
        for (user, generation) in hostile {
            let key = key_for(user, generation);
            let path = Path::parse(&key).expect("a valid object path");
            let parts: Vec<_> = path.parts().collect();
            assert_eq!(parts.len(), 3, "{key}");
            assert_eq!(parts[0].as_ref(), "images", "{key}");
            assert!(key.ends_with(".png"), "{key}");
            store
                .put(&key, Bytes::from(key.clone()))
                .await
                .expect("stored");
            keys.push(key);
        }

        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            keys.len(),
            "distinct ids share a key: {keys:?}"
        );
        let files = files_under(&root);
        assert_eq!(files.len(), keys.len(), "{files:?}");
        let images = std::fs::canonicalize(root.join("images")).expect("the images dir");
        for file in &files {
            let file = std::fs::canonicalize(file).expect("a real file");
            assert!(file.starts_with(&images), "{} escaped", file.display());
        }
        for key in keys {
            assert_eq!(store.get(&key).await.expect("read back"), Bytes::from(key));
        }
        // Nothing beside the store either.
        let beside: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("the temp dir")
            .map(|entry| entry.expect("an entry").file_name())
            .collect();
        assert_eq!(beside, ["store"]);
    }

    #[test]
    fn plain_generation_ids_stay_readable() {
        assert_eq!(
            key_for("auth0|123", "0190f0c4-9a5b-7cde-8f00-000000000001"),
            "images/YXV0aDB8MTIz/0190f0c4-9a5b-7cde-8f00-000000000001.png"
        );
        assert_eq!(key_for("u", "a.b"), "images/dQ/b64.YS5i.png");
    }

    #[tokio::test]
    async fn invalid_keys_are_refused_not_rewritten() {
        let store = ImageStore::new(Arc::new(object_store::memory::InMemory::new()));
        for key in ["images/../x.png", "images//x.png", "images/./x.png"] {
            let err = store
                .put(key, Bytes::from_static(b"x"))
                .await
                .expect_err(key);
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{key}: {err:?}"
            );
        }
    }

    const PROBE: &str = "ATELIER_STORAGE_FROM_ENV_PROBE";

    /// What `from_env` builds with exactly the given storage variables set.
    fn from_env_with(vars: &[(&str, &str)]) -> String {
        atelier_testkit::rerun_with_env(
            "store::tests::print_from_env",
            PROBE,
            &["ATELIER_S3_", "ATELIER_STORAGE_", "AWS_"],
            vars,
        )
    }

    #[test]
    fn print_from_env() {
        if std::env::var_os(PROBE).is_none() {
            return;
        }
        let printed = match ImageStore::from_env() {
            Ok(store) => format!("{store:?}"),
            Err(err) => format!("error: {err:#}"),
        };
        println!("from_env: {printed}");
    }

    #[test]
    fn from_env_is_local_without_a_bucket() {
        let dir = TempDir::new();
        let images = dir.0.join("images");
        let images = images.to_str().expect("a UTF-8 temp dir");
        let printed = from_env_with(&[("ATELIER_STORAGE_DIR", images)]);
        assert!(printed.contains("LocalFileSystem"), "{printed}");
        assert!(std::path::Path::new(images).is_dir(), "created");
    }

    #[test]
    fn from_env_is_s3_with_a_bucket() {
        let printed = from_env_with(&[
            ("ATELIER_S3_BUCKET", "atelier-images"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]);
        assert!(printed.contains("AmazonS3"), "{printed}");
        assert!(printed.contains("atelier-images"), "{printed}");
    }
}
