//! `POST /api/v1/documents` (admin; the router checks the token): chunk, embed
//! in batches through the embedding cache, and upsert into Qdrant, replacing a
//! document's old chunks.

use chatbot_core::chat::ingest::{self, UPSERT_BATCH};
use chatbot_core::chat::upstream::UpstreamError;
use chatbot_core::http::api::ApiError;
use chatbot_core::redis::keys;
use chatbot_core::redis::script::Arg;
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{Cached, Endpoint, QueryStatus};
use chatbot_spin::caches::embed_cached;
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::qdrant;
use chatbot_spin::redis_script::execute;
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::{self, Params};
use chatbot_spin::settings::{self, PipelineSettings};

use crate::scope::{count_alone, Scope};

/// `POST /api/v1/documents`, counted (an ingestion that reached Qdrant is
/// counted with the request's other samples; a refusal before, alone).
pub async fn ingest(req: Request, params: Params) -> Result<Response, ApiError> {
    let result = ingest_documents(req, params).await;
    // After its parse, ingestion answers through its scope, which counts it.
    if result.is_err() {
        count_alone(Endpoint::Documents, &result, Vec::new()).await;
    }
    result
}

async fn ingest_documents(req: Request, _: Params) -> Result<Response, ApiError> {
    let settings = settings::pipeline().await?;
    // A batch, not a question: each call keeps its own timeout, and the
    // question deadline (`request_timeout_ms`) does not cut an ingestion half-way.
    chatbot_spin::context::set_request_timeout(std::time::Duration::MAX);
    let documents = ingest::parse_documents(req.header("content-type"), req.body())?;
    let address = routing::client_address(&req).await;
    let mut scope = Scope::open(&settings, address).await;
    let outcome = store(&mut scope, &settings, &documents).await;
    // Whatever was written (all of it, or the upserts before a failure), the
    // collection's cached answers may now be wrong: they are not served again.
    new_generation(&mut scope, &settings).await;
    scope.telemetry.add(Observation::Query(
        Endpoint::Documents,
        if outcome.is_ok() {
            QueryStatus::Success
        } else {
            QueryStatus::Unavailable
        },
        Cached::No,
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
                )
                .await;
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
            let dependency = chatbot_spin::log::Dependency::of_service(e.service());
            Err(e.api_error().caused_by("ingestion_failed", dependency, &e))
        }
    };
    Ok(scope.finish(result).await)
}

/// Bumps the collection's answer generation (see `cache::answers::Lookup`).
async fn new_generation(scope: &mut Scope, settings: &PipelineSettings) {
    let Some(conn) = &scope.conn else {
        chatbot_spin::log::warn(
            "answers_not_invalidated",
            chatbot_spin::log::Dependency::Redis,
            "Redis is unavailable; cached answers are served until they expire",
        );
        return;
    };
    let key = keys::generation(&settings.qdrant_collection);
    if let Err(e) = execute(conn, "INCR", vec![Arg::bytes(key)]).await {
        chatbot_spin::log::warn(
            "answers_not_invalidated",
            chatbot_spin::log::Dependency::Redis,
            &e,
        );
        scope.telemetry.redis_error();
    }
}

/// Embeds every chunk, upserts the documents' points (a chunk's id is fixed by
/// its document and place, so the new text overwrites the old), then deletes
/// the chunks past each document's new end. Returns the chunk count.
async fn store(
    scope: &mut Scope,
    settings: &PipelineSettings,
    documents: &[ingest::Document],
) -> Result<usize, UpstreamError> {
    let plan = ingest::plan(documents);
    let texts: Vec<String> = plan.iter().map(|c| c.text.clone()).collect();
    let vectors = embed_cached(scope.conn.as_ref(), settings, &texts, &mut scope.telemetry).await?;
    let size = vectors.first().map_or(0, Vec::len);
    qdrant::ensure_collection(settings, &settings.qdrant_collection, size).await?;
    let points = ingest::points(documents, &plan, vectors);
    for batch in points.chunks(UPSERT_BATCH) {
        qdrant::upsert(settings, &settings.qdrant_collection, batch).await?;
    }
    for (index, doc) in documents.iter().enumerate() {
        let chunks = plan.iter().filter(|c| c.document == index).count();
        qdrant::delete_stale_chunks(settings, &doc.id, chunks).await?;
    }
    Ok(points.len())
}
