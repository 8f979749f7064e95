//! Health, readiness, the metrics summary and cache analytics.

use std::time::{Duration, Instant};

use chatbot_core::config::{self, names};
use chatbot_core::health::{Liveness, ServiceCheck, ServicesReport};
use chatbot_core::query::keys;
use chatbot_spin::http;
use chatbot_spin::metrics_store::binaries;
use chatbot_spin::redis_script::binary;
use serde_json::json;
use spin_sdk::http::Response;
use spin_sdk::{pg4, redis, variables};

use crate::{error, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn liveness() -> Response {
    json(200, &Liveness::new(VERSION))
}

fn variable(name: &str) -> Result<String, String> {
    variables::get(name).map_err(|e| format!("variable `{name}`: {e}"))
}

fn timeout() -> Duration {
    let ms = variable(names::HEALTH_CHECK_TIMEOUT_MS)
        .ok()
        .and_then(|raw| config::parse_u64(names::HEALTH_CHECK_TIMEOUT_MS, &raw, 50, 60_000).ok())
        .unwrap_or(2000);
    Duration::from_millis(ms)
}

fn finish(name: &str, started: Instant, outcome: Result<(), String>) -> ServiceCheck {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(()) => ServiceCheck::up(name, latency_ms),
        Err(e) => ServiceCheck::down(name, latency_ms, config::redact_userinfo(&e)),
    }
}

fn probe_redis() -> ServiceCheck {
    let started = Instant::now();
    let outcome = variable(names::REDIS_ADDRESS)
        .and_then(|raw| {
            config::parse_redis_address(names::REDIS_ADDRESS, &raw).map_err(|e| e.to_string())
        })
        .and_then(|address| {
            let conn = redis::Connection::open(&address).map_err(|e| format!("open: {e}"))?;
            conn.execute("PING", &[])
                .map(drop)
                .map_err(|e| format!("PING: {e}"))
        });
    finish("redis", started, outcome)
}

fn probe_postgres() -> ServiceCheck {
    let started = Instant::now();
    let outcome = variable(names::POSTGRES_ADDRESS)
        .and_then(|raw| {
            config::parse_postgres_address(names::POSTGRES_ADDRESS, &raw).map_err(|e| e.to_string())
        })
        .and_then(|address| {
            let conn = pg4::Connection::open(&address).map_err(|e| format!("open: {e}"))?;
            chatbot_spin::pg::query_one_row(&conn, chatbot_core::sql::PING, &[])
                .map(drop)
                .map_err(|e| format!("SELECT 1: {e}"))
        });
    finish("postgres", started, outcome)
}

fn probe_http(
    name: &str,
    url: Result<String, String>,
    headers: Vec<(String, String)>,
) -> ServiceCheck {
    let started = Instant::now();
    let outcome = url.and_then(|url| {
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match http::request("GET", &url, &refs, None, timeout()) {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status)),
            Err(http::HttpError::Timeout) => {
                Err(format!("no answer within {} ms", timeout().as_millis()))
            }
            Err(http::HttpError::Failed(e)) => Err(e),
        }
    });
    finish(name, started, outcome)
}

/// Qdrant's `/healthz` (plain text).
fn probe_qdrant() -> ServiceCheck {
    let key = variable(names::QDRANT_API_KEY).unwrap_or_default();
    let headers = if key.is_empty() {
        vec![]
    } else {
        vec![("api-key".to_string(), key)]
    };
    probe_http(
        "qdrant",
        variable(names::QDRANT_URL).map(|u| format!("{}/healthz", u.trim_end_matches('/'))),
        headers,
    )
}

/// OpenAI's `GET /models`: reachable, and the key is accepted.
fn probe_openai() -> ServiceCheck {
    let key = variable(names::OPENAI_API_KEY).unwrap_or_default();
    probe_http(
        "openai",
        variable(names::OPENAI_BASE_URL).map(|u| format!("{}/models", u.trim_end_matches('/'))),
        vec![("authorization".to_string(), format!("Bearer {key}"))],
    )
}

fn all_checks() -> ServicesReport {
    ServicesReport::new(vec![
        probe_redis(),
        probe_postgres(),
        probe_qdrant(),
        probe_openai(),
    ])
}

/// Every dependency's status and latency; informational, so always 200.
pub fn services() -> Response {
    json(200, &all_checks())
}

/// 200 when every dependency answers, else 503 naming what is down.
pub fn readiness() -> Response {
    let report = all_checks();
    let down: Vec<&str> = report
        .services
        .iter()
        .filter(|s| s.status == chatbot_core::health::ServiceStatus::Down)
        .map(|s| s.name.as_str())
        .collect();
    if down.is_empty() {
        json(
            200,
            &json!({"status": "ready", "services": report.services}),
        )
    } else {
        json(
            503,
            &json!({
                "status": "not_ready",
                "detail": format!("not ready: {} down", down.join(", ")),
                "down": down,
                "services": report.services,
            }),
        )
    }
}

fn storage_unavailable() -> Response {
    error(
        503,
        "unavailable",
        "metrics and analytics storage (Redis) is unavailable",
    )
}

pub fn metrics_summary() -> Response {
    let Some(conn) = crate::redis() else {
        return storage_unavailable();
    };
    match chatbot_spin::metrics_store::snapshot(&conn) {
        Ok(snapshot) => json(200, &chatbot_core::ops::summarise(&snapshot)),
        Err(e) => {
            eprintln!("health/metrics: {e}");
            storage_unavailable()
        }
    }
}

/// Counts keys matching `pattern` with `SCAN` in batches (never `KEYS`).
pub(crate) fn scan(
    conn: &redis::Connection,
    pattern: &str,
    mut each_batch: impl FnMut(Vec<Vec<u8>>),
) -> Result<(), String> {
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn
            .execute(
                "SCAN",
                &[
                    binary(&cursor),
                    binary("MATCH"),
                    binary(pattern),
                    binary("COUNT"),
                    binary("500"),
                ],
            )
            .map_err(|e| format!("SCAN: {e}"))?;
        let mut values = binaries(reply).into_iter();
        cursor = values.next().ok_or("SCAN answered nothing")?;
        each_batch(values.collect());
        if cursor == b"0" {
            return Ok(());
        }
    }
}

fn top(conn: &redis::Connection, key: &str, n: i64) -> Result<Vec<serde_json::Value>, String> {
    let reply = conn
        .execute(
            "ZREVRANGE",
            &[
                binary(key),
                binary("0"),
                binary((n - 1).to_string()),
                binary("WITHSCORES"),
            ],
        )
        .map_err(|e| format!("ZREVRANGE: {e}"))?;
    Ok(binaries(reply)
        .chunks_exact(2)
        .map(|pair| {
            let member = String::from_utf8_lossy(&pair[0]).into_owned();
            let count: f64 = std::str::from_utf8(&pair[1])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            (member, count)
        })
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

pub fn cache_analytics() -> Response {
    let Some(conn) = crate::redis() else {
        return storage_unavailable();
    };
    let report = (|| -> Result<serde_json::Value, String> {
        let snapshot = chatbot_spin::metrics_store::snapshot(&conn)?;
        let mut entries = serde_json::Map::new();
        for (cache, pattern) in [
            ("query", format!("{}*", keys::QUERY_PREFIX)),
            ("embedding", format!("{}*", keys::EMBEDDING_PREFIX)),
        ] {
            let mut count = 0usize;
            scan(&conn, &pattern, |batch| count += batch.len())?;
            entries.insert(cache.to_string(), json!(count));
        }
        let info = binaries(
            conn.execute("INFO", &[binary("memory")])
                .map_err(|e| format!("INFO: {e}"))?,
        );
        let info = String::from_utf8_lossy(info.first().map(Vec::as_slice).unwrap_or_default())
            .into_owned();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
        };
        let used: Option<u64> = field("used_memory").and_then(|v| v.parse().ok());
        let mut rates =
            serde_json::to_value(chatbot_core::ops::cache_rates(&snapshot)).expect("serialises");
        for (cache, count) in &entries {
            rates[cache]["entries"] = count.clone();
        }
        Ok(json!({
            "caches": rates,
            "redis_memory": {"used_bytes": used, "used_human": field("used_memory_human")},
            "top_questions": top(&conn, keys::TOP_QUESTIONS, 10)?,
            "top_rate_limited_sessions": top(&conn, keys::RATE_LIMITED_SESSIONS, 10)?,
        }))
    })();
    match report {
        Ok(body) => json(200, &body),
        Err(e) => {
            eprintln!("cache analytics: {e}");
            storage_unavailable()
        }
    }
}
