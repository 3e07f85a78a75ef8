//! Bounded load for every gRPC server: at most [`MAX_IN_FLIGHT`] calls run at once, the
//! next is refused at once (never queued), and each call has [`REQUEST_TIMEOUT`].
//!
//! Why refuse rather than queue: a queue in front of a stalled dependency (PostgreSQL,
//! an LLM) only grows, and every call in it waits for a reply the caller has long given
//! up on. A refusal is UNAVAILABLE, which gRPC clients retry with backoff, on this
//! instance or another.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// Calls one server runs at once. Far above what a healthy instance holds (2 cores serve
/// about 1,700 SendMessage/s at a p99 of 20 ms: some 35 calls in flight), so it trips only
/// when something downstream stalls, and then sheds instead of piling up memory and
/// waiting callers. A streaming call holds its slot only until its response starts, so
/// open WatchEvents streams do not count.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The longest a unary call (or a stream's start) may take before the server gives up on
/// it: well past every deadline inside a call (the LLM's, the database pool's 5 s
/// acquire), so it only ends calls that are stuck. A shorter `grpc-timeout` from the
/// caller wins.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses a call with UNAVAILABLE when `limit` calls are already running.
#[derive(Clone, Debug)]
pub struct ShedLoadLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ShedLoadLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl Default for ShedLoadLayer {
    fn default() -> Self {
        Self::new(MAX_IN_FLIGHT)
    }
}

impl<S> Layer<S> for ShedLoadLayer {
    type Service = ShedLoad<S>;

    fn layer(&self, inner: S) -> ShedLoad<S> {
        ShedLoad {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// The service of [`ShedLoadLayer`]; the limit is shared by every connection of a server.
#[derive(Clone, Debug)]
pub struct ShedLoad<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for ShedLoad<S>
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
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let refusal = tonic::Status::unavailable(format!(
                "overloaded: {} calls already running here; retry with backoff",
                self.limit
            ));
            return Box::pin(std::future::ready(Ok(refusal.into_http())));
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            // The slot is the call's until its response starts: a stream's body then
            // flows without one.
            drop(permit);
            Ok(response.map(tonic::body::Body::new))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    /// A service that answers when `release` fires.
    fn held(
        release: tokio::sync::watch::Receiver<bool>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| {
            let mut release = release.clone();
            async move {
                let _ = release.wait_for(|go| *go).await;
                let answered = tonic::Status::ok("done").into_http();
                Ok::<_, Infallible>(answered)
            }
        })
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
    }

    #[tokio::test]
    async fn the_call_past_the_limit_is_refused_at_once_and_a_freed_slot_is_reused() {
        let (release, released) = tokio::sync::watch::channel(false);
        let service = ShedLoadLayer::new(2).layer(held(released));
        let running: Vec<_> = (0..2)
            .map(|_| tokio::spawn(service.clone().oneshot(http::Request::new(()))))
            .collect();
        // Let both calls start (and take their slots).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }

        let refused = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .expect("an answer");
        assert_eq!(grpc_status(&refused), Some("14"), "UNAVAILABLE");

        release.send_replace(true);
        for call in running {
            let answer = call.await.expect("joined").expect("answered");
            assert_eq!(grpc_status(&answer), Some("0"));
        }
        let answer = service
            .oneshot(http::Request::new(()))
            .await
            .expect("answered");
        assert_eq!(grpc_status(&answer), Some("0"), "the slots were given back");
    }
}
