//! The ops component: health and readiness, metrics summary, cache analytics
//! and invalidation, retention cleanup, cache warm-up and the audit log.
//! Admin routes (marked in `chatbot_core::http::routes`) need the `admin_token`
//! bearer token, checked by the router; with no token configured they are closed.

mod admin;
mod analytics;
mod health;
mod invalidation;

use chatbot_core::http::api::ApiError;
use chatbot_core::http::routes;
use chatbot_spin::redis_script::Conn;
use chatbot_spin::respond::Outgoing;
use chatbot_spin::routing::{self, Handler};
use spin_sdk::http_service;

fn handler(route: &routes::Route) -> Handler {
    match *route {
        routes::HEALTH => |req, p| Box::pin(health::liveness(req, p)),
        routes::HEALTH_SERVICES => |req, p| Box::pin(health::services(req, p)),
        routes::HEALTH_READINESS => |req, p| Box::pin(health::readiness(req, p)),
        routes::HEALTH_METRICS => |req, p| Box::pin(analytics::metrics_summary(req, p)),
        routes::CACHE_ANALYTICS => |req, p| Box::pin(analytics::cache_analytics(req, p)),
        routes::CACHE_CLEAR => |req, p| Box::pin(invalidation::clear_cache(req, p)),
        routes::CLEANUP => |req, p| Box::pin(admin::cleanup(req, p)),
        routes::CACHE_WARMUP => |req, p| Box::pin(admin::warmup(req, p)),
        routes::AUDIT_LOG => |req, p| Box::pin(admin::audit_page(req, p)),
        other => unreachable!("{other:?} is not an ops route"),
    }
}

#[http_service]
async fn handle(incoming: spin_sdk::http::Request) -> Outgoing {
    chatbot_spin::respond::entry("ops", incoming, |incoming, out| {
        routing::handle(routes::OPS_ROUTES, handler, incoming, out)
    })
    .await
}

/// Records what an admin action observed (ops records directly, with the
/// recorder's own code; a failure is logged, never fails the action).
pub(crate) async fn record(conn: &Conn, telemetry: &chatbot_spin::caches::Telemetry) {
    if let Err(e) = chatbot_spin::metrics_store::record(conn, &telemetry.samples, None).await {
        chatbot_spin::log::warn(
            "metrics_record_failed",
            chatbot_spin::log::Dependency::Redis,
            format_args!("{e:?}"),
        );
    }
}

/// Redis for analytics and admin actions, or 503 naming it.
pub(crate) async fn redis() -> Result<Conn, ApiError> {
    chatbot_spin::settings::open_redis()
        .await
        .map_err(ApiError::from)
}
