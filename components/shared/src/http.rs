//! Outbound HTTP over `wasi:http@0.3` (spin-sdk's `send`), every wait
//! raced against a timer: until the head, between body chunks, and for the
//! whole body. A timer that fires drops the call, and the host cancels it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use spin_sdk::http::Response;

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

#[derive(Debug)]
pub enum HttpError {
    Timeout,
    /// Refused by the host (not in `allowed_outbound_hosts`), bad URL, connection refused...
    Failed(String),
}

/// An answer's status and headers, with its body still to read.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    response: Response,
}

impl Streaming {
    /// The next piece of the body, waiting at most `left` for it; `None` at its end.
    pub async fn next_chunk_within(
        &mut self,
        left: Duration,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            let frame = crate::within(left, self.response.body_mut().frame())
                .await
                .ok_or(HttpError::Timeout)?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(HttpError::Failed(format!("reading the body: {e:?}"))),
                Some(Ok(frame)) => {
                    // Trailers carry no data: read on.
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data.to_vec()));
                    }
                }
            }
        }
    }

    /// The rest of the body, all of it within `total` (a body that trickles
    /// a byte before each between-bytes timeout still ends there) and at most
    /// [`MAX_RESPONSE_BYTES`].
    pub async fn read_to_end_within(mut self, total: Duration) -> Result<HttpResponse, HttpError> {
        let started = Instant::now();
        let mut body = Vec::new();
        loop {
            let left = total.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(HttpError::Timeout);
            }
            let Some(chunk) = self.next_chunk_within(left).await? else {
                break;
            };
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body,
        })
    }
}

/// The most a dependency's answer may hold: an embedding batch of 100 chunks
/// at 3,072 dimensions is about 6 MB of JSON; past this it is a fault (or an
/// attack), not an answer, and must not take the instance's memory.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The failure of an answer larger than [`MAX_RESPONSE_BYTES`].
pub fn too_large() -> HttpError {
    HttpError::Failed(format!(
        "the answer is larger than {} MiB",
        MAX_RESPONSE_BYTES >> 20
    ))
}

/// Sends `body` to `url` and reads the whole answer, within `timeout` until
/// the head and for the whole body.
pub async fn request(
    verb: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let started = Instant::now();
    let streaming = send(verb, url, headers, body, timeout).await?;
    streaming
        .read_to_end_within(timeout.saturating_sub(started.elapsed()))
        .await
}

/// Sends `body` to `url` and answers once the status and headers are in,
/// within `timeout` (a zero timeout, the request's deadline spent, sends nothing).
pub async fn send(
    verb: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Streaming, HttpError> {
    if timeout.is_zero() {
        return Err(HttpError::Timeout);
    }
    let mut request = http::Request::builder().method(verb).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // Some OpenAI-compatible servers and proxies refuse a chunked request (411).
    let bytes = Bytes::copy_from_slice(body.unwrap_or_default());
    if body.is_some() {
        request = request.header("content-length", bytes.len().to_string());
    }
    let request = request
        .body(Full::new(bytes))
        .map_err(|e| HttpError::Failed(format!("invalid request to {url}: {e}")))?;
    let response = crate::within(
        timeout,
        crate::context::polled_again(spin_sdk::http::send(request)),
    )
    .await
    .ok_or(HttpError::Timeout)?
    .map_err(|e| HttpError::Failed(format!("{e}")))?;
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    Ok(Streaming {
        status: response.status().as_u16(),
        headers,
        response,
    })
}
