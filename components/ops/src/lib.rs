//! The ops component: `/health` and `/health/services`.
//!
//! A thin adapter: it reads variables, probes the dependencies through Spin's
//! Redis and Postgres APIs and answers with the reports built by the core.

use std::time::Instant;

use chatbot_core::api::ErrorBody;
use chatbot_core::config::{self, names};
use chatbot_core::health::{Liveness, ServiceCheck, ServicesReport};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::{pg4, redis, variables};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[http_component]
fn handle(req: Request) -> Response {
    let path = req.path().trim_end_matches('/');
    match (req.method(), path) {
        (Method::Get, "/health") => json(200, &Liveness::new(VERSION)),
        (Method::Get, "/health/services") => {
            let report = ServicesReport::new(vec![probe_redis(), probe_postgres()]);
            json(report.http_status(), &report)
        }
        (_, "/health" | "/health/services") => error(
            405,
            "method_not_allowed",
            &format!("{} is not allowed on {path}; use GET", req.method()),
        ),
        _ => error(404, "not_found", &format!("no route for {path}")),
    }
}

fn probe_redis() -> ServiceCheck {
    const NAME: &str = "redis";
    let started = Instant::now();
    let outcome = variable(names::REDIS_ADDRESS)
        .and_then(|raw| {
            config::parse_redis_address(names::REDIS_ADDRESS, &raw).map_err(|e| e.to_string())
        })
        .and_then(|address| {
            let conn = redis::Connection::open(&address).map_err(|e| format!("open: {e}"))?;
            conn.execute("PING", &[]).map_err(|e| format!("PING: {e}"))
        });
    finish(NAME, started, outcome.map(drop))
}

fn probe_postgres() -> ServiceCheck {
    const NAME: &str = "postgres";
    let started = Instant::now();
    let outcome = variable(names::POSTGRES_ADDRESS)
        .and_then(|raw| {
            config::parse_postgres_address(names::POSTGRES_ADDRESS, &raw).map_err(|e| e.to_string())
        })
        .and_then(|address| {
            let conn = pg4::Connection::open(&address).map_err(|e| format!("open: {e}"))?;
            conn.query("SELECT 1", &[])
                .map_err(|e| format!("SELECT 1: {e}"))
        });
    finish(NAME, started, outcome.map(drop))
}

fn finish(name: &str, started: Instant, outcome: Result<(), String>) -> ServiceCheck {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(()) => ServiceCheck::up(name, latency_ms),
        Err(e) => ServiceCheck::down(name, latency_ms, config::redact_userinfo(&e)),
    }
}

fn variable(name: &str) -> Result<String, String> {
    variables::get(name).map_err(|e| format!("variable `{name}`: {e}"))
}

fn json(status: u16, body: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("reports always serialise"))
        .build()
}

fn error(status: u16, code: &str, detail: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(ErrorBody::new(code, detail).to_json())
        .build()
}

// `IntoResponse` is what `#[http_component]` needs the return type to implement.
const _: fn() = || {
    fn assert_into_response<T: IntoResponse>() {}
    assert_into_response::<Response>();
};
