//! What the HTTP providers share: sending a request as a span of its own, URL checks, the
//! mapping of HTTP failures to [`ProviderError`] classes, and turning base64 from a JSON
//! answer into PNG bytes.
//!
//! Both APIs fail the same ways (they are HTTP servers in front of a GPU), so one mapping
//! keeps the classes identical: a 429 from OpenAI and a 503 from a busy web UI are both
//! worth another try, a 401 or a 422 never is.

pub(super) use atelier_runtime::http_retry::{is_retryable_status, retry_after};
use base64::Engine as _;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tracing::Instrument as _;

use super::ProviderError;

/// The eight bytes every PNG starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// How much of an error body a reason keeps: enough to read the provider's message.
const EXCERPT_CHARS: usize = 300;

/// Sends `request` as a client span of its own (`provider.http`, named after the method and
/// path, with the status), carrying that span's W3C trace context. Every provider call goes
/// through here, so a slow progress poll, an upload, a retry, a download or a cancel shows
/// in the message's trace as itself, under the span it was sent from.
pub(super) async fn send(
    provider: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, request) = request.build_split();
    let mut request = request?;
    let span = tracing::info_span!(
        "provider.http",
        otel.name = %format_args!("{} {}", request.method(), request.url().path()),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        provider,
        http.request.method = %request.method(),
        server.address = request.url().host_str().unwrap_or_default(),
        url.path = request.url().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let context = span.in_scope(atelier_runtime::telemetry::trace_headers);
    request.headers_mut().extend(context);
    let response = client.execute(request).instrument(span.clone()).await;
    match &response {
        Ok(response) => {
            span.record(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
            // OpenTelemetry's rule for a client span: a 4xx or 5xx answer is an error.
            if response.status().is_client_error() || response.status().is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    response
}

/// Checks that `value` is an absolute http(s) URL.
pub(super) fn check_url(value: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(value).map_err(|err| err.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

/// `value` checked and without its trailing slash, ready for `format!("{base}/path")`.
pub(super) fn base_url(value: &str) -> anyhow::Result<String> {
    check_url(value).map_err(|reason| anyhow::anyhow!("image provider URL {value:?}: {reason}"))?;
    Ok(value.trim_end_matches('/').to_owned())
}

/// The class of a request that got no response (or lost it half-way).
pub(super) fn from_reqwest(provider: &str, err: &reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::timed_out(format!("{provider}: timed out: {}", error_chain(err)))
    } else if err.is_builder() {
        // The request itself cannot be built; it will not build next time either.
        ProviderError::permanent(format!("{provider}: invalid request: {}", error_chain(err)))
    } else {
        // Refused or reset connections, DNS failures, a body cut short: the server or the
        // network was briefly unwell, which is what retries are for.
        ProviderError::retryable(format!("{provider}: {}", error_chain(err)))
    }
}

/// The class of an error status, with the provider's own message when the body has one.
///
/// `secret` is removed from the reason: some APIs echo part of a bad key back.
pub(super) fn from_status(
    provider: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&str>,
) -> ProviderError {
    let message = redact(&error_message(body), secret);
    let reason = if message.is_empty() {
        format!("{provider} answered {status}")
    } else {
        format!("{provider} answered {status}: {message}")
    };
    // The LLM client shares this rule, so title, intent and images agree on it.
    if is_retryable_status(status.as_u16()) {
        ProviderError::Retryable {
            reason,
            retry_after: retry_after(headers),
            trouble: super::Trouble::Status(status.as_u16()),
        }
    } else {
        // Other 4xx (a bad key, an unknown model, a refused prompt) and the 3xx a wrong
        // base URL produces fail the same way every time.
        ProviderError::permanent(reason)
    }
}

/// The human part of an error body: OpenAI's `error.message`, a FastAPI `detail` (a
/// string, or a list of validation errors with `msg`), a plain `error` string; else the
/// start of the body as text.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json_message(&json));
    let message = message.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    message.trim().chars().take(EXCERPT_CHARS).collect()
}

fn json_message(json: &serde_json::Value) -> Option<String> {
    let non_empty = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .filter(|text| !text.trim().is_empty())
            .map(str::to_owned)
    };
    if let Some(message) = non_empty(json.pointer("/error/message")) {
        return Some(message);
    }
    if let Some(detail) = non_empty(json.get("detail")) {
        return Some(detail);
    }
    if let Some(details) = json.get("detail").and_then(serde_json::Value::as_array) {
        let messages: Vec<&str> = details
            .iter()
            .filter_map(|detail| detail.get("msg").and_then(serde_json::Value::as_str))
            .collect();
        if !messages.is_empty() {
            return Some(messages.join("; "));
        }
    }
    non_empty(json.get("error"))
}

fn redact(text: &str, secret: Option<&str>) -> String {
    match secret.filter(|secret| !secret.is_empty()) {
        Some(secret) => text.replace(secret, "<redacted>"),
        None => text.to_owned(),
    }
}

/// Decodes a base64 image from an API answer and checks that it is a PNG.
///
/// Anything else is a [`ProviderError::bad_answer`]: a GPU server cut off mid-answer, or
/// a proxy's error page with a 200, is gone on the next try.
///
/// A data URL prefix (`data:image/png;base64,`) is tolerated: some forks of the web UI
/// send one.
pub(super) fn decode_png(provider: &str, encoded: &str) -> Result<Bytes, ProviderError> {
    let encoded = match encoded.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => encoded,
    };
    let png = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| {
            ProviderError::bad_answer(format!("{provider}: the image is not base64: {err}"))
        })?;
    // Checked here so that a server configured for JPEG or WebP fails as that, not later
    // as an unreadable file in storage.
    if !png.starts_with(&PNG_SIGNATURE) {
        return Err(ProviderError::bad_answer(format!(
            "{provider}: the image is not a PNG"
        )));
    }
    Ok(Bytes::from(png))
}

/// Checks that downloaded bytes are a PNG (see [`decode_png`] for why a failure is
/// retried).
pub(super) fn check_png(provider: &str, bytes: Bytes) -> Result<Bytes, ProviderError> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        Ok(bytes)
    } else {
        Err(ProviderError::bad_answer(format!(
            "{provider}: the image is not a PNG"
        )))
    }
}

/// Parses a 2xx JSON answer; one that does not parse is a [`ProviderError::bad_answer`]
/// (a body cut short, a proxy's page), worth another try.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    provider: &str,
    body: &[u8],
) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|err| {
        ProviderError::bad_answer(format!("{provider}: the answer does not parse: {err}"))
    })
}

pub(super) fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::RETRY_AFTER;

    use super::*;

    fn classify(status: u16, body: &str) -> ProviderError {
        from_status(
            "api",
            StatusCode::from_u16(status).expect("a status"),
            &HeaderMap::new(),
            body.as_bytes(),
            Some("sk-secret"),
        )
    }

    #[test]
    fn busy_and_broken_servers_are_retryable() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(classify(status, "").is_retryable(), "{status}");
        }
        for status in [301, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!classify(status, "").is_retryable(), "{status}");
        }
    }

    #[test]
    fn retry_after_is_kept_in_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 7 ".parse().expect("a header value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let err = from_status("api", StatusCode::TOO_MANY_REQUESTS, &headers, b"", None);
        assert_eq!(
            err,
            ProviderError::Retryable {
                reason: "api answered 429 Too Many Requests".to_owned(),
                retry_after: Some(Duration::from_secs(7)),
                trouble: super::super::Trouble::Status(429),
            }
        );
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT"
                .parse()
                .expect("a header value"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn reasons_carry_the_providers_message_without_the_key() {
        let openai = r#"{"error":{"message":"Incorrect API key provided: sk-secret.","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(
            classify(401, openai).reason(),
            "api answered 401 Unauthorized: Incorrect API key provided: <redacted>."
        );
        let fastapi = r#"{"detail":[{"loc":["body","width"],"msg":"value is not a valid integer","type":"type_error.integer"}]}"#;
        assert_eq!(
            classify(422, fastapi).reason(),
            "api answered 422 Unprocessable Entity: value is not a valid integer"
        );
        assert_eq!(
            classify(404, r#"{"detail":"Not Found"}"#).reason(),
            "api answered 404 Not Found: Not Found"
        );
        assert_eq!(
            classify(500, r#"{"error":"RuntimeError","detail":"","body":""}"#).reason(),
            "api answered 500 Internal Server Error: RuntimeError"
        );
        assert_eq!(
            classify(502, "<html>bad gateway</html>").reason(),
            "api answered 502 Bad Gateway: <html>bad gateway</html>"
        );
        let long = "x".repeat(10_000);
        assert!(classify(400, &long).reason().len() < 400);
    }

    #[test]
    fn only_base64_pngs_are_images() {
        let png = [&PNG_SIGNATURE[..], b"rest"].concat();
        let encoded = encode_base64(&png);
        assert_eq!(decode_png("api", &encoded), Ok(Bytes::from(png.clone())));
        assert_eq!(
            decode_png("api", &format!("data:image/png;base64,{encoded}")),
            Ok(Bytes::from(png))
        );
        assert!(
            decode_png("api", "not base64!")
                .expect_err("bad")
                .is_retryable()
        );
        let jpeg = encode_base64(&[0xFF, 0xD8, 0xFF, 0xE0]);
        assert_eq!(
            decode_png("api", &jpeg),
            Err(ProviderError::bad_answer("api: the image is not a PNG"))
        );
    }

    #[test]
    fn base_urls_lose_their_trailing_slash_and_must_be_http() {
        assert_eq!(
            base_url("http://a1111:7860/").expect("valid"),
            "http://a1111:7860"
        );
        assert!(base_url("a1111:7860").is_err());
        assert!(base_url("ftp://a1111").is_err());
    }
}
