use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A service running in the test process; stopped gracefully on [`RunningServer::stop`]
/// and aborted when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// `http://127.0.0.1:port`, for tonic channels.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Triggers the graceful shutdown and waits for the service to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1:0 and runs `run(listener, shutdown)` on a task. The port is bound before
/// this returns, so clients may connect at once (the kernel queues them until the service
/// accepts).
pub async fn spawn_server<Run, Served>(run: Run) -> anyhow::Result<RunningServer>
where
    Run: FnOnce(TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> Served,
    Served: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let served = run(
        listener,
        Box::pin(async move {
            let _ = stopped.await;
        }),
    );
    let task = tokio::spawn(served);
    Ok(RunningServer {
        addr,
        shutdown: Some(shutdown),
        task,
    })
}

/// A service running on a runtime of its own, so that a test can kill it: [`kill`]
/// drops every task of that runtime at once (the accept loop, each connection tonic
/// spawned, its database pool, its NATS client, its background loops), which closes
/// all its sockets as the death of its process would. Killed when dropped.
///
/// [`kill`]: KillableServer::kill
pub struct KillableServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableServer {
    /// `http://127.0.0.1:port`, for tonic channels.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the service mid-flight: no drain, no goodbye, the way SIGKILL ends a process.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Binds 127.0.0.1:0 and runs `run(listener, shutdown)` on a runtime of its own (two
/// worker threads); the shutdown future never completes, since the server is only ever
/// killed.
pub fn spawn_killable_server<Run, Served>(run: Run) -> anyhow::Result<KillableServer>
where
    Run: FnOnce(TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> Served + Send + 'static,
    Served: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("killable-server")
        .enable_all()
        .build()?;
    runtime.spawn(async move {
        let served = match TcpListener::from_std(listener) {
            Ok(listener) => run(listener, Box::pin(std::future::pending())).await,
            Err(err) => Err(err.into()),
        };
        // Nobody awaits a server that is only ever killed: say why it ended early.
        if let Err(err) = served {
            tracing::error!(%addr, "a killable server stopped: {err:#}");
        }
    });
    Ok(KillableServer {
        addr,
        runtime: Some(runtime),
    })
}

/// A free loopback address, for a port a service binds itself (such as its metrics port).
/// The port is free when returned; another process could take it before the service does,
/// which the tests accept.
pub fn free_local_addr() -> std::net::SocketAddr {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    free.local_addr().expect("its address")
}

/// `GET /metrics` from a service's metrics port, as Prometheus scrapes it: the raw HTTP
/// answer. The port is bound a moment after the service starts, so this retries briefly.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..100 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
                .await
                .expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no metrics endpoint at {addr}");
}
