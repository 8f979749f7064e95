//! The metrics summary (`/health/metrics`) and cache analytics: what Redis
//! holds, counted with `SCAN` (never `KEYS`), and the decaying rankings.

use chatbot_core::cache::ranking;
use chatbot_core::http::api::ApiError;
use chatbot_core::redis::keys;
use chatbot_core::redis::script::{all_bytes, Arg};
use chatbot_spin::incoming::Request;
use chatbot_spin::redis_script::{execute, run, Conn};
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::Params;
use chatbot_spin::{settings, StoreError};
use serde_json::json;

/// 503 naming the store; what failed goes to the log.
fn storage_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable("metrics and analytics storage (Redis) is unavailable").caused_by(
        "metrics_storage_unavailable",
        chatbot_spin::log::Dependency::Redis,
        e,
    )
}

pub async fn metrics_summary(_: Request, _: Params) -> Result<Response, ApiError> {
    let conn = settings::open_redis().await.map_err(storage_unavailable)?;
    let snapshot = chatbot_spin::metrics_store::snapshot(&conn)
        .await
        .map_err(storage_unavailable)?;
    Ok(json(
        200,
        &chatbot_core::telemetry::metrics::summary::summarise(&snapshot),
    ))
}

/// One `SCAN` step over the keys matching `pattern` (never `KEYS`): the
/// next cursor (`"0"` at the end) and this batch.
pub(crate) async fn scan(
    conn: &Conn,
    pattern: &str,
    cursor: &str,
) -> Result<(String, Vec<Vec<u8>>), StoreError> {
    let reply = execute(
        conn,
        "SCAN",
        vec![
            Arg::bytes(cursor),
            Arg::bytes("MATCH"),
            Arg::bytes(pattern),
            Arg::bytes("COUNT"),
            Arg::bytes("500"),
        ],
    )
    .await?;
    let mut values = all_bytes(reply).into_iter();
    let next = values
        .next()
        .ok_or_else(|| StoreError::Unexpected("SCAN answered nothing".into()))?;
    Ok((
        String::from_utf8_lossy(&next).into_owned(),
        values.collect(),
    ))
}

/// How many keys match `pattern`.
async fn count_matching(conn: &Conn, pattern: &str) -> Result<usize, StoreError> {
    let mut count = 0;
    let mut cursor = "0".to_string();
    loop {
        let (next, batch) = scan(conn, pattern, &cursor).await?;
        count += batch.len();
        if next == "0" {
            return Ok(count);
        }
        cursor = next;
    }
}

/// A ranking's top `n`, each with its decayed count as of now (see `ranking`).
async fn top(
    conn: &Conn,
    key: &str,
    half_life_seconds: u64,
    n: i64,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let top = ranking::Top {
        ranking: key,
        count: u64::try_from(n).unwrap_or(0),
        half_life_seconds,
    };
    Ok(run(conn, &top)
        .await?
        .into_iter()
        .map(
            |(member, count)| match serde_json::from_str::<serde_json::Value>(&member) {
                Ok(serde_json::Value::Object(mut entry)) => {
                    entry.insert("count".into(), json!(count));
                    serde_json::Value::Object(entry)
                }
                _ => json!({"id": member, "count": count}),
            },
        )
        .collect())
}

async fn analytics(conn: &Conn) -> Result<serde_json::Value, StoreError> {
    let snapshot = chatbot_spin::metrics_store::snapshot(conn).await?;
    let mut entries = serde_json::Map::new();
    for (cache, pattern) in [
        ("query", format!("{}*", keys::QUERY_PREFIX)),
        ("embedding", format!("{}*", keys::EMBEDDING_PREFIX)),
    ] {
        let count = count_matching(conn, &pattern).await?;
        entries.insert(cache.to_string(), json!(count));
    }
    let info = all_bytes(execute(conn, "INFO", vec![Arg::bytes("memory")]).await?);
    let info =
        String::from_utf8_lossy(info.first().map(Vec::as_slice).unwrap_or_default()).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
    };
    let used: Option<u64> = field("used_memory").and_then(|v| v.parse().ok());
    let mut rates = serde_json::to_value(chatbot_core::telemetry::metrics::summary::cache_rates(
        &snapshot,
    ))
    .expect("serialises");
    for (cache, count) in &entries {
        rates[cache]["entries"] = count.clone();
    }
    let top_questions = top(
        conn,
        keys::TOP_QUESTIONS,
        ranking::QUESTIONS_HALF_LIFE_SECONDS,
        10,
    )
    .await?;
    let top_rate_limited = top(
        conn,
        keys::RATE_LIMITED_SESSIONS,
        ranking::RATE_LIMITED_HALF_LIFE_SECONDS,
        10,
    )
    .await?;
    Ok(json!({
        "caches": rates,
        "redis_memory": {"used_bytes": used, "used_human": field("used_memory_human")},
        "top_questions": top_questions,
        "top_rate_limited_sessions": top_rate_limited,
    }))
}

pub async fn cache_analytics(_: Request, _: Params) -> Result<Response, ApiError> {
    let conn = settings::open_redis().await.map_err(storage_unavailable)?;
    let report = analytics(&conn).await.map_err(storage_unavailable)?;
    Ok(json(200, &report))
}
