//! The `/health/metrics` summary: totals, rates and latency quantiles computed
//! from what the metrics component keeps in Redis.

use std::collections::BTreeMap;

use serde::Serialize;

use super::registry::{names, LATENCY_BUCKETS};
use super::rendering::Snapshot;

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
    /// Of the answered questions (`success`), those the query cache answered.
    pub queries_cached: f64,
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
    for cache in ["query", "embedding", "semantic"] {
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
    let mut cached = 0.0;
    for (series, value) in &snapshot.counters {
        if series.starts_with(&format!("{}{{", names::QUERIES))
            && label_value(series, "endpoint") == Some("query")
        {
            if let Some(status) = label_value(series, "status") {
                *by_status.entry(status.to_string()).or_insert(0.0) += value;
            }
            if label_value(series, "cached") == Some("true") {
                cached += value;
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
        queries_cached: cached,
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
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"false\"}".into(),
            6.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}".into(),
            3.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"unavailable\",cached=\"false\"}"
                .into(),
            1.0,
        );
        s.counters.insert(
            "chatbot_queries_total{endpoint=\"documents\",status=\"success\",cached=\"false\"}"
                .into(),
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
        assert_eq!(summary.queries_by_status["success"], 9.0);
        assert_eq!(summary.queries_cached, 3.0);
        assert_eq!(summary.error_rate, Some(0.1));
        assert_eq!(summary.cache["query"].hit_rate, Some(0.3));
        assert_eq!(summary.cache["embedding"].hit_rate, None);
        // Rank 5 of 10 falls in (0.5, 1]: 0.5 + 0.5 * (5 - 3) / 7.
        assert_eq!(summary.latency_seconds["p50"], Some(0.642857));
        assert!(summary.latency_seconds["p99"].unwrap() <= 1.0);
    }
}
