//! The ops component: health and readiness, metrics summary, cache analytics
//! and invalidation, retention cleanup, cache warm-up and the audit log.
//! Admin routes (marked in `chatbot_core::routes`) need the `admin_token`
//! bearer token, checked by the router; with no token configured they are closed.

mod admin;
mod health;

use chatbot_core::api::ApiError;
use chatbot_core::routes;
use chatbot_spin::routing::{self, Handler};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::redis::Connection;

fn handler(route: &routes::Route) -> Handler {
    match *route {
        routes::HEALTH => health::liveness,
        routes::HEALTH_SERVICES => health::services,
        routes::HEALTH_READINESS => health::readiness,
        routes::HEALTH_METRICS => health::metrics_summary,
        routes::CACHE_ANALYTICS => health::cache_analytics,
        routes::CACHE_CLEAR => admin::clear_cache,
        routes::CLEANUP => admin::cleanup,
        routes::CACHE_WARMUP => admin::warmup,
        routes::AUDIT_LOG => admin::audit_page,
        other => unreachable!("{other:?} is not an ops route"),
    }
}

#[http_component]
fn handle(incoming: IncomingRequest, out: ResponseOutparam) {
    chatbot_spin::log::set_component("ops");
    routing::handle(routes::OPS_ROUTES, handler, incoming, out)
}

/// Records what an admin action observed (ops records directly, with the
/// recorder's own code; a failure is logged, never fails the action).
pub(crate) fn record(conn: &Connection, telemetry: &chatbot_spin::caches::Telemetry) {
    if let Err(e) = chatbot_spin::metrics_store::record(conn, &telemetry.samples, None) {
        chatbot_spin::log::warn(
            "metrics_record_failed",
            chatbot_spin::log::Dependency::Redis,
            format_args!("{e:?}"),
        );
    }
}

/// Redis for analytics and admin actions, or 503 naming it.
pub(crate) fn redis() -> Result<Connection, ApiError> {
    chatbot_spin::settings::open_redis().map_err(|_| ApiError::unavailable("Redis is unavailable"))
}
