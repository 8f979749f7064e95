//! The semantic answer cache's index in Qdrant (what it holds and why:
//! `chatbot_core::cache::semantic`): searched on an exact miss, written once
//! the client has its answer, confirmed (`global` scope) once a second
//! session is served it exactly, cleared with the query cache. Its failures
//! are logged and counted, and never fail a question: it is answered as a miss.

use std::time::Duration;

use chatbot_core::cache::answers::{CachedAnswer, ReadAnswer};
use chatbot_core::cache::invalidation::ClearScope;
use chatbot_core::cache::semantic::{self, Indexed};
use chatbot_core::chat::upstream::{self, UpstreamError};

use crate::caches::Telemetry;
use crate::openai::qdrant_send;
use crate::qdrant::{self, path_of};
use crate::redis_script::{run, Conn};
use crate::settings::PipelineSettings;

fn collection(settings: &PipelineSettings) -> String {
    semantic::collection_name(&settings.qdrant_collection)
}

/// What a first question is looked up with: its answer scope, the
/// generation its answer would be of, who asks, and the threshold.
pub struct SemanticLookup<'a> {
    pub among: semantic::Among<'a>,
    pub threshold: f64,
}

/// An earlier question's answer, served for this one.
pub struct Matched {
    pub answer: CachedAnswer,
    /// The earlier question, when the asking session asked it (another
    /// session's words are never shown: `global` scope).
    pub question: Option<String>,
    pub score: f64,
}

/// The longest a lookup may hold a miss up (it runs alongside the passages'
/// search, which takes as long when Qdrant is well): a slow index costs a
/// miss this much at most, never `qdrant_timeout`.
pub const LOOKUP_BUDGET: Duration = Duration::from_millis(500);

/// The longest indexing an answer may take after its response (its
/// exchange's history write and metrics come first, within the same
/// `context::AFTER_RESPONSE`).
pub const INDEX_BUDGET: Duration = Duration::from_secs(1);

/// The nearest earlier question's answer at or above the threshold that
/// Redis still holds (one Qdrant search; one Redis read when it finds any),
/// within [`LOOKUP_BUDGET`].
pub async fn lookup(
    conn: &Conn,
    settings: &PipelineSettings,
    lookup: &SemanticLookup<'_>,
    vector: &[f32],
    telemetry: &mut Telemetry,
) -> Option<Matched> {
    let limit = crate::bounded(LOOKUP_BUDGET);
    match crate::within(limit, look_up(conn, settings, lookup, vector, telemetry)).await {
        Some(found) => found,
        None => {
            let e = UpstreamError::Timeout {
                service: upstream::QDRANT,
            };
            crate::log::warn(
                "semantic_cache_search_failed",
                crate::log::Dependency::Qdrant,
                format!(
                    "no answer within {} ms: answered as a miss",
                    limit.as_millis()
                ),
            );
            telemetry.upstream_error(&e);
            None
        }
    }
}

async fn look_up(
    conn: &Conn,
    settings: &PipelineSettings,
    lookup: &SemanticLookup<'_>,
    vector: &[f32],
    telemetry: &mut Telemetry,
) -> Option<Matched> {
    let request = semantic::search_request(
        vector,
        &lookup.among,
        crate::now_epoch_seconds(),
        lookup.threshold,
    );
    let path = path_of(&collection(settings), "/points/search");
    let candidates = match qdrant_send(settings, "POST", &path, Some(&request)).await {
        Ok((_, body)) => semantic::parse_candidates(&body)
            .map(|found| semantic::at_or_above(found, lookup.threshold)),
        // Nothing answered has been indexed yet.
        Err(e) if upstream::is_missing_collection(&e) => return None,
        Err(e) => Err(e),
    };
    let candidates = match candidates {
        Ok(candidates) if candidates.is_empty() => return None,
        Ok(candidates) => candidates,
        Err(e) => {
            crate::log::warn(
                "semantic_cache_search_failed",
                crate::log::Dependency::Qdrant,
                &e,
            );
            telemetry.upstream_error(&e);
            return None;
        }
    };
    let keys: Vec<&str> = candidates.iter().map(|c| c.cache_key.as_str()).collect();
    let read = ReadAnswer {
        cache_keys: &keys,
        collection: &settings.qdrant_collection,
    };
    match run(conn, &read).await {
        Ok(Some((index, answer))) => Some(Matched {
            answer,
            question: candidates[index]
                .question_for(lookup.among.session, lookup.among.verified)
                .map(str::to_string),
            score: candidates[index].score,
        }),
        Ok(None) => None,
        Err(e) => {
            crate::log::warn("query_cache_read_failed", crate::log::Dependency::Redis, &e);
            telemetry.redis_error();
            None
        }
    }
}

/// Indexes an answer just cached (after the response, within
/// [`INDEX_BUDGET`]), creating the collection and its payload indexes the
/// first time.
pub async fn remember(settings: &PipelineSettings, indexed: &Indexed, telemetry: &mut Telemetry) {
    let limit = crate::bounded(INDEX_BUDGET);
    let stored = crate::within(limit, index(settings, indexed)).await;
    index_failed(stored, telemetry);
}

/// Confirms the point of the answer cached under `cache_key`, which a
/// second session was just served exactly (`global` scope, see
/// `chatbot_core::cache::answers::Confirmation`): from now on it may serve
/// any session of its scope. After the response, within [`INDEX_BUDGET`];
/// one set-payload call. An index that does not exist has nothing to
/// confirm.
pub async fn confirm(settings: &PipelineSettings, cache_key: &str, telemetry: &mut Telemetry) {
    let Some(body) = semantic::confirm_request(cache_key) else {
        return;
    };
    let path = path_of(&collection(settings), "/points/payload?wait=true");
    let sent = async {
        match qdrant_send(settings, "POST", &path, Some(&body)).await {
            Err(e) if upstream::is_missing_collection(&e) => Ok(()),
            other => other.map(drop),
        }
    };
    let confirmed = crate::within(crate::bounded(INDEX_BUDGET), sent).await;
    index_failed(confirmed, telemetry);
}

/// Logs and counts a write to the index that failed or ran out of time
/// (`None`); it never fails the request.
fn index_failed(written: Option<Result<(), UpstreamError>>, telemetry: &mut Telemetry) {
    let written = written.unwrap_or(Err(UpstreamError::Timeout {
        service: upstream::QDRANT,
    }));
    if let Err(e) = written {
        crate::log::warn(
            "semantic_cache_index_failed",
            crate::log::Dependency::Qdrant,
            &e,
        );
        telemetry.upstream_error(&e);
    }
}

thread_local! {
    /// Collections this instance has seen its payload indexes created in: an
    /// indexing cut short after the collection was made (a timeout, a Qdrant
    /// error) leaves them missing, and filtered searches then scan every point.
    static PAYLOAD_INDEXED: std::cell::RefCell<Vec<String>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

async fn index(settings: &PipelineSettings, indexed: &Indexed) -> Result<(), UpstreamError> {
    let collection = collection(settings);
    let points = [indexed.point()];
    match qdrant::upsert(settings, &collection, &points).await {
        Err(e) if upstream::is_missing_collection(&e) => {
            qdrant::ensure_collection(settings, &collection, indexed.vector.len()).await?;
            ensure_payload_indexes(settings, &collection).await?;
            qdrant::upsert(settings, &collection, &points).await
        }
        Ok(()) if !PAYLOAD_INDEXED.with_borrow(|done| done.contains(&collection)) => {
            ensure_payload_indexes(settings, &collection).await
        }
        other => other,
    }
}

/// Creates the collection's payload indexes (again: Qdrant answers an
/// existing one as created), once per instance once they all exist.
async fn ensure_payload_indexes(
    settings: &PipelineSettings,
    collection: &str,
) -> Result<(), UpstreamError> {
    for (field, schema) in semantic::PAYLOAD_INDEXES {
        qdrant_send(
            settings,
            "PUT",
            &path_of(collection, "/index?wait=true"),
            Some(&semantic::payload_index_request(field, schema)),
        )
        .await?;
    }
    PAYLOAD_INDEXED.with_borrow_mut(|done| done.push(collection.to_string()));
    Ok(())
}

/// Deletes the index's points of what `/health/cache/clear` clears (the
/// whole collection for the query cache), waiting until it is applied; a
/// collection that does not exist holds nothing to clear.
pub async fn clear(settings: &PipelineSettings, scope: &ClearScope) -> Result<(), UpstreamError> {
    let collection = collection(settings);
    let sent = match semantic::clear_request(scope) {
        None => return Ok(()),
        Some(None) => qdrant_send(settings, "DELETE", &path_of(&collection, ""), None)
            .await
            .map(drop),
        Some(Some(body)) => delete_points(settings, &collection, &body).await,
    };
    match sent {
        Ok(_) => Ok(()),
        Err(e) if upstream::is_missing_collection(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the points of answers expired by now (the retention cleanup's).
pub async fn delete_expired(settings: &PipelineSettings) -> Result<(), UpstreamError> {
    let body = semantic::expired_request(crate::now_epoch_seconds());
    match delete_points(settings, &collection(settings), &body).await {
        Err(e) if upstream::is_missing_collection(&e) => Ok(()),
        other => other,
    }
}

async fn delete_points(
    settings: &PipelineSettings,
    collection: &str,
    body: &serde_json::Value,
) -> Result<(), UpstreamError> {
    qdrant_send(
        settings,
        "POST",
        &path_of(collection, "/points/delete?wait=true"),
        Some(body),
    )
    .await
    .map(drop)
}
