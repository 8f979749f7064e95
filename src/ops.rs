//! Operations logic: session concurrency, metrics summaries, cache-clear
//! requests, retention cleanup statements, audit paging.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::{names, Snapshot, LATENCY_BUCKETS};
use crate::query::{validate_id, Rejection};

// ---------------------------------------------------------------- sessions

/// Admits a session for a user if it is already active or the user has fewer
/// than `max` active ones; idle sessions stop counting after `idle` seconds.
/// KEYS: the user's session set, the audit log. ARGV: session id, max,
/// idle seconds, audit entry. Answers `{admitted, active, oldest_last_seen}`.
pub const SESSION_ADMIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local idle = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - idle)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], idle)
  return {1, redis.call('ZCARD', KEYS[1]), now}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], now * 1000000 + tonumber(t[2]), ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -10001)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, tonumber(oldest[2])}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], idle)
return {1, n + 1, now}
"#;

pub fn user_sessions_key(user_id: &str) -> String {
    format!(
        "chatbot:user-sessions:{}",
        crate::query::md5_of_parts(&[user_id])
    )
}

// ---------------------------------------------------------------- metrics summary

/// Estimates a quantile from cumulative bucket counts, interpolating inside
/// the bucket as Prometheus's `histogram_quantile` does.
pub fn quantile(bounds: &[f64], cumulative: &[f64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (bound, count) in bounds.iter().zip(cumulative) {
        if *count >= rank {
            let in_bucket = count - lower_count;
            let fraction = if in_bucket > 0.0 {
                (rank - lower_count) / in_bucket
            } else {
                0.0
            };
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        lower_bound = *bound;
        lower_count = *count;
    }
    // Above the last finite bound: report that bound, as Prometheus does.
    bounds.last().copied()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheRates {
    pub hits: f64,
    pub misses: f64,
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSummary {
    pub queries_total: f64,
    pub queries_by_status: BTreeMap<String, f64>,
    pub error_rate: Option<f64>,
    pub latency_seconds: BTreeMap<String, Option<f64>>,
    pub cache: BTreeMap<String, CacheRates>,
    pub rate_limited_total: f64,
    pub active_sessions: u64,
}

fn label_value<'a>(series: &'a str, label: &str) -> Option<&'a str> {
    let start = series.find(&format!("{label}=\""))? + label.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

fn round(v: f64) -> f64 {
    (v * 1_000_000.0).round() / 1_000_000.0
}

pub fn cache_rates(snapshot: &Snapshot) -> BTreeMap<String, CacheRates> {
    let mut out = BTreeMap::new();
    for cache in ["query", "embedding"] {
        let get = |name: &str| {
            snapshot
                .counters
                .get(&format!("{name}{{cache_type=\"{cache}\"}}"))
                .copied()
                .unwrap_or(0.0)
        };
        let (hits, misses) = (get(names::CACHE_HITS), get(names::CACHE_MISSES));
        let hit_rate = (hits + misses > 0.0).then(|| round(hits / (hits + misses)));
        out.insert(
            cache.to_string(),
            CacheRates {
                hits,
                misses,
                hit_rate,
            },
        );
    }
    out
}

/// The `/health/metrics` summary, from what the metrics component keeps in Redis.
pub fn summarise(snapshot: &Snapshot) -> MetricsSummary {
    let mut by_status = BTreeMap::new();
    for (series, value) in &snapshot.counters {
        if series.starts_with(&format!("{}{{", names::QUERIES))
            && label_value(series, "endpoint") == Some("query")
        {
            if let Some(status) = label_value(series, "status") {
                *by_status.entry(status.to_string()).or_insert(0.0) += value;
            }
        }
    }
    let total: f64 = by_status.values().sum();
    let failed =
        by_status.get("error").unwrap_or(&0.0) + by_status.get("unavailable").unwrap_or(&0.0);
    // Latency over every cache status: sum the per-bucket counts first.
    let mut per_bucket = vec![0.0; LATENCY_BUCKETS.len() + 1];
    for (field, value) in &snapshot.histograms {
        if let Some((series, part)) = field.rsplit_once('|') {
            if series.starts_with(names::QUERY_LATENCY) {
                if let Ok(i) = part.parse::<usize>() {
                    if let Some(slot) = per_bucket.get_mut(i) {
                        *slot += value;
                    }
                }
            }
        }
    }
    let mut cumulative = Vec::with_capacity(per_bucket.len());
    let mut running = 0.0;
    for count in &per_bucket {
        running += count;
        cumulative.push(running);
    }
    let mut bounds = LATENCY_BUCKETS.to_vec();
    bounds.push(f64::INFINITY);
    let latency = [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)]
        .into_iter()
        .map(|(name, q)| {
            let value = quantile(&bounds, &cumulative, q)
                .map(|v| round(v.min(*LATENCY_BUCKETS.last().unwrap())));
            (name.to_string(), value)
        })
        .collect();
    MetricsSummary {
        queries_total: total,
        queries_by_status: by_status,
        error_rate: (total > 0.0).then(|| round(failed / total)),
        latency_seconds: latency,
        cache: cache_rates(snapshot),
        rate_limited_total: snapshot
            .counters
            .get(names::RATE_LIMIT_HITS)
            .copied()
            .unwrap_or(0.0),
        active_sessions: snapshot.active_sessions,
    }
}

// ---------------------------------------------------------------- cache clearing

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearRequest {
    /// `all`, `query` or `embedding` (default `all`).
    #[serde(default)]
    pub cache_type: Option<String>,
    /// Only this session's cached answers.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only answers for this page context.
    #[serde(default)]
    pub page_context: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearScope {
    All,
    Query,
    Embedding,
    Session(String),
    PageContext(String),
}

pub fn parse_clear(body: &[u8]) -> Result<ClearScope, Rejection> {
    let request: ClearRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ClearRequest {
            cache_type: None,
            session_id: None,
            page_context: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Rejection::new(
                400,
                "invalid_request",
                format!("expected {{\"cache_type\", \"session_id\", \"page_context\"}}: {e}"),
            )
        })?
    };
    match (
        request.cache_type.as_deref(),
        request.session_id,
        request.page_context,
    ) {
        (None | Some("query"), Some(session), None) => {
            validate_id("session_id", &session)?;
            Ok(ClearScope::Session(session))
        }
        (None | Some("query"), None, Some(page)) if !page.trim().is_empty() => {
            Ok(ClearScope::PageContext(page))
        }
        (_, Some(_), Some(_)) => Err(Rejection::new(
            400,
            "invalid_request",
            "give either `session_id` or `page_context`, not both",
        )),
        (_, None, Some(_)) => Err(Rejection::new(
            400,
            "invalid_request",
            "`page_context` must not be empty",
        )),
        (Some(_), Some(_), None) => Err(Rejection::new(
            400,
            "invalid_request",
            "`session_id` scopes the query cache only",
        )),
        (None | Some("all"), None, None) => Ok(ClearScope::All),
        (Some("query"), None, None) => Ok(ClearScope::Query),
        (Some("embedding"), None, None) => Ok(ClearScope::Embedding),
        (Some(other), _, _) => Err(Rejection::new(
            400,
            "invalid_request",
            format!("unknown cache_type `{other}`: use all, query or embedding"),
        )),
    }
}

// ---------------------------------------------------------------- retention

/// Deletes up to `$1` expired rows of a table per call; run until it deletes fewer.
pub const CLEANUP_STATEMENTS: [(&str, &str); 3] = [
    ("messages", "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE expires_at <= now() LIMIT $1)"),
    ("conversations", "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations WHERE expires_at <= now() LIMIT $1)"),
    ("user_sessions", "DELETE FROM user_sessions WHERE id IN (SELECT id FROM user_sessions WHERE expires_at <= now() LIMIT $1)"),
];

pub const DEFAULT_CLEANUP_BATCH: i64 = 1000;
pub const MAX_CLEANUP_BATCHES: u32 = 1000;

/// `page` (1-based) of a list with `per_page` items, newest first: the ZREVRANGE bounds.
pub fn page_bounds(page: i64, per_page: i64) -> (i64, i64) {
    let start = (page - 1) * per_page;
    (start, start + per_page - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let bounds = [0.1, 0.2, 0.4, f64::INFINITY];
        let cumulative = [50.0, 90.0, 100.0, 100.0];
        assert_eq!(quantile(&bounds, &cumulative, 0.5), Some(0.1));
        let p95 = quantile(&bounds, &cumulative, 0.95).unwrap();
        assert!((p95 - 0.3).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&bounds, &[0.0, 0.0, 0.0, 0.0], 0.5), None);
    }

    #[test]
    fn summary_counts_rates_and_latency() {
        let mut s = Snapshot::default();
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"success\"}".into(),
            6.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"cached\"}".into(),
            3.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"unavailable\"}".into(),
            1.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"documents\",status=\"success\"}".into(),
            5.0,
        );
        s.counters
            .insert("chatbot_cache_hits_total{cache_type=\"query\"}".into(), 3.0);
        s.counters.insert(
            "chatbot_cache_misses_total{cache_type=\"query\"}".into(),
            7.0,
        );
        s.histograms.insert(
            "chatbot_query_latency_seconds{cache_status=\"hit\"}|0".into(),
            3.0,
        );
        s.histograms.insert(
            "chatbot_query_latency_seconds{cache_status=\"miss\"}|9".into(),
            7.0,
        );
        let summary = summarise(&s);
        assert_eq!(summary.queries_total, 10.0);
        assert_eq!(summary.error_rate, Some(0.1));
        assert_eq!(summary.cache["query"].hit_rate, Some(0.3));
        assert_eq!(summary.cache["embedding"].hit_rate, None);
        // Rank 5 of 10 falls in (0.5, 1]: 0.5 + 0.5 * (5 - 3) / 7.
        assert_eq!(summary.latency_seconds["p50"], Some(0.642857));
        assert!(summary.latency_seconds["p99"].unwrap() <= 1.0);
    }

    #[test]
    fn clear_requests_parse_into_scopes() {
        assert_eq!(parse_clear(b""), Ok(ClearScope::All));
        assert_eq!(
            parse_clear(br#"{"cache_type":"embedding"}"#),
            Ok(ClearScope::Embedding)
        );
        assert_eq!(
            parse_clear(br#"{"cache_type":"query"}"#),
            Ok(ClearScope::Query)
        );
        assert_eq!(
            parse_clear(br#"{"session_id":"s1"}"#),
            Ok(ClearScope::Session("s1".into()))
        );
        assert_eq!(
            parse_clear(br#"{"page_context":"Ch 1"}"#),
            Ok(ClearScope::PageContext("Ch 1".into()))
        );
        for bad in [
            &br#"{"cache_type":"nope"}"#[..],
            br#"{"session_id":"a b"}"#,
            br#"{"session_id":"s","page_context":"p"}"#,
            br#"{"x":1}"#,
            b"[",
            br#"{"cache_type":"embedding","session_id":"s"}"#,
        ] {
            assert_eq!(
                parse_clear(bad).unwrap_err().status,
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pages_of_the_audit_log() {
        assert_eq!(page_bounds(1, 50), (0, 49));
        assert_eq!(page_bounds(3, 50), (100, 149));
    }
}
