//! HTTP fakes of external image providers, speaking their public API shapes, for the
//! service and end-to-end tests.

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
