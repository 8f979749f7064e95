//! The metrics component: records a request's samples in Redis in one round
//! trip (`chatbot:metrics/recorder`, on the connection its instance keeps), and serves
//! `GET /metrics` in the Prometheus text format from what Redis holds.

use std::io::Write;

use chatbot_core::http::api::ApiError;
use chatbot_core::http::routes;
use chatbot_core::telemetry::metrics::{self, Sample};
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::metrics_store::{self, RecordError};
use chatbot_spin::respond::{Outgoing, Response, SetHeader};
use chatbot_spin::routing::{self, Handler, Params};
use chatbot_spin::settings::open_redis;
use spin_sdk::http_service;

spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../wit/metrics.wit"],
    world: "chatbot:metrics/metrics",
});

use exports::chatbot::metrics::recorder::{Batch, Error, Guest};

struct Recorder;

async fn record(batch: Batch) -> Result<(), Error> {
    let conn = open_redis()
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
    let samples: Vec<Sample> = batch
        .samples
        .into_iter()
        .map(|s| Sample {
            name: s.name,
            labels: s.labels,
            value: s.value,
        })
        .collect();
    metrics_store::record(&conn, &samples, batch.seen_session.as_deref())
        .await
        .map_err(|e| match e {
            RecordError::Invalid(e) => Error::InvalidSample(e.to_string()),
            RecordError::Storage(e) => Error::Storage(e.to_string()),
        })
}

impl Guest for Recorder {
    async fn record_batch(batch: Batch, timeout_ms: u32) -> Result<(), Error> {
        chatbot_spin::context::serve_caller("metrics", timeout_ms, record(batch)).await
    }
}

export!(Recorder);

fn accepts_gzip(req: &Request) -> bool {
    req.header("accept-encoding").is_some_and(|v| {
        v.split(',').any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
    })
}

fn handler(route: &routes::Route) -> Handler {
    match *route {
        routes::METRICS => |req, params| Box::pin(scrape(req, params)),
        other => unreachable!("{other:?} is not a metrics route"),
    }
}

#[http_service]
async fn handle(incoming: spin_sdk::http::Request) -> Outgoing {
    chatbot_spin::respond::entry("metrics", incoming, |incoming, out| {
        routing::handle(routes::METRICS_ROUTES, handler, incoming, out)
    })
    .await
}

/// `GET /metrics`: everything Redis holds, read on a connection of its own.
async fn scrape(req: Request, _: Params) -> Result<Response, ApiError> {
    let snapshot = match open_redis().await {
        Ok(conn) => chatbot_spin::metrics_store::snapshot(&conn).await,
        Err(e) => Err(e),
    };
    let snapshot = snapshot
        // Better no answer than a partial one: a scrape that fails is visible as `up == 0`.
        .map_err(|e| {
            ApiError::unavailable("metrics storage (Redis) is unavailable").caused_by(
                "scrape_failed",
                chatbot_spin::log::Dependency::Redis,
                e,
            )
        })?;
    let text = metrics::render(&snapshot);
    let builder_base = |body: Vec<u8>, gzip: bool| {
        let mut response = Response::new(body);
        response.set_header("content-type", metrics::CONTENT_TYPE);
        response.set_header("vary", "accept-encoding");
        if gzip {
            response.set_header("content-encoding", "gzip");
        }
        response
    };
    if accepts_gzip(&req) {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if encoder.write_all(text.as_bytes()).is_ok() {
            if let Ok(body) = encoder.finish() {
                return Ok(builder_base(body, true));
            }
        }
    }
    Ok(builder_base(text.into_bytes(), false))
}
