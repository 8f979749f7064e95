//! Health: liveness, readiness (this replica's own), and the admin's
//! report of every dependency, kept a few seconds.

use std::time::{Duration, Instant};

use chatbot_core::chat::upstream;
use chatbot_core::config::redact_userinfo;
use chatbot_core::config::settings::health_check_timeout;
use chatbot_core::http::api::ApiError;
use chatbot_core::redis::keys;
use chatbot_core::redis::script::{all_bytes, Arg};
use chatbot_core::telemetry::health;
use chatbot_core::telemetry::health::{Liveness, ServiceCheck, ServiceStatus, ServicesReport};
use chatbot_spin::incoming::Request;
use chatbot_spin::openai::{header_refs, openai_headers, qdrant_headers};
use chatbot_spin::redis_script::execute;
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::Params;
use chatbot_spin::settings::{self, PipelineSettings};
use chatbot_spin::{http, within};
use serde_json::json;

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn liveness(_: Request, _: Params) -> Result<Response, ApiError> {
    Ok(json(200, &Liveness::new(VERSION)))
}

fn finish(name: &str, started: Instant, outcome: Result<(), String>) -> ServiceCheck {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(()) => ServiceCheck::up(name, latency_ms),
        Err(e) => ServiceCheck::down(name, latency_ms, redact_userinfo(&e)),
    }
}

/// `work` within the health-check timeout, its failure worded for the report.
async fn probed(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    within(timeout, work)
        .await
        .unwrap_or_else(|| Err(format!("no answer within {} ms", timeout.as_millis())))
}

/// `PING` on the instance's Redis connection.
async fn probe_redis(timeout: Duration) -> ServiceCheck {
    let started = Instant::now();
    let outcome = probed(timeout, async {
        let conn = settings::open_redis()
            .await
            .map_err(|e| format!("open: {e}"))?;
        execute(&conn, "PING", vec![])
            .await
            .map(drop)
            .map_err(|e| format!("PING: {e}"))
    })
    .await;
    finish("redis", started, outcome)
}

async fn probe_postgres(timeout: Duration) -> ServiceCheck {
    let started = Instant::now();
    let outcome = probed(timeout, async {
        let address = settings::postgres_address()
            .await
            .map_err(|e| e.to_string())?;
        let conn = chatbot_spin::pg::open(&address)
            .await
            .map_err(|e| format!("open: {e}"))?;
        chatbot_spin::pg::query_one_row(&conn, chatbot_core::storage::sql::PING, vec![])
            .await
            .map(drop)
            .map_err(|e| format!("SELECT 1: {e}"))
    })
    .await;
    finish("postgres", started, outcome)
}

/// A URL to `GET` with its headers, or why it cannot be probed.
type ProbeTarget = Result<(String, Vec<(&'static str, String)>), String>;

/// A `GET` within the health-check timeout, its failure worded for the report.
async fn get(
    url: &str,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<http::HttpResponse, String> {
    http::request("GET", url, &header_refs(headers), None, timeout)
        .await
        .map_err(|e| match e {
            http::HttpError::Timeout => format!("no answer within {} ms", timeout.as_millis()),
            http::HttpError::Failed(e) => e,
        })
}

fn is_success(response: &http::HttpResponse) -> bool {
    (200..300).contains(&response.status)
}

/// A `GET` of the target that must answer 2xx within the health-check timeout.
async fn probe_http(name: &str, target: ProbeTarget, timeout: Duration) -> ServiceCheck {
    let started = Instant::now();
    let outcome = match target {
        Ok((url, headers)) => match get(&url, &headers, timeout).await {
            Ok(r) if is_success(&r) => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    finish(name, started, outcome)
}

/// `GET /collections/{name}`: Qdrant is reachable, the key is accepted, and
/// the configured collection exists (a missing one is Qdrant up, with a warning).
async fn probe_qdrant(
    pipeline: &Result<std::rc::Rc<PipelineSettings>, String>,
    timeout: Duration,
) -> ServiceCheck {
    let started = Instant::now();
    let p = match pipeline {
        Ok(p) => p,
        Err(e) => return finish("qdrant", started, Err(e.clone())),
    };
    let url = format!("{}/collections/{}", p.qdrant_url, p.qdrant_collection);
    let exists = get(&url, &qdrant_headers(p), timeout).await.and_then(|r| {
        if is_success(&r) {
            Ok(true)
        } else if upstream::is_missing_collection(&upstream::status_error(
            upstream::QDRANT,
            r.status,
            None,
            &r.body,
        )) {
            Ok(false)
        } else {
            Err(format!("answered {}", r.status))
        }
    });
    match exists {
        Ok(exists) => {
            finish("qdrant", started, Ok(())).with_collection(&p.qdrant_collection, exists)
        }
        Err(e) => finish("qdrant", started, Err(e)),
    }
}

async fn all_checks() -> ServicesReport {
    let timeout = check_timeout().await;
    let pipeline = settings::pipeline().await.map_err(|e| e.to_string());
    // OpenAI's `GET /models`: reachable, and the key is accepted.
    let openai = match &pipeline {
        Ok(p) => Ok((format!("{}/models", p.openai_base_url), openai_headers(p))),
        Err(e) => Err(e.clone()),
    };
    // All at once: the report takes as long as the slowest check, not their sum.
    let (redis, postgres, qdrant, openai) = futures::join!(
        probe_redis(timeout),
        probe_postgres(timeout),
        probe_qdrant(&pipeline, timeout),
        probe_http("openai", openai, timeout),
    );
    ServicesReport::new(vec![redis, postgres, qdrant, openai])
}

async fn check_timeout() -> Duration {
    match settings::variables().await {
        Ok(variables) => health_check_timeout(&|name: &str| variables.lookup(name)),
        Err(_) => health_check_timeout(&|_: &str| None),
    }
}

/// The report as served: the checks, their warnings, and when they ran.
fn report_body(report: &ServicesReport) -> serde_json::Value {
    let mut body = serde_json::to_value(report).expect("reports serialise");
    let warnings = report.warnings();
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    body["checked_at"] = json!(chatbot_spin::now_epoch_seconds());
    body
}

/// Every dependency's status and latency (admin: it calls OpenAI with the
/// organisation's key); informational, so always 200. A report is kept in
/// Redis for `health::REPORT_SECONDS`: within that, it is served again
/// (`"cached": true`) and no dependency is called.
pub async fn services(_: Request, _: Params) -> Result<Response, ApiError> {
    let conn = settings::open_redis().await.ok();
    let kept = match &conn {
        Some(conn) => execute(conn, "GET", vec![Arg::bytes(keys::HEALTH_REPORT)])
            .await
            .ok()
            .and_then(|reply| {
                serde_json::from_slice::<serde_json::Value>(all_bytes(reply).first()?).ok()
            }),
        None => None,
    };
    if let Some(mut body) = kept {
        body["cached"] = json!(true);
        return Ok(json(200, &body));
    }
    let mut body = report_body(&all_checks().await);
    if let Some(conn) = &conn {
        let stored = execute(
            conn,
            "SET",
            vec![
                Arg::bytes(keys::HEALTH_REPORT),
                Arg::bytes(body.to_string()),
                Arg::bytes("EX"),
                Arg::Int(health::REPORT_SECONDS as i64),
            ],
        )
        .await;
        if let Err(e) = stored {
            chatbot_spin::log::warn(
                "health_report_not_kept",
                chatbot_spin::log::Dependency::Redis,
                &e,
            );
        }
    }
    body["cached"] = json!(false);
    Ok(json(200, &body))
}

/// Whether this replica should get traffic: its configuration parses and
/// its Redis (limits, caches, metrics) answers. 503 naming what fails
/// otherwise. Postgres, Qdrant and OpenAI are shared by every replica: their
/// outage is not this replica's, taking every replica out would stop even
/// cached answers, so they are reported by `/health/services` (and alerted
/// on), never here; and a public probe calls none of them.
pub async fn readiness(_: Request, _: Params) -> Result<Response, ApiError> {
    let configuration = settings::pipeline().await.map(drop);
    let redis = probe_redis(check_timeout().await).await;
    let mut down = Vec::new();
    if configuration.is_err() {
        down.push("configuration");
    }
    if redis.status == ServiceStatus::Down {
        down.push("redis");
    }
    let services = [redis];
    Ok(if down.is_empty() {
        json(
            200,
            &json!({"status": "ready", "configuration": "valid", "services": services}),
        )
    } else {
        let configuration = match &configuration {
            Ok(()) => "valid".to_string(),
            Err(e) => e.to_string(),
        };
        json(
            503,
            &json!({
                "status": "not_ready",
                "detail": format!("not ready: {} down", down.join(", ")),
                "down": down,
                "configuration": configuration,
                "services": services,
            }),
        )
    })
}
