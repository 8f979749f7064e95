//! Building responses (JSON bodies and the one rendering of [`ApiError`])
//! and writing them to the client, whole or as they are made.

use chatbot_core::api::ApiError;
use spin_sdk::http::{Fields, OutgoingBody, OutgoingResponse, Response, ResponseOutparam};
use wasi::io::streams::OutputStream;

pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("responses serialise"))
        .build()
}

/// The JSON error body, with the headers the error carries. A 5xx names the
/// request id under which the log holds what went wrong.
pub fn error(error: &ApiError) -> Response {
    let mut body = error.body();
    if error.status >= 500 {
        body.request_id = Some(crate::request_id().to_string());
    }
    let mut response = json(error.status, &body);
    for (name, value) in &error.headers {
        response.set_header(*name, value.as_str());
    }
    response
}

/// A handler's result as a response.
pub fn reply(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| error(&e))
}

/// Writes a whole response to the client and ends its body: the client has
/// all of it when this returns, and the handler may go on working.
pub fn send(out: ResponseOutparam, response: Response) {
    let status = *response.status();
    let headers: Vec<(String, Vec<u8>)> = response
        .headers()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let body = response.into_body();
    match Body::start(out, status, headers) {
        Ok(mut writer) => {
            writer.write(&body);
            writer.finish();
        }
        Err(e) => crate::log::warn("response_failed", crate::log::Dependency::Client, &e),
    }
}

/// A response body being written: the status and headers are out.
pub struct Body {
    // Dropped before the body it writes to.
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    /// The client went away: later writes are skipped.
    gone: bool,
}

impl Body {
    /// Sends the status and headers.
    pub fn start(
        out: ResponseOutparam,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, String> {
        let fields = Fields::from_list(&headers).map_err(|e| format!("headers: {e:?}"))?;
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(status)
            .map_err(|()| format!("status {status}"))?;
        let body = response.body().map_err(|()| "no body".to_string())?;
        out.set(response);
        let stream = body.write().map_err(|()| "no body stream".to_string())?;
        Ok(Self {
            stream: Some(stream),
            body: Some(body),
            gone: false,
        })
    }

    /// Writes and flushes `bytes` (so a streamed event leaves at once).
    /// Whether the client is still there.
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        if self.gone {
            return false;
        }
        let Some(stream) = &self.stream else {
            return false;
        };
        for chunk in bytes.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                crate::log::info(
                    "client_gone",
                    crate::log::Dependency::Client,
                    format_args!("{e:?}"),
                );
                self.gone = true;
                return false;
            }
        }
        true
    }

    /// Whether a write found the client gone.
    pub fn client_gone(&self) -> bool {
        self.gone
    }

    /// Ends the body: the client has the whole response.
    pub fn finish(mut self) {
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            if let Err(e) = OutgoingBody::finish(body, None) {
                crate::log::warn(
                    "response_end_failed",
                    crate::log::Dependency::Client,
                    format_args!("{e:?}"),
                );
            }
        }
    }
}
