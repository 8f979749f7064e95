//! The ops component: health and readiness, metrics summary, cache analytics
//! and invalidation, retention cleanup, cache warm-up and the audit log.
//! Admin routes need the `admin_token` bearer token (compared in constant
//! time); with no token configured they are closed.

mod admin;
mod health;

use chatbot_core::api::ErrorBody;
use chatbot_core::auth;
use chatbot_core::config::names;
use chatbot_core::query::Rejection;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::redis::Connection;

#[http_component]
fn handle(req: Request) -> Response {
    let path = req.path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    if ADMIN_ROUTES.contains(&path.as_str()) {
        if let Err(response) = authorise(&req) {
            return response;
        }
    }
    match (method, path.as_str()) {
        (Method::Get, "/health") => health::liveness(),
        (Method::Get, "/health/services") => health::services(),
        (Method::Get, "/health/readiness") => health::readiness(),
        (Method::Get, "/health/metrics") => health::metrics_summary(),
        (Method::Get, "/health/cache/analytics") => health::cache_analytics(),
        (Method::Post, "/health/cache/clear") => admin::clear_cache(&req),
        (Method::Post, "/admin/cleanup") => admin::cleanup(&req),
        (Method::Post, "/admin/cache/warmup") => admin::warmup(&req),
        (Method::Get, "/admin/audit") => admin::audit_page(&req),
        (m, p) if known(p) => error(
            405,
            "method_not_allowed",
            &format!("{m} is not allowed on {p}"),
        ),
        (_, p) => error(404, "not_found", &format!("no route for {p}")),
    }
}

const ROUTES: [&str; 9] = [
    "/health",
    "/health/services",
    "/health/readiness",
    "/health/metrics",
    "/health/cache/analytics",
    "/health/cache/clear",
    "/admin/cleanup",
    "/admin/cache/warmup",
    "/admin/audit",
];

/// The routes that need the admin token.
const ADMIN_ROUTES: [&str; 4] = [
    "/health/cache/clear",
    "/admin/cleanup",
    "/admin/cache/warmup",
    "/admin/audit",
];

fn known(path: &str) -> bool {
    ROUTES.contains(&path)
}

/// Refuses without the right bearer token, and audits the refusal.
fn authorise(req: &Request) -> Result<(), Response> {
    let token = spin_sdk::variables::get(names::ADMIN_TOKEN).unwrap_or_default();
    let presented = req.header("authorization").and_then(|v| v.as_str());
    if auth::bearer_matches(presented, &token) {
        return Ok(());
    }
    if let Some(conn) = redis() {
        let _ = chatbot_spin::audit(
            &conn,
            "unauthorized",
            serde_json::json!({"path": req.path(), "method": req.method().to_string(), "token_presented": presented.is_some()}),
        );
    }
    let mut response = error(
        401,
        "unauthorized",
        "a valid admin bearer token is required",
    );
    response.set_header("www-authenticate", "Bearer");
    Err(response)
}

pub(crate) fn redis() -> Option<Connection> {
    let address = spin_sdk::variables::get(names::REDIS_ADDRESS).ok()?;
    Connection::open(&address).ok()
}

pub(crate) fn json(status: u16, body: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("reports always serialise"))
        .build()
}

pub(crate) fn error(status: u16, code: &str, detail: &str) -> Response {
    json(status, &ErrorBody::new(code, detail))
}

pub(crate) fn reject(rejection: &Rejection) -> Response {
    json(rejection.status, &rejection.body)
}
