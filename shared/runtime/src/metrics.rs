//! A Prometheus scrape endpoint: `GET /metrics` on its own port (`ATELIER_METRICS_ADDR`),
//! rendering whatever text exposition the service hands it.
//!
//! Deliberately tiny (HTTP/1.1, one request per connection, no dependency): it serves one
//! page to one scraper every few seconds, and keeping it off the gRPC port keeps probes,
//! scrapes and RPCs from sharing one listener's limits.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Renders the current metrics in the Prometheus text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(read) = stream.read(&mut request).await else {
                return;
            };
            let head = String::from_utf8_lossy(&request[..read]);
            let response = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let body = render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
    render: Render,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tokio::spawn(serve(listener, render, stopped));
    Ok(())
}

/// One counter per value of one label, the values fixed at creation: enough for "answers
/// by source" without a metrics registry.
#[derive(Debug)]
pub struct LabelledCounters {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    counters: Vec<(&'static str, AtomicU64)>,
}

impl LabelledCounters {
    pub fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: &[&'static str],
    ) -> Self {
        Self {
            name,
            help,
            label,
            counters: values
                .iter()
                .map(|value| (*value, AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Counts one more for `value`; a value not given at creation is a bug, ignored.
    pub fn increment(&self, value: &str) {
        if let Some((_, counter)) = self.counters.iter().find(|(known, _)| *known == value) {
            // Relaxed: each counter stands alone; no reader needs them mutually consistent.
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        self.counters
            .iter()
            .find(|(known, _)| *known == value)
            .map_or(0, |(_, counter)| counter.load(Ordering::Relaxed))
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let (name, label) = (self.name, self.label);
        let mut text = format!("# HELP {name} {}\n# TYPE {name} counter\n", self.help);
        for (value, counter) in &self.counters {
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "{name}{{{label}=\"{value}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        text
    }
}

/// A gauge line set, for a value that is one of a few states (the breaker's).
pub fn state_gauge(name: &str, help: &str, states: &[&str], current: &str) -> String {
    let mut text = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for state in states {
        let value = u8::from(*state == current);
        text.push_str(&format!("{name}{{state=\"{state}\"}} {value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
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
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(|| "atelier_up 1\n".to_owned()),
            async {
                let _ = stopped.await;
            },
        ));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.ends_with("atelier_up 1\n"), "{metrics}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.expect("stops");
    }

    #[test]
    fn labelled_counters_count_and_render() {
        let counters = LabelledCounters::new("answers_total", "Answers.", "source", &["a", "b"]);
        counters.increment("b");
        counters.increment("b");
        counters.increment("unknown");
        assert_eq!(counters.get("b"), 2);
        assert_eq!(
            counters.render(),
            "# HELP answers_total Answers.\n# TYPE answers_total counter\n\
             answers_total{source=\"a\"} 0\nanswers_total{source=\"b\"} 2\n"
        );
    }

    #[test]
    fn state_gauges_mark_the_current_state() {
        let text = state_gauge("breaker", "state", &["closed", "open"], "open");
        assert!(text.contains("breaker{state=\"closed\"} 0\n"));
        assert!(text.contains("breaker{state=\"open\"} 1\n"));
    }
}
