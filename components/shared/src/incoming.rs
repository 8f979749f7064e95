//! Reading a request's body within its route's limit, before anything else
//! happens: a `Content-Length` over the limit is refused unread, and a body
//! without one (chunked) is read only up to the limit, and only for what is
//! left of the request's deadline (a body that trickles past it is a 408).

use chatbot_core::http::api::{ApiError, ErrorCode};
use chatbot_core::http::routes::{self, Route};
use http_body_util::BodyExt;

/// A request with its whole body read.
pub type Request = http::Request<Vec<u8>>;

/// What the handlers read of a request.
pub trait RequestExt {
    /// A header's value, if it is text.
    fn header(&self, name: &str) -> Option<&str>;
    fn path(&self) -> &str;
    /// The query string (empty when there is none).
    fn query(&self) -> &str;
}

impl<B> RequestExt for http::Request<B> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name).and_then(|v| v.to_str().ok())
    }

    fn path(&self) -> &str {
        self.uri().path()
    }

    fn query(&self) -> &str {
        self.uri().query().unwrap_or_default()
    }
}

fn unreadable() -> ApiError {
    ApiError::invalid("the request body could not be read")
}

/// The request with its whole body, or the 413 (or 400, or the admin
/// refusal) to answer instead. An admin path's token is checked, for any
/// method, before a byte of the body is read; a request that no route serves
/// (the router answers it 404 or 405) comes without its body, unread.
pub async fn read(table: &[Route], incoming: spin_sdk::http::Request) -> Result<Request, ApiError> {
    let (head, body) = incoming.into_parts();
    let without_body = || http::Request::from_parts(head.clone(), Vec::new());
    let path = head.uri.path().to_string();
    let method = head.method.as_str().to_string();
    if routes::is_admin_path(table, &path) {
        crate::routing::authorise(&without_body()).await?;
    }
    let Some(route) = routes::serving_route(table, &method, &path) else {
        return Ok(without_body());
    };
    let limit = route.max_body_bytes;
    let declared = head
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = body;
    let mut bytes = Vec::new();
    loop {
        let frame = crate::within(crate::time_left(), body.frame())
            .await
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body did not arrive within the request's deadline",
                )
            })?;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                    if bytes.len() > limit {
                        return Err(ApiError::too_large(limit));
                    }
                }
            }
            Some(Err(e)) => {
                crate::log::warn(
                    "request_body_unreadable",
                    crate::log::Dependency::Client,
                    format_args!("{e:?}"),
                );
                return Err(unreadable());
            }
        }
    }
    Ok(http::Request::from_parts(head, bytes))
}
