//! Prometheus metrics, with the `prometheus-client` library: each service process builds
//! one [`Registry`], every component registers its series in it, and `GET /metrics` on
//! the service's admin port (`ATELIER_METRICS_ADDR`) encodes it in the OpenMetrics text
//! format, which Prometheus scrapes.
//!
//! What every server shares lives here: the RPC latency histogram by method and code
//! ([`RpcMetricsLayer`], one tower layer in every server stack), the buckets, the counter
//! families with fixed label values, and a state gauge for values that are one of a few
//! states (a circuit breaker's).
//!
//! The HTTP side is deliberately tiny (HTTP/1.1, one request per connection): it serves
//! one page to one scraper every few seconds, and keeping it off the gRPC port keeps
//! probes, scrapes and RPCs from sharing one listener's limits.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tower::{Layer, Service};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// A label set of one label whose values are known in advance (a source, a reason, an
/// outcome).
pub type Label = [(&'static str, &'static str); 1];

/// One counter per value of one label.
pub type CounterBy = Family<Label, Counter>;

/// One latency histogram per value of one label.
pub type HistogramBy = Family<Label, Histogram>;

/// The registry of one service process; every series is named `atelier_...`.
pub fn registry() -> Registry {
    Registry::with_prefix("atelier")
}

/// Buckets for latencies, from 0.5 ms to about 33 s: the fast path answers in a few
/// milliseconds, an image takes seconds, and a stuck call ends at the request timeout.
pub fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

/// A counter per value of `label`, each value present (at zero) from the start, so a
/// dashboard sees every series before the first event.
pub fn counter_by(label: &'static str, values: &[&'static str]) -> CounterBy {
    let family = CounterBy::default();
    for value in values {
        drop(family.get_or_create(&[(label, value)]));
    }
    family
}

/// A latency histogram per value of `label`, each present from the start.
pub fn histogram_by(label: &'static str, values: &[&'static str]) -> HistogramBy {
    let family = HistogramBy::new_with_constructor(latency_histogram);
    for value in values {
        drop(family.get_or_create(&[(label, value)]));
    }
    family
}

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(read) = stream.read(&mut request).await else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..read]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let body = encode(&registry);
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Serves `/metrics` on `addr`, when one is configured, until `stopped`; returns once the
/// port is bound, so a bad address fails start-up.
pub async fn serve_if_configured(
    addr: Option<SocketAddr>,
    registry: Registry,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tokio::spawn(serve(listener, Arc::new(registry), stopped));
    Ok(())
}

/// A gauge set for a value that is one of a few `states` (a breaker's), read at each
/// scrape: the current state's series is 1, the others 0.
pub struct StateGauge {
    name: &'static str,
    help: &'static str,
    states: &'static [&'static str],
    current: Box<dyn Fn() -> &'static str + Send + Sync>,
}

impl std::fmt::Debug for StateGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateGauge")
            .field("name", &self.name)
            .field("current", &(self.current)())
            .finish()
    }
}

impl StateGauge {
    /// Registers the gauge set `name` (under the registry's prefix), labelled `state`.
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        states: &'static [&'static str],
        current: impl Fn() -> &'static str + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(Self {
            name,
            help,
            states,
            current: Box::new(current),
        }));
    }
}

impl prometheus_client::collector::Collector for StateGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let current = (self.current)();
        let family: Family<Label, Gauge> = Family::default();
        for state in self.states {
            family
                .get_or_create(&[("state", state)])
                .set(i64::from(*state == current));
        }
        let metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        family.encode(metric)
    }
}

/// The labels of [`RpcMetrics`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// `/package.Service/Method`; `unknown` for a path no service answers, so a caller
    /// cannot grow the series without bound.
    method: String,
    /// The gRPC status code's name (`OK`, `InvalidArgument`, ...).
    code: &'static str,
}

/// The duration of every call a server answered, by method and status code: the rate,
/// the errors and the latency percentiles of each RPC come from this one histogram.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    durations: Family<RpcLabels, Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            durations: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl RpcMetrics {
    /// Registers `atelier_rpc_server_duration_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpc_server_duration_seconds",
            "Time from a call's arrival to its status (a stream's end), by method and gRPC status code.",
            self.durations.clone(),
        );
    }

    /// The layer that records into these metrics.
    pub fn layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            metrics: self.clone(),
        }
    }

    fn observe(&self, method: &str, code: tonic::Code, started: Instant) {
        let method = if code == tonic::Code::Unimplemented {
            "unknown".to_owned()
        } else {
            method.to_owned()
        };
        self.durations
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The canonical name of `code`, as gRPC's own tooling writes it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The status in `headers` (a trailers-only answer, or a response's trailers).
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}

/// Records every call's duration and status in [`RpcMetrics`]: outermost in a server
/// stack, so a call refused by the load limit or ended by the timeout counts too.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: RpcMetrics,
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcMetricsService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResponseBody::Error: Into<tower::BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let call = Call {
            metrics: self.metrics.clone(),
            method: request.uri().path().to_owned(),
            started: Instant::now(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = status_in(response.headers()) {
                call.finish(code);
                return Ok(response.map(tonic::body::Body::new));
            }
            let framing = Framing::of(response.headers());
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: Box::pin(body),
                    framing,
                    call: Some(call),
                })
            }))
        })
    }
}

/// One call on its way to a status.
struct Call {
    metrics: RpcMetrics,
    method: String,
    started: Instant,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        self.metrics.observe(&self.method, code, self.started);
    }
}

/// Where a response carries its status: in HTTP trailers (gRPC), or in a last body frame
/// (grpc-web, whose browser clients cannot read trailers; the edge's grpc-web translation
/// sits inside this layer, so it sees the translated answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Grpc,
    GrpcWeb,
    /// `application/grpc-web-text`: the frames in base64, chunk by chunk.
    GrpcWebText,
}

impl Framing {
    fn of(headers: &http::HeaderMap) -> Self {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("application/grpc-web-text") {
            Self::GrpcWebText
        } else if content_type.starts_with("application/grpc-web") {
            Self::GrpcWeb
        } else {
            Self::Grpc
        }
    }

    /// The status in `data` when it is grpc-web's trailers frame: the flag 0x80, a
    /// big-endian length, then `name:value` lines. Such a frame arrives as a data chunk of
    /// its own (tonic-web encodes trailers apart from messages), so a chunk is read whole.
    fn status_in_data(self, data: &[u8]) -> Option<tonic::Code> {
        let decoded;
        let frame = match self {
            Self::Grpc => return None,
            Self::GrpcWeb => data,
            // In base64 a chunk starting with the byte 0x80 starts with 'g', and a message's
            // (0x00 or 0x01) with 'A': only a possible trailers frame is decoded, not every
            // event of a stream.
            Self::GrpcWebText if data.first() != Some(&b'g') => return None,
            Self::GrpcWebText => {
                use base64::Engine as _;
                decoded = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?;
                &decoded
            }
        };
        let (&flag, rest) = frame.split_first()?;
        let (length, block) = rest.split_first_chunk::<4>()?;
        if flag & 0x80 == 0 || u32::from_be_bytes(*length) as usize != block.len() {
            return None;
        }
        std::str::from_utf8(block)
            .ok()?
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("grpc-status"))
            .and_then(|(_, value)| value.trim().parse::<i32>().ok())
            .map(tonic::Code::from_i32)
    }
}

/// A response body that records its call when the status passes (in trailers, or in
/// grpc-web's trailers frame), or when the client goes away first (CANCELLED).
struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    framing: Framing,
    call: Option<Call>,
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let code = match frame.data_ref() {
                    Some(data) => self.framing.status_in_data(data),
                    None => frame.trailers_ref().and_then(status_in),
                };
                if let Some(code) = code
                    && let Some(call) = self.call.take()
                {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.finish(tonic::Code::Internal);
                }
            }
            Poll::Ready(None) => {
                // A body that ends without trailers carries no status: gRPC reads that
                // as a failure of the server.
                if let Some(call) = self.call.take() {
                    call.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its status: the client cancelled (or went away mid-stream).
        if let Some(call) = self.call.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn metrics_are_served_and_other_paths_are_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut registry = registry();
        let up = counter_by("source", &["a"]);
        registry.register("answers", "Answers.", up.clone());
        up.get_or_create(&[("source", "a")]).inc();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), async {
            let _ = stopped.await;
        }));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(
            metrics.contains("atelier_answers_total{source=\"a\"} 1\n"),
            "{metrics}"
        );
        assert!(metrics.ends_with("# EOF\n"), "{metrics}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.expect("stops");
    }

    #[test]
    fn counters_by_label_start_at_zero_for_every_value() {
        let mut registry = registry();
        let counters = counter_by("source", &["a", "b"]);
        registry.register("answers", "Answers.", counters.clone());
        counters.get_or_create(&[("source", "b")]).inc_by(2);
        let text = encode(&registry);
        assert!(text.contains("# TYPE atelier_answers counter\n"), "{text}");
        assert!(
            text.contains("atelier_answers_total{source=\"a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("atelier_answers_total{source=\"b\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn state_gauges_mark_the_current_state() {
        let mut registry = registry();
        StateGauge::register(
            &mut registry,
            "breaker",
            "State.",
            &["closed", "open"],
            || "open",
        );
        let text = encode(&registry);
        assert!(
            text.contains("atelier_breaker{state=\"closed\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("atelier_breaker{state=\"open\"} 1\n"),
            "{text}"
        );
    }

    /// A service answering `status` the way tonic does: trailers-only for an error, and
    /// a body with `grpc-status: 0` in its trailers for OK.
    fn answering(
        code: tonic::Code,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<tonic::body::Body>, Infallible>>
                 + Send
                 + 'static,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| async move {
            if code == tonic::Code::Ok {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = vec![
                    Ok::<_, Infallible>(http_body::Frame::data(bytes::Bytes::from_static(b"x"))),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
                Ok(http::Response::new(tonic::body::Body::new(body)))
            } else {
                Ok(tonic::Status::new(code, "no").into_http())
            }
        })
    }

    async fn call(metrics: &RpcMetrics, code: tonic::Code, path: &str) {
        use http_body_util::BodyExt as _;
        let service = metrics.layer().layer(answering(code));
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request");
        let response = service.oneshot(request).await.expect("answer");
        let _ = response.into_body().collect().await;
    }

    #[tokio::test]
    async fn rpc_durations_are_recorded_by_method_and_code() {
        let mut registry = registry();
        let metrics = RpcMetrics::default();
        metrics.register(&mut registry);
        call(&metrics, tonic::Code::Ok, "/atelier.v1.Chat/SendMessage").await;
        call(
            &metrics,
            tonic::Code::InvalidArgument,
            "/atelier.v1.Chat/SendMessage",
        )
        .await;
        call(&metrics, tonic::Code::Unimplemented, "/no.Such/Thing").await;
        let text = encode(&registry);
        for series in [
            "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.Chat/SendMessage\",code=\"OK\"} 1\n",
            "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.Chat/SendMessage\",code=\"InvalidArgument\"} 1\n",
            "atelier_rpc_server_duration_seconds_count{method=\"unknown\",code=\"Unimplemented\"} 1\n",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        assert!(!text.contains("/no.Such/Thing"), "{text}");
    }

    /// One grpc-web frame: the flag, a big-endian length, the payload.
    fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![flag];
        frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// A grpc-web answer as tonic-web sends it: a message frame, then the trailers frame
    /// (both in base64 for grpc-web-text), and no HTTP trailers.
    async fn call_grpc_web(metrics: &RpcMetrics, content_type: &'static str, status: u8) {
        use base64::Engine as _;
        use http_body_util::BodyExt as _;
        let text = content_type.starts_with("application/grpc-web-text");
        let chunks = [
            grpc_web_frame(0, b"message"),
            grpc_web_frame(
                0x80,
                format!("grpc-status:{status}\r\ngrpc-message:\r\n").as_bytes(),
            ),
        ]
        .map(|chunk| match text {
            true => base64::engine::general_purpose::STANDARD
                .encode(chunk)
                .into_bytes(),
            false => chunk,
        });
        let service = metrics
            .layer()
            .layer(tower::service_fn(move |_: http::Request<()>| {
                let frames = chunks.clone().map(|chunk| {
                    Ok::<_, Infallible>(http_body::Frame::data(bytes::Bytes::from(chunk)))
                });
                async move {
                    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(content_type),
                    );
                    Ok::<_, Infallible>(response)
                }
            }));
        let request = http::Request::builder()
            .uri("/atelier.v1.Chat/GetBalance")
            .body(())
            .expect("request");
        let response = service.oneshot(request).await.expect("answer");
        let _ = response.into_body().collect().await;
    }

    #[tokio::test]
    async fn grpc_web_answers_are_recorded_with_the_status_of_their_trailers_frame() {
        let mut registry = registry();
        let metrics = RpcMetrics::default();
        metrics.register(&mut registry);
        call_grpc_web(&metrics, "application/grpc-web+proto", 0).await;
        call_grpc_web(&metrics, "application/grpc-web-text+proto", 0).await;
        call_grpc_web(&metrics, "application/grpc-web", 5).await;
        let text = encode(&registry);
        for series in [
            "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.Chat/GetBalance\",code=\"OK\"} 2\n",
            "atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.Chat/GetBalance\",code=\"NotFound\"} 1\n",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        assert!(!text.contains("Canceled"), "{text}");
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_status_is_cancelled() {
        let mut registry = registry();
        let metrics = RpcMetrics::default();
        metrics.register(&mut registry);
        let service = metrics.layer().layer(answering(tonic::Code::Ok));
        let request = http::Request::builder()
            .uri("/atelier.v1.Chat/WatchEvents")
            .body(())
            .expect("request");
        drop(service.oneshot(request).await.expect("answer"));
        let text = encode(&registry);
        assert!(
            text.contains("atelier_rpc_server_duration_seconds_count{method=\"/atelier.v1.Chat/WatchEvents\",code=\"Canceled\"} 1\n"),
            "{text}"
        );
    }
}
