//! What may be recorded: every metric's name, help, kind and labels, and each
//! label's closed vocabulary as an enum.

use crate::http::api::ErrorCode;

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
    pub const USER_TOKENS_CHARGED: &str = "chatbot_user_tokens_charged_total";
    pub const BUDGET_DENIALS: &str = "chatbot_user_budget_denials_total";
    pub const DEPLOYMENT_BUDGET_DENIALS: &str = "chatbot_deployment_budget_denials_total";
    pub const QDRANT_COLLECTION_MISSING: &str = "chatbot_qdrant_collection_missing_total";
}

/// Every metric the recorder accepts and `/metrics` shows: the seed's, then an operator's extras.
pub const REGISTRY: &[MetricDef] = &[
    MetricDef {
        name: names::QUERY_LATENCY,
        help: "Latency of chat queries, every outcome (refusals and failures too), by cache status",
        kind: Kind::Histogram(LATENCY_BUCKETS),
        labels: &["cache_status"],
    },
    MetricDef {
        name: names::QUERIES,
        help:
            "Requests to the chat API, by endpoint, outcome, and whether the query cache answered",
        kind: Kind::Counter,
        labels: &["endpoint", "status", "cached"],
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
    MetricDef {
        name: names::USER_TOKENS_CHARGED,
        help: "OpenAI tokens charged to users' daily budgets (misses only)",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::BUDGET_DENIALS,
        help: "Requests refused because the user's daily token budget was spent",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::DEPLOYMENT_BUDGET_DENIALS,
        help: "Misses refused because the deployment's daily token ceiling was spent",
        kind: Kind::Counter,
        labels: &[],
    },
    MetricDef {
        name: names::QDRANT_COLLECTION_MISSING,
        help: "Searches answered without passages because the Qdrant collection does not exist (nothing ingested yet, or a mistyped qdrant_collection)",
        kind: Kind::Counter,
        labels: &[],
    },
];

/// Declares a label's closed vocabulary as an enum: a value outside it does
/// not compile, and the recorder's run-time check reads the same list.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident = $label:literal { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The label this vocabulary is for.
            pub const LABEL: &'static str = $label;
            /// Every value, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($value),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }
    };
}

label_values!(
    /// Which API a request was for.
    Endpoint = "endpoint" {
        Query => "query",
        History => "history",
        Documents => "documents",
        Health => "health",
        Metrics => "metrics",
        Admin => "admin",
    }
);
label_values!(
    /// How a request ended (`chatbot_queries_total`): `success` is every
    /// answered question, from the cache or not (the `cached` label tells).
    QueryStatus = "status" {
        Success => "success",
        Error => "error",
        RateLimited => "rate_limited",
        Invalid => "invalid",
        Unavailable => "unavailable",
        Unauthorized => "unauthorized",
        NotFound => "not_found",
        BudgetExceeded => "budget_exceeded",
    }
);
label_values!(
    /// Whether the query cache answered (`chatbot_queries_total`).
    Cached = "cached" {
        Yes => "true",
        No => "false",
    }
);
label_values!(
    CacheType = "cache_type" {
        Query => "query",
        Embedding => "embedding",
        Semantic => "semantic",
    }
);
label_values!(
    /// How the query cache served a request.
    CacheStatus = "cache_status" {
        Hit => "hit",
        Miss => "miss",
        Bypass => "bypass",
    }
);
label_values!(
    /// An upstream or database operation.
    Operation = "operation" {
        Embedding => "embedding",
        Chat => "chat",
        Rewrite => "rewrite",
        Search => "search",
        Upsert => "upsert",
        StoreExchange => "store_exchange",
        ReadHistory => "read_history",
        Cleanup => "cleanup",
    }
);
label_values!(
    ErrorType = "error_type" {
        Validation => "validation",
        OpenAi => "openai",
        Qdrant => "qdrant",
        Redis => "redis",
        Postgres => "postgres",
        Timeout => "timeout",
        Config => "config",
        Internal => "internal",
    }
);
label_values!(
    /// How the rate limiter reached its decision.
    LimiterOutcome = "outcome" {
        Enforced => "enforced",
        Disabled => "disabled",
        FailedOpen => "failed_open",
        FailedClosed => "failed_closed",
    }
);
label_values!(
    TokenKind = "kind" {
        Prompt => "prompt",
        Completion => "completion",
    }
);

impl QueryStatus {
    /// How a refused request is counted: by its error's code.
    pub const fn of_refusal(code: ErrorCode) -> Self {
        use ErrorCode as C;
        match code {
            C::InvalidRequest
            | C::InvalidJson
            | C::UnsupportedMediaType
            | C::PayloadTooLarge
            | C::RequestTimeout
            | C::MethodNotAllowed
            | C::Conflict => Self::Invalid,
            C::NotFound => Self::NotFound,
            C::Unauthorized | C::Forbidden => Self::Unauthorized,
            C::RateLimited | C::SessionLimit => Self::RateLimited,
            C::BudgetExceeded => Self::BudgetExceeded,
            C::UpstreamUnavailable
            | C::UpstreamTimeout
            | C::UpstreamBadResponse
            | C::Unavailable => Self::Unavailable,
            C::ConfigurationError => Self::Error,
        }
    }
}

impl ErrorType {
    /// The error a refusal is counted as in `chatbot_errors_total`, when the
    /// request itself or the configuration is at fault (a dependency's
    /// failure is counted where it happens, by its type).
    pub const fn of_refusal(code: ErrorCode) -> Option<Self> {
        match QueryStatus::of_refusal(code) {
            QueryStatus::Invalid => Some(Self::Validation),
            QueryStatus::Error => Some(Self::Config),
            _ => None,
        }
    }
}

impl Cached {
    pub const fn from_bool(cached: bool) -> Self {
        if cached {
            Self::Yes
        } else {
            Self::No
        }
    }
}

/// The series key the recorder stores a metric's value under:
/// `name{label="value",...}`, labels in registry order.
pub fn series_key(def: &MetricDef, values: &[&str]) -> String {
    if def.labels.is_empty() {
        return def.name.to_string();
    }
    let parts: Vec<String> = def
        .labels
        .iter()
        .zip(values)
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    format!("{}{{{}}}", def.name, parts.join(","))
}

/// Every series a metric can have: the product of its labels' vocabularies,
/// as (series key, label pairs). All are exported from the first scrape, at
/// zero until recorded, so `rate()` and alerts see them before the first event.
pub fn every_series(def: &MetricDef) -> Vec<(String, Vec<(String, String)>)> {
    let mut combinations: Vec<Vec<&str>> = vec![vec![]];
    for label in def.labels {
        combinations = combinations
            .into_iter()
            .flat_map(|prefix| {
                label_vocabulary(label).iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push(*value);
                    next
                })
            })
            .collect();
    }
    combinations
        .into_iter()
        .map(|values| {
            let pairs = def
                .labels
                .iter()
                .zip(&values)
                .map(|(l, v)| (l.to_string(), v.to_string()))
                .collect();
            (series_key(def, &values), pairs)
        })
        .collect()
}

/// The values each label may take (empty for an unknown label).
pub fn label_vocabulary(label: &str) -> &'static [&'static str] {
    match label {
        Endpoint::LABEL => Endpoint::VALUES,
        QueryStatus::LABEL => QueryStatus::VALUES,
        Cached::LABEL => Cached::VALUES,
        CacheType::LABEL => CacheType::VALUES,
        CacheStatus::LABEL => CacheStatus::VALUES,
        Operation::LABEL => Operation::VALUES,
        ErrorType::LABEL => ErrorType::VALUES,
        LimiterOutcome::LABEL => LimiterOutcome::VALUES,
        TokenKind::LABEL => TokenKind::VALUES,
        _ => &[],
    }
}

pub fn find(name: &str) -> Option<&'static MetricDef> {
    REGISTRY.iter().find(|m| m.name == name)
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
    fn typed_labels_and_their_vocabularies_agree() {
        assert_eq!(label_vocabulary("endpoint"), Endpoint::VALUES);
        assert_eq!(Endpoint::Documents.as_str(), "documents");
        assert_eq!(CacheStatus::VALUES, ["hit", "miss", "bypass"]);
        assert!(label_vocabulary("session_id").is_empty());
    }

    #[test]
    fn refusals_are_counted_by_their_code() {
        assert_eq!(
            QueryStatus::of_refusal(ErrorCode::InvalidJson),
            QueryStatus::Invalid
        );
        assert_eq!(
            ErrorType::of_refusal(ErrorCode::PayloadTooLarge),
            Some(ErrorType::Validation)
        );
        assert_eq!(
            ErrorType::of_refusal(ErrorCode::ConfigurationError),
            Some(ErrorType::Config)
        );
        assert_eq!(ErrorType::of_refusal(ErrorCode::RateLimited), None);
        assert_eq!(
            QueryStatus::of_refusal(ErrorCode::BudgetExceeded),
            QueryStatus::BudgetExceeded
        );
    }

    #[test]
    fn every_series_is_the_product_of_the_vocabularies() {
        let queries = find(names::QUERIES).unwrap();
        let all = every_series(queries);
        assert_eq!(
            all.len(),
            Endpoint::VALUES.len() * QueryStatus::VALUES.len() * Cached::VALUES.len()
        );
        assert!(all.iter().any(|(key, _)| key
            == "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}"));
        let unlabelled = find(names::QDRANT_SEARCHES).unwrap();
        assert_eq!(
            every_series(unlabelled),
            vec![(names::QDRANT_SEARCHES.to_string(), vec![])]
        );
    }
}
