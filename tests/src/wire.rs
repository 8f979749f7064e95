//! HTTP/1.1 on a raw keep-alive connection, read as the bytes arrive, with
//! what TCP saw of each response: how many segments carried it.
//!
//! The host under test (Spin, or the harness as Spin runs it) does not set
//! `TCP_NODELAY`, and this client, like any keep-alive client (wrk, a
//! browser, a proxy), leaves Linux's delayed ACKs on. A response the server
//! writes in one piece arrives in one segment and is whole before the client
//! has ACKed anything; one written in pieces needs the client's ACK of the
//! first before Nagle's algorithm lets the next out: 40 ms later, on a client
//! that delays it. Counting data segments (`tcpi_data_segs_in`) tells which,
//! without timing anything.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct WireClient {
    stream: TcpStream,
    /// Bytes read past the end of the previous response.
    pending: Vec<u8>,
    host: String,
}

/// A response as it came off the wire.
#[derive(Debug)]
pub struct WireResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The response's bytes as they were read, with when each piece arrived
    /// (since the request was sent).
    pub reads: Vec<(Duration, Vec<u8>)>,
    /// Data segments TCP received for this response.
    pub data_segments: u32,
    /// From the request's last byte sent to the response's last byte read.
    pub elapsed: Duration,
}

impl WireResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.parse().ok()
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The host's own race, not the answer's shape: the head came alone
    /// and the whole body in the one segment after it. Spin's trigger (and
    /// wasmtime-wasi-http's, which the harness shares) hands hyper the
    /// response as soon as the guest returns it, while the store's event
    /// loop moves the body's bytes to it; when hyper's task looks first, it
    /// flushes the head alone, and Nagle's algorithm then holds the body
    /// until the client's delayed ACK. Measured under Spin 4.0.0 on one
    /// keep-alive connection: 0 of 3,000 hits, 8 to 13 of 3,000 `/health`s.
    pub fn head_came_alone(&self) -> bool {
        self.data_segments == 2 && self.reads.len() == 2 && self.reads[0].1.ends_with(b"\r\n\r\n")
    }

    /// Whether the answer left as one piece: its `Content-Length` declared,
    /// not chunked, and all of it in one segment (or, by the host's race
    /// alone, its head and then its whole body: see [`Self::head_came_alone`]).
    pub fn left_whole(&self) -> Result<(), String> {
        let mut faults = Vec::new();
        if self.is_chunked() {
            faults.push("chunked".to_string());
        }
        if self.content_length().is_none() {
            faults.push("no Content-Length".to_string());
        }
        if self.data_segments != 1 && !self.head_came_alone() {
            faults.push(format!("{} data segments", self.data_segments));
        }
        if faults.is_empty() {
            Ok(())
        } else {
            Err(faults.join(", "))
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `tcpi_data_segs_in` of a socket: the segments with data it has received.
fn data_segments_in(stream: &TcpStream) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_INFO: {}", std::io::Error::last_os_error());
    }
    Ok(info.tcpi_data_segs_in)
}

impl WireClient {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Self {
            stream,
            pending: Vec::new(),
            host: addr.to_string(),
        })
    }

    /// Sends one request (in one write) and reads its whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<WireResponse> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let segments_before = data_segments_in(&self.stream)?;
        self.stream.write_all(&bytes).await?;
        let sent = Instant::now();
        let head_only = method.eq_ignore_ascii_case("HEAD");
        let mut response = self.read_response(sent, head_only).await?;
        response.data_segments = data_segments_in(&self.stream)? - segments_before;
        Ok(response)
    }

    /// `POST` of a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<WireResponse> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, &serde_json::to_vec(body)?)
            .await
    }

    async fn fill(&mut self, sent: Instant, reads: &mut Vec<(Duration, Vec<u8>)>) -> Result<()> {
        let mut buf = [0u8; 64 * 1024];
        let n = self.stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed the connection mid-response");
        }
        reads.push((sent.elapsed(), buf[..n].to_vec()));
        self.pending.extend_from_slice(&buf[..n]);
        Ok(())
    }

    async fn read_response(&mut self, sent: Instant, head_only: bool) -> Result<WireResponse> {
        let mut reads = Vec::new();
        let head_end = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill(sent, &mut reads).await?;
        };
        let head = String::from_utf8(self.pending.drain(..head_end).collect())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().context("no status line")?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .context("no status")?
            .parse()?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut response = WireResponse {
            status,
            headers,
            body: Vec::new(),
            reads: Vec::new(),
            data_segments: 0,
            elapsed: Duration::ZERO,
        };
        if head_only || status == 204 || status == 304 {
            // No body follows.
        } else if response.is_chunked() {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.pending, b"\r\n") {
                        break i;
                    }
                    self.fill(sent, &mut reads).await?;
                };
                let size_line = String::from_utf8(self.pending[..line_end].to_vec())?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("bad chunk size {size_line:?}"))?;
                while self.pending.len() < line_end + 2 + size + 2 {
                    self.fill(sent, &mut reads).await?;
                }
                response
                    .body
                    .extend_from_slice(&self.pending[line_end + 2..line_end + 2 + size]);
                self.pending.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(length) = response.content_length() {
            while self.pending.len() < length {
                self.fill(sent, &mut reads).await?;
            }
            response.body = self.pending.drain(..length).collect();
        } else {
            bail!("a response with neither Content-Length nor chunked encoding (status {status})");
        }
        response.reads = reads;
        response.elapsed = sent.elapsed();
        Ok(response)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What to ask: what it is, the status expected, the method, the path,
/// whether with the admin token, and the JSON body.
type Ask<'a> = (&'a str, u16, &'a str, &'a str, bool, Option<Vec<u8>>);

/// The JSON answers of every route the application serves, each asked on
/// one keep-alive connection: a miss and a hit of the query API, its
/// refusals, history, ingestion, health, metrics, analytics, a 401, a 404, a
/// 405, a `HEAD`. Each must declare its `Content-Length` (no chunked
/// encoding) and arrive in one data segment, so that the client has all of
/// it before it ACKs anything (an answer whose head alone came first, by the
/// host's race, is asked again, up to twice). Returns a Markdown table of
/// what each took, or every answer that did not leave whole.
pub async fn check_whole_json_answers(addr: SocketAddr, admin_token: &str) -> Result<String> {
    use serde_json::json;
    let admin = format!("Bearer {admin_token}");
    let question = json!({"question": "What leaves whole?", "session_id": "whole-1"});
    let document = json!({"documents": [{
        "id": "whole", "source": "whole.txt", "text": "An answer leaves whole, in one write."
    }]});
    let query = "/api/v1/chat/query";
    let post = |body: &serde_json::Value| serde_json::to_vec(body).expect("JSON");
    let asks: Vec<Ask> = vec![
        (
            "ingest (admin)",
            200,
            "POST",
            "/api/v1/documents",
            true,
            Some(post(&document)),
        ),
        (
            "query, a miss",
            200,
            "POST",
            query,
            false,
            Some(post(&question)),
        ),
        (
            "query, a hit",
            200,
            "POST",
            query,
            false,
            Some(post(&question)),
        ),
        (
            "query, a hit again",
            200,
            "POST",
            query,
            false,
            Some(post(&question)),
        ),
        (
            "query, 400",
            400,
            "POST",
            query,
            false,
            Some(post(&json!({"question": "", "session_id": "whole-1"}))),
        ),
        (
            "query, 404 (no such conversation)",
            404,
            "POST",
            query,
            false,
            Some(post(
                &json!({"question": "q", "session_id": "whole-1", "conversation_id": "conv_00000000000000000000000000000000"}),
            )),
        ),
        ("query, 405", 405, "GET", query, false, None),
        (
            "history (admin)",
            200,
            "GET",
            "/api/v1/chat/history/whole-1",
            true,
            None,
        ),
        (
            "history, 401",
            401,
            "GET",
            "/api/v1/chat/history/whole-1",
            false,
            None,
        ),
        (
            "unknown path, 404",
            404,
            "GET",
            "/api/v1/nothing-here",
            false,
            None,
        ),
        ("/health", 200, "GET", "/health", false, None),
        ("HEAD /health", 200, "HEAD", "/health", false, None),
        (
            "/health/readiness",
            200,
            "GET",
            "/health/readiness",
            false,
            None,
        ),
        (
            "/health/cache/analytics (admin)",
            200,
            "GET",
            "/health/cache/analytics",
            true,
            None,
        ),
        ("/admin/audit, 401", 401, "GET", "/admin/audit", false, None),
        ("/metrics", 200, "GET", "/metrics", false, None),
    ];
    let mut client = WireClient::connect(addr).await?;
    let mut rows = vec![
        "| answer | status | Content-Length | data segments | head alone first (host race, asked again) | ms |".to_string(),
        "|---|---:|---:|---:|---:|---:|".to_string(),
    ];
    let mut broken = Vec::new();
    for (name, expect, method, path, as_admin, body) in asks {
        let mut headers = Vec::new();
        if as_admin {
            headers.push(("authorization", admin.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.as_deref().unwrap_or_default();
        let mut response = Box::pin(client.send(method, path, &headers, body)).await?;
        // The host's own race (see `head_came_alone`) is not the answer's
        // shape: asked again (every request here may be repeated), an answer
        // that leaves whole does so again, and one written in pieces comes
        // apart every time; five races in a row take a far busier machine.
        let mut host_races = 0;
        while response.head_came_alone() && host_races < 4 {
            host_races += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            response = Box::pin(client.send(method, path, &headers, body)).await?;
        }
        let mut faults = Vec::new();
        if response.status != expect {
            faults.push(format!(
                "status {} (expected {expect}): {}",
                response.status,
                response.text()
            ));
        }
        match response.content_length() {
            Some(n) if method != "HEAD" && n != response.body.len() => faults.push(format!(
                "Content-Length {n} for {} bytes",
                response.body.len()
            )),
            _ => {}
        }
        if let Err(shape) = response.left_whole() {
            faults.push(shape);
        }
        if response.head_came_alone() {
            faults.push(format!("the head came alone {} times over", host_races + 1));
        }
        rows.push(format!(
            "| {name} | {} | {} | {} | {host_races} | {:.2} |",
            response.status,
            response
                .content_length()
                .map_or("–".to_string(), |n| n.to_string()),
            response.data_segments,
            response.elapsed.as_secs_f64() * 1000.0
        ));
        if !faults.is_empty() {
            broken.push(format!("{name}: {}", faults.join(", ")));
        }
    }
    if broken.is_empty() {
        Ok(rows.join("\n"))
    } else {
        bail!(
            "answers that did not leave whole on a keep-alive connection:\n  {}\n{}",
            broken.join("\n  "),
            rows.join("\n")
        )
    }
}
