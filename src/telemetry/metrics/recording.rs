//! Recording: a request's samples, validated against the registry, become the
//! arguments of one Lua script that updates the Redis hashes atomically.

use crate::redis::script::{Arg, Script, Value};

use crate::redis::digest::md5_hex;

use super::registry::ACTIVE_SESSION_WINDOW_SECONDS;
#[cfg(test)]
use super::registry::LATENCY_BUCKETS;
use super::registry::{
    find, label_vocabulary, names, series_key, CacheStatus, CacheType, Cached, Endpoint, ErrorType,
    Kind, LimiterOutcome, MetricDef, Operation, QueryStatus, TokenKind,
};

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
    /// Every counter counts whole things (requests, tokens), and Redis adds
    /// integers (`HINCRBY`) for less than floats.
    Counter { series: String, value: u64 },
    Histogram {
        series: String,
        value: f64,
        bucket: usize,
    },
}

/// The series key of a validated sample (labels in registry order).
fn sample_series(def: &MetricDef, labels: &[(String, String)]) -> String {
    let values: Vec<&str> = def
        .labels
        .iter()
        .map(|l| {
            labels
                .iter()
                .find(|(k, _)| k == l)
                .expect("validated")
                .1
                .as_str()
        })
        .collect();
    series_key(def, &values)
}

fn validate(sample: &Sample) -> Result<Op, SampleError> {
    let def = find(&sample.name).ok_or_else(|| SampleError::UnknownMetric(sample.name.clone()))?;
    // The one gauge, active sessions, is counted at scrape time from the sessions seen.
    if def.kind == Kind::Gauge {
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
    let series = sample_series(def, &sample.labels);
    Ok(match def.kind {
        Kind::Counter if sample.value >= 0.0 && sample.value.fract() == 0.0 => Op::Counter {
            series,
            value: sample.value as u64,
        },
        Kind::Counter => return Err(bad_value()),
        Kind::Gauge => unreachable!("refused above"),
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

/// A batch of samples, validated, recorded atomically in one round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    args: Vec<String>,
}

impl Record {
    /// The batch, or the first invalid sample. `seen_session` is counted
    /// active (hashed: the id never reaches Redis).
    pub fn batch(samples: &[Sample], seen_session: Option<&str>) -> Result<Self, SampleError> {
        record_arguments(samples, seen_session).map(|args| Self { args })
    }

    /// Nothing to record: no sample and no session.
    pub fn is_empty(&self) -> bool {
        self.args.len() == 2 && self.args[1].is_empty()
    }
}

impl Script for Record {
    const SOURCE: &'static str = RECORD_LUA;
    type Reply = ();

    /// [`crate::redis::keys::metrics::ALL`].
    fn keys(&self) -> Vec<String> {
        crate::redis::keys::metrics::ALL
            .map(str::to_string)
            .to_vec()
    }

    /// The active-session window, a hashed session id or empty, then
    /// triples and quads: `c series value`, `h series value bucket`.
    fn args(&self) -> Vec<Arg> {
        self.args.iter().map(Arg::from).collect()
    }

    fn parse(&self, _: Vec<Value>) {}
}

const RECORD_LUA: &str = r#"
local window = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local now = tonumber(redis.call('TIME')[1])
  redis.call('ZADD', KEYS[3], now, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
end
local i = 3
local n = 0
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'c' then
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], ARGV[i + 2])
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

/// The `ARGV` of [`Record`] for a batch, or the first invalid sample.
fn record_arguments(samples: &[Sample], session: Option<&str>) -> Result<Vec<String>, SampleError> {
    let mut args = vec![
        ACTIVE_SESSION_WINDOW_SECONDS.to_string(),
        session.map(|s| md5_hex(s.as_bytes())).unwrap_or_default(),
    ];
    for sample in samples {
        match validate(sample)? {
            Op::Counter { series, value } => args.extend(["c".into(), series, value.to_string()]),
            Op::Histogram {
                series,
                value,
                bucket,
            } => args.extend(["h".into(), series, value.to_string(), bucket.to_string()]),
        }
    }
    Ok(args)
}

/// One typed observation: the only way the components make a [`Sample`], so a
/// metric name, a label or a label value outside the registry does not compile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A chat query's latency, by how the cache served it.
    QueryLatency(CacheStatus, f64),
    /// A request to the chat API ended so (answered from the query cache or not).
    Query(Endpoint, QueryStatus, Cached),
    CacheHits(CacheType, f64),
    CacheMisses(CacheType, f64),
    OpenAiCall(Operation),
    OpenAiLatency(Operation, f64),
    OpenAiTokens(Operation, TokenKind, f64),
    OpenAiRateLimited,
    QdrantSearch,
    QdrantSearchLatency(f64),
    /// A search found no collection to search (answered without passages).
    QdrantCollectionMissing,
    RateLimitHit,
    RateLimiterDecision(LimiterOutcome),
    DatabaseLatency(Operation, f64),
    Error(ErrorType),
    RedisConnectionError,
    TokensSaved(CacheType, f64),
    HistoryWriteLost,
    UserTokensCharged(f64),
    BudgetDenial,
    DeploymentBudgetDenial,
}

impl Observation {
    pub fn sample(self) -> Sample {
        use Observation as O;
        let (name, labels, value): (&str, Vec<(&str, &str)>, f64) = match self {
            O::QueryLatency(status, seconds) => (
                names::QUERY_LATENCY,
                vec![(CacheStatus::LABEL, status.as_str())],
                seconds,
            ),
            O::Query(endpoint, status, cached) => (
                names::QUERIES,
                vec![
                    (Endpoint::LABEL, endpoint.as_str()),
                    (QueryStatus::LABEL, status.as_str()),
                    (Cached::LABEL, cached.as_str()),
                ],
                1.0,
            ),
            O::CacheHits(cache, n) => (
                names::CACHE_HITS,
                vec![(CacheType::LABEL, cache.as_str())],
                n,
            ),
            O::CacheMisses(cache, n) => (
                names::CACHE_MISSES,
                vec![(CacheType::LABEL, cache.as_str())],
                n,
            ),
            O::OpenAiCall(operation) => (
                names::OPENAI_CALLS,
                vec![(Operation::LABEL, operation.as_str())],
                1.0,
            ),
            O::OpenAiLatency(operation, seconds) => (
                names::OPENAI_LATENCY,
                vec![(Operation::LABEL, operation.as_str())],
                seconds,
            ),
            O::OpenAiTokens(operation, kind, n) => (
                names::OPENAI_TOKENS,
                vec![
                    (Operation::LABEL, operation.as_str()),
                    (TokenKind::LABEL, kind.as_str()),
                ],
                n,
            ),
            O::OpenAiRateLimited => (names::OPENAI_RATE_LIMIT_ERRORS, vec![], 1.0),
            O::QdrantSearch => (names::QDRANT_SEARCHES, vec![], 1.0),
            O::QdrantSearchLatency(seconds) => (names::QDRANT_SEARCH_LATENCY, vec![], seconds),
            O::QdrantCollectionMissing => (names::QDRANT_COLLECTION_MISSING, vec![], 1.0),
            O::RateLimitHit => (names::RATE_LIMIT_HITS, vec![], 1.0),
            O::RateLimiterDecision(outcome) => (
                names::RATE_LIMITER_DECISIONS,
                vec![(LimiterOutcome::LABEL, outcome.as_str())],
                1.0,
            ),
            O::DatabaseLatency(operation, seconds) => (
                names::DATABASE_LATENCY,
                vec![(Operation::LABEL, operation.as_str())],
                seconds,
            ),
            O::Error(kind) => (names::ERRORS, vec![(ErrorType::LABEL, kind.as_str())], 1.0),
            O::RedisConnectionError => (names::REDIS_CONNECTION_ERRORS, vec![], 1.0),
            O::TokensSaved(cache, n) => (
                names::TOKENS_SAVED,
                vec![(CacheType::LABEL, cache.as_str())],
                n,
            ),
            O::HistoryWriteLost => (names::HISTORY_WRITES_LOST, vec![], 1.0),
            O::UserTokensCharged(n) => (names::USER_TOKENS_CHARGED, vec![], n),
            O::BudgetDenial => (names::BUDGET_DENIALS, vec![], 1.0),
            O::DeploymentBudgetDenial => (names::DEPLOYMENT_BUDGET_DENIALS, vec![], 1.0),
        };
        Sample::new(name, &labels, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_batch_becomes_script_arguments() {
        let args = record_arguments(
            &[
                Sample::new(
                    names::QUERIES,
                    &[
                        ("status", "success"),
                        ("endpoint", "query"),
                        ("cached", "true"),
                    ],
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
                "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}",
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
        // Counters count whole things.
        assert!(matches!(
            bad(Sample::new(names::QDRANT_SEARCHES, &[], 0.5)),
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
    fn every_typed_observation_is_a_valid_sample() {
        use Observation as O;
        let all = [
            O::QueryLatency(CacheStatus::Bypass, 0.1),
            O::Query(Endpoint::Documents, QueryStatus::Unavailable, Cached::No),
            O::CacheHits(CacheType::Embedding, 2.0),
            O::CacheMisses(CacheType::Query, 1.0),
            O::OpenAiCall(Operation::Chat),
            O::OpenAiLatency(Operation::Embedding, 0.2),
            O::OpenAiTokens(Operation::Chat, TokenKind::Completion, 7.0),
            O::OpenAiRateLimited,
            O::QdrantSearch,
            O::QdrantSearchLatency(0.01),
            O::QdrantCollectionMissing,
            O::RateLimitHit,
            O::RateLimiterDecision(LimiterOutcome::FailedOpen),
            O::DatabaseLatency(Operation::StoreExchange, 0.004),
            O::Error(ErrorType::Timeout),
            O::RedisConnectionError,
            O::TokensSaved(CacheType::Query, 30.0),
            O::HistoryWriteLost,
            O::UserTokensCharged(12.0),
            O::BudgetDenial,
            O::DeploymentBudgetDenial,
        ];
        let samples: Vec<Sample> = all.into_iter().map(Observation::sample).collect();
        let args = record_arguments(&samples, None).unwrap();
        assert_eq!(
            args.iter()
                .filter(|a| ["c", "h"].contains(&a.as_str()))
                .count(),
            all.len()
        );
    }
}
