//! The metric registry, how a request's samples are stored in Redis (one Lua
//! script call), and how a scrape's Redis data becomes Prometheus text.
//!
//! Spin keeps no memory between requests, so every counter and histogram
//! bucket lives in Redis hashes. Labels take values only from closed
//! vocabularies, so no caller input (session ids, questions) can become a
//! label and blow up cardinality.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use prometheus::proto::{self, MetricFamily, MetricType};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Seconds: 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A session counts as active this long after its last request.
pub const ACTIVE_SESSION_WINDOW_SECONDS: u64 = 900;

pub mod names {
    pub const QUERY_LATENCY: &str = "chatbot_query_latency_seconds";
    pub const QUERIES: &str = "chatbot_queries_total";
    pub const CACHE_HITS: &str = "chatbot_cache_hits_total";
    pub const CACHE_MISSES: &str = "chatbot_cache_misses_total";
    pub const OPENAI_CALLS: &str = "chatbot_openai_api_calls_total";
    pub const QDRANT_SEARCHES: &str = "chatbot_qdrant_searches_total";
    pub const QDRANT_SEARCH_LATENCY: &str = "chatbot_qdrant_search_latency_seconds";
    pub const RATE_LIMIT_HITS: &str = "chatbot_rate_limit_hits_total";
    pub const DATABASE_LATENCY: &str = "chatbot_database_query_latency_seconds";
    pub const ERRORS: &str = "chatbot_errors_total";
    pub const REDIS_CONNECTION_ERRORS: &str = "chatbot_redis_connection_errors_total";
    pub const OPENAI_RATE_LIMIT_ERRORS: &str = "chatbot_openai_rate_limit_errors_total";
    pub const ACTIVE_SESSIONS: &str = "chatbot_active_sessions";
    pub const OPENAI_LATENCY: &str = "chatbot_openai_latency_seconds";
    pub const OPENAI_TOKENS: &str = "chatbot_openai_tokens_total";
    pub const TOKENS_SAVED: &str = "chatbot_cache_tokens_saved_total";
    pub const RATE_LIMITER_DECISIONS: &str = "chatbot_rate_limiter_decisions_total";
    pub const HISTORY_WRITES_LOST: &str = "chatbot_history_writes_lost_total";
}

/// Every metric the recorder accepts and `/metrics` shows: the seed's, then an operator's extras.
pub const REGISTRY: &[MetricDef] = &[
    MetricDef {
        name: names::QUERY_LATENCY,
        help: "Latency of chat queries, by cache status",
        kind: Kind::Histogram(LATENCY_BUCKETS),
        labels: &["cache_status"],
    },
    MetricDef {
        name: names::QUERIES,
        help: "Requests to the chat API, by endpoint and outcome",
        kind: Kind::Counter,
        labels: &["endpoint", "status"],
    },
    MetricDef {
        name: names::CACHE_HITS,
        help: "Cache hits, by cache type",
        kind: Kind::Counter,
        labels: &["cache_type"],
    },
    MetricDef {
        name: names::CACHE_MISSES,
        help: "Cache misses, by cache type",
        kind: Kind::Counter,
        labels: &["cache_type"],
    },
    MetricDef {
        name: names::OPENAI_CALLS,
        help: "Calls to the OpenAI API, by operation",
        kind: Kind::Counter,
        labels: &["operation"],
    },
    MetricDef {
        name: names::QDRANT_SEARCHES,
        help: "Vector searches sent to Qdrant",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::QDRANT_SEARCH_LATENCY,
        help: "Latency of Qdrant searches",
        kind: Kind::Histogram(LATENCY_BUCKETS),
        labels: &[],
    },
    MetricDef {
        name: names::RATE_LIMIT_HITS,
        help: "Requests refused by the rate limiter (per-session detail: /health/cache/analytics)",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::DATABASE_LATENCY,
        help: "Latency of Postgres operations, by operation",
        kind: Kind::Histogram(LATENCY_BUCKETS),
        labels: &["operation"],
    },
    MetricDef {
        name: names::ERRORS,
        help: "Errors, by type",
        kind: Kind::Counter,
        labels: &["error_type"],
    },
    MetricDef {
        name: names::REDIS_CONNECTION_ERRORS,
        help: "Failed Redis connections or commands",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::OPENAI_RATE_LIMIT_ERRORS,
        help: "OpenAI answers of 429",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::ACTIVE_SESSIONS,
        help: "Sessions seen in the last 15 minutes",
        kind: Kind::Gauge,
        labels: &[],
    },
    MetricDef {
        name: names::OPENAI_LATENCY,
        help: "Latency of OpenAI calls, by operation",
        kind: Kind::Histogram(LATENCY_BUCKETS),
        labels: &["operation"],
    },
    MetricDef {
        name: names::OPENAI_TOKENS,
        help: "Tokens billed by OpenAI, by operation and kind",
        kind: Kind::Counter,
        labels: &["operation", "kind"],
    },
    MetricDef {
        name: names::TOKENS_SAVED,
        help: "OpenAI tokens not spent thanks to the caches, by cache type",
        kind: Kind::Counter,
        labels: &["cache_type"],
    },
    MetricDef {
        name: names::RATE_LIMITER_DECISIONS,
        help: "Rate-limiter decisions, by how they were reached",
        kind: Kind::Counter,
        labels: &["outcome"],
    },
    MetricDef {
        name: names::HISTORY_WRITES_LOST,
        help: "Exchanges answered but not stored in Postgres",
        kind: Kind::Counter,
        labels: &[],
    },
];

/// The values each label may take.
pub fn label_vocabulary(label: &str) -> &'static [&'static str] {
    match label {
        "endpoint" => &[
            "query",
            "history",
            "documents",
            "health",
            "metrics",
            "admin",
        ],
        "status" => &[
            "success",
            "cached",
            "error",
            "rate_limited",
            "invalid",
            "unavailable",
        ],
        "cache_type" => &["query", "embedding"],
        "cache_status" => &["hit", "miss", "bypass"],
        "operation" => &[
            "embedding",
            "chat",
            "search",
            "upsert",
            "store_exchange",
            "read_history",
            "cleanup",
        ],
        "error_type" => &[
            "validation",
            "openai",
            "qdrant",
            "redis",
            "postgres",
            "timeout",
            "config",
            "internal",
        ],
        "outcome" => &["enforced", "disabled", "failed_open", "failed_closed"],
        "kind" => &["prompt", "completion"],
        _ => &[],
    }
}

pub fn find(name: &str) -> Option<&'static MetricDef> {
    REGISTRY.iter().find(|m| m.name == name)
}

/// One observation, as the recorder interface carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        Self {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("unknown metric `{0}`")]
    UnknownMetric(String),
    #[error("metric `{metric}` takes labels {expected:?}, got {got:?}")]
    WrongLabels {
        metric: String,
        expected: Vec<String>,
        got: Vec<String>,
    },
    #[error("label `{label}` of `{metric}` may not be {value:?}")]
    BadLabelValue {
        metric: String,
        label: String,
        value: String,
    },
    #[error("value {value} for `{metric}` is not allowed")]
    BadValue { metric: String, value: String },
    #[error("`{0}` is computed by the metrics component, not recorded")]
    NotRecordable(String),
}

/// A validated operation of the record script.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Counter {
        series: String,
        value: f64,
    },
    Gauge {
        series: String,
        value: f64,
    },
    Histogram {
        series: String,
        value: f64,
        bucket: usize,
    },
}

/// The series key: `name{label="value",...}` with labels in registry order.
fn series_key(def: &MetricDef, labels: &[(String, String)]) -> String {
    if def.labels.is_empty() {
        return def.name.to_string();
    }
    let parts: Vec<String> = def
        .labels
        .iter()
        .map(|l| {
            let value = &labels.iter().find(|(k, _)| k == l).expect("validated").1;
            format!("{l}=\"{value}\"")
        })
        .collect();
    format!("{}{{{}}}", def.name, parts.join(","))
}

fn validate(sample: &Sample) -> Result<Op, SampleError> {
    let def = find(&sample.name).ok_or_else(|| SampleError::UnknownMetric(sample.name.clone()))?;
    if def.name == names::ACTIVE_SESSIONS {
        return Err(SampleError::NotRecordable(def.name.to_string()));
    }
    let mut got: Vec<String> = sample.labels.iter().map(|(k, _)| k.clone()).collect();
    let mut expected: Vec<String> = def.labels.iter().map(|l| l.to_string()).collect();
    got.sort();
    expected.sort();
    if got != expected {
        return Err(SampleError::WrongLabels {
            metric: def.name.to_string(),
            expected,
            got,
        });
    }
    for (label, value) in &sample.labels {
        if !label_vocabulary(label).contains(&value.as_str()) {
            return Err(SampleError::BadLabelValue {
                metric: def.name.to_string(),
                label: label.clone(),
                value: value.clone(),
            });
        }
    }
    let bad_value = || SampleError::BadValue {
        metric: def.name.to_string(),
        value: sample.value.to_string(),
    };
    if !sample.value.is_finite() {
        return Err(bad_value());
    }
    let series = series_key(def, &sample.labels);
    Ok(match def.kind {
        Kind::Counter if sample.value >= 0.0 => Op::Counter {
            series,
            value: sample.value,
        },
        Kind::Counter => return Err(bad_value()),
        Kind::Gauge => Op::Gauge {
            series,
            value: sample.value,
        },
        Kind::Histogram(bounds) if sample.value >= 0.0 => Op::Histogram {
            series,
            value: sample.value,
            bucket: bounds
                .iter()
                .position(|b| sample.value <= *b)
                .unwrap_or(bounds.len()),
        },
        Kind::Histogram(_) => return Err(bad_value()),
    })
}

/// Redis keys the metrics live in; one hash tag, so one Cluster slot.
pub mod keys {
    pub const COUNTERS: &str = "chatbot:metrics:{m}:counters";
    pub const HISTOGRAMS: &str = "chatbot:metrics:{m}:histograms";
    pub const GAUGES: &str = "chatbot:metrics:{m}:gauges";
    pub const SESSIONS: &str = "chatbot:metrics:{m}:sessions";
    pub const ALL: [&str; 4] = [COUNTERS, HISTOGRAMS, GAUGES, SESSIONS];
}

/// Records a batch atomically. `KEYS`: [`keys::ALL`]. `ARGV[1]`: the active-session
/// window, `ARGV[2]`: a hashed session id or empty, then triples/quads of
/// `c series value`, `g series value`, `h series value bucket`.
pub const RECORD_SCRIPT: &str = r#"
local window = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local now = tonumber(redis.call('TIME')[1])
  redis.call('ZADD', KEYS[4], now, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
end
local i = 3
local n = 0
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'c' then
    redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'g' then
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'h' then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1] .. '|' .. ARGV[i + 3], 1)
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i + 1] .. '|sum', ARGV[i + 2])
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1] .. '|count', 1)
    i = i + 4
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
  n = n + 1
end
return n
"#;

/// Counts the sessions active within `ARGV[1]` seconds, by the server's clock.
pub const ACTIVE_SESSIONS_SCRIPT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;

pub fn script_sha(script: &str) -> String {
    sha1_smol::Sha1::from(script).digest().to_string()
}

/// The `ARGV` of [`RECORD_SCRIPT`] for a batch, or the first invalid sample.
pub fn record_arguments(
    samples: &[Sample],
    session: Option<&str>,
) -> Result<Vec<String>, SampleError> {
    let mut args = vec![
        ACTIVE_SESSION_WINDOW_SECONDS.to_string(),
        session
            .map(|s| crate::ratelimit::hex(&Md5::digest(s.as_bytes())))
            .unwrap_or_default(),
    ];
    for sample in samples {
        match validate(sample)? {
            Op::Counter { series, value } => args.extend(["c".into(), series, value.to_string()]),
            Op::Gauge { series, value } => args.extend(["g".into(), series, value.to_string()]),
            Op::Histogram {
                series,
                value,
                bucket,
            } => args.extend(["h".into(), series, value.to_string(), bucket.to_string()]),
        }
    }
    Ok(args)
}

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
    fn registry_names_are_unique_and_labels_have_vocabularies() {
        let mut names: Vec<&str> = REGISTRY.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for def in REGISTRY {
            for label in def.labels {
                assert!(!label_vocabulary(label).is_empty(), "{label}");
            }
        }
    }

    #[test]
    fn a_valid_batch_becomes_script_arguments() {
        let args = record_arguments(
            &[
                Sample::new(
                    names::QUERIES,
                    &[("status", "success"), ("endpoint", "query")],
                    1.0,
                ),
                Sample::new(names::QUERY_LATENCY, &[("cache_status", "hit")], 0.003),
            ],
            Some("session-1"),
        )
        .unwrap();
        assert_eq!(args[0], "900");
        assert_eq!(args[1].len(), 32, "the session is hashed");
        assert_eq!(
            &args[2..5],
            [
                "c",
                "chatbot_queries_total{endpoint=\"query\",status=\"success\"}",
                "1"
            ]
        );
        // 0.003 falls in the 0.005 bucket (index 2).
        assert_eq!(
            &args[5..9],
            [
                "h",
                "chatbot_query_latency_seconds{cache_status=\"hit\"}",
                "0.003",
                "2"
            ]
        );
    }

    #[test]
    fn unbounded_labels_and_bad_values_are_refused() {
        let bad = |s: Sample| record_arguments(&[s], None).unwrap_err();
        assert!(matches!(
            bad(Sample::new("nope_total", &[], 1.0)),
            SampleError::UnknownMetric(_)
        ));
        assert!(matches!(
            bad(Sample::new(
                names::CACHE_HITS,
                &[("cache_type", "session-1234")],
                1.0
            )),
            SampleError::BadLabelValue { .. }
        ));
        assert!(matches!(
            bad(Sample::new(names::CACHE_HITS, &[("session_id", "x")], 1.0)),
            SampleError::WrongLabels { .. }
        ));
        assert!(matches!(
            bad(Sample::new(names::QDRANT_SEARCHES, &[], -1.0)),
            SampleError::BadValue { .. }
        ));
        assert!(matches!(
            bad(Sample::new(names::QDRANT_SEARCHES, &[], f64::NAN)),
            SampleError::BadValue { .. }
        ));
        assert!(matches!(
            bad(Sample::new(names::ACTIVE_SESSIONS, &[], 1.0)),
            SampleError::NotRecordable(_)
        ));
    }

    #[test]
    fn values_above_the_last_bound_go_to_the_inf_bucket() {
        let args = record_arguments(
            &[Sample::new(names::QDRANT_SEARCH_LATENCY, &[], 99.0)],
            None,
        )
        .unwrap();
        assert_eq!(args[5], LATENCY_BUCKETS.len().to_string());
    }

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
