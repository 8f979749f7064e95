//! Serving a component's route table from the core (`chatbot_core::http::routes`):
//! admin routes checked in one place, and JSON errors for what the table does
//! not serve (404, or 405 with `Allow`).

use std::future::Future;
use std::pin::Pin;

use chatbot_core::http::api::ApiError;
use chatbot_core::http::routes::{allowed_methods, Route};
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::ErrorType;

use crate::incoming::{Request, RequestExt};
use crate::respond::{error, reply, Out, Response, SetHeader};

/// A route's path parameters (`:name` segments), by name.
#[derive(Debug, Default)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn of(route: &Route, path: &str) -> Self {
        Self(
            route
                .path
                .split('/')
                .zip(path.split('/'))
                .filter_map(|(pattern, actual)| {
                    pattern
                        .strip_prefix(':')
                        .map(|name| (name, actual.to_string()))
                })
                .collect(),
        )
    }
}

/// What a handler answers, some time later.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response, ApiError>>>>;

/// A route's handler: a response, or the error to render.
pub type Handler = fn(Request, Params) -> Answer;

/// Serves one request by the route table: the route's handler (after the
/// admin check), a 405 naming what the path takes, or a 404.
pub async fn serve(
    table: &'static [Route],
    handler_for: impl Fn(&Route) -> Handler,
    req: Request,
) -> Response {
    let path = req.path().to_string();
    let method = req.method().as_str().to_string();
    let Some(route) = chatbot_core::http::routes::serving_route(table, &method, &path) else {
        let Some(pattern) = table.iter().find(|r| r.matches(&path)).map(|r| r.path) else {
            return error(&ApiError::not_found(&path));
        };
        return refuse(&ApiError::method_not_allowed(
            &method,
            &path,
            &allowed_methods(table, pattern),
        ))
        .await;
    };
    if route.admin {
        if let Err(e) = authorise(&req).await {
            return error(&e);
        }
    }
    let head = method == "HEAD";
    let params = Params::of(route, &path);
    let result = handler_for(route)(req, params).await;
    if let Err(e) = &result {
        count_refusal(e).await;
    }
    let mut response = reply(result);
    if head {
        // HEAD: the GET's answer (status and headers, its length included) without its body.
        let length = response.body().len();
        response.set_header("content-length", length.to_string());
        response.body_mut().clear();
    }
    response
}

/// The headers every response carries: its request id, and the time the
/// handler took until the response (or, streamed, its head) was ready.
pub fn common_headers() -> [(&'static str, String); 2] {
    [
        ("x-request-id", crate::request_id()),
        (
            "x-response-time",
            format!(
                "{:.3}ms",
                crate::request_started().elapsed().as_secs_f64() * 1000.0
            ),
        ),
    ]
}

/// Hands `response` to the host with the common headers.
pub fn send(out: Out, mut response: Response) {
    for (name, value) in common_headers() {
        response.set_header(name, value);
    }
    crate::respond::send(out, response);
}

/// Reads the request within its route's body limit; the error response otherwise.
pub async fn read(
    table: &'static [Route],
    incoming: spin_sdk::http::Request,
) -> Result<Request, Response> {
    match crate::incoming::read(table, incoming).await {
        Ok(req) => Ok(req),
        Err(e) => Err(refuse(&e).await),
    }
}

/// Counts a refusal that the request or the configuration caused (a bad
/// input, a missing variable) in `chatbot_errors_total`: only refused
/// requests pay for it. Other failures are counted where they happen, by
/// their dependency.
pub async fn count_refusal(e: &ApiError) {
    let Some(kind) = ErrorType::of_refusal(e.code) else {
        return;
    };
    // The answer is decided: counting it is bookkeeping, with its own
    // allowance (a body that timed out has spent the request's deadline).
    crate::context::answer_decided();
    let recorded = match crate::settings::open_redis().await {
        Ok(conn) => crate::metrics_store::record(&conn, &[Observation::Error(kind).sample()], None)
            .await
            .map_err(|e| format!("{e:?}")),
        Err(e) => Err(format!("{e:?}")),
    };
    if let Err(e) = recorded {
        crate::log::warn("metrics_record_failed", crate::log::Dependency::Redis, &e);
    }
}

/// The error response of a refusal, counted.
async fn refuse(e: &ApiError) -> Response {
    count_refusal(e).await;
    error(e)
}

/// A component's whole request: the body read within its route's limit,
/// served by the table, and written to the client.
pub async fn handle(
    table: &'static [Route],
    handler_for: impl Fn(&Route) -> Handler,
    incoming: spin_sdk::http::Request,
    out: Out,
) {
    let response = match read(table, incoming).await {
        Ok(req) => serve(table, handler_for, req).await,
        Err(refused) => refused,
    };
    send(out, response);
}

/// The client address of a request, for the security log (identity settings
/// that do not parse fall back to the TCP peer).
pub async fn client_address<B>(req: &http::Request<B>) -> String {
    match crate::settings::identity().await {
        Ok(settings) => crate::identity::client_address(req, &settings),
        Err(_) => crate::identity::client_address(
            req,
            &chatbot_core::limits::identity::IdentitySettings {
                mode: chatbot_core::limits::identity::AuthMode::None,
                jwt: None,
                trusted_proxy_hops: 0,
            },
        ),
    }
}

/// Refuses without the admin bearer token (constant-time compare; no token
/// configured means admin is closed), and writes the refusal to the security log.
pub async fn authorise<B>(req: &http::Request<B>) -> Result<(), ApiError> {
    if crate::identity::is_admin(req).await {
        return Ok(());
    }
    let presented = req.header("authorization");
    if let Ok(conn) = crate::settings::open_redis().await {
        crate::audit::append(
            &conn,
            AuditAction::Unauthorized,
            &client_address(req).await,
            serde_json::json!({
                "path": req.uri().path(),
                "method": req.method().as_str(),
                "token_presented": presented.is_some(),
            }),
        )
        .await;
    }
    Err(ApiError::unauthorized(
        "a valid admin bearer token is required",
    ))
}
