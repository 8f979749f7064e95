//! Serves an [`App`] over HTTP/1.1 on a TCP port, as `spin up` does (its
//! HTTP/2 prior-knowledge upgrade aside: Spin's trigger serves both through
//! hyper-util's `auto` builder; nothing here speaks HTTP/2).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use crate::runtime::App;

/// A server running in the background; stops when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (port 0 for any) and serves `app` until dropped.
pub async fn start(app: Arc<App>, addr: SocketAddr) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            // As Spin's HTTP trigger (`crates/trigger-http/src/server.rs`):
            // the accepted stream is served as it is, Nagle's algorithm on
            // (no `TCP_NODELAY`), so a response written in pieces stalls
            // here as it does there.
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let app = app.clone();
                    async move { app.handle(request, peer).await }
                });
                if let Err(e) = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    if !e.is_incomplete_message() {
                        eprintln!("error serving {peer}: {e}");
                    }
                }
            });
        }
    });
    Ok(RunningServer { addr, task })
}
