//! HTTP fakes of the external image provider for the end-to-end tests, speaking its public
//! API shape (AUTOMATIC1111's `/sdapi/v1`).

use std::time::Duration;

use base64::Engine as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A fake AUTOMATIC1111 server whose renders take `render` and answer a PNG of the size
/// asked for; progress reports 40 % while one runs; interrupts are accepted.
pub async fn automatic1111(render: Duration) -> MockServer {
    let server = MockServer::start().await;
    for operation in ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"] {
        Mock::given(method("POST"))
            .and(path(operation))
            .respond_with(move |request: &Request| {
                let body: serde_json::Value =
                    serde_json::from_slice(&request.body).unwrap_or_default();
                let side = |name: &str| {
                    body.get(name)
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|side| u32::try_from(side).ok())
                        .unwrap_or(512)
                };
                ResponseTemplate::new(200)
                    .set_delay(render)
                    .set_body_json(serde_json::json!({
                        "images": [png_base64(side("width"), side("height"))],
                    }))
            })
            .mount(&server)
            .await;
    }
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

/// A grey PNG of `width` by `height`, base64-encoded as AUTOMATIC1111 returns images.
pub fn png_base64(width: u32, height: u32) -> String {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let pixels = vec![128u8; usize::try_from(width * height).unwrap_or(0)];
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&pixels);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
