//! Rendering: what a scrape reads from Redis becomes the Prometheus text
//! format, through the `prometheus` crate's encoder.

use std::collections::BTreeMap;

use prometheus::proto::{self, MetricFamily, MetricType};

use super::registry::{names, Kind, MetricDef, REGISTRY};

/// Counts the sessions active within `ARGV[1]` seconds, by the server's clock.
pub const ACTIVE_SESSIONS_SCRIPT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;

/// What a scrape read from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub counters: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, f64>,
    pub gauges: BTreeMap<String, f64>,
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

/// Splits `name{a="x",b="y"}` into the name and its label pairs.
fn parse_series(series: &str) -> Option<(&str, Vec<(String, String)>)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, vec![]));
    };
    let body = rest.strip_suffix('}')?;
    let labels = body
        .split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((name, labels))
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

/// Builds every registered metric family from a snapshot. Label-less counters
/// and histograms show zero when nothing was recorded, so alerts see a value.
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
                    family.set_field_type(MetricType::GAUGE);
                    if def.name == names::ACTIVE_SESSIONS {
                        let mut g = proto::Gauge::default();
                        g.set_value(snapshot.active_sessions as f64);
                        let mut m = proto::Metric::default();
                        m.set_gauge(g);
                        vec![m]
                    } else {
                        scalar_metrics(def, &snapshot.gauges, |m, v| {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            m.set_gauge(g);
                        })
                    }
                }
                Kind::Histogram(bounds) => {
                    family.set_field_type(MetricType::HISTOGRAM);
                    histogram_metrics(def, bounds, &snapshot.histograms)
                }
            };
            family.set_metric(metrics);
            family
        })
        // A labelled metric has no series until its first sample; the format forbids empty families.
        .filter(|family| !family.get_metric().is_empty())
        .collect()
}

fn scalar_metrics(
    def: &MetricDef,
    values: &BTreeMap<String, f64>,
    set: impl Fn(&mut proto::Metric, f64),
) -> Vec<proto::Metric> {
    let mut metrics: Vec<proto::Metric> = values
        .iter()
        .filter_map(|(series, value)| {
            let (name, labels) = parse_series(series)?;
            (name == def.name).then(|| {
                let mut m = proto::Metric::default();
                m.set_label(label_pairs(&labels));
                set(&mut m, *value);
                m
            })
        })
        .collect();
    if metrics.is_empty() && def.labels.is_empty() {
        let mut m = proto::Metric::default();
        set(&mut m, 0.0);
        metrics.push(m);
    }
    metrics
}

fn histogram_metrics(
    def: &MetricDef,
    bounds: &[f64],
    fields: &BTreeMap<String, f64>,
) -> Vec<proto::Metric> {
    // Group `series|bucket`, `series|sum`, `series|count` by series.
    let mut by_series: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (field, value) in fields {
        if let Some((series, part)) = field.rsplit_once('|') {
            if parse_series(series).is_some_and(|(name, _)| name == def.name) {
                by_series.entry(series).or_default().insert(part, *value);
            }
        }
    }
    if by_series.is_empty() && def.labels.is_empty() {
        by_series.insert(def.name, BTreeMap::new());
    }
    by_series
        .into_iter()
        .map(|(series, parts)| {
            let (_, labels) = parse_series(series).expect("filtered above");
            let mut cumulative = 0u64;
            let buckets = bounds
                .iter()
                .enumerate()
                .map(|(i, bound)| {
                    cumulative += parts.get(i.to_string().as_str()).copied().unwrap_or(0.0) as u64;
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = proto::Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_sum(parts.get("sum").copied().unwrap_or(0.0));
            h.set_sample_count(parts.get("count").copied().unwrap_or(0.0) as u64);
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
        // Label-less metrics show zero before anything is recorded.
        assert!(text.contains("chatbot_qdrant_searches_total 0"), "{text}");
        assert!(
            text.contains("chatbot_qdrant_search_latency_seconds_count 0"),
            "{text}"
        );
    }

    #[test]
    fn hgetall_pairs_parse() {
        let flat = vec![b"a".to_vec(), b"1.5".to_vec(), b"b".to_vec(), b"2".to_vec()];
        let map = Snapshot::hash_from_pairs(&flat);
        assert_eq!(map.get("a"), Some(&1.5));
        assert_eq!(map.get("b"), Some(&2.0));
    }
}
