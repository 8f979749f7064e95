//! The metrics component: records a request's samples in Redis in one round
//! trip (`chatbot:metrics/recorder`, on the caller's connection), and serves
//! `GET /metrics` in the Prometheus text format from what Redis holds.

use std::io::Write;

use chatbot_core::api::ApiError;
use chatbot_core::metrics::{self, Sample};
use chatbot_core::routes;
use chatbot_spin::metrics_store::{self, RecordError};
use chatbot_spin::routing::{self, Handler};
use chatbot_spin::settings::open_redis;
use spin_sdk::http::{IncomingRequest, Params, Request, Response, ResponseOutparam};
use spin_sdk::http_component;
use spin_sdk::redis::Connection;

wit_bindgen::generate!({
    path: ["../../wit/deps/spin-sdk", "../../wit/metrics.wit"],
    world: "chatbot:metrics/metrics",
    with: {
        "fermyon:spin/redis@2.0.0": spin_sdk::wit::v2::redis,
    },
});

use exports::chatbot::metrics::recorder::{Batch, Error, Guest};

struct Recorder;

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
    metrics_store::record(conn, &samples, batch.seen_session.as_deref()).map_err(|e| match e {
        RecordError::Invalid(e) => Error::InvalidSample(e.to_string()),
        RecordError::Storage(e) => Error::Storage(e.to_string()),
    })
}

impl Guest for Recorder {
    fn record_batch(conn: &Connection, batch: Batch) -> Result<(), Error> {
        record(conn, batch)
    }

    fn record_batch_standalone(batch: Batch) -> Result<(), Error> {
        let conn = open_redis().map_err(|e| Error::Storage(e.to_string()))?;
        record(&conn, batch)
    }
}

export!(Recorder);

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

fn handler(route: &routes::Route) -> Handler {
    match *route {
        routes::METRICS => scrape,
        other => unreachable!("{other:?} is not a metrics route"),
    }
}

#[http_component]
fn handle(incoming: IncomingRequest, out: ResponseOutparam) {
    chatbot_spin::log::set_component("metrics");
    routing::handle(routes::METRICS_ROUTES, handler, incoming, out)
}

/// `GET /metrics`: everything Redis holds, read on a connection of its own.
fn scrape(req: Request, _: Params) -> Result<Response, ApiError> {
    let snapshot = open_redis()
        .and_then(|conn| chatbot_spin::metrics_store::snapshot(&conn))
        // Better no answer than a partial one: a scrape that fails is visible as `up == 0`.
        .map_err(|e| {
            chatbot_spin::log::error("scrape_failed", chatbot_spin::log::Dependency::Redis, &e);
            ApiError::unavailable("metrics storage (Redis) is unavailable")
        })?;
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
                return Ok(builder_base(body, true));
            }
        }
    }
    Ok(builder_base(text.into_bytes(), false))
}
