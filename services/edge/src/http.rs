//! The edge's plain HTTP port: images under signed URLs (local storage), the web client's
//! files, and `/config.json`, which tells the web client where the gRPC port is.
//!
//! It is a port of its own, apart from gRPC: image downloads are large, cacheable and
//! unauthenticated (the URL is the capability), and none of that belongs in front of the
//! API. Every refusal of an image is the same bare `403`: a prober cannot tell a forged
//! signature from an expired one or from another user's image.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atelier_images::{ImageStore, ImageUrls, StorageError};
use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LAST_MODIFIED,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the HTTP port serves.
pub struct Site {
    pub urls: Arc<ImageUrls>,
    pub store: ImageStore,
    /// `/config.json`, made once at start.
    pub config_json: Bytes,
    pub web_dir: Option<PathBuf>,
}

type Reply = Response<Full<Bytes>>;

/// Serves `site` on `listener` until `shutdown` is cancelled; open connections then finish
/// their current request and close.
pub async fn serve(listener: TcpListener, site: Arc<Site>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: back off rather than spin.
                tracing::warn!(error = %err, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let site = Arc::clone(&site);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let site = Arc::clone(&site);
                async move { Ok::<_, Infallible>(handle(&site, request, peer).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

async fn handle(site: &Site, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return bare(StatusCode::METHOD_NOT_ALLOWED);
    }
    let path = request.uri().path();
    let reply = if let Some(key) = path
        .strip_prefix('/')
        .filter(|key| key.starts_with("images/"))
    {
        image(site, key, &request).await
    } else if path == "/config.json" {
        let mut reply = Response::new(Full::new(site.config_json.clone()));
        set(&mut reply, CONTENT_TYPE, "application/json");
        set(&mut reply, CACHE_CONTROL, "no-store");
        reply
    } else {
        web_file(site, path).await
    };
    tracing::debug!(%peer, path, status = reply.status().as_u16(), "http");
    if head {
        let (parts, _) = reply.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    reply
}

/// An image under a signed URL: `key` is the path, `expires` and `signature` the query.
async fn image(site: &Site, key: &str, request: &Request<Incoming>) -> Reply {
    if !site.urls.served_locally() {
        // Presigned URLs point at the bucket; nothing is served here.
        return bare(StatusCode::NOT_FOUND);
    }
    let (mut expires, mut signature) = (None, None);
    for pair in request.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", value)) => expires = Some(value),
            Some(("signature", value)) => signature = Some(value),
            _ => {}
        }
    }
    let now = SystemTime::now();
    if let Err(refusal) = site.urls.verify(key, expires, signature, now) {
        tracing::debug!(%refusal, "image request refused");
        return bare(StatusCode::FORBIDDEN);
    }
    let stored = match site.store.get_stored(key).await {
        Ok(stored) => stored,
        Err(StorageError::NotFound { .. }) => return bare(StatusCode::NOT_FOUND),
        Err(err) => {
            tracing::warn!(error = %err, "image store unavailable");
            return bare(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let e_tag = entity_tag(stored.e_tag.as_deref(), &stored.bytes);
    // The URL works until it expires, and the image under it never changes: a cache may
    // keep it that long without asking again. Private: the URL is one user's.
    let max_age = expires
        .and_then(|value| value.parse::<u64>().ok())
        .map(|expires| {
            let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(expires);
            expires.duration_since(now).unwrap_or_default().as_secs()
        })
        .unwrap_or(0);
    let cache_control = format!("private, max-age={max_age}, immutable");
    let not_modified = request
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == e_tag || tag.trim() == "*")
        });
    let mut reply = if not_modified {
        bare(StatusCode::NOT_MODIFIED)
    } else {
        let length = stored.bytes.len();
        let mut reply = Response::new(Full::new(stored.bytes));
        set(&mut reply, CONTENT_TYPE, "image/png");
        set(&mut reply, CONTENT_LENGTH, &length.to_string());
        reply
    };
    set(&mut reply, ETAG, &e_tag);
    set(&mut reply, CACHE_CONTROL, &cache_control);
    set(
        &mut reply,
        LAST_MODIFIED,
        &httpdate::fmt_http_date(stored.last_modified),
    );
    set(&mut reply, X_CONTENT_TYPE_OPTIONS, "nosniff");
    reply
}

/// A strong entity tag: the store's own when it has one, else a digest of the bytes.
fn entity_tag(stored: Option<&str>, bytes: &[u8]) -> String {
    let tag = match stored {
        Some(tag) => tag.trim_matches('"').to_owned(),
        None => {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
            digest.as_ref()[..16]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        }
    };
    format!("\"{tag}\"")
}

/// A file of the web client: `/` is `index.html`; other names are single path segments
/// of the directory, so no request can reach outside it.
async fn web_file(site: &Site, path: &str) -> Reply {
    let Some(dir) = &site.web_dir else {
        return bare(StatusCode::NOT_FOUND);
    };
    let name = match path.strip_prefix('/') {
        Some("") => "index.html",
        Some(name) if is_plain_name(name) => name,
        _ => return bare(StatusCode::NOT_FOUND),
    };
    let Ok(bytes) = tokio::fs::read(dir.join(name)).await else {
        return bare(StatusCode::NOT_FOUND);
    };
    let mut reply = Response::new(Full::new(Bytes::from(bytes)));
    set(&mut reply, CONTENT_TYPE, content_type(name));
    // The bundle's names do not change between builds: always revalidate.
    set(&mut reply, CACHE_CONTROL, "no-cache");
    set(&mut reply, X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Signed image URLs must not travel in Referer headers to other sites.
    set(&mut reply, REFERRER_POLICY, "no-referrer");
    reply
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn bare(status: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

fn set(reply: &mut Reply, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        reply.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_served() {
        for name in [
            "index.html",
            "app.js",
            "app.css",
            "favicon.ico",
            "app.js.map",
        ] {
            assert!(is_plain_name(name), "{name}");
        }
        for name in ["", ".env", "../Cargo.toml", "a/b.js", "%2e%2e", "a b"] {
            assert!(!is_plain_name(name), "{name}");
        }
    }

    #[test]
    fn entity_tags_are_quoted_and_stable() {
        assert_eq!(entity_tag(Some("abc-1"), b""), "\"abc-1\"");
        assert_eq!(entity_tag(Some("\"abc-1\""), b""), "\"abc-1\"");
        let digest = entity_tag(None, b"png bytes");
        assert_eq!(digest, entity_tag(None, b"png bytes"));
        assert_ne!(digest, entity_tag(None, b"other bytes"));
        assert_eq!(digest.len(), 34);
    }
}
