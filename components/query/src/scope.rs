//! One request of the query API from its first Redis open to its answer:
//! what it counted, the rate-limit decision its response carries, the
//! budget it reserved; and how a request the router served is counted.

use crate::bindings;
use chatbot_core::http::api::ApiError;
use chatbot_core::limits::ratelimit;
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{CacheStatus, Cached, Endpoint, ErrorType, QueryStatus};
use chatbot_spin::caches::Telemetry;
use chatbot_spin::redis_script::Conn;
use chatbot_spin::respond::{self, Response, SetHeader};
use chatbot_spin::settings::PipelineSettings;

/// One request of the query API from its first Redis open to its answer: every
/// exit records the request's telemetry and carries the rate-limit headers.
pub(crate) struct Scope {
    pub conn: Option<Conn>,
    pub telemetry: Telemetry,
    /// The client address (for the address bucket and the security log).
    pub address: String,
    pub(crate) session: Option<String>,
    pub(crate) decision: Option<ratelimit::Decision>,
    /// The address's token is already taken (`limits::limit_address`, jwt mode).
    pub(crate) address_limited: bool,
    /// How the query cache served the request so far (`bypass` until the lookup).
    pub(crate) cache_status: CacheStatus,
    /// The worst case this miss took from its user's budget, until `budget::settle`.
    pub(crate) reservation: Option<Reservation>,
    /// What a failed miss spent, settled with its bookkeeping (once the
    /// answer is decided, with its own allowance: a request at its deadline
    /// still gives back or keeps its reservation).
    pub(crate) spent_on_failure: Option<chatbot_core::limits::sessions::Spent>,
}

impl Scope {
    /// The instance's Redis connection for the whole request; without it the request goes on.
    pub async fn open(settings: &PipelineSettings, address: String) -> Self {
        let mut telemetry = Telemetry::default();
        let conn = match chatbot_spin::redis_script::connect(&settings.redis_address).await {
            Ok(c) => Some(c),
            Err(e) => {
                chatbot_spin::log::warn(
                    "redis_unavailable",
                    chatbot_spin::log::Dependency::Redis,
                    &e,
                );
                telemetry.redis_error();
                None
            }
        };
        Self {
            conn,
            telemetry,
            address,
            session: None,
            decision: None,
            address_limited: false,
            cache_status: CacheStatus::Bypass,
            reservation: None,
            spent_on_failure: None,
        }
    }

    /// A security event for the security log (sampled per address).
    pub(crate) async fn audit(&self, action: AuditAction, detail: serde_json::Value) {
        if let Some(conn) = &self.conn {
            chatbot_spin::audit::append(conn, action, &self.address, detail).await;
        }
    }

    /// Counts an answered question in `chatbot_queries_total`, from the query cache or not.
    pub(crate) fn answered(&mut self, cached: bool) {
        self.telemetry.add(Observation::Query(
            Endpoint::Query,
            QueryStatus::Success,
            Cached::from_bool(cached),
        ));
    }

    /// Counts a refused question in `chatbot_queries_total` by its error's
    /// code (the one place every refusal passes) and, when the request or the
    /// configuration was at fault, the error.
    pub(crate) fn refused(&mut self, error: &ApiError) {
        self.telemetry.add(Observation::Query(
            Endpoint::Query,
            QueryStatus::of_refusal(error.code),
            Cached::No,
        ));
        if let Some(kind) = ErrorType::of_refusal(error.code) {
            self.telemetry.add(Observation::Error(kind));
        }
    }

    /// The request's latency, whatever its outcome.
    pub(crate) fn observe_latency(&mut self) {
        self.telemetry.add(Observation::QueryLatency(
            self.cache_status,
            chatbot_spin::request_started().elapsed().as_secs_f64(),
        ));
    }

    /// The response for `result`, with the rate-limit headers, after the
    /// samples went to the recorder (a failure never fails the request).
    pub async fn finish(mut self, result: Result<Response, ApiError>) -> Response {
        self.record().await;
        self.respond(result)
    }

    /// The rate-limit headers of the request's decision.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        self.decision
            .as_ref()
            .map(|decision| decision.headers().to_vec())
            .unwrap_or_default()
    }

    /// The response for `result`, with the rate-limit headers.
    pub(crate) fn respond(&self, result: Result<Response, ApiError>) -> Response {
        let mut response = respond::reply(result);
        for (name, value) in self.headers() {
            response.set_header(name, value);
        }
        response
    }

    /// Hands the samples so far to the recorder (a failure never fails the request).
    pub(crate) async fn record(&mut self) {
        let samples = std::mem::take(&mut self.telemetry.samples);
        // Without a connection Redis is down, and so is the recorder's storage: skip the second failure.
        if self.conn.is_some() {
            bindings::record(samples, self.session.clone()).await;
        }
    }
}

/// Tokens reserved from the day's counts (the user's, the deployment's).
pub(crate) struct Reservation {
    pub keys: Vec<String>,
    pub tokens: u64,
    /// One of the counts is the user's (`chatbot_user_tokens_charged_total`).
    pub charges_user: bool,
}

/// Counts a request the router served (history, documents) in
/// `chatbot_queries_total`, with `extra` samples.
/// Validation and configuration errors are counted by the router.
pub(crate) async fn count_alone(
    endpoint: Endpoint,
    result: &Result<Response, ApiError>,
    extra: Vec<Observation>,
) {
    let status = match result {
        Ok(_) => QueryStatus::Success,
        Err(e) => QueryStatus::of_refusal(e.code),
    };
    let samples = std::iter::once(Observation::Query(endpoint, status, Cached::No))
        .chain(extra)
        .map(|o| o.sample())
        .collect();
    bindings::record(samples, None).await;
}
