//! Building responses.

use chatbot_core::query::Rejection;
use spin_sdk::http::Response;

use crate::chatbot::ratelimit::limiter::Decision;

pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("responses serialise"))
        .build()
}

pub fn reject(rejection: &Rejection) -> Response {
    json(rejection.status, &rejection.body)
}

pub fn set_header(response: &mut Response, name: &str, value: &str) {
    response.set_header(name, value);
}

pub fn rate_limit_headers(response: &mut Response, d: &Decision) {
    set_header(response, "x-ratelimit-limit", &d.limit.to_string());
    set_header(response, "x-ratelimit-remaining", &d.remaining.to_string());
    set_header(
        response,
        "x-ratelimit-reset",
        &d.reset_at_epoch_seconds.to_string(),
    );
}
