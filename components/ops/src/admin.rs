//! Admin actions: cache invalidation, retention cleanup, warm-up, audit log.
//! Every action is audited.

use chatbot_core::history::parse_page;
use chatbot_core::ops::{self, ClearScope};
use chatbot_core::query::{self, keys, QueryCacheEntry, QueryRequest, Rejection};
use chatbot_spin::caches::Telemetry;
use chatbot_spin::metrics_store::binaries;
use chatbot_spin::redis_script::binary;
use chatbot_spin::settings::PipelineSettings;
use serde::Deserialize;
use serde_json::json;
use spin_sdk::http::{Request, Response};
use spin_sdk::pg4::{self, ParameterValue};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::health::scan;
use crate::{error, json, reject};

const AUDIT_PAGE_SIZE: i64 = 50;

fn redis_or_503() -> Result<Connection, Response> {
    crate::redis().ok_or_else(|| error(503, "unavailable", "Redis is unavailable"))
}

fn audit(conn: &Connection, action: &str, detail: serde_json::Value) {
    if let Err(e) = chatbot_spin::audit(conn, action, detail) {
        eprintln!("audit: {e}");
    }
}

/// Deletes keys without blocking Redis (`UNLINK`); returns how many went.
fn unlink(conn: &Connection, keys: &[Vec<u8>]) -> Result<u64, String> {
    if keys.is_empty() {
        return Ok(0);
    }
    let params: Vec<RedisParameter> = keys.iter().map(binary).collect();
    match conn
        .execute("UNLINK", &params)
        .map_err(|e| format!("UNLINK: {e}"))?
        .first()
    {
        Some(RedisResult::Int64(n)) => Ok(*n as u64),
        other => Err(format!("unexpected UNLINK reply {other:?}")),
    }
}

fn unlink_matching(conn: &Connection, pattern: &str) -> Result<u64, String> {
    let mut total = 0;
    let mut failure = None;
    scan(conn, pattern, |batch| match unlink(conn, &batch) {
        Ok(n) => total += n,
        Err(e) => failure = Some(e),
    })?;
    failure.map_or(Ok(total), Err)
}

/// The cached answers an index set points at, and the index itself.
fn unlink_indexed(conn: &Connection, index: &str) -> Result<u64, String> {
    let members = binaries(
        conn.execute("SMEMBERS", &[binary(index)])
            .map_err(|e| format!("SMEMBERS: {e}"))?,
    );
    let removed = unlink(conn, &members)?;
    unlink(conn, &[index.as_bytes().to_vec()])?;
    Ok(removed)
}

pub fn clear_cache(req: &Request) -> Response {
    let scope = match ops::parse_clear(req.body()) {
        Ok(s) => s,
        Err(rejection) => return reject(&rejection),
    };
    let conn = match redis_or_503() {
        Ok(c) => c,
        Err(r) => return r,
    };
    let query_pattern = format!("{}*", keys::QUERY_PREFIX);
    let embedding_pattern = format!("{}*", keys::EMBEDDING_PREFIX);
    let indexes = |conn: &Connection| -> Result<u64, String> {
        unlink_matching(conn, &format!("{}*", keys::SESSION_INDEX_PREFIX))?;
        unlink_matching(conn, &format!("{}*", keys::PAGE_INDEX_PREFIX))?;
        Ok(0)
    };
    let outcome = match &scope {
        ClearScope::All => unlink_matching(&conn, &query_pattern)
            .and_then(|q| Ok(q + indexes(&conn)? + unlink_matching(&conn, &embedding_pattern)?)),
        ClearScope::Query => {
            unlink_matching(&conn, &query_pattern).and_then(|q| Ok(q + indexes(&conn)?))
        }
        ClearScope::Embedding => unlink_matching(&conn, &embedding_pattern),
        ClearScope::Session(session) => unlink_indexed(&conn, &query::session_index_key(session)),
        ClearScope::PageContext(page) => unlink_indexed(&conn, &query::page_index_key(page)),
    };
    let scope_name = format!("{scope:?}");
    match outcome {
        Ok(cleared) => {
            audit(
                &conn,
                "cache_cleared",
                json!({"scope": scope_name, "cleared": cleared}),
            );
            json(
                200,
                &json!({"status": "cleared", "scope": scope_name, "cleared": cleared}),
            )
        }
        Err(e) => {
            eprintln!("cache clear: {e}");
            error(
                503,
                "unavailable",
                "clearing the cache failed part-way; it is safe to retry",
            )
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CleanupRequest {
    #[serde(default)]
    batch_size: Option<i64>,
}

fn body_or_default<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Rejection::new(400, "invalid_request", format!("bad JSON body: {e}")))
}

/// Deletes expired sessions, conversations and messages in bounded batches.
/// Idempotent: a second run finds nothing to delete.
pub fn cleanup(req: &Request) -> Response {
    let request: CleanupRequest = match body_or_default(req.body()) {
        Ok(r) => r,
        Err(rejection) => return reject(&rejection),
    };
    let batch = request.batch_size.unwrap_or(ops::DEFAULT_CLEANUP_BATCH);
    if !(1..=100_000).contains(&batch) {
        return reject(&Rejection::new(
            400,
            "invalid_request",
            "`batch_size` must be from 1 to 100000",
        ));
    }
    let address = match spin_sdk::variables::get(chatbot_core::config::names::POSTGRES_ADDRESS) {
        Ok(a) => a,
        Err(e) => {
            return error(
                500,
                "configuration_error",
                &format!("postgres_address: {e}"),
            )
        }
    };
    let result = (|| -> Result<serde_json::Value, String> {
        let conn = pg4::Connection::open(&address).map_err(|e| format!("open: {e}"))?;
        let mut deleted = serde_json::Map::new();
        let mut batches = 0u32;
        for (table, statement) in ops::CLEANUP_STATEMENTS {
            let mut total = 0u64;
            loop {
                let n = conn
                    .execute(statement, &[ParameterValue::Int64(batch)])
                    .map_err(|e| format!("cleanup of {table}: {e}"))?;
                total += n;
                batches += 1;
                if (n as i64) < batch || batches >= ops::MAX_CLEANUP_BATCHES {
                    break;
                }
            }
            deleted.insert(table.to_string(), json!(total));
        }
        Ok(
            json!({"status": "done", "deleted": deleted, "batches": batches, "complete": batches < ops::MAX_CLEANUP_BATCHES}),
        )
    })();
    match result {
        Ok(body) => {
            if let Some(conn) = crate::redis() {
                audit(&conn, "retention_cleanup", body["deleted"].clone());
            }
            json(200, &body)
        }
        Err(e) => {
            eprintln!("cleanup: {}", chatbot_core::config::redact_userinfo(&e));
            error(
                503,
                "unavailable",
                "the history store (Postgres) is unavailable",
            )
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WarmupRequest {
    #[serde(default)]
    limit: Option<i64>,
}

/// Asks the most-asked questions through the query pipeline, with the query
/// handler's keys, so they are cached before users ask again.
pub fn warmup(req: &Request) -> Response {
    let request: WarmupRequest = match body_or_default(req.body()) {
        Ok(r) => r,
        Err(rejection) => return reject(&rejection),
    };
    let limit = request.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return reject(&Rejection::new(
            400,
            "invalid_request",
            "`limit` must be from 1 to 100",
        ));
    }
    let settings = match PipelineSettings::load() {
        Ok(s) => s,
        Err(e) => return error(500, "configuration_error", &e.to_string()),
    };
    if settings.cache_scope != query::CacheScope::Global {
        return error(
            409,
            "conflict",
            "warm-up needs query_cache_scope = global: with per-session answers there is nothing to share",
        );
    }
    let conn = match redis_or_503() {
        Ok(c) => c,
        Err(r) => return r,
    };
    let reply = match conn.execute(
        "ZREVRANGE",
        &[
            binary(keys::TOP_QUESTIONS),
            binary("0"),
            binary((limit - 1).to_string()),
        ],
    ) {
        Ok(r) => binaries(r),
        Err(e) => {
            return error(
                503,
                "unavailable",
                &format!("reading the top questions: {e}"),
            )
        }
    };
    let (mut warmed, mut already, mut failed) = (0, 0, Vec::new());
    let mut telemetry = Telemetry::default();
    for member in reply {
        let Ok(entry) = serde_json::from_slice::<QueryCacheEntry>(&member) else {
            continue;
        };
        let request = QueryRequest {
            question: entry.q,
            session_id: "warmup".into(),
            page_context: entry.p,
            user_id: None,
        };
        match chatbot_spin::pipeline::answer(
            Some(&conn),
            &settings,
            &request,
            false,
            &mut telemetry,
        ) {
            Ok(answer) if answer.cached => already += 1,
            Ok(_) => warmed += 1,
            Err(e) => failed.push(json!({"question": request.question, "error": e.to_string()})),
        }
    }
    audit(
        &conn,
        "cache_warmup",
        json!({"warmed": warmed, "already_cached": already, "failed": failed.len()}),
    );
    json(
        200,
        &json!({"status": "done", "warmed": warmed, "already_cached": already, "failed": failed}),
    )
}

pub fn audit_page(req: &Request) -> Response {
    let page = match parse_page(req.query()) {
        Ok(p) => p,
        Err(rejection) => return reject(&rejection),
    };
    let conn = match redis_or_503() {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (start, end) = ops::page_bounds(page, AUDIT_PAGE_SIZE);
    let entries = conn.execute(
        "ZREVRANGE",
        &[
            binary(keys::AUDIT_LOG),
            binary(start.to_string()),
            binary(end.to_string()),
        ],
    );
    let total = conn.execute("ZCARD", &[binary(keys::AUDIT_LOG)]);
    match (entries, total) {
        (Ok(entries), Ok(total)) => {
            let total = match total.first() {
                Some(RedisResult::Int64(n)) => *n,
                _ => 0,
            };
            let entries: Vec<serde_json::Value> = binaries(entries)
                .iter()
                .map(|e| {
                    serde_json::from_slice(e).unwrap_or_else(|_| json!(String::from_utf8_lossy(e)))
                })
                .collect();
            json(
                200,
                &json!({"page": page, "page_size": AUDIT_PAGE_SIZE, "total": total, "entries": entries}),
            )
        }
        (Err(e), _) | (_, Err(e)) => {
            error(503, "unavailable", &format!("reading the audit log: {e}"))
        }
    }
}
