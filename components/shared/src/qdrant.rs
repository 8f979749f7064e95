//! The Qdrant REST client: search, and what ingestion needs.

use std::time::{Duration, Instant};

use chatbot_core::chat::query::Passage;
use chatbot_core::chat::upstream::{self, Point, UpstreamError};

use crate::openai::qdrant_send;
use crate::settings::PipelineSettings;

fn collection_path(settings: &PipelineSettings, rest: &str) -> String {
    path_of(&settings.qdrant_collection, rest)
}

pub(crate) fn path_of(collection: &str, rest: &str) -> String {
    format!("/collections/{collection}{rest}")
}

/// What a search found.
pub struct Searched {
    /// The `top_k` nearest passages (none when the collection is missing).
    pub passages: Vec<Passage>,
    pub latency: Duration,
    /// The collection does not exist: nothing has been ingested yet (a fresh
    /// deployment), or `qdrant_collection` names another collection.
    pub collection_missing: bool,
}

/// The `top_k` nearest passages, and the search's latency. A collection that
/// does not exist (Qdrant's own 404 for it) holds no passages: the question is
/// answered without them, as from an empty collection, and the first
/// ingestion creates it (and bumps the generation, so that answer is not
/// served again). It is logged here, once per search, and counted by the
/// caller. Any other failure, a proxy's 404 included, is an error.
pub async fn search(
    settings: &PipelineSettings,
    vector: &[f32],
) -> Result<Searched, UpstreamError> {
    let started = Instant::now();
    let sent = qdrant_send(
        settings,
        "POST",
        &collection_path(settings, "/points/search"),
        Some(&upstream::search_request(vector, settings.top_k)),
    )
    .await;
    let (passages, collection_missing) = match sent {
        Ok((_, body)) => (upstream::parse_search(&body)?, false),
        Err(e) if upstream::is_missing_collection(&e) => {
            crate::log::warn(
                "qdrant_collection_missing",
                crate::log::Dependency::Qdrant,
                format!(
                    "collection `{}` does not exist: answering without passages \
                     (nothing ingested yet, or qdrant_collection names another collection)",
                    settings.qdrant_collection
                ),
            );
            (Vec::new(), true)
        }
        Err(e) => return Err(e),
    };
    Ok(Searched {
        passages,
        latency: started.elapsed(),
        collection_missing,
    })
}

/// Creates `collection` for vectors of `size` if it does not exist; fails
/// if it exists with another size (the embedding model changed).
pub async fn ensure_collection(
    settings: &PipelineSettings,
    collection: &str,
    size: usize,
) -> Result<(), UpstreamError> {
    match qdrant_send(settings, "GET", &path_of(collection, ""), None).await {
        Ok((_, body)) => match upstream::parse_collection_size(&body) {
            Some(existing) if existing as usize != size => Err(UpstreamError::BadResponse {
                service: upstream::QDRANT,
                message: format!(
                    "collection `{collection}` holds {existing}-d vectors but the embedding model gives {size}"
                ),
            }),
            _ => Ok(()),
        },
        Err(UpstreamError::Status { status: 404, .. }) => {
            match qdrant_send(
                settings,
                "PUT",
                &path_of(collection, ""),
                Some(&upstream::create_collection_request(size)),
            )
            .await
            {
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
pub async fn delete_stale_chunks(
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
    .await
    .map(drop)
}

/// Upserts points into `collection` and waits until they are searchable.
pub async fn upsert(
    settings: &PipelineSettings,
    collection: &str,
    points: &[Point],
) -> Result<(), UpstreamError> {
    qdrant_send(
        settings,
        "PUT",
        &path_of(collection, "/points?wait=true"),
        Some(&upstream::upsert_request(points)),
    )
    .await
    .map(drop)
}
