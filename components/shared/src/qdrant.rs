//! The Qdrant REST client: search, and what ingestion needs.

use std::time::{Duration, Instant};

use chatbot_core::query::Passage;
use chatbot_core::upstream::{self, Point, UpstreamError};

use crate::openai::qdrant_send;
use crate::settings::PipelineSettings;

fn collection_path(settings: &PipelineSettings, rest: &str) -> String {
    format!("/collections/{}{rest}", settings.qdrant_collection)
}

/// The `top_k` nearest passages, and the search's latency.
pub fn search(
    settings: &PipelineSettings,
    vector: &[f32],
) -> Result<(Vec<Passage>, Duration), UpstreamError> {
    let started = Instant::now();
    // A 404 (no such collection: a typo, nothing ingested yet, a proxy's page)
    // is an error, never "no passages": only an empty collection that exists
    // answers without passages, and only such an answer is cached.
    let (_, body) = qdrant_send(
        settings,
        "POST",
        &collection_path(settings, "/points/search"),
        Some(&upstream::search_request(vector, settings.top_k)),
    )?;
    Ok((upstream::parse_search(&body)?, started.elapsed()))
}

/// Creates the collection for vectors of `size` if it does not exist; fails
/// if it exists with another size (the embedding model changed).
pub fn ensure_collection(settings: &PipelineSettings, size: usize) -> Result<(), UpstreamError> {
    match qdrant_send(settings, "GET", &collection_path(settings, ""), None) {
        Ok((_, body)) => match upstream::parse_collection_size(&body) {
            Some(existing) if existing as usize != size => Err(UpstreamError::BadResponse {
                service: upstream::QDRANT,
                message: format!(
                    "collection `{}` holds {existing}-d vectors but the embedding model gives {size}",
                    settings.qdrant_collection
                ),
            }),
            _ => Ok(()),
        },
        Err(UpstreamError::Status { status: 404, .. }) => {
            match qdrant_send(
                settings,
                "PUT",
                &collection_path(settings, ""),
                Some(&upstream::create_collection_request(size)),
            ) {
                // Created meanwhile by a concurrent ingestion: fine.
                Ok(_) | Err(UpstreamError::Status { status: 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Deletes a document's chunks from `first_stale` on (those the new text no
/// longer has) and waits until it is applied.
pub fn delete_stale_chunks(
    settings: &PipelineSettings,
    document_id: &str,
    first_stale: usize,
) -> Result<(), UpstreamError> {
    qdrant_send(
        settings,
        "POST",
        &collection_path(settings, "/points/delete?wait=true"),
        Some(&upstream::delete_stale_chunks_request(
            document_id,
            first_stale,
        )),
    )
    .map(drop)
}

/// Upserts points and waits until they are searchable.
pub fn upsert(settings: &PipelineSettings, points: &[Point]) -> Result<(), UpstreamError> {
    qdrant_send(
        settings,
        "PUT",
        &collection_path(settings, "/points?wait=true"),
        Some(&upstream::upsert_request(points)),
    )
    .map(drop)
}
