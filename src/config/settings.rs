//! The pipeline's, the limiter's and the sessions' settings, each parsed from
//! one lookup (the identity settings are parsed the same way, next to what
//! they configure: `limits::identity::IdentitySettings`).
//!
//! A component passes a closure that reads a Spin variable (`None` when it is
//! not set); everything else (names, ranges, defaults, what is secret) is
//! decided here and unit-tested natively with a map for a lookup.

use std::time::Duration;

use crate::cache::answers::{AnswerShape, CacheScope};
use crate::chat::conversation::{
    ContextSettings, Retrieval, DEFAULT_CONTEXT_MAX_TOKENS, DEFAULT_CONTEXT_TURNS,
};
use crate::config::{self, names, ConfigError, Secret};
use crate::http::api::validate_id;
use crate::limits::ratelimit::{BucketConfig, FailurePolicy};

/// Reads one variable; `None` when it is not set.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;

    fn require(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing {
            name: name.to_string(),
        })
    }

    fn number(&self, name: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        config::parse_u64(name, &self.require(name)?, min, max)
    }
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

pub fn redis_address(lookup: &impl Lookup) -> Result<String, ConfigError> {
    config::parse_redis_address(names::REDIS_ADDRESS, &lookup.require(names::REDIS_ADDRESS)?)
}

/// Bounds a Postgres connect (`connect_timeout`, in seconds) when the
/// address does not say otherwise: a host that never accepts the connection.
pub const POSTGRES_CONNECT_TIMEOUT_SECONDS: u64 = 5;
/// Bounds every statement (`statement_timeout`, through `options`) when the
/// address does not say otherwise: the default request deadline.
pub const POSTGRES_STATEMENT_TIMEOUT_MS: u64 = 30_000;

pub fn postgres_address(lookup: &impl Lookup) -> Result<String, ConfigError> {
    let address = config::parse_postgres_address(
        names::POSTGRES_ADDRESS,
        &lookup.require(names::POSTGRES_ADDRESS)?,
    )?;
    Ok(with_postgres_timeouts(&address))
}

/// The address with `connect_timeout` and a `statement_timeout` added where
/// it sets neither (tokio-postgres, under Spin's Postgres host, reads both
/// from the URL; `options` reaches the server as a startup parameter).
/// Neither helps against a server that accepts and then never answers: Spin's
/// client has no timeout for that (see README, "Deadlines").
pub fn with_postgres_timeouts(address: &str) -> String {
    let (base, fragment) = match address.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (address, None),
    };
    let query = base.split_once('?').map(|(_, q)| q).unwrap_or("");
    let has = |key: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    };
    let mut added = Vec::new();
    if !has("connect_timeout") {
        added.push(format!(
            "connect_timeout={POSTGRES_CONNECT_TIMEOUT_SECONDS}"
        ));
    }
    if !has("options") {
        added.push(format!(
            "options=-c%20statement_timeout%3D{POSTGRES_STATEMENT_TIMEOUT_MS}"
        ));
    }
    if added.is_empty() {
        return address.to_string();
    }
    let separator = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut result = format!("{base}{separator}{}", added.join("&"));
    if let Some(fragment) = fragment {
        result.push('#');
        result.push_str(fragment);
    }
    result
}

/// The admin token; empty (admin closed) when not set.
pub fn admin_token(lookup: &impl Lookup) -> Secret {
    Secret::new(lookup.get(names::ADMIN_TOKEN).unwrap_or_default())
}

/// How long a health probe waits for a dependency (2 s unless set).
pub fn health_check_timeout(lookup: &impl Lookup) -> Duration {
    let ms = lookup
        .get(names::HEALTH_CHECK_TIMEOUT_MS)
        .and_then(|raw| config::parse_u64(names::HEALTH_CHECK_TIMEOUT_MS, &raw, 50, 60_000).ok())
        .unwrap_or(2000);
    Duration::from_millis(ms)
}

/// Everything the RAG pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub redis_address: String,
    pub postgres_address: String,
    pub openai_base_url: String,
    pub openai_api_key: Secret,
    pub embedding_model: String,
    pub chat_model: String,
    /// The most tokens an answer may take (`max_tokens` on every chat call),
    /// and so the completion part of a budget's reservation.
    pub chat_max_tokens: u32,
    /// OpenAI tokens all misses together may spend per UTC day (0: no
    /// ceiling), reserved as a user's budget is: what bounds anonymous spend.
    pub deployment_token_budget_per_day: u64,
    pub qdrant_url: String,
    pub qdrant_api_key: Secret,
    pub qdrant_collection: String,
    pub top_k: u32,
    pub query_cache_ttl_seconds: u64,
    pub embedding_cache_ttl_seconds: u64,
    pub cache_scope: CacheScope,
    pub retention_days: u32,
    pub openai_timeout: Duration,
    pub qdrant_timeout: Duration,
    /// The whole request's deadline: every call gets what is left of it at most.
    pub request_timeout: Duration,
    /// How much of its conversation a follow-up is answered with.
    pub conversation: ContextSettings,
    /// The cosine similarity at which a question is served the answer of an
    /// earlier one (`None`: the semantic cache is off), per embedding model
    /// (see [`crate::cache::semantic::parse_threshold`]).
    pub semantic_cache_threshold: Option<f64>,
}

/// An answer's token cap when `chat_max_tokens` is not set.
pub const DEFAULT_CHAT_MAX_TOKENS: u64 = 1024;

/// The request deadline when `request_timeout_ms` is not set.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// A service's base URL: http(s) with a host; paths are appended to it, so
/// a trailing `/` is dropped.
fn base_url(lookup: &impl Lookup, name: &str) -> Result<String, ConfigError> {
    let raw = config::require_non_empty(name, &lookup.require(name)?)?;
    let parsed = url::Url::parse(&raw).ok();
    if !parsed.is_some_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host()) {
        return Err(ConfigError::Invalid {
            name: name.to_string(),
            value: config::redact_userinfo(&raw),
            expected: "an http:// or https:// URL",
        });
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// `conversation_turns` (5 unless set; 0 answers every question alone),
/// `conversation_max_tokens` (1500 unless set), `conversation_retrieval`
/// (`rewrite` unless set).
fn context_settings(lookup: &impl Lookup) -> Result<ContextSettings, ConfigError> {
    let retrieval = match lookup
        .get(names::CONVERSATION_RETRIEVAL)
        .filter(|raw| !raw.trim().is_empty())
    {
        None => Retrieval::Rewrite,
        Some(raw) => Retrieval::parse(&raw).ok_or(ConfigError::Invalid {
            name: names::CONVERSATION_RETRIEVAL.into(),
            value: raw,
            expected: "`rewrite`, `recent` or `question`",
        })?,
    };
    Ok(ContextSettings {
        turns: number_or(
            lookup,
            names::CONVERSATION_TURNS,
            0,
            50,
            DEFAULT_CONTEXT_TURNS,
        )? as u32,
        max_tokens: number_or(
            lookup,
            names::CONVERSATION_MAX_TOKENS,
            0,
            100_000,
            DEFAULT_CONTEXT_MAX_TOKENS,
        )? as u32,
        retrieval,
        kept_seconds: number_or(
            lookup,
            names::SESSION_IDLE_SECONDS,
            1,
            30 * 86_400,
            DEFAULT_SESSION_IDLE_SECONDS,
        )?,
    })
}

/// `semantic_cache_threshold`, for the configured `embedding_model`.
fn semantic_threshold(lookup: &impl Lookup) -> Result<Option<f64>, ConfigError> {
    let raw = lookup.get(names::SEMANTIC_CACHE_THRESHOLD);
    let model = lookup.get(names::EMBEDDING_MODEL).unwrap_or_default();
    crate::cache::semantic::parse_threshold(raw.as_deref(), &model).map_err(|_| {
        ConfigError::Invalid {
            name: names::SEMANTIC_CACHE_THRESHOLD.into(),
            value: raw.unwrap_or_default(),
            expected: "off, a cosine similarity above 0 and at most 1, or model=similarity,...",
        }
    })
}

impl PipelineSettings {
    pub fn from_lookup(lookup: &impl Lookup) -> Result<Self, ConfigError> {
        let scope_raw = lookup.require(names::QUERY_CACHE_SCOPE)?;
        let collection = config::require_non_empty(
            names::QDRANT_COLLECTION,
            &lookup.require(names::QDRANT_COLLECTION)?,
        )?;
        validate_id(names::QDRANT_COLLECTION, &collection).map_err(|_| ConfigError::Invalid {
            name: names::QDRANT_COLLECTION.into(),
            value: collection.clone(),
            expected: "a collection name of letters, digits, '-', '_', '.' or ':'",
        })?;
        Ok(Self {
            redis_address: redis_address(lookup)?,
            postgres_address: postgres_address(lookup)?,
            openai_base_url: base_url(lookup, names::OPENAI_BASE_URL)?,
            openai_api_key: Secret::new(lookup.require(names::OPENAI_API_KEY)?),
            embedding_model: config::require_non_empty(
                names::EMBEDDING_MODEL,
                &lookup.require(names::EMBEDDING_MODEL)?,
            )?,
            chat_model: config::require_non_empty(
                names::CHAT_MODEL,
                &lookup.require(names::CHAT_MODEL)?,
            )?,
            chat_max_tokens: number_or(
                lookup,
                names::CHAT_MAX_TOKENS,
                1,
                1_000_000,
                DEFAULT_CHAT_MAX_TOKENS,
            )? as u32,
            deployment_token_budget_per_day: number_or(
                lookup,
                names::DEPLOYMENT_TOKEN_BUDGET_PER_DAY,
                0,
                u64::from(u32::MAX) * 1_000_000,
                0,
            )?,
            qdrant_url: base_url(lookup, names::QDRANT_URL)?,
            qdrant_api_key: Secret::new(lookup.require(names::QDRANT_API_KEY)?),
            qdrant_collection: collection,
            top_k: lookup.number(names::TOP_K, 1, 100)? as u32,
            query_cache_ttl_seconds: lookup.number(
                names::QUERY_CACHE_TTL_SECONDS,
                1,
                30 * 86_400,
            )?,
            embedding_cache_ttl_seconds: lookup.number(
                names::EMBEDDING_CACHE_TTL_SECONDS,
                1,
                365 * 86_400,
            )?,
            cache_scope: CacheScope::parse(&scope_raw).ok_or(ConfigError::Invalid {
                name: names::QUERY_CACHE_SCOPE.into(),
                value: scope_raw,
                expected: "`session` or `global`",
            })?,
            retention_days: lookup.number(names::RETENTION_DAYS, 1, 36_500)? as u32,
            openai_timeout: Duration::from_millis(lookup.number(
                names::OPENAI_TIMEOUT_MS,
                100,
                600_000,
            )?),
            qdrant_timeout: Duration::from_millis(lookup.number(
                names::QDRANT_TIMEOUT_MS,
                100,
                600_000,
            )?),
            request_timeout: Duration::from_millis(number_or(
                lookup,
                names::REQUEST_TIMEOUT_MS,
                100,
                600_000,
                DEFAULT_REQUEST_TIMEOUT_MS,
            )?),
            conversation: context_settings(lookup)?,
            semantic_cache_threshold: semantic_threshold(lookup)?,
        })
    }

    /// How an answer stored now waits to serve other sessions
    /// semantically (`warm_up`: an admin's warm-up computed it).
    pub fn confirmation(&self, warm_up: bool) -> crate::cache::answers::Confirmation {
        crate::cache::answers::Confirmation::of(
            self.cache_scope,
            self.semantic_cache_threshold.is_some(),
            warm_up,
        )
    }

    pub fn shape(&self) -> AnswerShape<'_> {
        AnswerShape {
            chat_model: &self.chat_model,
            embedding_model: &self.embedding_model,
            collection: &self.qdrant_collection,
            top_k: self.top_k,
            scope: self.cache_scope,
        }
    }
}

/// `session_idle_seconds` when not set.
pub const DEFAULT_SESSION_IDLE_SECONDS: u64 = 1800;

/// What a user may hold and spend: sessions at once (and when an idle one
/// stops counting), and OpenAI tokens per UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_per_user: u64,
    pub idle_seconds: u64,
    /// 0: no budget.
    pub token_budget_per_day: u64,
}

impl SessionLimits {
    pub fn from_lookup(lookup: &impl Lookup) -> Result<Self, ConfigError> {
        Ok(Self {
            max_per_user: lookup.number(names::MAX_SESSIONS_PER_USER, 1, 10_000)?,
            idle_seconds: lookup.number(names::SESSION_IDLE_SECONDS, 1, 30 * 86_400)?,
            token_budget_per_day: number_or(
                lookup,
                names::USER_TOKEN_BUDGET_PER_DAY,
                0,
                u64::from(u32::MAX) * 1_000,
                0,
            )?,
        })
    }
}

/// The rate limiter's bucket and policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterSettings {
    pub enabled: bool,
    /// Each session's bucket, and each user's.
    pub bucket: BucketConfig,
    /// Each client address's bucket, in front of the others.
    pub per_address: BucketConfig,
    /// Each IPv6 client's /48 (IPv4 clients have none), with the address's window.
    pub per_network: BucketConfig,
    pub on_failure: FailurePolicy,
}

/// The /48's capacity when `rate_limit_per_network_requests` is not set: ten
/// addresses' worth.
pub const DEFAULT_PER_NETWORK_CAPACITY: u32 = 10 * DEFAULT_PER_ADDRESS.capacity;

/// Per-address defaults when a manifest predates the variables: generous
/// enough for a household or an office behind one address.
pub const DEFAULT_PER_ADDRESS: BucketConfig = BucketConfig {
    capacity: 300,
    window_seconds: 60,
};

fn number_or(
    lookup: &impl Lookup,
    name: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ConfigError> {
    match lookup.get(name) {
        Some(raw) if !raw.trim().is_empty() => config::parse_u64(name, &raw, min, max),
        _ => Ok(default),
    }
}

impl LimiterSettings {
    pub fn from_lookup(lookup: &impl Lookup) -> Result<Self, ConfigError> {
        let raw_policy = lookup.require(names::RATE_LIMIT_FAILURE_POLICY)?;
        let per_address = BucketConfig {
            capacity: number_or(
                lookup,
                names::RATE_LIMIT_PER_ADDRESS_REQUESTS,
                1,
                10_000_000,
                DEFAULT_PER_ADDRESS.capacity.into(),
            )? as u32,
            window_seconds: number_or(
                lookup,
                names::RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS,
                1,
                86_400,
                DEFAULT_PER_ADDRESS.window_seconds.into(),
            )? as u32,
        };
        Ok(Self {
            enabled: config::parse_bool(
                names::RATE_LIMIT_ENABLED,
                &lookup.require(names::RATE_LIMIT_ENABLED)?,
            )?,
            bucket: BucketConfig {
                capacity: lookup.number(names::RATE_LIMIT_REQUESTS, 1, 1_000_000)? as u32,
                window_seconds: lookup.number(names::RATE_LIMIT_WINDOW_SECONDS, 1, 86_400)? as u32,
            },
            per_network: BucketConfig {
                capacity: number_or(
                    lookup,
                    names::RATE_LIMIT_PER_NETWORK_REQUESTS,
                    1,
                    10_000_000,
                    DEFAULT_PER_NETWORK_CAPACITY.into(),
                )? as u32,
                window_seconds: per_address.window_seconds,
            },
            per_address,
            on_failure: FailurePolicy::parse(&raw_policy).ok_or(ConfigError::Invalid {
                name: names::RATE_LIMIT_FAILURE_POLICY.into(),
                value: raw_policy,
                expected: "`open` or `closed`",
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn defaults() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            (names::REDIS_ADDRESS, "redis://127.0.0.1:6379"),
            (names::POSTGRES_ADDRESS, "postgres://u:pw@127.0.0.1/db"),
            (names::OPENAI_BASE_URL, "https://api.openai.com/v1/"),
            (names::OPENAI_API_KEY, "sk-test"),
            (names::EMBEDDING_MODEL, "text-embedding-3-small"),
            (names::CHAT_MODEL, "gpt-4o-mini"),
            (names::QDRANT_URL, "http://127.0.0.1:6333"),
            (names::QDRANT_API_KEY, ""),
            (names::QDRANT_COLLECTION, "documents"),
            (names::TOP_K, "5"),
            (names::QUERY_CACHE_TTL_SECONDS, "3600"),
            (names::EMBEDDING_CACHE_TTL_SECONDS, "86400"),
            (names::QUERY_CACHE_SCOPE, "session"),
            (names::RETENTION_DAYS, "30"),
            (names::OPENAI_TIMEOUT_MS, "30000"),
            (names::QDRANT_TIMEOUT_MS, "5000"),
            (names::MAX_SESSIONS_PER_USER, "5"),
            (names::SESSION_IDLE_SECONDS, "1800"),
            (names::RATE_LIMIT_ENABLED, "true"),
            (names::RATE_LIMIT_REQUESTS, "100"),
            (names::RATE_LIMIT_WINDOW_SECONDS, "60"),
            (names::RATE_LIMIT_FAILURE_POLICY, "open"),
        ])
    }

    fn lookup(map: BTreeMap<&'static str, &'static str>) -> impl Fn(&str) -> Option<String> {
        move |name| map.get(name).map(|v| v.to_string())
    }

    #[test]
    fn the_defaults_parse_into_every_setting() {
        let vars = lookup(defaults());
        let pipeline = PipelineSettings::from_lookup(&vars).unwrap();
        assert_eq!(pipeline.openai_base_url, "https://api.openai.com/v1");
        assert_eq!(pipeline.top_k, 5);
        assert_eq!(pipeline.cache_scope, CacheScope::Session);
        assert_eq!(pipeline.qdrant_timeout, Duration::from_secs(5));
        assert_eq!(pipeline.request_timeout, Duration::from_secs(30));
        assert_eq!(pipeline.chat_max_tokens, 1024);
        assert_eq!(
            pipeline.conversation,
            ContextSettings {
                turns: 5,
                max_tokens: 1500,
                kept_seconds: 1800,
                retrieval: Retrieval::Rewrite
            }
        );
        let mut off = defaults();
        off.insert(names::CONVERSATION_TURNS, "0");
        off.insert(names::CONVERSATION_RETRIEVAL, "Recent");
        let off = PipelineSettings::from_lookup(&lookup(off)).unwrap();
        assert!(!off.conversation.remembers());
        assert_eq!(off.conversation.retrieval, Retrieval::Recent);
        for (name, bad) in [
            (names::CONVERSATION_TURNS, "51"),
            (names::CONVERSATION_RETRIEVAL, "always"),
        ] {
            let mut vars = defaults();
            vars.insert(name, bad);
            assert!(
                PipelineSettings::from_lookup(&lookup(vars)).is_err(),
                "{name}"
            );
        }
        assert_eq!(
            pipeline.deployment_token_budget_per_day, 0,
            "no ceiling unless set"
        );
        assert!(pipeline
            .postgres_address
            .ends_with("?connect_timeout=5&options=-c%20statement_timeout%3D30000"));
        assert!(!format!("{pipeline:?}").contains("sk-test"));
        assert_eq!(
            SessionLimits::from_lookup(&vars).unwrap(),
            SessionLimits {
                max_per_user: 5,
                idle_seconds: 1800,
                token_budget_per_day: 0,
            }
        );
        let limiter = LimiterSettings::from_lookup(&vars).unwrap();
        assert!(limiter.enabled);
        assert_eq!(limiter.bucket.capacity, 100);
        assert_eq!(limiter.per_address, DEFAULT_PER_ADDRESS);
        assert_eq!(
            limiter.per_network,
            BucketConfig {
                capacity: 3000,
                window_seconds: DEFAULT_PER_ADDRESS.window_seconds
            }
        );
        assert_eq!(health_check_timeout(&vars), Duration::from_secs(2));
        assert!(admin_token(&vars).is_empty());
    }

    #[test]
    fn postgres_timeouts_are_added_only_where_the_address_sets_none() {
        assert_eq!(
            with_postgres_timeouts("postgres://u:p@db/app?sslmode=disable"),
            "postgres://u:p@db/app?sslmode=disable&connect_timeout=5&options=-c%20statement_timeout%3D30000"
        );
        assert_eq!(
            with_postgres_timeouts("postgres://db/app?connect_timeout=1"),
            "postgres://db/app?connect_timeout=1&options=-c%20statement_timeout%3D30000"
        );
        let both = "postgres://db/app?options=-c%20search_path%3Dx&connect_timeout=2";
        assert_eq!(with_postgres_timeouts(both), both);
        assert_eq!(
            with_postgres_timeouts("postgres://db/app?#f"),
            "postgres://db/app?connect_timeout=5&options=-c%20statement_timeout%3D30000#f"
        );
    }

    #[test]
    fn each_bad_or_missing_setting_is_named() {
        for (name, bad) in [
            (names::TOP_K, "0"),
            (names::QUERY_CACHE_SCOPE, "everyone"),
            (names::QDRANT_COLLECTION, "a b"),
            (names::REDIS_ADDRESS, "http://x"),
            (names::RATE_LIMIT_FAILURE_POLICY, "maybe"),
            (names::RATE_LIMIT_PER_ADDRESS_REQUESTS, "0"),
            (names::RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS, "a minute"),
            (names::OPENAI_BASE_URL, "api.openai.com/v1"),
            (names::QDRANT_URL, "ftp://qdrant:6333"),
            (names::QDRANT_URL, "http://"),
        ] {
            let mut map = defaults();
            map.insert(name, bad);
            let vars = lookup(map);
            let error = PipelineSettings::from_lookup(&vars)
                .err()
                .or_else(|| LimiterSettings::from_lookup(&vars).err())
                .unwrap_or_else(|| panic!("{name} = {bad:?} was accepted"));
            assert!(error.to_string().contains(name), "{error}");
        }
        let mut map = defaults();
        map.remove(names::CHAT_MODEL);
        assert_eq!(
            PipelineSettings::from_lookup(&lookup(map)).unwrap_err(),
            ConfigError::Missing {
                name: names::CHAT_MODEL.into()
            }
        );
    }
}
