//! A TCP relay in front of a real server (Redis, Postgres), which a test
//! cuts and restores: cut, every connection through it is reset and new ones
//! are refused, as when the server dies; restored, it accepts on the same
//! port again, as when the server comes back.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct Relay {
    pub addr: SocketAddr,
    target: SocketAddr,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// A relay to `target` on a free loopback port, open.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            target,
            serving: Some(tokio::spawn(serve(listener, target))),
        })
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a URL");
        parsed.set_port(Some(self.addr.port())).expect("a port");
        parsed.to_string()
    }

    /// The server "dies": every connection is dropped, and the port refuses.
    pub fn cut(&mut self) {
        if let Some(serving) = self.serving.take() {
            // Dropping the task drops the listener and every relayed stream.
            serving.abort();
        }
    }

    /// The server "comes back" on the same port.
    pub async fn restore(&mut self) -> Result<()> {
        if self.serving.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.serving = Some(tokio::spawn(serve(listener, self.target)));
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn serve(listener: TcpListener, target: SocketAddr) {
    let mut relayed = JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        relayed.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
