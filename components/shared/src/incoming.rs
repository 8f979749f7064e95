//! Reading a request's body within its route's limit, before anything else
//! happens: a `Content-Length` over the limit is refused unread, and a body
//! without one (chunked) is read only up to the limit.

use chatbot_core::api::{ApiError, ErrorCode};
use chatbot_core::routes::{self, Route};
use spin_sdk::http::{IncomingRequest, Request};
use wasi::io::streams::StreamError;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        ErrorCode::PayloadTooLarge,
        format!("the body may be at most {limit} bytes"),
    )
}

/// The request's method, URL and headers, without its body.
fn head(incoming: &IncomingRequest) -> Request {
    Request::builder()
        .method(incoming.method())
        .uri(incoming.uri())
        .headers(incoming.headers())
        .build()
}

/// The request with its whole body, or the 413 (or 400, or the admin
/// refusal) to answer instead. An admin path's token is checked, for any
/// method, before a byte of the body is read; a request that no route serves
/// (the router answers it 404 or 405) comes without its body, unread.
pub fn read(table: &[Route], incoming: IncomingRequest) -> Result<Request, ApiError> {
    let path = incoming.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let method = incoming.method().to_string();
    if routes::is_admin_path(table, path) {
        crate::routing::authorise(&head(&incoming))?;
    }
    let Some(route) = routes::serving_route(table, &method, path) else {
        return Ok(head(&incoming));
    };
    let limit = route.max_body_bytes;
    let declared = incoming
        .headers()
        .get("content-length")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    let request = head(&incoming);
    let body = incoming
        .consume()
        .map_err(|()| ApiError::invalid("the request body could not be read"))?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| ApiError::invalid("the request body could not be read"))?;
        loop {
            // Never more than one byte past the limit: that byte says "too large".
            let room = (limit + 1 - bytes.len()).min(64 * 1024) as u64;
            match stream.blocking_read(room) {
                Ok(chunk) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > limit {
                        return Err(too_large(limit));
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    crate::log::warn(
                        "request_body_unreadable",
                        crate::log::Dependency::Client,
                        e.to_debug_string(),
                    );
                    return Err(ApiError::invalid("the request body could not be read"));
                }
            }
        }
    }
    drop(body);
    let mut request = request;
    *request.body_mut() = bytes;
    Ok(request)
}
