//! `POST /health/cache/clear`: what an invalidation removes from Redis, by
//! `UNLINK` in `SCAN` batches or through the answers' indexes (never `KEYS`).
//! Audited; the router has checked the admin token.

use chatbot_core::cache::invalidation::{self, ClearScope};
use chatbot_core::http::api::ApiError;
use chatbot_core::redis::keys;
use chatbot_core::redis::script::{all_bytes, integers, Arg};
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_spin::audit::append;
use chatbot_spin::incoming::Request;
use chatbot_spin::log::Dependency;
use chatbot_spin::redis_script::{execute, Conn};
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::{client_address, Params};
use chatbot_spin::StoreError;
use serde_json::json;

use crate::analytics::scan;

/// Deletes keys without blocking Redis (`UNLINK`); returns how many went.
async fn unlink(conn: &Conn, keys: &[Vec<u8>]) -> Result<u64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let params: Vec<Arg> = keys.iter().map(Arg::bytes).collect();
    match integers(&execute(conn, "UNLINK", params).await?).as_slice() {
        [n] => Ok(*n as u64),
        other => Err(StoreError::Unexpected(format!("UNLINK reply {other:?}"))),
    }
}

async fn unlink_matching(conn: &Conn, pattern: &str) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut cursor = "0".to_string();
    loop {
        let (next, batch) = scan(conn, pattern, &cursor).await?;
        total += unlink(conn, &batch).await?;
        if next == "0" {
            return Ok(total);
        }
        cursor = next;
    }
}

/// The cached answers an index set points at, and the index itself.
async fn unlink_indexed(conn: &Conn, index: &str) -> Result<u64, StoreError> {
    let members = all_bytes(execute(conn, "SMEMBERS", vec![Arg::bytes(index)]).await?);
    let removed = unlink(conn, &members).await?;
    unlink(conn, &[index.as_bytes().to_vec()]).await?;
    Ok(removed)
}

/// The answer indexes (cleared with the answers; not counted).
async fn unlink_indexes(conn: &Conn) -> Result<u64, StoreError> {
    unlink_matching(conn, &format!("{}*", keys::SESSION_INDEX_PREFIX)).await?;
    unlink_matching(conn, &format!("{}*", keys::PAGE_INDEX_PREFIX)).await?;
    Ok(0)
}

async fn clear(conn: &Conn, scope: &ClearScope) -> Result<u64, StoreError> {
    let query_pattern = format!("{}*", keys::QUERY_PREFIX);
    let embedding_pattern = format!("{}*", keys::EMBEDDING_PREFIX);
    Ok(match scope {
        ClearScope::All => {
            unlink_matching(conn, &query_pattern).await?
                + unlink_indexes(conn).await?
                + unlink_matching(conn, &embedding_pattern).await?
        }
        ClearScope::Query => {
            unlink_matching(conn, &query_pattern).await? + unlink_indexes(conn).await?
        }
        ClearScope::Embedding => unlink_matching(conn, &embedding_pattern).await?,
        ClearScope::Session(session) => unlink_indexed(conn, &keys::session_index(session)).await?,
        ClearScope::PageContext(page) => unlink_indexed(conn, &keys::page_index(page)).await?,
    })
}

pub async fn clear_cache(req: Request, _: Params) -> Result<Response, ApiError> {
    let scope = invalidation::parse_clear(req.body())?;
    let conn = crate::redis().await?;
    let cleared =
        clear(&conn, &scope).await.map_err(|e| {
            ApiError::unavailable("clearing the cache failed part-way; it is safe to retry")
                .caused_by("cache_clear_failed", Dependency::Redis, e)
        })?;
    // The semantic cache's points of what was cleared (never served once
    // their answers are gone, but they would crowd out the live ones).
    let mut body = json!({"status": "cleared", "scope": format!("{scope:?}"), "cleared": cleared});
    if let Ok(pipeline) = chatbot_spin::settings::pipeline().await {
        if pipeline.semantic_cache_threshold.is_some() {
            let state = match chatbot_spin::semantic::clear(&pipeline, &scope).await {
                Ok(()) => "cleared",
                Err(e) => {
                    chatbot_spin::log::warn("semantic_cache_clear_failed", Dependency::Qdrant, &e);
                    "failed"
                }
            };
            body["semantic_index"] = json!(state);
        }
    }
    let scope_name = format!("{scope:?}");
    append(
        &conn,
        AuditAction::CacheCleared,
        &client_address(&req).await,
        json!({"scope": scope_name, "cleared": cleared}),
    )
    .await;
    Ok(json(200, &body))
}
