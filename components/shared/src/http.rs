//! Outbound HTTP over `wasi:http` with connect and first-byte timeouts
//! (spin-sdk's `send` has none), blocking the instance while it waits.

use std::time::Duration;

use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasi::io::poll;
use wasi::io::streams::{InputStream, StreamError};

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

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    }
}

fn is_timeout(code: &ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::HttpResponseTimeout
    )
}

fn failed(code: ErrorCode) -> HttpError {
    if is_timeout(&code) {
        HttpError::Timeout
    } else {
        HttpError::Failed(format!("{code:?}"))
    }
}

/// An answer's status and headers, with its body still to read.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    // Dropped in this order: a stream before its body, a body before its response.
    stream: InputStream,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl Streaming {
    /// The next piece of the body; `None` at its end. Waits at most the
    /// request's between-bytes timeout.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        match self.stream.blocking_read(64 * 1024) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(StreamError::Closed) => Ok(None),
            Err(StreamError::LastOperationFailed(e)) => {
                let text = e.to_debug_string();
                Err(if text.to_ascii_lowercase().contains("timeout") {
                    HttpError::Timeout
                } else {
                    HttpError::Failed(format!("reading the body: {text}"))
                })
            }
        }
    }

    /// [`Streaming::next_chunk`], waiting at most `left` for it (the request's
    /// deadline: the between-bytes timeout was fixed when the request went out).
    pub fn next_chunk_within(&mut self, left: Duration) -> Result<Option<Vec<u8>>, HttpError> {
        let readable = self.stream.subscribe();
        let timer = monotonic_clock::subscribe_duration(left.as_nanos() as u64);
        let woken = poll::poll(&[&readable, &timer]);
        drop((readable, timer));
        if !woken.contains(&0) {
            return Err(HttpError::Timeout);
        }
        self.next_chunk()
    }

    /// The rest of the body, all of it within `total` (a body that trickles
    /// a byte before each between-bytes timeout still ends there) and at most
    /// [`MAX_RESPONSE_BYTES`].
    pub fn read_to_end_within(mut self, total: Duration) -> Result<HttpResponse, HttpError> {
        let started = std::time::Instant::now();
        let mut body = Vec::new();
        loop {
            let left = total.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(HttpError::Timeout);
            }
            let Some(chunk) = self.next_chunk_within(left)? else {
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
/// the first byte, between bytes, and for the whole body.
pub fn request(
    verb: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    send(verb, url, headers, body, timeout)?.read_to_end_within(timeout)
}

/// Sends `body` to `url` and answers once the status and headers are in,
/// within `timeout` (a zero timeout, the request's deadline spent, sends nothing).
pub fn send(
    verb: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Streaming, HttpError> {
    if timeout.is_zero() {
        return Err(HttpError::Timeout);
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HttpError::Failed(format!("not an absolute URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    // Some OpenAI-compatible servers and proxies refuse a chunked request (411).
    if let Some(bytes) = body {
        fields.push((
            "content-length".to_string(),
            bytes.len().to_string().into_bytes(),
        ));
    }
    let fields =
        Fields::from_list(&fields).map_err(|e| HttpError::Failed(format!("headers: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let bad = |what: &str| HttpError::Failed(format!("invalid {what} in {url}"));
    request
        .set_method(&method(verb))
        .map_err(|()| bad("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| bad("authority"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| bad("path"))?;
    let outgoing_body = request.body().map_err(|()| bad("body"))?;

    let options = RequestOptions::new();
    let nanos = timeout.as_nanos() as u64;
    let _ = options.set_connect_timeout(Some(nanos));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));
    let pending = outgoing_handler::handle(request, Some(options)).map_err(failed)?;

    if let Some(bytes) = body {
        let stream = outgoing_body.write().map_err(|()| bad("body stream"))?;
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::Failed(format!("writing the body: {e:?}")))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failed)?;

    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(failed(code)),
        Some(Err(())) | None => return Err(HttpError::Failed("no response".into())),
    };
    let status = response.status();
    let headers = response.headers().entries();
    let body = response.consume().map_err(|()| bad("response body"))?;
    let stream = body.stream().map_err(|()| bad("response stream"))?;
    Ok(Streaming {
        status,
        headers,
        stream,
        _body: body,
        _response: response,
    })
}
