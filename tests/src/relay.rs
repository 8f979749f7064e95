//! A TCP relay in front of a real server (Redis, Postgres), which a test
//! cuts and restores: cut, every connection through it is reset and new ones
//! are refused, as when the server dies; restored, it accepts on the same
//! port again, as when the server comes back.

use std::net::SocketAddr;

use anyhow::{Context, Result};
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

    /// A relay to the server of `url` (`redis://…`, `postgres://…`), and
    /// the same URL through the relay.
    pub async fn in_front_of(url: &str) -> Result<(Self, String)> {
        let mut parsed = url::Url::parse(url)?;
        let host = parsed.host_str().context("a host")?.to_string();
        let port = parsed.port().context("a port")?;
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("an address")?;
        let relay = Self::start(target).await?;
        parsed
            .set_port(Some(relay.addr.port()))
            .map_err(|()| anyhow::anyhow!("{url} takes no port"))?;
        Ok((relay, parsed.to_string()))
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
