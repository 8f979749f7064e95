//! Building responses (JSON bodies and the one rendering of [`ApiError`])
//! and writing them to the client, whole or as they are made.
//!
//! A request's work runs as a task of its own (see [`entry`]), which hands
//! the host the response once it is known. Spin 4 counts a WASIp3 request as
//! over when its response body ends (with a declared `Content-Length`, at its
//! last byte) and may then drop the instance: so whatever the request must
//! keep (the exchange's history write, the metrics) is done *before* its
//! response goes out, and nothing is left to run after it.
//!
//! A whole response ([`send`]) leaves in one piece: its `Content-Length`
//! declared and its body one frame, so the host writes head and body at once
//! and ends the message there. Spin does not set `TCP_NODELAY` on the
//! connections it accepts: a response written in pieces (head and body, then
//! its chunked end later) would wait on Nagle's algorithm for the client's
//! delayed ACK, 40 ms on Linux for every answer on a keep-alive connection.
//! An event stream ([`Body`]) has no length to declare: its events leave as
//! they are written, and it ends as soon as its last event is written.

use bytes::Bytes;
use chatbot_core::http::api::ApiError;
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use crate::context::{scoped, RequestContext};

/// A response built whole.
pub type Response = http::Response<Vec<u8>>;

/// A response as the host gets it: its body a stream.
pub type Outgoing = http::Response<UnsyncBoxBody<Bytes, anyhow::Error>>;

/// Setting a header on a response being built.
pub trait SetHeader {
    fn set_header(&mut self, name: &str, value: impl AsRef<str>);
}

impl<B> SetHeader for http::Response<B> {
    fn set_header(&mut self, name: &str, value: impl AsRef<str>) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value.as_ref()),
        ) {
            self.headers_mut().insert(name, value);
        }
    }
}

pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
    let mut response = http::Response::new(serde_json::to_vec(body).expect("responses serialise"));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.set_header("content-type", "application/json");
    response
}

/// The JSON error body, with the headers the error carries. A 5xx names the
/// request id under which the log holds what went wrong (logged here).
pub fn error(error: &ApiError) -> Response {
    let body = error_body(error);
    let mut response = json(error.status(), &body);
    for (name, value) in &error.headers {
        response.set_header(name, value.as_str());
    }
    response
}

/// The body of an error as the client sees it, its cause logged: the one
/// place a failure a client is answered with reaches the log.
pub fn error_body(error: &ApiError) -> chatbot_core::http::api::ErrorBody {
    if let Some(cause) = &error.cause {
        crate::log::error(cause.event, cause.dependency, &cause.detail);
    }
    let mut body = error.body();
    if error.status() >= 500 {
        body.request_id = Some(crate::request_id());
    }
    body
}

/// A handler's result as a response.
pub fn reply(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| error(&e))
}

/// Where a request's response goes: its head to the host, which the entry
/// point is waiting for, then its body.
pub struct Out {
    head: oneshot::Sender<Outgoing>,
}

/// The entry point of every component: runs `work` as the request's own
/// task, under its deadline, and answers the host as soon as `work` has sent the response's head
/// (a 500 if it never does).
pub async fn entry<F, Fut>(
    component: &'static str,
    incoming: spin_sdk::http::Request,
    work: F,
) -> Outgoing
where
    F: FnOnce(spin_sdk::http::Request, Out) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    crate::log::set_component(component);
    let (head, sent) = oneshot::channel();
    let context = RequestContext::new();
    let request = work(incoming, Out { head });
    spin_sdk::wasip3::spawn(scoped(context, async move {
        // The deadline (`request_timeout_ms`) runs from the request's start;
        // a component whose settings do not parse keeps the default.
        if let Ok(settings) = crate::settings::pipeline().await {
            crate::context::set_request_timeout(settings.request_timeout);
        }
        request.await
    }));
    // The executor would not poll the task spawned just now before an event.
    match crate::context::polled_again(sent).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = http::Response::new(b"{\"error\":\"internal\"}".to_vec());
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            whole(response)
        }
    }
}

/// Hands the host a whole response: its `Content-Length` declared, its body
/// one frame, so that it leaves in one write (see the module's comment).
/// Whatever the request must keep is done by now: the request is over at
/// the body's last byte.
pub fn send(out: Out, response: Response) {
    if out.head.send(whole(response)).is_err() {
        crate::log::warn(
            "response_failed",
            crate::log::Dependency::Client,
            "the host is no longer waiting for the response",
        );
    }
}

/// `response` as the host takes it: its length declared, its body one frame.
fn whole(response: Response) -> Outgoing {
    let (mut head, body) = response.into_parts();
    // A HEAD's answer declares its GET's length already.
    head.headers
        .entry(http::header::CONTENT_LENGTH)
        .or_insert_with(|| http::HeaderValue::from(body.len()));
    let body = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    http::Response::from_parts(head, body)
}

/// An event stream being written: the status and headers are out, and each
/// write leaves at once.
pub struct Body {
    sender: Option<mpsc::Sender<Bytes>>,
    /// The client went away: later writes are skipped.
    gone: bool,
}

impl Body {
    /// Sends `head`'s status and headers (with no `Content-Length`: the
    /// stream's length is not known until it ends; `head`'s body is not sent).
    pub fn start(out: Out, head: Response) -> Result<Self, String> {
        let (head, _) = head.into_parts();
        let mut response = http::Response::builder().status(head.status);
        for (name, value) in &head.headers {
            if name != http::header::CONTENT_LENGTH {
                response = response.header(name, value);
            }
        }
        let (sender, receiver) = mpsc::channel::<Bytes>(64);
        let body = http_body_util::StreamBody::new(
            receiver.map(|bytes| Ok::<_, anyhow::Error>(http_body::Frame::data(bytes))),
        );
        let response = response
            .body(body.boxed_unsync())
            .map_err(|e| format!("response head: {e}"))?;
        out.head
            .send(response)
            .map_err(|_| "the host is no longer waiting for the response".to_string())?;
        Ok(Self {
            sender: Some(sender),
            gone: false,
        })
    }

    /// Writes `bytes` (a streamed event leaves at once). Whether the client
    /// is still there. A client that stops reading fills the body's buffer:
    /// a write then waits at most what is left of the request's deadline,
    /// and the client is taken for gone (its request ends; its exchange is
    /// not stored, as it never had the whole answer).
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        if self.gone || bytes.is_empty() {
            return !self.gone;
        }
        let Some(sender) = &mut self.sender else {
            return false;
        };
        let frame = Bytes::copy_from_slice(bytes);
        let sent = match sender.try_send(frame) {
            Ok(()) => Ok(()),
            Err(full) if full.is_full() => {
                let frame = full.into_inner();
                match crate::within(crate::time_left(), sender.send(frame)).await {
                    Some(sent) => sent.map_err(|e| format!("{e:?}")),
                    None => Err("the client stopped reading until the deadline".to_string()),
                }
            }
            Err(gone) => Err(format!("{gone:?}")),
        };
        if let Err(e) = sent {
            crate::log::info("client_gone", crate::log::Dependency::Client, e);
            self.gone = true;
            // Dropped: the body ends, and the host stops waiting on it.
            self.sender = None;
            return false;
        }
        true
    }

    /// Whether a write found the client gone.
    pub fn client_gone(&self) -> bool {
        self.gone || self.sender.as_ref().is_some_and(mpsc::Sender::is_closed)
    }

    /// The last event is written: the stream ends now (and with it the
    /// request, so whatever it must keep is done by now).
    pub fn finish(self) {
        drop(self);
    }
}
