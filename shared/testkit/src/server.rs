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
