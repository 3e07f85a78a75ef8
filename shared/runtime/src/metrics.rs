//! A Prometheus scrape endpoint: `GET /metrics` on its own port (`ATELIER_METRICS_ADDR`),
//! rendering whatever text exposition the service hands it.
//!
//! Deliberately tiny (HTTP/1.1, one request per connection, no dependency): it serves one
//! page to one scraper every few seconds, and keeping it off the gRPC port keeps probes,
//! scrapes and RPCs from sharing one listener's limits.

use std::future::Future;
use std::sync::Arc;

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
    fn state_gauges_mark_the_current_state() {
        let text = state_gauge("breaker", "state", &["closed", "open"], "open");
        assert!(text.contains("breaker{state=\"closed\"} 0\n"));
        assert!(text.contains("breaker{state=\"open\"} 1\n"));
    }
}
