//! The benchmark's fakes of the LLM (OpenAI chat completions) and of AUTOMATIC1111, on
//! one HTTP server, answering at their nominal latency to within a fraction of a
//! millisecond, so that what the load generator prints past that latency is the mesh's.
//!
//! The tests use wiremock for its matchers and fault injection; as a benchmark fake it
//! answers 1.5 to 2.5 ms late (its delay is a tokio sleep, which fires on a millisecond
//! tick, and it records every request under a lock). The load generator still measures
//! these fakes directly and prints what it saw.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the fakes answer, and after how long.
pub struct Answers {
    pub llm_latency: Duration,
    pub image_latency: Duration,
    /// The chat completion for intent's request (the one that names `resolved_prompt`).
    pub intent: serde_json::Value,
    /// The chat completion for every other request: enhancement's.
    pub enhancement: serde_json::Value,
    /// The txt2img answer.
    pub image: serde_json::Value,
    /// The progress answer.
    pub progress: serde_json::Value,
}

/// Encoded once: the server only copies bytes.
struct Encoded {
    llm_latency: Duration,
    image_latency: Duration,
    intent: Bytes,
    enhancement: Bytes,
    image: Bytes,
    progress: Bytes,
}

/// The running server; stops when dropped.
pub struct Fakes {
    url: String,
    server: JoinHandle<()>,
}

impl Fakes {
    pub async fn start(answers: Answers) -> anyhow::Result<Self> {
        let encoded = Arc::new(Encoded {
            llm_latency: answers.llm_latency,
            image_latency: answers.image_latency,
            intent: serde_json::to_vec(&answers.intent)?.into(),
            enhancement: serde_json::to_vec(&answers.enhancement)?.into(),
            image: serde_json::to_vec(&answers.image)?.into(),
            progress: serde_json::to_vec(&answers.progress)?.into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let encoded = Arc::clone(&encoded);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&encoded), request));
                    // A connection the client drops ends here; nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { url, server })
    }

    /// The base URL of both APIs (`/chat/completions`, `/sdapi/v1/...`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    answers: Arc<Encoded>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // The latency counts from the request's arrival, as a provider's would.
    let arrived = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let (latency, json) = match (method, path.as_str()) {
        (Method::POST, "/chat/completions") => {
            let asks_for_intent = body
                .windows(b"resolved_prompt".len())
                .any(|window| window == b"resolved_prompt");
            let json = if asks_for_intent {
                &answers.intent
            } else {
                &answers.enhancement
            };
            (answers.llm_latency, json)
        }
        (Method::POST, "/sdapi/v1/txt2img") => (answers.image_latency, &answers.image),
        (Method::GET, "/sdapi/v1/progress") => (Duration::ZERO, &answers.progress),
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    sleep_until_precisely(arrived + latency).await;
    let mut response = Response::new(Full::new(json.clone()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// tokio's timer fires on a millisecond tick, up to a millisecond late: the last two
/// milliseconds are slept on a blocking thread, whose sleep is precise to tens of
/// microseconds.
async fn sleep_until_precisely(deadline: Instant) {
    if let Some(early) = deadline.checked_sub(Duration::from_millis(2)) {
        tokio::time::sleep_until(early.into()).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}
