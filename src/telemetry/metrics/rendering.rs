//! Rendering: what a scrape reads from Redis becomes the Prometheus text
//! format, through the `prometheus` crate's encoder.

use std::collections::BTreeMap;

use prometheus::proto::{self, MetricFamily, MetricType};

use crate::redis::script::{Arg, Script, Value};

use super::registry::{every_series, names, Kind, MetricDef, REGISTRY};

/// Counts the sessions active within the window, by the server's clock.
pub struct ActiveSessions;

impl Script for ActiveSessions {
    const SOURCE: &'static str = r#"
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;
    /// The count (`Err`: a reply that is not one, for the log).
    type Reply = Result<u64, Vec<Value>>;

    fn keys(&self) -> Vec<String> {
        vec![crate::redis::keys::metrics::SESSIONS.to_string()]
    }

    /// The window's seconds.
    fn args(&self) -> Vec<Arg> {
        vec![Arg::from(super::registry::ACTIVE_SESSION_WINDOW_SECONDS)]
    }

    fn parse(&self, reply: Vec<Value>) -> Self::Reply {
        match reply.as_slice() {
            [Value::Int(n)] if *n >= 0 => Ok(*n as u64),
            _ => Err(reply),
        }
    }
}

/// What a scrape read from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub counters: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, f64>,
    pub active_sessions: u64,
}

impl Snapshot {
    /// Builds a hash's map from `HGETALL`'s flat `field, value, ...` reply.
    pub fn hash_from_pairs(flat: &[Vec<u8>]) -> BTreeMap<String, f64> {
        flat.chunks_exact(2)
            .filter_map(|pair| {
                let field = String::from_utf8(pair[0].clone()).ok()?;
                let value = std::str::from_utf8(&pair[1]).ok()?.parse().ok()?;
                Some((field, value))
            })
            .collect()
    }
}

fn label_pairs(labels: &[(String, String)]) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(k.clone());
            pair.set_value(v.clone());
            pair
        })
        .collect()
}

/// Builds every registered metric family from a snapshot: every series of
/// every metric (the product of its labels' closed vocabularies), at zero
/// until something is recorded, so a fresh deployment's first scrape already
/// has what the alerts and `rate()` need.
pub fn families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    REGISTRY
        .iter()
        .map(|def| {
            let mut family = MetricFamily::default();
            family.set_name(def.name.to_string());
            family.set_help(def.help.to_string());
            let metrics = match def.kind {
                Kind::Counter => {
                    family.set_field_type(MetricType::COUNTER);
                    scalar_metrics(def, &snapshot.counters, |m, v| {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    })
                }
                Kind::Gauge => {
                    debug_assert_eq!(def.name, names::ACTIVE_SESSIONS, "the one gauge");
                    family.set_field_type(MetricType::GAUGE);
                    let mut g = proto::Gauge::default();
                    g.set_value(snapshot.active_sessions as f64);
                    let mut m = proto::Metric::default();
                    m.set_gauge(g);
                    vec![m]
                }
                Kind::Histogram(bounds) => {
                    family.set_field_type(MetricType::HISTOGRAM);
                    histogram_metrics(def, bounds, &snapshot.histograms)
                }
            };
            family.set_metric(metrics);
            family
        })
        .collect()
}

fn scalar_metrics(
    def: &MetricDef,
    values: &BTreeMap<String, f64>,
    set: impl Fn(&mut proto::Metric, f64),
) -> Vec<proto::Metric> {
    every_series(def)
        .into_iter()
        .map(|(series, labels)| {
            let mut m = proto::Metric::default();
            m.set_label(label_pairs(&labels));
            set(&mut m, values.get(&series).copied().unwrap_or(0.0));
            m
        })
        .collect()
}

/// A histogram series is stored as `series|<bucket index>`, `series|sum`, `series|count`.
fn histogram_metrics(
    def: &MetricDef,
    bounds: &[f64],
    fields: &BTreeMap<String, f64>,
) -> Vec<proto::Metric> {
    every_series(def)
        .into_iter()
        .map(|(series, labels)| {
            let part = |name: &str| {
                fields
                    .get(&format!("{series}|{name}"))
                    .copied()
                    .unwrap_or(0.0)
            };
            let mut cumulative = 0u64;
            let buckets = bounds
                .iter()
                .enumerate()
                .map(|(i, bound)| {
                    cumulative += part(&i.to_string()) as u64;
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = proto::Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_sum(part("sum"));
            h.set_sample_count(part("count") as u64);
            let mut m = proto::Metric::default();
            m.set_label(label_pairs(&labels));
            m.set_histogram(h);
            m
        })
        .collect()
}

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn render(snapshot: &Snapshot) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families(snapshot), &mut out)
        .expect("encoding to memory cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_cumulative_buckets_and_zero_defaults() {
        let mut snapshot = Snapshot {
            active_sessions: 3,
            ..Default::default()
        };
        snapshot.counters.insert(
            "chatbot_cache_hits_total{cache_type=\"query\"}".into(),
            15.0,
        );
        let series = "chatbot_query_latency_seconds{cache_status=\"hit\"}";
        snapshot.histograms.insert(format!("{series}|0"), 2.0);
        snapshot.histograms.insert(format!("{series}|3"), 1.0);
        snapshot.histograms.insert(format!("{series}|13"), 1.0);
        snapshot.histograms.insert(format!("{series}|sum"), 20.5);
        snapshot.histograms.insert(format!("{series}|count"), 4.0);
        let text = render(&snapshot);
        assert!(
            text.contains("# TYPE chatbot_cache_hits_total counter"),
            "{text}"
        );
        assert!(
            text.contains("chatbot_cache_hits_total{cache_type=\"query\"} 15"),
            "{text}"
        );
        assert!(
            text.contains(
                "chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"0.001\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"0.01\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"10\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"+Inf\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("chatbot_query_latency_seconds_sum{cache_status=\"hit\"} 20.5"),
            "{text}"
        );
        assert!(
            text.contains("chatbot_query_latency_seconds_count{cache_status=\"hit\"} 4"),
            "{text}"
        );
        assert!(text.contains("chatbot_active_sessions 3"), "{text}");
        // Every series of a closed vocabulary shows zero before anything is recorded.
        assert!(text.contains("chatbot_qdrant_searches_total 0"), "{text}");
        assert!(
            text.contains("chatbot_qdrant_search_latency_seconds_count 0"),
            "{text}"
        );
        assert!(
            text.contains("chatbot_errors_total{error_type=\"postgres\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "chatbot_queries_total{endpoint=\"query\",status=\"rate_limited\",cached=\"false\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("chatbot_query_latency_seconds_count{cache_status=\"miss\"} 0"),
            "{text}"
        );
        // Something recorded under a label value the vocabulary no longer has is not shown.
        snapshot.counters.insert(
            "chatbot_queries_total{endpoint=\"query\",status=\"cached\"}".into(),
            2.0,
        );
        assert!(!render(&snapshot).contains("status=\"cached\""));
    }

    #[test]
    fn hgetall_pairs_parse() {
        let flat = vec![b"a".to_vec(), b"1.5".to_vec(), b"b".to_vec(), b"2".to_vec()];
        let map = Snapshot::hash_from_pairs(&flat);
        assert_eq!(map.get("a"), Some(&1.5));
        assert_eq!(map.get("b"), Some(&2.0));
    }
}
