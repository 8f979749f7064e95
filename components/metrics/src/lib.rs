//! The metrics component: records a request's samples in Redis in one round
//! trip (`chatbot:metrics/recorder`, on the caller's connection), and serves
//! `GET /metrics` in the Prometheus text format from what Redis holds.

use std::io::Write;

use chatbot_core::api::ErrorBody;
use chatbot_core::config::names as vars;
use chatbot_core::metrics::{self, keys, Sample, Snapshot};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use spin_sdk::variables;

wit_bindgen::generate!({
    path: ["../../wit/deps/spin-sdk", "../../wit/metrics.wit"],
    world: "chatbot:metrics/metrics",
    with: {
        "fermyon:spin/redis@2.0.0": spin_sdk::wit::v2::redis,
    },
});

use exports::chatbot::metrics::recorder::{Batch, Error, Guest};

struct Recorder;

fn binary(s: &str) -> RedisParameter {
    RedisParameter::Binary(s.as_bytes().to_vec())
}

/// `EVALSHA`, or `EVAL` when the server has lost the script.
fn eval(
    conn: &Connection,
    script: &str,
    keys: &[&str],
    args: &[String],
) -> Result<Vec<RedisResult>, String> {
    let params = |first: &str| {
        let mut p = vec![binary(first), RedisParameter::Int64(keys.len() as i64)];
        p.extend(keys.iter().map(|k| binary(k)));
        p.extend(args.iter().map(|a| binary(a)));
        p
    };
    match conn.execute("EVALSHA", &params(&metrics::script_sha(script))) {
        Err(e) if e.to_string().to_ascii_lowercase().contains("noscript") => {
            conn.execute("EVAL", &params(script))
        }
        other => other,
    }
    .map_err(|e| e.to_string())
}

fn record(conn: &Connection, batch: Batch) -> Result<(), Error> {
    let samples: Vec<Sample> = batch
        .samples
        .into_iter()
        .map(|s| Sample {
            name: s.name,
            labels: s.labels,
            value: s.value,
        })
        .collect();
    let args = metrics::record_arguments(&samples, batch.seen_session.as_deref())
        .map_err(|e| Error::InvalidSample(e.to_string()))?;
    if samples.is_empty() && batch.seen_session.is_none() {
        return Ok(());
    }
    eval(conn, metrics::RECORD_SCRIPT, &keys::ALL, &args)
        .map(drop)
        .map_err(Error::Storage)
}

fn open_own() -> Result<Connection, String> {
    let address = variables::get(vars::REDIS_ADDRESS)
        .map_err(|e| format!("variable `{}`: {e}", vars::REDIS_ADDRESS))?;
    Connection::open(&address).map_err(|e| format!("redis: {e}"))
}

impl Guest for Recorder {
    fn record_batch(conn: &Connection, batch: Batch) -> Result<(), Error> {
        record(conn, batch)
    }

    fn record_batch_standalone(batch: Batch) -> Result<(), Error> {
        let conn = open_own().map_err(Error::Storage)?;
        record(&conn, batch)
    }
}

export!(Recorder);

fn binaries(results: Vec<RedisResult>) -> Vec<Vec<u8>> {
    results
        .into_iter()
        .map(|r| match r {
            RedisResult::Binary(b) => b,
            RedisResult::Status(s) => s.into_bytes(),
            RedisResult::Int64(i) => i.to_string().into_bytes(),
            RedisResult::Nil => Vec::new(),
        })
        .collect()
}

/// Reads everything in four round trips: three hashes and the active-session count.
fn snapshot() -> Result<Snapshot, String> {
    let conn = open_own()?;
    let hash = |key: &str| -> Result<_, String> {
        let flat = conn
            .execute("HGETALL", &[binary(key)])
            .map_err(|e| format!("HGETALL: {e}"))?;
        Ok(Snapshot::hash_from_pairs(&binaries(flat)))
    };
    let counters = hash(keys::COUNTERS)?;
    let histograms = hash(keys::HISTOGRAMS)?;
    let gauges = hash(keys::GAUGES)?;
    let active = eval(
        &conn,
        metrics::ACTIVE_SESSIONS_SCRIPT,
        &[keys::SESSIONS],
        &[metrics::ACTIVE_SESSION_WINDOW_SECONDS.to_string()],
    )?;
    let active_sessions = match active.first() {
        Some(RedisResult::Int64(n)) => *n as u64,
        other => return Err(format!("unexpected active-session reply {other:?}")),
    };
    Ok(Snapshot {
        counters,
        histograms,
        gauges,
        active_sessions,
    })
}

fn accepts_gzip(req: &Request) -> bool {
    req.header("accept-encoding")
        .and_then(|v| v.as_str())
        .is_some_and(|v| {
            v.split(',').any(|enc| {
                let mut parts = enc.split(';');
                let name = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
                name.eq_ignore_ascii_case("gzip") && !refused
            })
        })
}

fn error(status: u16, code: &str, detail: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(ErrorBody::new(code, detail).to_json())
        .build()
}

#[http_component]
fn handle(req: Request) -> Response {
    if req.path().trim_end_matches('/') != "/metrics" {
        return error(404, "not_found", &format!("no route for {}", req.path()));
    }
    if *req.method() != Method::Get {
        return error(405, "method_not_allowed", "use GET /metrics");
    }
    let snapshot = match snapshot() {
        Ok(s) => s,
        // Better no answer than a partial one: a scrape that fails is visible as `up == 0`.
        Err(e) => {
            eprintln!("metrics: scrape failed: {e}");
            return error(503, "unavailable", "metrics storage (Redis) is unavailable");
        }
    };
    let text = metrics::render(&snapshot);
    let builder_base = |body: Vec<u8>, gzip: bool| {
        let mut b = Response::builder();
        b.status(200)
            .header("content-type", metrics::CONTENT_TYPE)
            .header("vary", "accept-encoding");
        if gzip {
            b.header("content-encoding", "gzip");
        }
        b.body(body).build()
    };
    if accepts_gzip(&req) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(text.as_bytes()).is_ok() {
            if let Ok(body) = encoder.finish() {
                return builder_base(body, true);
            }
        }
    }
    builder_base(text.into_bytes(), false)
}
