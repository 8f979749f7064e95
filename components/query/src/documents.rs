//! `POST /api/v1/documents` (admin; the router checks the token): chunk, embed
//! in batches through the embedding cache, and upsert into Qdrant, replacing a
//! document's old chunks.

use chatbot_core::api::ApiError;
use chatbot_core::audit::AuditAction;
use chatbot_core::ingest::{self, UPSERT_BATCH};
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::{Endpoint, QueryStatus};
use chatbot_core::upstream::UpstreamError;
use chatbot_spin::caches::embed_cached;
use chatbot_spin::qdrant;
use chatbot_spin::respond::json;
use chatbot_spin::routing;
use chatbot_spin::settings::{self, PipelineSettings};
use spin_sdk::http::{Params, Request, Response};

use crate::{config_failure, Scope};

pub fn ingest(req: Request, _: Params) -> Result<Response, ApiError> {
    let mut settings = settings::pipeline().map_err(config_failure)?;
    // A batch, not a question: each call keeps its own timeout, and the
    // question deadline (`request_timeout_ms`) does not cut an ingestion half-way.
    settings.request_timeout = std::time::Duration::MAX;
    let documents = ingest::parse_documents(
        req.header("content-type").and_then(|v| v.as_str()),
        req.body(),
    )?;
    let address = routing::client_address(&req);
    let mut scope = Scope::open(&settings, address);
    let outcome = store(&mut scope, &settings, &documents);
    scope.telemetry.add(Observation::Query(
        Endpoint::Documents,
        if outcome.is_ok() {
            QueryStatus::Success
        } else {
            QueryStatus::Unavailable
        },
    ));
    let result = match outcome {
        Ok(chunks) => {
            if let Some(conn) = &scope.conn {
                let ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
                chatbot_spin::audit::append(
                    conn,
                    AuditAction::DocumentsIngested,
                    &scope.address,
                    serde_json::json!({"documents": ids, "chunks": chunks}),
                );
            }
            Ok(json(
                200,
                &serde_json::json!({
                    "documents": documents.len(),
                    "chunks": chunks,
                    "collection": settings.qdrant_collection,
                }),
            ))
        }
        Err(e) => {
            eprintln!("ingestion failed: {e}");
            Err(e.api_error())
        }
    };
    Ok(scope.finish(result))
}

/// Embeds every chunk, then replaces the documents' points. Returns the chunk count.
fn store(
    scope: &mut Scope,
    settings: &PipelineSettings,
    documents: &[ingest::Document],
) -> Result<usize, UpstreamError> {
    let plan = ingest::plan(documents);
    let texts: Vec<String> = plan.iter().map(|c| c.text.clone()).collect();
    let vectors = embed_cached(scope.conn.as_ref(), settings, &texts, &mut scope.telemetry)?;
    let size = vectors.first().map_or(0, Vec::len);
    qdrant::ensure_collection(settings, size)?;
    for doc in documents {
        qdrant::delete_document(settings, &doc.id)?;
    }
    let points = ingest::points(documents, &plan, vectors);
    for batch in points.chunks(UPSERT_BATCH) {
        qdrant::upsert(settings, batch)?;
    }
    Ok(points.len())
}
