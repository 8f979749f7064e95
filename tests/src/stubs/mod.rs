//! Local stand-ins for OpenAI, Qdrant and an identity provider's JWKS that speak their real wire formats,
//! with deterministic output, call counting, configurable latency and
//! failure injection. Each listens on 127.0.0.1, port 0.

pub mod issuer;
pub mod openai;
pub mod qdrant;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;

/// A failure to inject into the next call(s) of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` (and OpenAI's `x-ratelimit-*` headers on the OpenAI stub).
    RateLimited { retry_after_secs: u32 },
    /// A 5xx (or any) status with the service's error body.
    Status(u16),
    /// Accept the request and answer only after this long (to trip client timeouts).
    Hang(Duration),
    /// 200 with a body of this many bytes (blanks): an answer no client should buffer.
    Oversized(usize),
    /// 200 with a body that sends one blank each interval, for a minute: every
    /// between-bytes timeout is met, and the body never ends in time.
    Trickle(Duration),
}

impl Fault {
    /// The response of a fault that answers 200 with a body no client should take whole.
    pub fn body_response(&self) -> Option<axum::response::Response> {
        use axum::response::IntoResponse;
        match self {
            Self::Oversized(bytes) => {
                Some(([("content-type", "application/json")], vec![b' '; *bytes]).into_response())
            }
            Self::Trickle(every) => {
                let every = *every;
                let blanks = futures_util::stream::unfold(0u32, move |sent| async move {
                    let minute = (60_000 / every.as_millis().max(1)) as u32;
                    if sent >= minute {
                        return None;
                    }
                    tokio::time::sleep(every).await;
                    Some((
                        Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b" ")),
                        sent + 1,
                    ))
                });
                Some(
                    axum::response::Response::builder()
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from_stream(blanks))
                        .expect("a valid response"),
                )
            }
            _ => None,
        }
    }
}

/// Per-endpoint call counts, latencies and queued faults.
#[derive(Default)]
pub struct Controls {
    calls: Mutex<HashMap<&'static str, u64>>,
    latency: Mutex<HashMap<&'static str, Duration>>,
    faults: Mutex<HashMap<&'static str, VecDeque<Fault>>>,
    always: Mutex<HashMap<&'static str, Fault>>,
}

impl Controls {
    pub fn calls(&self, endpoint: &'static str) -> u64 {
        self.calls
            .lock()
            .unwrap()
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }

    pub fn set_latency(&self, endpoint: &'static str, latency: Duration) {
        self.latency.lock().unwrap().insert(endpoint, latency);
    }

    /// The next `times` calls of `endpoint` fail with `fault`.
    pub fn fail_next(&self, endpoint: &'static str, times: usize, fault: Fault) {
        let mut faults = self.faults.lock().unwrap();
        let queue = faults.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(fault, times));
    }

    /// Every call of `endpoint` fails with `fault` until [`Controls::heal`].
    pub fn fail_always(&self, endpoint: &'static str, fault: Fault) {
        self.always.lock().unwrap().insert(endpoint, fault);
    }

    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
        self.always.lock().unwrap().clear();
    }

    /// Counts the call, sleeps its latency, and says which fault (if any) to answer with.
    async fn enter(&self, endpoint: &'static str) -> Option<Fault> {
        *self.calls.lock().unwrap().entry(endpoint).or_default() += 1;
        let latency = self.latency.lock().unwrap().get(endpoint).copied();
        if let Some(latency) = latency {
            tokio::time::sleep(latency).await;
        }
        let queued = self
            .faults
            .lock()
            .unwrap()
            .get_mut(endpoint)
            .and_then(VecDeque::pop_front);
        let fault = queued.or_else(|| self.always.lock().unwrap().get(endpoint).cloned());
        if let Some(Fault::Hang(d)) = &fault {
            tokio::time::sleep(*d).await;
        }
        fault
    }
}

/// A running stub; stops when dropped.
pub struct StubServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StubServer {
    async fn serve(router: Router) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = router.layer(axum::middleware::from_fn(require_content_length));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Refuses a body sent without `Content-Length` (chunked) with 411, as some
/// OpenAI-compatible servers and proxies do: the app must send the length of
/// a body it knows.
async fn require_content_length(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let has_body = matches!(request.method().as_str(), "POST" | "PUT" | "PATCH");
    if has_body
        && !request
            .headers()
            .contains_key(axum::http::header::CONTENT_LENGTH)
    {
        return (
            axum::http::StatusCode::LENGTH_REQUIRED,
            axum::Json(serde_json::json!({"error": {"message": "Content-Length required"}})),
        )
            .into_response();
    }
    next.run(request).await
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that accepts TCP connections and never sends a byte: a
/// blackholed Redis or Postgres (a hung process, a proxy with no backend).
pub struct SilentServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                // Kept open and unread: the client's bytes sit in the socket buffer.
                held.push(stream);
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
