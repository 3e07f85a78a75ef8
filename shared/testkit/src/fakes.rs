//! HTTP fakes of external image providers (AUTOMATIC1111, ComfyUI), speaking their public
//! API shapes, for the service and end-to-end tests.

use base64::Engine as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A fake AUTOMATIC1111 server (`/sdapi/v1`): txt2img answers with `txt2img`, progress
/// reports 40 %, an interrupt is accepted. Tests mount more on it (img2img, a failing
/// first answer).
pub async fn automatic1111(txt2img: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/txt2img"))
        .respond_with(txt2img)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/sdapi/v1/progress"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "progress": 0.4 })),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/sdapi/v1/interrupt"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// An AUTOMATIC1111 answer carrying one grey PNG of the size the request asked for, after
/// `delay`: a render of that size, as the caller sees it.
pub fn sized_answer(delay: std::time::Duration) -> impl Respond {
    move |request: &Request| {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let side = |name: &str| {
            body.get(name)
                .and_then(serde_json::Value::as_u64)
                .and_then(|side| u32::try_from(side).ok())
                .unwrap_or(512)
        };
        png_answer(side("width"), side("height"), 128).set_delay(delay)
    }
}

/// An AUTOMATIC1111 answer to a txt2img of `batch_size` images, after `delay`, shaped as
/// the web UI answers a batch: a grid of the images first (for more than one), then one
/// PNG per image. Image i is an 8x8 PNG of grey level (seed + i) mod 256, the PNG
/// [`png_base64`]`(8, 8, shade)` gives, so a test can tell which image went where.
pub fn batch_answer(delay: std::time::Duration) -> impl Respond {
    move |request: &Request| {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let number = |name: &str, default: u64| {
            body.get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(default)
        };
        let (seed, count) = (number("seed", 0), number("batch_size", 1));
        let mut images: Vec<String> = (0..count)
            .map(|index| png_base64(8, 8, u8::try_from((seed + index) % 256).unwrap_or(0)))
            .collect();
        if count > 1 {
            images.insert(0, png_base64(16, 8, 255));
        }
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({ "images": images, "parameters": {}, "info": "{}" }))
            .set_delay(delay)
    }
}

/// An AUTOMATIC1111 answer carrying one PNG of one grey level.
pub fn png_answer(width: u32, height: u32, shade: u8) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({ "images": [png_base64(width, height, shade)] }))
}

/// A PNG of one grey level, base64-encoded, as AUTOMATIC1111 returns images.
pub fn png_base64(width: u32, height: u32, shade: u8) -> String {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let pixels = vec![shade; usize::try_from(width * height * 3).unwrap_or(0)];
        if let Ok(mut writer) = encoder.write_header() {
            let _ = writer.write_image_data(&pixels);
        }
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The prompt id the ComfyUI fake gives every queued prompt.
pub const COMFYUI_PROMPT_ID: &str = "5f1b8a4e-0000-4000-8000-000000000001";

/// A fake ComfyUI server following its HTTP API: `POST /upload/image` answers the
/// uploaded name, `POST /prompt` queues under [`COMFYUI_PROMPT_ID`], `GET /queue` shows it
/// running, `GET /history/{id}` is empty for the first `polls_before_done` polls then holds
/// one output image (all of them when `polls_before_done` is `usize::MAX`: a render that
/// never ends), `GET /view` serves that image as a `width` x `height` PNG, and
/// `POST /interrupt` and `POST /queue` (deletions) are accepted.
pub async fn comfyui(polls_before_done: usize, width: u32, height: u32) -> MockServer {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/upload/image"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "name": "atelier-upload.png", "subfolder": "", "type": "input"
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/prompt"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "prompt_id": COMFYUI_PROMPT_ID, "number": 1, "node_errors": {}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/queue"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "queue_running": [[1, COMFYUI_PROMPT_ID, {}, {}, ["9"]]],
            "queue_pending": []
        })))
        .mount(&server)
        .await;
    let polls = AtomicUsize::new(0);
    Mock::given(method("GET"))
        .and(path(format!("/history/{COMFYUI_PROMPT_ID}")))
        .respond_with(move |_: &Request| {
            if polls.fetch_add(1, Ordering::SeqCst) < polls_before_done {
                return ResponseTemplate::new(200).set_body_json(serde_json::json!({}));
            }
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                COMFYUI_PROMPT_ID: {
                    "prompt": [1, COMFYUI_PROMPT_ID, {}, {}, ["9"]],
                    "outputs": {
                        "9": { "images": [
                            { "filename": "atelier_00001_.png", "subfolder": "", "type": "output" }
                        ] }
                    },
                    "status": { "status_str": "success", "completed": true, "messages": [] },
                    "meta": {}
                }
            }))
        })
        .mount(&server)
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png_base64(width, height, 96))
        .unwrap_or_default();
    Mock::given(method("GET"))
        .and(path("/view"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(png, "image/png"))
        .mount(&server)
        .await;
    for route in ["/interrupt", "/queue"] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
    }
    server
}
