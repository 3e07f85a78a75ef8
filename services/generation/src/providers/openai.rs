//! The `openai` provider: the OpenAI images API, Azure OpenAI's, or any server that
//! speaks its shape (LiteLLM, LocalAI and others proxy it).
//!
//! Text-to-image is `POST {base}/images/generations` with JSON; an edit is
//! `POST {base}/images/edits` with a multipart form carrying the previous image. With
//! `api_version` set (Azure OpenAI) the paths are
//! `{base}/openai/deployments/{model}/images/...?api-version=...` and the key goes in
//! the `api-key` header instead of a bearer token.
//!
//! Models differ in what they take, and the catalog says which (its `ModelSettings`):
//! `response_format` is sent only when set (dall-e-2 and dall-e-3 take `b64_json`;
//! gpt-image-1 refuses the field and always answers base64), `quality` and `background`
//! only when set. An answer with a `url` instead of `b64_json` is downloaded at once: the
//! link expires within the hour. Sizes are the catalog's business: it lists each model's
//! allowed sizes, so no request reaches the API with a size it refuses.
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
    /// Set for Azure OpenAI.
    api_version: Option<String>,
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
            api_version: config.openai_api_version.clone(),
        })
    }

    /// The URL of `operation` (`generations` or `edits`) for `model`.
    fn url(&self, model: &str, operation: &str) -> String {
        match &self.api_version {
            Some(version) => {
                let mut url = format!(
                    "{}/openai/deployments/{model}/images/{operation}",
                    self.base_url
                );
                url.push_str("?api-version=");
                url.extend(form_urlencoded_byte_serialize(version));
                url
            }
            None => format!("{}/images/{operation}", self.base_url),
        }
    }

    fn is_azure(&self) -> bool {
        self.api_version.is_some()
    }

    async fn generation(&self, request: &ImageRequest) -> Result<reqwest::Response, ProviderError> {
        let settings = &request.settings;
        let body = GenerationBody {
            // Azure names the model in the path (the deployment).
            model: if self.is_azure() { "" } else { &request.model },
            prompt: &prompt_with_negative(request),
            n: 1,
            size: &size(request),
            response_format: &settings.response_format,
            quality: &settings.quality,
            background: &settings.background,
        };
        self.send(
            self.http
                .post(self.url(&request.model, "generations"))
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
        if !request.model.is_empty() && !self.is_azure() {
            form = form.text("model", request.model.clone());
        }
        let settings = &request.settings;
        for (name, value) in [
            ("response_format", &settings.response_format),
            ("quality", &settings.quality),
            ("background", &settings.background),
        ] {
            if !value.is_empty() {
                form = form.text(name, value.clone());
            }
        }
        let form = form
            .text("prompt", prompt_with_negative(request))
            .text("size", size(request))
            .text("n", "1")
            .part("image", image);
        self.send(
            self.http
                .post(self.url(&request.model, "edits"))
                .multipart(form),
        )
        .await
    }

    /// Sends with the key (`http::send`: a span of its own) and turns an error status into
    /// its class.
    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        if let Some(key) = &self.api_key {
            request = if self.is_azure() {
                let mut value = reqwest::header::HeaderValue::from_str(key).map_err(|_| {
                    ProviderError::permanent(format!("{NAME}: the API key is not a header value"))
                })?;
                // Kept out of reqwest's debug output, as bearer_auth does for its header.
                value.set_sensitive(true);
                request.header("api-key", value)
            } else {
                // bearer_auth marks the header sensitive, which keeps it out of
                // reqwest's own debug output.
                request.bearer_auth(key)
            };
        }
        let response = http::send(NAME, request)
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        self.checked(response).await
    }

    async fn checked(
        &self,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, ProviderError> {
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

    /// Downloads a `url` answer. No key is sent: the link is signed, and on another host.
    async fn download(&self, url: &str) -> Result<Bytes, ProviderError> {
        http::check_url(url).map_err(|reason| {
            ProviderError::bad_answer(format!("{NAME}: the image URL is unusable: {reason}"))
        })?;
        let response = http::send(NAME, self.http.get(url))
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let body = self
            .checked(response)
            .await?
            .bytes()
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        http::check_png(NAME, body)
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
        let png = match parse_image(&body)? {
            Answer::Png(png) => png,
            Answer::Url(url) => self.download(&url).await?,
        };
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
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct GenerationBody<'a> {
    /// Left out when empty, so the server's default model applies.
    #[serde(skip_serializing_if = "str::is_empty")]
    model: &'a str,
    prompt: &'a str,
    n: u32,
    size: &'a str,
    /// Only for models that take it: gpt-image-1 answers 400 to the field.
    #[serde(skip_serializing_if = "str::is_empty")]
    response_format: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    quality: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    background: &'a str,
}

#[derive(Deserialize)]
struct ImagesResponse {
    data: Vec<ImageData>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
    url: Option<String>,
}

/// `value` escaped for a query string; api versions are plain, but a typo with a space
/// or `&` should not build another URL.
fn form_urlencoded_byte_serialize(value: &str) -> impl Iterator<Item = String> + '_ {
    value.bytes().map(|byte| {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            char::from(byte).to_string()
        } else {
            format!("%{byte:02X}")
        }
    })
}

/// What an answer carries: the image, or where to fetch it.
#[derive(Debug, PartialEq)]
enum Answer {
    Png(Bytes),
    Url(String),
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

/// The first image of a 2xx answer: base64, else a URL. An answer that does not parse or
/// carries neither (cut off, a proxy's page) is worth another try.
fn parse_image(body: &[u8]) -> Result<Answer, ProviderError> {
    let response: ImagesResponse = http::parse_json(NAME, body)?;
    let image = response
        .data
        .into_iter()
        .next()
        .ok_or_else(|| ProviderError::bad_answer(format!("{NAME}: the answer has no image")))?;
    match (image.b64_json, image.url) {
        (Some(encoded), _) => http::decode_png(NAME, &encoded).map(Answer::Png),
        (None, Some(url)) => Ok(Answer::Url(url)),
        (None, None) => Err(ProviderError::bad_answer(format!(
            "{NAME}: the answer has neither b64_json nor url"
        ))),
    }
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
            settings: Default::default(),
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
    fn answers_without_an_image_are_retried_and_urls_are_followed() {
        for body in [
            "not json",
            r#"{"data":[{"b64_json":"iVBO"#,
            "{}",
            r#"{"data":[]}"#,
            r#"{"data":[{}]}"#,
            r#"{"data":[{"b64_json":"%%%"}]}"#,
        ] {
            let err = parse_image(body.as_bytes()).expect_err(body);
            assert!(err.is_retryable(), "{body}: {err}");
        }
        assert_eq!(
            parse_image(br#"{"data":[{"url":"https://example.com/a.png"}]}"#),
            Ok(Answer::Url("https://example.com/a.png".to_owned()))
        );
    }

    #[test]
    fn azure_names_the_deployment_in_the_path() {
        let config = ProvidersConfig {
            openai_base_url: Some("https://res.openai.azure.com/".to_owned()),
            openai_api_version: Some("2025-04-01-preview".to_owned()),
            ..ProvidersConfig::default()
        };
        let azure = OpenAiProvider::new(&config).expect("a valid config");
        assert_eq!(
            azure.url("gpt-image-1", "generations"),
            "https://res.openai.azure.com/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview"
        );
        let plain = OpenAiProvider::new(&ProvidersConfig {
            openai_api_version: None,
            ..config
        })
        .expect("a valid config");
        assert_eq!(
            plain.url("gpt-image-1", "edits"),
            "https://res.openai.azure.com/images/edits"
        );
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
