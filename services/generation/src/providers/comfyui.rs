//! The `comfyui` provider: a ComfyUI server, driven by workflows in its API format.
//!
//! A workflow is a JSON object of nodes (`{"3": {"class_type": "KSampler", "inputs":
//! {...}}}`), as ComfyUI's "Save (API format)" writes it, in which some input values are
//! placeholders: a string that is exactly one of [`PLACEHOLDERS`] (`"{{seed}}"`) is
//! replaced by the request's value, typed as the node expects (numbers for seed, size,
//! steps, CFG and denoise). Two workflows ship with the service (`txt2img` and `img2img`,
//! in `services/generation/workflows/`); `ATELIER_COMFYUI_WORKFLOWS_DIR` adds more or
//! replaces them, and a catalog model names its own (`workflow`, `img2img_workflow`).
//! All are loaded and checked at start, so a broken file stops the service rather than
//! every image that uses it.
//!
//! One image is: for an edit, `POST /upload/image` (multipart) with the previous image,
//! whose answered name fills `{{init_image}}`; `POST /prompt` with the filled workflow;
//! `GET /history/{prompt_id}` polled until the prompt has outputs (ComfyUI's per-step
//! progress exists only on its websocket, so progress is coarse: 0 queued, 50 once the
//! server runs it, from `GET /queue`); `GET /view` of the first output image.
//!
//! Cancel-safe: dropped while the prompt is queued or running, a guard spawns a
//! fire-and-forget `POST /queue {"delete": [id]}` (still queued) and
//! `POST /interrupt {"prompt_id": id}` (running; servers that predate the field interrupt
//! whatever runs, which on a server dedicated to Atelier's workers is ours).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::{
    ImageProvider, ImageRequest, ProviderError, ProviderKind, ProvidersConfig, http, http_client,
    missing, report,
};

const NAME: &str = "comfyui";

/// The placeholders a workflow may hold, as whole string values.
pub const PLACEHOLDERS: [&str; 12] = [
    "{{prompt}}",
    "{{negative_prompt}}",
    "{{seed}}",
    "{{width}}",
    "{{height}}",
    "{{steps}}",
    "{{cfg}}",
    "{{sampler}}",
    "{{scheduler}}",
    "{{denoise}}",
    "{{init_image}}",
    "{{checkpoint}}",
];

/// The workflows that ship with the service.
const SHIPPED: [(&str, &str); 2] = [
    ("txt2img", include_str!("../../workflows/txt2img.json")),
    ("img2img", include_str!("../../workflows/img2img.json")),
];

/// Sampling defaults for a model whose catalog entry sets none (ComfyUI's own names).
const STEPS: u32 = 30;
const CFG: f32 = 7.0;
const SAMPLER: &str = "euler";
const SCHEDULER: &str = "normal";

/// The limit of the cancel requests: fire-and-forget, answered at once by a live server.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Checked workflows by name.
#[derive(Clone, Debug, Default)]
pub struct Workflows(HashMap<String, Value>);

impl Workflows {
    /// The shipped workflows, then every `*.json` of `dir` (the file stem is the name).
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut workflows = Self::default();
        for (name, json) in SHIPPED {
            workflows.add(name, json)?;
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("reading the ComfyUI workflows in {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_none_or(|ext| ext != "json") {
                    continue;
                }
                let name = path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .with_context(|| format!("{} has no usable name", path.display()))?
                    .to_owned();
                let json = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                workflows.add(&name, &json)?;
            }
        }
        Ok(workflows)
    }

    /// Parses and checks one workflow; it replaces any of the same name.
    pub fn add(&mut self, name: &str, json: &str) -> anyhow::Result<()> {
        let workflow: Value = serde_json::from_str(json)
            .with_context(|| format!("ComfyUI workflow {name:?} is not JSON"))?;
        check(&workflow)
            .map_err(|reason| anyhow::anyhow!("ComfyUI workflow {name:?}: {reason}"))?;
        self.0.insert(name.to_owned(), workflow);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

/// A workflow in API format: nodes with a class and inputs, a `{{prompt}}` somewhere, no
/// placeholder we do not know (a typo would reach ComfyUI as a literal string).
fn check(workflow: &Value) -> Result<(), String> {
    let nodes = workflow
        .as_object()
        .filter(|nodes| !nodes.is_empty())
        .ok_or("not an object of nodes (export it with \"Save (API format)\")")?;
    for (id, node) in nodes {
        let has_class = node.get("class_type").is_some_and(Value::is_string);
        let has_inputs = node.get("inputs").is_some_and(Value::is_object);
        if !has_class || !has_inputs {
            return Err(format!("node {id:?} has no class_type or inputs"));
        }
    }
    let mut found = Vec::new();
    placeholders(workflow, &mut found);
    if let Some(unknown) = found
        .iter()
        .find(|found| !PLACEHOLDERS.contains(&found.as_str()))
    {
        return Err(format!(
            "unknown placeholder {unknown:?}; known: {}",
            PLACEHOLDERS.join(", ")
        ));
    }
    if !found.iter().any(|found| found == "{{prompt}}") {
        return Err("no {{prompt}} placeholder".to_owned());
    }
    Ok(())
}

/// Every string value that looks like a placeholder.
fn placeholders(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(text) if text.starts_with("{{") && text.ends_with("}}") => {
            found.push(text.clone());
        }
        Value::Array(items) => items.iter().for_each(|item| placeholders(item, found)),
        Value::Object(fields) => fields.values().for_each(|field| placeholders(field, found)),
        _ => {}
    }
}

/// Replaces every placeholder in `value` by its value in `values`.
fn fill(value: &mut Value, values: &HashMap<&str, Value>) {
    match value {
        Value::String(text) => {
            if let Some(filled) = values.get(text.as_str()) {
                *value = filled.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| fill(item, values)),
        Value::Object(fields) => fields.values_mut().for_each(|field| fill(field, values)),
        _ => {}
    }
}

/// A client for one ComfyUI server.
#[derive(Clone, Debug)]
pub struct ComfyUiProvider {
    http: reqwest::Client,
    /// Without a trailing slash.
    base_url: String,
    workflows: Workflows,
    progress_interval: Duration,
    /// The longest a prompt may take from queueing to its image.
    render_timeout: Duration,
}

impl ComfyUiProvider {
    /// Fails when `comfyui_url` is not set or not an http(s) URL, or a workflow is broken.
    pub fn new(config: &ProvidersConfig) -> anyhow::Result<Self> {
        let base_url = config
            .comfyui_url
            .as_deref()
            .ok_or_else(|| missing(ProviderKind::Comfyui, "ATELIER_COMFYUI_URL"))?;
        anyhow::ensure!(
            !config.progress_interval.is_zero(),
            "the progress interval is zero"
        );
        Ok(Self {
            http: http_client(config)?,
            base_url: http::base_url(base_url)?,
            workflows: Workflows::load(config.comfyui_workflows_dir.as_deref())?,
            progress_interval: config.progress_interval,
            render_timeout: config.request_timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base_url)
    }

    /// The filled workflow for `request`, the init image's server-side name given.
    fn workflow(
        &self,
        request: &ImageRequest,
        init_image: Option<&str>,
    ) -> Result<Value, ProviderError> {
        let settings = &request.settings;
        let name = match (
            init_image,
            settings.workflow.as_str(),
            settings.img2img_workflow.as_str(),
        ) {
            (Some(_), _, "") => "img2img",
            (Some(_), _, name) => name,
            (None, "", _) => "txt2img",
            (None, name, _) => name,
        };
        let mut workflow = self
            .workflows
            .get(name)
            .ok_or_else(|| ProviderError::permanent(format!("{NAME}: no workflow named {name:?}")))?
            .clone();
        let mut found = Vec::new();
        placeholders(&workflow, &mut found);
        if found.iter().any(|found| found == "{{checkpoint}}") && settings.checkpoint.is_empty() {
            return Err(ProviderError::permanent(format!(
                "{NAME}: workflow {name:?} needs a checkpoint and the model sets none"
            )));
        }
        if found.iter().any(|found| found == "{{init_image}}") && init_image.is_none() {
            return Err(ProviderError::permanent(format!(
                "{NAME}: workflow {name:?} edits an image and the request has none"
            )));
        }
        let or = |value: &str, default: &str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value.to_owned()
            }
        };
        let denoise = if init_image.is_some() {
            request.strength.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let values: HashMap<&str, Value> = HashMap::from([
            ("{{prompt}}", Value::from(request.prompt.clone())),
            (
                "{{negative_prompt}}",
                Value::from(request.negative_prompt.clone()),
            ),
            ("{{seed}}", Value::from(request.seed)),
            ("{{width}}", Value::from(request.width)),
            ("{{height}}", Value::from(request.height)),
            ("{{steps}}", Value::from(settings.steps.unwrap_or(STEPS))),
            ("{{cfg}}", Value::from(settings.cfg_scale.unwrap_or(CFG))),
            ("{{sampler}}", Value::from(or(&settings.sampler, SAMPLER))),
            (
                "{{scheduler}}",
                Value::from(or(&settings.scheduler, SCHEDULER)),
            ),
            ("{{denoise}}", Value::from(denoise)),
            (
                "{{init_image}}",
                Value::from(init_image.unwrap_or_default()),
            ),
            ("{{checkpoint}}", Value::from(settings.checkpoint.clone())),
        ]);
        fill(&mut workflow, &values);
        Ok(workflow)
    }

    /// Sends (`http::send`: a span of its own) and turns an error status into its class.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Bytes, ProviderError> {
        let response = http::send(NAME, request)
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            return Err(http::from_status(NAME, status, &headers, &body, None));
        }
        response
            .bytes()
            .await
            .map_err(|err| http::from_reqwest(NAME, &err))
    }

    /// Uploads the init image and answers the name a `LoadImage` node reads it by.
    async fn upload(&self, png: &Bytes) -> Result<String, ProviderError> {
        let file_name = format!("atelier-{}.png", uuid::Uuid::now_v7());
        let image = Part::bytes(png.to_vec())
            .file_name(file_name)
            .mime_str("image/png")
            .map_err(|err| http::from_reqwest(NAME, &err))?;
        let form = Form::new()
            .part("image", image)
            .text("type", "input")
            .text("overwrite", "true");
        let body = self
            .send(self.http.post(self.url("upload/image")).multipart(form))
            .await?;
        let uploaded: Uploaded = http::parse_json(NAME, &body)?;
        Ok(if uploaded.subfolder.is_empty() {
            uploaded.name
        } else {
            format!("{}/{}", uploaded.subfolder, uploaded.name)
        })
    }

    async fn queue(&self, workflow: Value, client_id: &str) -> Result<String, ProviderError> {
        let body = serde_json::json!({ "prompt": workflow, "client_id": client_id });
        let answer = self
            .send(self.http.post(self.url("prompt")).json(&body))
            .await?;
        let queued: Queued = http::parse_json(NAME, &answer)?;
        if queued
            .node_errors
            .as_object()
            .is_some_and(|errors| !errors.is_empty())
        {
            return Err(ProviderError::permanent(format!(
                "{NAME}: the workflow was refused: {}",
                queued.node_errors
            )));
        }
        Ok(queued.prompt_id)
    }

    /// Polls until the prompt has an output image, and answers where it is.
    async fn wait_for_output(
        &self,
        prompt_id: &str,
        progress: &watch::Sender<u32>,
    ) -> Result<OutputImage, ProviderError> {
        loop {
            tokio::time::sleep(self.progress_interval).await;
            let body = self
                .send(self.http.get(self.url(&format!("history/{prompt_id}"))))
                .await?;
            let history: HashMap<String, HistoryEntry> = http::parse_json(NAME, &body)?;
            if let Some(entry) = history.get(prompt_id) {
                if entry.status.status_str == "error" {
                    return Err(ProviderError::permanent(format!(
                        "{NAME}: the prompt failed: {}",
                        entry.status.messages
                    )));
                }
                if let Some(image) = entry
                    .outputs
                    .values()
                    .flat_map(|output| output.images.iter())
                    .find(|image| image.kind == "output")
                {
                    return Ok(image.clone());
                }
                if entry.status.completed {
                    return Err(ProviderError::permanent(format!(
                        "{NAME}: the workflow finished without an output image (no SaveImage node?)"
                    )));
                }
            }
            if self.is_running(prompt_id).await {
                report(progress, 50);
            }
        }
    }

    /// Whether the server runs the prompt now; a failed look says no (progress is a
    /// nicety).
    async fn is_running(&self, prompt_id: &str) -> bool {
        let Ok(body) = self.send(self.http.get(self.url("queue"))).await else {
            return false;
        };
        let Ok(queue) = serde_json::from_slice::<QueueState>(&body) else {
            return false;
        };
        // Each entry is [number, prompt_id, prompt, extra_data, outputs_to_execute].
        queue
            .queue_running
            .iter()
            .any(|entry| entry.get(1).and_then(Value::as_str) == Some(prompt_id))
    }

    async fn view(&self, image: &OutputImage) -> Result<Bytes, ProviderError> {
        let mut url = reqwest::Url::parse(&self.url("view")).map_err(|err| {
            ProviderError::permanent(format!("{NAME}: the view URL is invalid: {err}"))
        })?;
        url.query_pairs_mut()
            .append_pair("filename", &image.filename)
            .append_pair("subfolder", &image.subfolder)
            .append_pair("type", &image.kind);
        let body = self.send(self.http.get(url)).await?;
        http::check_png(NAME, body)
    }
}

#[tonic::async_trait]
impl ImageProvider for ComfyUiProvider {
    /// Reports 0, 50 once the server runs the prompt, then 100 with the image.
    async fn generate(
        &self,
        request: &ImageRequest,
        progress: &watch::Sender<u32>,
    ) -> Result<Bytes, ProviderError> {
        report(progress, 0);
        let init_image = match &request.init_image {
            Some(png) => Some(self.upload(png).await?),
            None => None,
        };
        let workflow = self.workflow(request, init_image.as_deref())?;
        let client_id = uuid::Uuid::now_v7().to_string();
        let prompt_id = self.queue(workflow, &client_id).await?;
        let mut guard = CancelOnDrop {
            target: Some((self.http.clone(), self.base_url.clone(), prompt_id.clone())),
            span: tracing::Span::current(),
        };
        let outcome = tokio::time::timeout(
            self.render_timeout,
            self.wait_for_output(&prompt_id, progress),
        )
        .await;
        let image = match outcome {
            Ok(Ok(image)) => {
                guard.disarm();
                image
            }
            // Dropping the armed guard stops the prompt: a retry must not queue behind it.
            Ok(Err(err)) => return Err(err),
            Err(_elapsed) => {
                return Err(ProviderError::timed_out(format!(
                    "{NAME}: no image within {:?}",
                    self.render_timeout
                )));
            }
        };
        let png = self.view(&image).await?;
        report(progress, 100);
        Ok(png)
    }
}

/// Removes the prompt from the queue and interrupts it if dropped while armed.
struct CancelOnDrop {
    target: Option<(reqwest::Client, String, String)>,
    /// The render's span: the cancel belongs to its trace, whoever drops the guard.
    span: tracing::Span,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.target = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((client, base_url, prompt_id)) = self.target.take() else {
            return;
        };
        // Drop cannot await: the requests go on a task of their own. Without a runtime
        // there is nobody left to send them.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(cancel(client, base_url, prompt_id).instrument(self.span.clone()));
            }
            Err(_) => tracing::debug!("{NAME}: no runtime left to cancel the prompt"),
        }
    }
}

async fn cancel(client: reqwest::Client, base_url: String, prompt_id: String) {
    let delete = serde_json::json!({ "delete": [prompt_id] });
    let interrupt = serde_json::json!({ "prompt_id": prompt_id });
    for (path, body) in [("queue", delete), ("interrupt", interrupt)] {
        let request = client
            .post(format!("{base_url}/{path}"))
            .json(&body)
            .timeout(CANCEL_TIMEOUT);
        let result = http::send(NAME, request)
            .await
            .and_then(reqwest::Response::error_for_status);
        if let Err(err) = result {
            tracing::warn!(error = %err, "{NAME}: cancelling the abandoned prompt failed ({path})");
        }
    }
    tracing::info!(%prompt_id, "{NAME}: cancelled the abandoned prompt");
}

#[derive(Deserialize)]
struct Uploaded {
    name: String,
    #[serde(default)]
    subfolder: String,
}

#[derive(Deserialize)]
struct Queued {
    prompt_id: String,
    #[serde(default)]
    node_errors: Value,
}

#[derive(Deserialize)]
struct HistoryEntry {
    #[serde(default)]
    outputs: HashMap<String, NodeOutput>,
    #[serde(default)]
    status: HistoryStatus,
}

#[derive(Deserialize, Default)]
struct HistoryStatus {
    #[serde(default)]
    status_str: String,
    #[serde(default)]
    completed: bool,
    #[serde(default)]
    messages: Value,
}

#[derive(Deserialize)]
struct NodeOutput {
    #[serde(default)]
    images: Vec<OutputImage>,
}

#[derive(Deserialize, Clone)]
struct OutputImage {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct QueueState {
    #[serde(default)]
    queue_running: Vec<Vec<Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ModelSettings;

    fn provider() -> ComfyUiProvider {
        ComfyUiProvider::new(&ProvidersConfig {
            comfyui_url: Some("http://gpu:8188/".to_owned()),
            ..ProvidersConfig::default()
        })
        .expect("a valid config")
    }

    fn request() -> ImageRequest {
        ImageRequest {
            model: "comfyui-sdxl".to_owned(),
            prompt: "a red fox".to_owned(),
            negative_prompt: "blur".to_owned(),
            width: 832,
            height: 1216,
            seed: 42,
            init_image: None,
            strength: 0.4,
            settings: ModelSettings {
                checkpoint: "sdxl.safetensors".to_owned(),
                steps: Some(20),
                ..ModelSettings::default()
            },
        }
    }

    #[test]
    fn the_shipped_workflows_are_valid_and_filled_with_typed_values() {
        let provider = provider();
        let workflow = provider.workflow(&request(), None).expect("filled");
        assert_eq!(workflow["3"]["inputs"]["seed"], 42);
        assert_eq!(workflow["3"]["inputs"]["steps"], 20);
        assert_eq!(workflow["3"]["inputs"]["cfg"], 7.0);
        assert_eq!(workflow["3"]["inputs"]["sampler_name"], "euler");
        assert_eq!(workflow["3"]["inputs"]["denoise"], 1.0);
        assert_eq!(workflow["5"]["inputs"]["width"], 832);
        assert_eq!(workflow["6"]["inputs"]["text"], "a red fox");
        assert_eq!(workflow["7"]["inputs"]["text"], "blur");
        assert_eq!(workflow["4"]["inputs"]["ckpt_name"], "sdxl.safetensors");

        let edit = provider
            .workflow(&request(), Some("atelier-1.png"))
            .expect("filled");
        assert_eq!(edit["10"]["inputs"]["image"], "atelier-1.png");
        let denoise = edit["3"]["inputs"]["denoise"].as_f64().expect("a number");
        assert!((denoise - 0.4).abs() < 1e-6, "{denoise}");
    }

    #[test]
    fn broken_workflows_are_refused_at_load() {
        let mut workflows = Workflows::default();
        for (json, expected) in [
            ("[]", "not an object"),
            (r#"{"1":{"inputs":{}}}"#, "no class_type"),
            (
                r#"{"1":{"class_type":"X","inputs":{"text":"{{promt}}"}}}"#,
                "unknown placeholder",
            ),
            (
                r#"{"1":{"class_type":"X","inputs":{"seed":"{{seed}}"}}}"#,
                "no {{prompt}}",
            ),
            ("{", "not JSON"),
        ] {
            let err = workflows.add("w", json).expect_err(json);
            assert!(format!("{err:#}").contains(expected), "{err:#} for {json}");
        }
        workflows
            .add(
                "w",
                r#"{"1":{"class_type":"X","inputs":{"text":"{{prompt}}"}}}"#,
            )
            .expect("valid");
    }

    #[test]
    fn a_missing_workflow_or_checkpoint_is_permanent() {
        let provider = provider();
        let unknown = ImageRequest {
            settings: ModelSettings {
                workflow: "nope".to_owned(),
                ..request().settings
            },
            ..request()
        };
        assert!(
            !provider
                .workflow(&unknown, None)
                .expect_err("unknown")
                .is_retryable()
        );
        let no_checkpoint = ImageRequest {
            settings: ModelSettings::default(),
            ..request()
        };
        assert!(
            !provider
                .workflow(&no_checkpoint, None)
                .expect_err("no checkpoint")
                .is_retryable()
        );
    }
}
