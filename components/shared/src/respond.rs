//! Building responses: JSON bodies and the one rendering of [`ApiError`].

use chatbot_core::api::ApiError;
use spin_sdk::http::Response;

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
