//! The `openai` provider: the OpenAI images API, or any server that speaks its shape
//! (LiteLLM, LocalAI and others proxy it).
//!
//! Text-to-image is `POST {base}/images/generations` with JSON; an edit is
//! `POST {base}/images/edits` with a multipart form carrying the previous image. Both ask
//! for `b64_json` so the image arrives in the answer itself: a URL answer would need a
//! second download, from a host that expires its links within the hour.
//!
//! The API has no negative prompt and no seed: the negative prompt is appended to the
//! prompt as an instruction, and the seed is not sent (results are not reproducible).
//! It reports no progress either, so the channel only sees 0 and then 100.
//!
//! Cancel-safe: dropping the call drops the HTTP request; the API has no way to stop a
//! generation, and nothing is left on this side.

use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    ImageProvider, ImageRequest, ProviderError, ProviderKind, ProvidersConfig, http, http_client,
    missing, report,
};

const NAME: &str = "openai";

/// A client for one OpenAI-compatible images endpoint.
#[derive(Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    /// Without a trailing slash.
    base_url: String,
    api_key: Option<String>,
}

impl OpenAiProvider {
    /// Fails when `openai_base_url` is not set or not an http(s) URL.
    pub fn new(config: &ProvidersConfig) -> anyhow::Result<Self> {
        let base_url = config
            .openai_base_url
            .as_deref()
            .ok_or_else(|| missing(ProviderKind::Openai, "ATELIER_OPENAI_IMAGES_URL"))?;
        Ok(Self {
            http: http_client(config)?,
            base_url: http::base_url(base_url)?,
            api_key: config.openai_api_key.clone(),
        })
    }

    async fn generation(&self, request: &ImageRequest) -> Result<reqwest::Response, ProviderError> {
        let body = GenerationBody {
            model: &request.model,
            prompt: &prompt_with_negative(request),
            n: 1,
            size: &size(request),
            response_format: B64_JSON,
        };
        self.send(
            self.http
                .post(format!("{}/images/generations", self.base_url))
                .json(&body),
        )
        .await
    }

    async fn edit(
        &self,
        request: &ImageRequest,
        init_image: &Bytes,
    ) -> Result<reqwest::Response, ProviderError> {
        // The image part is named `image.png` because the API infers the format from
        // the file name as well as the content type.
        let image = Part::bytes(init_image.to_vec())
            .file_name("image.png")
            .mime_str("image/png")
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let mut form = Form::new();
        if !request.model.is_empty() {
            form = form.text("model", request.model.clone());
        }
        let form = form
            .text("prompt", prompt_with_negative(request))
            .text("size", size(request))
            .text("n", "1")
            .text("response_format", B64_JSON)
            .part("image", image);
        self.send(
            self.http
                .post(format!("{}/images/edits", self.base_url))
                .multipart(form),
        )
        .await
    }

    /// Sends with the key and turns an error status into its class.
    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        if let Some(key) = &self.api_key {
            // bearer_auth marks the header sensitive, which keeps it out of reqwest's own
            // debug output.
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        // The status is the error; a body that cannot be read only loses the message.
        let body = response.bytes().await.unwrap_or_default();
        Err(http::from_status(
            NAME,
            status,
            &headers,
            &body,
            self.api_key.as_deref(),
        ))
    }
}

#[tonic::async_trait]
impl ImageProvider for OpenAiProvider {
    async fn generate(
        &self,
        request: &ImageRequest,
        progress: &watch::Sender<u32>,
    ) -> Result<Bytes, ProviderError> {
        report(progress, 0);
        let response = match &request.init_image {
            Some(init_image) => self.edit(request, init_image).await?,
            None => self.generation(request).await?,
        };
        let body = response
            .bytes()
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let png = parse_images(&body)?;
        report(progress, 100);
        Ok(png)
    }
}

// By hand, so the key never reaches a log through `{:?}`.
impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

const B64_JSON: &str = "b64_json";

#[derive(Serialize)]
struct GenerationBody<'a> {
    /// Left out when empty, so the server's default model applies.
    #[serde(skip_serializing_if = "str::is_empty")]
    model: &'a str,
    prompt: &'a str,
    n: u32,
    size: &'a str,
    response_format: &'a str,
}

#[derive(Deserialize)]
struct ImagesResponse {
    data: Vec<ImageData>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
}

/// The prompt, with the negative prompt as an instruction since the API has no field for
/// it. Models follow "Avoid: ..." reasonably well; dropping it silently would not.
fn prompt_with_negative(request: &ImageRequest) -> String {
    let negative = request.negative_prompt.trim();
    if negative.is_empty() {
        request.prompt.clone()
    } else {
        format!("{} Avoid: {negative}", request.prompt)
    }
}

fn size(request: &ImageRequest) -> String {
    format!("{}x{}", request.width, request.height)
}

/// The first image of a 200 answer. An answer of another shape will not change on retry
/// (it is the server's contract, not its mood), hence permanent.
fn parse_images(body: &[u8]) -> Result<Bytes, ProviderError> {
    let response: ImagesResponse = serde_json::from_slice(body).map_err(|err| {
        ProviderError::permanent(format!(
            "{NAME}: the answer is not an images response: {err}"
        ))
    })?;
    let encoded = response
        .data
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::permanent(format!("{NAME}: the answer has no image")))?
        .b64_json
        .ok_or_else(|| {
            ProviderError::permanent(format!(
                "{NAME}: the answer has no b64_json (does the server ignore response_format?)"
            ))
        })?;
    http::decode_png(NAME, &encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(negative_prompt: &str) -> ImageRequest {
        ImageRequest {
            model: "gpt-image-1".to_owned(),
            prompt: "a red fox in the snow".to_owned(),
            negative_prompt: negative_prompt.to_owned(),
            width: 1024,
            height: 768,
            seed: 1,
            init_image: None,
            strength: 0.5,
        }
    }

    #[test]
    fn the_negative_prompt_becomes_an_instruction() {
        assert_eq!(prompt_with_negative(&request("")), "a red fox in the snow");
        assert_eq!(
            prompt_with_negative(&request("  ")),
            "a red fox in the snow"
        );
        assert_eq!(
            prompt_with_negative(&request("blur, text")),
            "a red fox in the snow Avoid: blur, text"
        );
        assert_eq!(size(&request("")), "1024x768");
    }

    #[test]
    fn answers_without_a_png_are_permanent_errors() {
        for body in [
            "not json",
            "{}",
            r#"{"data":[]}"#,
            r#"{"data":[{"url":"https://example.com/a.png"}]}"#,
            r#"{"data":[{"b64_json":"%%%"}]}"#,
        ] {
            let err = parse_images(body.as_bytes()).expect_err(body);
            assert!(!err.is_retryable(), "{body}: {err}");
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let provider = OpenAiProvider::new(&ProvidersConfig {
            openai_base_url: Some("https://api.openai.com/v1/".to_owned()),
            openai_api_key: Some("sk-very-secret".to_owned()),
            ..ProvidersConfig::default()
        })
        .expect("a valid config");
        let debug = format!("{provider:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(
            debug.contains(r#"base_url: "https://api.openai.com/v1""#),
            "{debug}"
        );
    }
}
