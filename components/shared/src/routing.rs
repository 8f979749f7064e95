//! spin-sdk's `Router`, built from a component's route table in the core
//! (`chatbot_core::routes`): admin routes checked in one place, and JSON
//! errors for what the table does not serve (404, or 405 with `Allow`).

use chatbot_core::api::ApiError;
use chatbot_core::audit::AuditAction;
use chatbot_core::identity::{AuthMode, IdentitySettings};
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::ErrorType;
use chatbot_core::routes::{allowed_methods, Route};
use spin_sdk::http::{
    IncomingRequest, Method, Params, Request, Response, ResponseOutparam, Router,
};

use crate::respond::{error, reply};

/// A route's handler: a response, or the error to render.
pub type Handler = fn(Request, Params) -> Result<Response, ApiError>;

/// The route tables use `GET` and `POST` only.
fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "POST" => Method::Post,
        other => panic!("route table method {other} is not routed"),
    }
}

/// A router serving `table`, each route by `handler_for(route)`.
pub fn router(table: &'static [Route], handler_for: impl Fn(&Route) -> Handler) -> Router {
    let mut router = Router::new();
    for route in table {
        let handler = handler_for(route);
        let serve = move |req: Request, params: Params| -> Response {
            if route.admin {
                if let Err(e) = authorise(&req) {
                    return error(&e);
                }
            }
            let result = handler(req, params);
            if let Err(e) = &result {
                count_refusal(e);
            }
            reply(result)
        };
        router.add(route.path, method(route.method), serve);
        if route.method == "GET" {
            // HEAD: the GET's answer (status and headers) without its body.
            // Registered explicitly: spin-sdk's own HEAD fallback to GET is
            // never reached, because the 405 fallback below matches first.
            router.add(
                route.path,
                Method::Head,
                move |req: Request, params: Params| -> Response {
                    without_body(serve(req, params))
                },
            );
        }
    }
    // One 405 fallback per path, however many methods the table gives it.
    let mut paths: Vec<&'static str> = table.iter().map(|r| r.path).collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        router.any(path, move |req: Request, _: Params| -> Response {
            refuse(&ApiError::method_not_allowed(
                &req.method().to_string(),
                req.path(),
                &allowed_methods(table, path),
            ))
        });
    }
    router.any("/*", |req: Request, _: Params| -> Response {
        error(&ApiError::not_found(req.path()))
    });
    router
}

/// The response with an empty body and every header kept.
fn without_body(mut response: Response) -> Response {
    response.body_mut().clear();
    response
}

/// Serves one request by the route table.
pub fn serve(
    table: &'static [Route],
    handler_for: impl Fn(&Route) -> Handler,
    req: Request,
) -> Response {
    router(table, handler_for).handle(req)
}

/// The headers every response carries: its request id, and the time the
/// handler took until the response (or, streamed, its head) was ready.
pub fn common_headers() -> [(&'static str, String); 2] {
    [
        ("x-request-id", crate::request_id().to_string()),
        (
            "x-response-time",
            format!(
                "{:.3}ms",
                crate::request_started().elapsed().as_secs_f64() * 1000.0
            ),
        ),
    ]
}

/// Writes `response` to the client with the common headers.
pub fn send(out: ResponseOutparam, mut response: Response) {
    for (name, value) in common_headers() {
        response.set_header(name, value);
    }
    crate::respond::send(out, response);
}

/// Reads the request within its route's body limit; the error response otherwise.
pub fn read(table: &'static [Route], incoming: IncomingRequest) -> Result<Request, Response> {
    crate::incoming::read(table, incoming).map_err(|e| refuse(&e))
}

/// Counts a refusal that the request or the configuration caused (a bad
/// input, a missing variable) in `chatbot_errors_total`, on a connection of
/// its own: only refused requests pay for it. Other failures are counted
/// where they happen, by their dependency.
pub fn count_refusal(e: &ApiError) {
    let Some(kind) = ErrorType::of_refusal(e.code) else {
        return;
    };
    let recorded = crate::settings::open_redis()
        .map_err(|e| format!("{e:?}"))
        .and_then(|conn| {
            crate::metrics_store::record(&conn, &[Observation::Error(kind).sample()], None)
                .map_err(|e| format!("{e:?}"))
        });
    if let Err(e) = recorded {
        crate::log::warn("metrics_record_failed", crate::log::Dependency::Redis, &e);
    }
}

/// The error response of a refusal, counted.
fn refuse(e: &ApiError) -> Response {
    count_refusal(e);
    error(e)
}

/// A component's whole request: the body read within its route's limit,
/// served by the table, and written to the client.
pub fn handle(
    table: &'static [Route],
    handler_for: impl Fn(&Route) -> Handler,
    incoming: IncomingRequest,
    out: ResponseOutparam,
) {
    crate::request_started();
    let response = match read(table, incoming) {
        Ok(req) => serve(table, handler_for, req),
        Err(refused) => refused,
    };
    send(out, response);
}

/// The client address of a request, for the security log (identity settings
/// that do not parse fall back to the TCP peer).
pub fn client_address(req: &Request) -> String {
    let settings = crate::identity::settings().unwrap_or(IdentitySettings {
        mode: AuthMode::None,
        jwt: None,
        trusted_proxy_hops: 0,
    });
    crate::identity::client_address(req, &settings)
}

/// Refuses without the admin bearer token (constant-time compare; no token
/// configured means admin is closed), and writes the refusal to the security log.
pub fn authorise(req: &Request) -> Result<(), ApiError> {
    if crate::identity::is_admin(req) {
        return Ok(());
    }
    let presented = req.header("authorization").and_then(|v| v.as_str());
    if let Ok(conn) = crate::settings::open_redis() {
        crate::audit::append(
            &conn,
            AuditAction::Unauthorized,
            &client_address(req),
            serde_json::json!({
                "path": req.path(),
                "method": req.method().to_string(),
                "token_presented": presented.is_some(),
            }),
        );
    }
    Err(ApiError::unauthorized(
        "a valid admin bearer token is required",
    ))
}
