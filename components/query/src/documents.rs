//! `POST /api/v1/documents` (admin): chunk, embed in batches through the
//! embedding cache, and upsert into Qdrant, replacing a document's old chunks.

use chatbot_core::auth;
use chatbot_core::config::names;
use chatbot_core::ingest::{self, CHUNK_CHARS, CHUNK_OVERLAP_CHARS};
use chatbot_core::query::Rejection;
use chatbot_core::upstream::Point;
use chatbot_spin::caches::{embed_cached, Telemetry};
use chatbot_spin::settings::{variable, PipelineSettings};
use spin_sdk::http::{Request, Response};
use spin_sdk::redis::Connection;

use crate::respond::{json, reject};

/// Upserts go to Qdrant in requests of this many points.
const UPSERT_BATCH: usize = 256;

pub fn ingest(req: &Request) -> Response {
    let settings = match PipelineSettings::load() {
        Ok(s) => s,
        Err(e) => return crate::config_failure(e),
    };
    let token = variable(names::ADMIN_TOKEN).unwrap_or_default();
    let authorization = req.header("authorization").and_then(|v| v.as_str());
    let conn = Connection::open(&settings.redis_address).ok();
    if !auth::bearer_matches(authorization, &token) {
        if let Some(conn) = &conn {
            let _ = chatbot_spin::audit(
                conn,
                "unauthorized",
                serde_json::json!({"path": req.path()}),
            );
        }
        let mut response = reject(&Rejection::new(
            401,
            "unauthorized",
            "a valid admin bearer token is required",
        ));
        response.set_header("www-authenticate", "Bearer");
        return response;
    }
    let documents = match ingest::parse_documents(
        req.header("content-type").and_then(|v| v.as_str()),
        req.body(),
    ) {
        Ok(d) => d,
        Err(rejection) => return reject(&rejection),
    };

    let mut texts = Vec::new();
    let mut owners = Vec::new();
    for (d, doc) in documents.iter().enumerate() {
        for (i, chunk) in ingest::chunk(&doc.text, CHUNK_CHARS, CHUNK_OVERLAP_CHARS)
            .into_iter()
            .enumerate()
        {
            owners.push((d, i));
            texts.push(chunk);
        }
    }
    let mut telemetry = Telemetry::default();
    let outcome = (|| {
        // (A closure so `?` collects every upstream failure in one place.)
        let vectors = embed_cached(conn.as_ref(), &settings, &texts, &mut telemetry)?;
        let size = vectors.first().map_or(0, Vec::len);
        chatbot_spin::qdrant::ensure_collection(&settings, size)?;
        for doc in &documents {
            chatbot_spin::qdrant::delete_document(&settings, &doc.id)?;
        }
        let points: Vec<Point> = owners
            .iter()
            .zip(vectors)
            .zip(&texts)
            .map(|((&(d, i), vector), text)| Point {
                id: ingest::point_id(&documents[d].id, i),
                vector,
                payload: ingest::payload(&documents[d], i, text),
            })
            .collect();
        for batch in points.chunks(UPSERT_BATCH) {
            chatbot_spin::qdrant::upsert(&settings, batch)?;
        }
        Ok::<usize, chatbot_core::upstream::UpstreamError>(points.len())
    })();
    let status = if outcome.is_ok() {
        "success"
    } else {
        "unavailable"
    };
    telemetry.add(
        chatbot_core::metrics::names::QUERIES,
        &[("endpoint", "documents"), ("status", status)],
        1.0,
    );
    crate::record(conn.as_ref(), telemetry, None);
    match outcome {
        Ok(chunks) => {
            if let Some(conn) = &conn {
                let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
                let _ = chatbot_spin::audit(
                    conn,
                    "documents_ingested",
                    serde_json::json!({"documents": ids, "chunks": chunks}),
                );
            }
            json(
                200,
                &serde_json::json!({
                    "documents": documents.len(),
                    "chunks": chunks,
                    "collection": settings.qdrant_collection,
                }),
            )
        }
        Err(e) => {
            eprintln!("ingestion failed: {e}");
            let mut response = reject(&Rejection::new(
                e.http_status(),
                "upstream_unavailable",
                e.to_string(),
            ));
            if let Some(s) = e.retry_after_seconds() {
                response.set_header("retry-after", s.to_string());
            }
            response
        }
    }
}
