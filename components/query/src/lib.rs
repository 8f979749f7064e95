//! The query handler. A request opens Redis once and lends that connection
//! to the rate limiter and the metrics recorder it imports (Spin opens a new
//! connection on every open, which would halve throughput).
//!
//! Hit path: limiter (1 Redis round trip), cache lookup (1), one Postgres
//! statement for the history, recorder (1).

mod documents;

use std::time::Instant;

use chatbot_core::api::{self, ApiError, ErrorCode};
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::{Endpoint, LimiterOutcome, QueryStatus};
use chatbot_core::query::{self, QueryRequest};
use chatbot_core::ratelimit;
use chatbot_core::routes;
use chatbot_core::sessions::{self, Admission};
use chatbot_core::{audit::AuditAction, keys};
use chatbot_spin::caches::Telemetry;
use chatbot_spin::redis_script::{binary, eval, integers};
use chatbot_spin::respond::{self, json};
use chatbot_spin::routing::{self, Handler};
use chatbot_spin::settings::{self, PipelineSettings};
use chatbot_spin::{now_epoch_seconds, pipeline};
use spin_sdk::http::{Params, Request, Response};
use spin_sdk::http_component;
use spin_sdk::redis::{Connection, RedisParameter};

wit_bindgen::generate!({
    path: ["../../wit/deps/spin-sdk", "../../wit/ratelimit.wit", "../../wit/metrics.wit", "../../wit/app.wit"],
    world: "chatbot:app/query-handler",
    with: {
        "fermyon:spin/redis@2.0.0": spin_sdk::wit::v2::redis,
        "chatbot:ratelimit/limiter@0.1.0": generate,
        "chatbot:metrics/recorder@0.1.0": generate,
    },
});

use chatbot::metrics::recorder;
use chatbot::ratelimit::limiter;

fn handler(route: &routes::Route) -> Handler {
    match *route {
        routes::CHAT_QUERY => chat_query,
        routes::CHAT_HISTORY => history,
        routes::DOCUMENTS => documents::ingest,
        other => unreachable!("{other:?} is not a query route"),
    }
}

#[http_component]
fn handle(req: Request) -> Response {
    let started = Instant::now();
    let mut response = routing::router(routes::QUERY_ROUTES, handler).handle(req);
    response.set_header(
        "x-response-time",
        format!("{:.3}ms", started.elapsed().as_secs_f64() * 1000.0),
    );
    response
}

fn config_failure(e: impl std::fmt::Display) -> ApiError {
    eprintln!("configuration error: {e}");
    ApiError::configuration(e)
}

/// One request of the query API from its first Redis open to its answer: every
/// exit records the request's telemetry and carries the rate-limit headers.
pub(crate) struct Scope {
    pub conn: Option<Connection>,
    pub telemetry: Telemetry,
    session: Option<String>,
    decision: Option<ratelimit::Decision>,
}

impl Scope {
    /// Opens Redis once for the whole request; without it the request goes on.
    pub fn open(settings: &PipelineSettings, session: Option<&str>) -> Self {
        let mut telemetry = Telemetry::default();
        let conn = match Connection::open(&settings.redis_address) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("redis unavailable, serving without caches: {e}");
                telemetry.redis_error();
                None
            }
        };
        Self {
            conn,
            telemetry,
            session: session.map(str::to_string),
            decision: None,
        }
    }

    /// Hands the samples to the recorder (a failure never fails the request)
    /// and sets the common headers.
    pub fn finish(self, result: Result<Response, ApiError>) -> Response {
        let mut response = respond::reply(result);
        if let Some(decision) = &self.decision {
            for (name, value) in decision.headers() {
                response.set_header(name, value);
            }
        }
        let batch = recorder::Batch {
            samples: self
                .telemetry
                .samples
                .into_iter()
                .map(|s| recorder::Sample {
                    name: s.name,
                    labels: s.labels,
                    value: s.value,
                })
                .collect(),
            seen_session: self.session,
        };
        // Without a connection Redis is down, and so is the recorder's storage: skip the second failure.
        if let Some(conn) = &self.conn {
            if let Err(e) = recorder::record_batch(conn, &batch) {
                eprintln!("metrics: recording failed: {e:?}");
            }
        }
        response
    }
}

/// One limiter decision on the request's connection.
fn check(scope: &mut Scope, key: &str) -> Result<ratelimit::Decision, ApiError> {
    let decision = match &scope.conn {
        Some(conn) => limiter::check(conn, key, 1),
        None => limiter::check_standalone(key, 1),
    }
    .map_err(|e| config_failure(format!("rate limiter: {e:?}")))?;
    scope
        .telemetry
        .add(Observation::RateLimiterDecision(match decision.outcome {
            limiter::Outcome::Enforced => LimiterOutcome::Enforced,
            limiter::Outcome::Disabled => LimiterOutcome::Disabled,
            limiter::Outcome::FailedOpen => LimiterOutcome::FailedOpen,
            limiter::Outcome::FailedClosed => LimiterOutcome::FailedClosed,
        }));
    Ok(ratelimit::Decision {
        allowed: decision.allowed,
        limit: decision.limit,
        remaining: decision.remaining,
        reset_at_epoch_seconds: decision.reset_at_epoch_seconds,
        retry_after_seconds: decision.retry_after_seconds,
    })
}

/// The session's bucket, then the user's: the tighter decision is reported.
fn limit(scope: &mut Scope, request: &QueryRequest) -> Result<(), ApiError> {
    let mut decision = check(scope, &format!("session:{}", request.session_id))?;
    if let (true, Some(user)) = (decision.allowed, &request.user_id) {
        decision = decision.tighter(check(scope, &format!("user:{user}"))?);
    }
    scope.decision = Some(decision);
    if decision.allowed {
        return Ok(());
    }
    scope.telemetry.add(Observation::RateLimitHit);
    scope.telemetry.add(Observation::Query(
        Endpoint::Query,
        QueryStatus::RateLimited,
    ));
    if let Some(conn) = &scope.conn {
        pipeline::note_rate_limited(conn, &request.session_id);
    }
    Err(ApiError::new(
        429,
        ErrorCode::RateLimited,
        "Rate limit exceeded. Too many requests.",
    )
    .with_header("retry-after", decision.retry_after()))
}

fn chat_query(req: Request, _: Params) -> Result<Response, ApiError> {
    let content_type = req.header("content-type").and_then(|v| v.as_str());
    let request = query::parse_query(content_type, req.body())?;
    let settings = settings::pipeline().map_err(config_failure)?;
    let mut scope = Scope::open(&settings, Some(&request.session_id));
    let result = answer(&mut scope, &settings, &request);
    Ok(scope.finish(result))
}

fn answer(
    scope: &mut Scope,
    settings: &PipelineSettings,
    request: &QueryRequest,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    limit(scope, request)?;
    if let Some(user) = &request.user_id {
        admit_session(scope, user, &request.session_id).inspect_err(|_| {
            scope.telemetry.add(Observation::Query(
                Endpoint::Query,
                QueryStatus::RateLimited,
            ))
        })?;
    }
    let answer = pipeline::answer(
        scope.conn.as_ref(),
        settings,
        request,
        true,
        &mut scope.telemetry,
    )
    .map_err(|e| {
        eprintln!("query failed: {e}");
        scope.telemetry.add(Observation::Query(
            Endpoint::Query,
            QueryStatus::Unavailable,
        ));
        e.api_error()
    })?;
    scope.telemetry.add(Observation::Query(
        Endpoint::Query,
        query::answered_status(answer.cached),
    ));
    let conversation_id = pipeline::store_history(settings, request, &answer, &mut scope.telemetry);
    scope.telemetry.add(Observation::QueryLatency(
        query::cache_status(answer.cached, scope.conn.is_some()),
        started.elapsed().as_secs_f64(),
    ));
    let body = query::QueryResponse {
        answer: answer.value.answer,
        citations: answer.value.citations,
        session_id: request.session_id.clone(),
        conversation_id,
        cached: answer.cached,
    };
    let mut response = json(200, &body);
    response.set_header("x-cache", if answer.cached { "HIT" } else { "MISS" });
    Ok(response)
}

/// At most `max_sessions_per_user` active sessions per user (seed 003, 1.2).
/// Without Redis the limit cannot be checked, and the request goes through.
fn admit_session(scope: &Scope, user: &str, session: &str) -> Result<(), ApiError> {
    let Some(conn) = &scope.conn else {
        return Ok(());
    };
    let limits = settings::session_limits().map_err(config_failure)?;
    let refusal = chatbot_spin::audit::entry(
        AuditAction::SessionRefused,
        serde_json::json!({"user_id": user, "session_id": session, "max_sessions": limits.max_per_user}),
    );
    let reply = eval(
        conn,
        sessions::ADMIT_SCRIPT,
        &[&keys::user_sessions(user), keys::AUDIT_LOG],
        &[
            binary(session),
            RedisParameter::Int64(limits.max_per_user as i64),
            RedisParameter::Int64(limits.idle_seconds as i64),
            binary(refusal.to_json()),
        ],
    );
    let reply = match reply {
        Ok(results) => integers(&results),
        Err(e) => {
            eprintln!("session limit: Redis failed ({e}); not enforced for this request");
            return Ok(());
        }
    };
    match Admission::from_reply(&reply, limits.idle_seconds, now_epoch_seconds()) {
        Admission::Admitted => Ok(()),
        Admission::Refused {
            active,
            retry_after_seconds,
        } => Err(ApiError::new(
            429,
            ErrorCode::SessionLimit,
            format!(
                "user already has {active} active sessions (the maximum is {}); reuse one or wait for one to expire",
                limits.max_per_user
            ),
        )
        .with_header("retry-after", retry_after_seconds.to_string())),
    }
}

fn history(req: Request, params: Params) -> Result<Response, ApiError> {
    let session_id = params.get("session_id").unwrap_or_default();
    api::validate_id("session_id", session_id)?;
    let page = api::parse_page(req.query())?;
    let address = settings::postgres_address().map_err(config_failure)?;
    let page = chatbot_spin::history::page(&address, session_id, page).map_err(|e| {
        eprintln!("history: {e}");
        ApiError::unavailable("the history store (Postgres) is unavailable")
    })?;
    Ok(json(200, &page))
}
