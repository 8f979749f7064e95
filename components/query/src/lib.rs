//! The query handler. A request opens Redis once and lends that connection
//! to the rate limiter and the metrics recorder it imports (Spin opens a new
//! connection on every open, which would halve throughput).
//!
//! Hit path: limiter (1 Redis round trip), cache `GET` (1), one Postgres
//! statement for the history, recorder (1).

mod documents;
mod respond;

use std::time::Instant;

use chatbot_core::config::names;
use chatbot_core::metrics::names as m;
use chatbot_core::query::{self, Rejection};
use chatbot_spin::caches::Telemetry;
use chatbot_spin::pipeline;
use chatbot_spin::settings::{variable, PipelineSettings};
use respond::{json, reject};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::redis::Connection;

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

#[http_component]
fn handle(req: Request) -> Response {
    let started = Instant::now();
    let path = req.path().trim_end_matches('/').to_string();
    let mut response = match (req.method(), path.as_str()) {
        (Method::Post, "/api/v1/chat/query") => chat_query(&req, started),
        (_, "/api/v1/chat/query") => reject(&Rejection::new(
            405,
            "method_not_allowed",
            "use POST /api/v1/chat/query",
        )),
        (Method::Get, p) if p.starts_with("/api/v1/chat/history/") => {
            history(&req, &p["/api/v1/chat/history/".len()..])
        }
        (_, p) if p.starts_with("/api/v1/chat/history/") => reject(&Rejection::new(
            405,
            "method_not_allowed",
            "use GET /api/v1/chat/history/{session_id}",
        )),
        (Method::Post, "/api/v1/documents") => documents::ingest(&req),
        (_, "/api/v1/documents") => reject(&Rejection::new(
            405,
            "method_not_allowed",
            "use POST /api/v1/documents",
        )),
        _ => reject(&Rejection::new(
            404,
            "not_found",
            format!("no route for {path}"),
        )),
    };
    respond::set_header(
        &mut response,
        "x-response-time",
        &format!("{:.3}ms", started.elapsed().as_secs_f64() * 1000.0),
    );
    response
}

fn config_failure(e: impl std::fmt::Display) -> Response {
    eprintln!("configuration error: {e}");
    reject(&Rejection::new(
        500,
        "configuration_error",
        format!("the service is misconfigured: {e}"),
    ))
}

/// The rate-limit headers for a decision, and whether it denied.
fn limit(
    conn: Option<&Connection>,
    key: &str,
    telemetry: &mut Telemetry,
) -> Result<limiter::Decision, Response> {
    let decision = match conn {
        Some(conn) => limiter::check(conn, key, 1),
        None => limiter::check_standalone(key, 1),
    }
    .map_err(|e| config_failure(format!("rate limiter: {e:?}")))?;
    let outcome = match decision.outcome {
        limiter::Outcome::Enforced => "enforced",
        limiter::Outcome::Disabled => "disabled",
        limiter::Outcome::FailedOpen => "failed_open",
        limiter::Outcome::FailedClosed => "failed_closed",
    };
    telemetry.add(m::RATE_LIMITER_DECISIONS, &[("outcome", outcome)], 1.0);
    Ok(decision)
}

/// Hands the request's samples to the recorder; a failure never fails the request.
pub(crate) fn record(conn: Option<&Connection>, telemetry: Telemetry, session: Option<&str>) {
    let batch = recorder::Batch {
        samples: telemetry
            .samples
            .into_iter()
            .map(|s| recorder::Sample {
                name: s.name,
                labels: s.labels,
                value: s.value,
            })
            .collect(),
        seen_session: session.map(str::to_string),
    };
    // Without a connection Redis is down, and so is the recorder's storage: skip the second failure.
    if let Some(conn) = conn {
        if let Err(e) = recorder::record_batch(conn, &batch) {
            eprintln!("metrics: recording failed: {e:?}");
        }
    }
}

fn chat_query(req: &Request, started: Instant) -> Response {
    let content_type = req.header("content-type").and_then(|v| v.as_str());
    let request = match query::parse_query(content_type, req.body()) {
        Ok(r) => r,
        Err(rejection) => return reject(&rejection),
    };
    let settings = match PipelineSettings::load() {
        Ok(s) => s,
        Err(e) => return config_failure(e),
    };
    let mut telemetry = Telemetry::default();
    let conn = match Connection::open(&settings.redis_address) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("redis unavailable, serving without caches: {e}");
            telemetry.redis_error();
            None
        }
    };

    let mut decision = match limit(
        conn.as_ref(),
        &format!("session:{}", request.session_id),
        &mut telemetry,
    ) {
        Ok(d) => d,
        Err(response) => return response,
    };
    if let (true, Some(user)) = (decision.allowed, &request.user_id) {
        match limit(conn.as_ref(), &format!("user:{user}"), &mut telemetry) {
            // The tighter of the two decisions is the one to report.
            Ok(d) if !d.allowed || d.remaining < decision.remaining => decision = d,
            Ok(_) => {}
            Err(response) => return response,
        }
    }
    if !decision.allowed {
        telemetry.add(m::RATE_LIMIT_HITS, &[], 1.0);
        telemetry.add(
            m::QUERIES,
            &[("endpoint", "query"), ("status", "rate_limited")],
            1.0,
        );
        if let Some(conn) = conn.as_ref() {
            pipeline::note_rate_limited(conn, &request.session_id);
        }
        record(conn.as_ref(), telemetry, Some(&request.session_id));
        let mut response = reject(&Rejection::new(
            429,
            "rate_limited",
            "Rate limit exceeded. Too many requests.",
        ));
        respond::rate_limit_headers(&mut response, &decision);
        respond::set_header(
            &mut response,
            "retry-after",
            &decision.retry_after_seconds.max(1).to_string(),
        );
        return response;
    }

    if let (Some(user), Some(conn)) = (&request.user_id, conn.as_ref()) {
        if let Err(response) = admit_session(conn, user, &request.session_id, &decision) {
            telemetry.add(
                m::QUERIES,
                &[("endpoint", "query"), ("status", "rate_limited")],
                1.0,
            );
            record(Some(conn), telemetry, Some(&request.session_id));
            return response;
        }
    }

    let outcome = pipeline::answer(conn.as_ref(), &settings, &request, true, &mut telemetry);
    let mut response = match outcome {
        Ok(answer) => {
            let cache_status = if answer.cached {
                "hit"
            } else if conn.is_some() {
                "miss"
            } else {
                "bypass"
            };
            telemetry.add(
                m::QUERIES,
                &[
                    ("endpoint", "query"),
                    ("status", if answer.cached { "cached" } else { "success" }),
                ],
                1.0,
            );
            let conversation_id =
                pipeline::store_history(&settings, &request, &answer, &mut telemetry);
            telemetry.add(
                m::QUERY_LATENCY,
                &[("cache_status", cache_status)],
                started.elapsed().as_secs_f64(),
            );
            let body = query::QueryResponse {
                answer: answer.value.answer,
                citations: answer.value.citations,
                session_id: request.session_id.clone(),
                conversation_id,
                cached: answer.cached,
            };
            let mut response = json(200, &body);
            respond::set_header(
                &mut response,
                "x-cache",
                if answer.cached { "HIT" } else { "MISS" },
            );
            response
        }
        Err(e) => {
            telemetry.add(
                m::QUERIES,
                &[("endpoint", "query"), ("status", "unavailable")],
                1.0,
            );
            eprintln!("query failed: {e}");
            let mut response = reject(&Rejection::new(
                e.http_status(),
                "upstream_unavailable",
                e.to_string(),
            ));
            if let Some(seconds) = e.retry_after_seconds() {
                respond::set_header(&mut response, "retry-after", &seconds.to_string());
            }
            response
        }
    };
    respond::rate_limit_headers(&mut response, &decision);
    record(conn.as_ref(), telemetry, Some(&request.session_id));
    response
}

/// At most `max_sessions_per_user` active sessions per user (seed 003, 1.2).
/// Without Redis the limit cannot be checked, and the request goes through.
fn admit_session(
    conn: &Connection,
    user: &str,
    session: &str,
    decision: &limiter::Decision,
) -> Result<(), Response> {
    let number = |name: &str, min: u64, max: u64| {
        variable(name).and_then(|raw| chatbot_core::config::parse_u64(name, &raw, min, max))
    };
    let (max, idle) = match (
        number(names::MAX_SESSIONS_PER_USER, 1, 10_000),
        number(names::SESSION_IDLE_SECONDS, 1, 30 * 86_400),
    ) {
        (Ok(max), Ok(idle)) => (max, idle),
        (Err(e), _) | (_, Err(e)) => return Err(config_failure(e)),
    };
    let audit = serde_json::json!({
        "at": chatbot_spin::now_epoch_seconds(),
        "action": "session_refused",
        "detail": {"user_id": user, "session_id": session, "max_sessions": max},
        "id": chatbot_spin::random_token(),
    })
    .to_string();
    let reply = chatbot_spin::redis_script::eval(
        conn,
        chatbot_core::ops::SESSION_ADMIT_SCRIPT,
        &[
            &chatbot_core::ops::user_sessions_key(user),
            query::keys::AUDIT_LOG,
        ],
        &[
            chatbot_spin::redis_script::binary(session),
            spin_sdk::redis::RedisParameter::Int64(max as i64),
            spin_sdk::redis::RedisParameter::Int64(idle as i64),
            chatbot_spin::redis_script::binary(audit),
        ],
    );
    let values: Vec<i64> = match reply {
        Ok(results) => results
            .iter()
            .filter_map(|r| match r {
                spin_sdk::redis::RedisResult::Int64(v) => Some(*v),
                _ => None,
            })
            .collect(),
        Err(e) => {
            eprintln!("session limit: Redis failed ({e}); not enforced for this request");
            return Ok(());
        }
    };
    match values.as_slice() {
        [0, active, oldest] => {
            let retry = (oldest + idle as i64 - chatbot_spin::now_epoch_seconds() as i64).max(1);
            let mut response = reject(&Rejection::new(
                429,
                "session_limit",
                format!("user already has {active} active sessions (the maximum is {max}); reuse one or wait for one to expire"),
            ));
            respond::rate_limit_headers(&mut response, decision);
            respond::set_header(&mut response, "retry-after", &retry.to_string());
            Err(response)
        }
        _ => Ok(()),
    }
}

fn history(req: &Request, session_id: &str) -> Response {
    if let Err(rejection) = query::validate_id("session_id", session_id) {
        return reject(&rejection);
    }
    let page = match chatbot_core::history::parse_page(req.query()) {
        Ok(p) => p,
        Err(rejection) => return reject(&rejection),
    };
    let address = match variable(names::POSTGRES_ADDRESS) {
        Ok(a) => a,
        Err(e) => return config_failure(e),
    };
    match chatbot_spin::history::page(&address, session_id, page) {
        Ok(page) => json(200, &page),
        Err(e) => {
            eprintln!("history: {e}");
            reject(&Rejection::new(
                503,
                "unavailable",
                "the history store (Postgres) is unavailable",
            ))
        }
    }
}
