//! A minimal HTTP/1.1 client for tests and benchmarks (one keep-alive
//! connection per `Client`), so requests go over real loopback TCP.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::runtime::BufferedResponse;

pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Waits, after each response, for the app's handlers to finish what they
    /// do after responding, so a test reads the state the request left.
    settle: Option<std::sync::Arc<crate::App>>,
}

impl BufferedResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            settle: None,
        }
    }

    /// A client that returns a response only once `app` has finished the
    /// request's work after the response (the history write, the metrics).
    pub fn settling(addr: SocketAddr, app: std::sync::Arc<crate::App>) -> Self {
        Self {
            settle: Some(app),
            ..Self::new(addr)
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let reusable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !reusable {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            // The client's own writes only (a request leaves in one write
            // anyway); its ACKs stay delayed, as any keep-alive client's do,
            // so a server's Nagle stall shows in what this client measures.
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<BufferedResponse> {
        let response = self.stream(method, path, headers, body).await?;
        let body = response.body.collect().await?.to_bytes();
        if let Some(app) = &self.settle {
            app.settled().await;
        }
        Ok(BufferedResponse {
            status: response.status,
            headers: response.headers,
            body,
        })
    }

    /// Sends a request and returns as soon as the head is in: the body is
    /// read piece by piece, as the server writes it.
    pub async fn stream(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<StreamedResponse> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into()))?;
        let sender = self.sender().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        Ok(StreamedResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<BufferedResponse> {
        self.request("GET", path, &[], Bytes::new()).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<BufferedResponse> {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body)?,
        )
        .await
    }
}

/// A response whose body arrives in pieces.
pub struct StreamedResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: hyper::body::Incoming,
}

impl StreamedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next piece of the body as the server sent it; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}
