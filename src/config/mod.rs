//! Spin variable names and typed parsing of their values.
//!
//! Every setting is a Spin application variable (see `spin.toml`); the names
//! are part of the deployment contract, so they live here once.

use std::fmt;

pub mod settings;

/// Variable names, exactly as declared in `spin.toml`.
pub mod names {
    pub const REDIS_ADDRESS: &str = "redis_address";
    pub const POSTGRES_ADDRESS: &str = "postgres_address";
    pub const OPENAI_BASE_URL: &str = "openai_base_url";
    pub const OPENAI_API_KEY: &str = "openai_api_key";
    pub const EMBEDDING_MODEL: &str = "embedding_model";
    pub const CHAT_MODEL: &str = "chat_model";
    pub const CHAT_MAX_TOKENS: &str = "chat_max_tokens";
    pub const QDRANT_URL: &str = "qdrant_url";
    pub const QDRANT_API_KEY: &str = "qdrant_api_key";
    pub const QDRANT_COLLECTION: &str = "qdrant_collection";
    pub const TOP_K: &str = "top_k";
    pub const QUERY_CACHE_TTL_SECONDS: &str = "query_cache_ttl_seconds";
    pub const EMBEDDING_CACHE_TTL_SECONDS: &str = "embedding_cache_ttl_seconds";
    pub const RATE_LIMIT_ENABLED: &str = "rate_limit_enabled";
    pub const RATE_LIMIT_REQUESTS: &str = "rate_limit_requests";
    pub const RATE_LIMIT_WINDOW_SECONDS: &str = "rate_limit_window_seconds";
    pub const RATE_LIMIT_FAILURE_POLICY: &str = "rate_limit_failure_policy";
    pub const ADMIN_TOKEN: &str = "admin_token";
    pub const MAX_SESSIONS_PER_USER: &str = "max_sessions_per_user";
    pub const RETENTION_DAYS: &str = "retention_days";
    pub const HEALTH_CHECK_TIMEOUT_MS: &str = "health_check_timeout_ms";
    pub const QUERY_CACHE_SCOPE: &str = "query_cache_scope";
    pub const OPENAI_TIMEOUT_MS: &str = "openai_timeout_ms";
    pub const QDRANT_TIMEOUT_MS: &str = "qdrant_timeout_ms";
    pub const REQUEST_TIMEOUT_MS: &str = "request_timeout_ms";
    pub const SESSION_IDLE_SECONDS: &str = "session_idle_seconds";
    pub const AUTH_MODE: &str = "auth_mode";
    pub const JWT_HS256_SECRET: &str = "jwt_hs256_secret";
    pub const JWT_JWKS_URL: &str = "jwt_jwks_url";
    pub const JWT_ISSUER: &str = "jwt_issuer";
    pub const JWT_AUDIENCE: &str = "jwt_audience";
    pub const JWT_JWKS_CACHE_SECONDS: &str = "jwt_jwks_cache_seconds";
    pub const RATE_LIMIT_PER_ADDRESS_REQUESTS: &str = "rate_limit_per_address_requests";
    pub const RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS: &str = "rate_limit_per_address_window_seconds";
    pub const RATE_LIMIT_PER_NETWORK_REQUESTS: &str = "rate_limit_per_network_requests";
    pub const DEPLOYMENT_TOKEN_BUDGET_PER_DAY: &str = "deployment_token_budget_per_day";
    pub const TRUSTED_PROXY_HOPS: &str = "trusted_proxy_hops";
    pub const USER_TOKEN_BUDGET_PER_DAY: &str = "user_token_budget_per_day";
    pub const CONVERSATION_TURNS: &str = "conversation_turns";
    pub const CONVERSATION_MAX_TOKENS: &str = "conversation_max_tokens";
    pub const CONVERSATION_RETRIEVAL: &str = "conversation_retrieval";
    pub const SEMANTIC_CACHE_THRESHOLD: &str = "semantic_cache_threshold";
    /// Every variable a component reads (a component reads them all once per
    /// instance; those its manifest entry does not declare are simply unset).
    pub const ALL: &[&str] = &[
        REDIS_ADDRESS,
        POSTGRES_ADDRESS,
        OPENAI_BASE_URL,
        OPENAI_API_KEY,
        EMBEDDING_MODEL,
        CHAT_MODEL,
        CHAT_MAX_TOKENS,
        QDRANT_URL,
        QDRANT_API_KEY,
        QDRANT_COLLECTION,
        TOP_K,
        QUERY_CACHE_TTL_SECONDS,
        EMBEDDING_CACHE_TTL_SECONDS,
        RATE_LIMIT_ENABLED,
        RATE_LIMIT_REQUESTS,
        RATE_LIMIT_WINDOW_SECONDS,
        RATE_LIMIT_FAILURE_POLICY,
        ADMIN_TOKEN,
        MAX_SESSIONS_PER_USER,
        RETENTION_DAYS,
        HEALTH_CHECK_TIMEOUT_MS,
        QUERY_CACHE_SCOPE,
        OPENAI_TIMEOUT_MS,
        QDRANT_TIMEOUT_MS,
        REQUEST_TIMEOUT_MS,
        SESSION_IDLE_SECONDS,
        AUTH_MODE,
        JWT_HS256_SECRET,
        JWT_JWKS_URL,
        JWT_ISSUER,
        JWT_AUDIENCE,
        JWT_JWKS_CACHE_SECONDS,
        RATE_LIMIT_PER_ADDRESS_REQUESTS,
        RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS,
        RATE_LIMIT_PER_NETWORK_REQUESTS,
        DEPLOYMENT_TOKEN_BUDGET_PER_DAY,
        TRUSTED_PROXY_HOPS,
        USER_TOKEN_BUDGET_PER_DAY,
        CONVERSATION_TURNS,
        CONVERSATION_MAX_TOKENS,
        CONVERSATION_RETRIEVAL,
        SEMANTIC_CACHE_THRESHOLD,
    ];
    // Read by no component: spin.toml templates `allowed_outbound_hosts` from
    // these (`scheme://host:port` of each dependency; Spin forbids paths there).
    pub const REDIS_ALLOWED_HOST: &str = "redis_allowed_host";
    pub const POSTGRES_ALLOWED_HOST: &str = "postgres_allowed_host";
    pub const QDRANT_ALLOWED_HOST: &str = "qdrant_allowed_host";
    pub const OPENAI_ALLOWED_HOST: &str = "openai_allowed_host";
    pub const JWT_JWKS_ALLOWED_HOST: &str = "jwt_jwks_allowed_host";
}

/// A secret value: usable, but never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A variable that is missing or does not parse. Never carries a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("variable `{name}` is not set")]
    Missing { name: String },
    #[error("variable `{name}` = {value:?} is not {expected}")]
    Invalid {
        name: String,
        value: String,
        expected: &'static str,
    },
    /// The host could not read it (its variables provider failed): not
    /// "unset", and never remembered as such; the next request reads again.
    #[error("variable `{name}` could not be read: {reason}")]
    Unreadable { name: String, reason: String },
}

impl ConfigError {
    /// Whether the configuration may be fine and only its reading failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreadable { .. })
    }
}

/// Parses a variable's raw value as an unsigned integer within `min..=max`.
pub fn parse_u64(name: &str, raw: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| ConfigError::Invalid {
            name: name.to_string(),
            value: raw.to_string(),
            expected: "a whole number in the allowed range",
        })
}

/// Parses `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
pub fn parse_bool(name: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            name: name.to_string(),
            value: raw.to_string(),
            expected: "true or false",
        }),
    }
}

/// Rejects an empty value for a variable that must be set.
pub fn require_non_empty(name: &str, raw: &str) -> Result<String, ConfigError> {
    let value = raw.trim();
    if value.is_empty() {
        Err(ConfigError::Missing {
            name: name.to_string(),
        })
    } else {
        Ok(value.to_string())
    }
}

/// Checks a `redis://` or `rediss://` address, as Spin's Redis API expects.
pub fn parse_redis_address(name: &str, raw: &str) -> Result<String, ConfigError> {
    address_with_scheme(
        name,
        raw,
        &["redis://", "rediss://"],
        "a redis:// or rediss:// URL",
    )
}

/// Checks a `postgres://` or `postgresql://` address, as Spin's Postgres API expects.
pub fn parse_postgres_address(name: &str, raw: &str) -> Result<String, ConfigError> {
    address_with_scheme(
        name,
        raw,
        &["postgres://", "postgresql://"],
        "a postgres:// URL",
    )
}

fn address_with_scheme(
    name: &str,
    raw: &str,
    schemes: &[&str],
    expected: &'static str,
) -> Result<String, ConfigError> {
    let value = require_non_empty(name, raw)?;
    if schemes.iter().any(|scheme| value.starts_with(scheme)) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name: name.to_string(),
            value: redact_userinfo(&value),
            expected,
        })
    }
}

/// Where a token quoted in a text (a URL, a secret) ends.
pub(crate) fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ',' | ';' | ')' | ']' | '}')
}

/// Replaces the `user:password@` part of every URL in `text` (an address,
/// or an error message that quotes one), so it can be logged. A password may
/// hold `/`, `?` or `#` unescaped: the userinfo runs to the last `@` before
/// the URL's end (whitespace, a quote, a bracket or a separator).
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let url_end = after.find(ends_token).unwrap_or(after.len());
        match after[..url_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("[redacted]");
                rest = &after[userinfo_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("sk-very-secret");
        assert!(!format!("{secret:?}").contains("very"));
        assert!(!format!("{secret}").contains("very"));
        assert_eq!(secret.expose(), "sk-very-secret");
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(parse_u64("top_k", " 5 ", 1, 100), Ok(5));
        assert!(parse_u64("top_k", "0", 1, 100).is_err());
        assert!(parse_u64("top_k", "101", 1, 100).is_err());
        assert!(parse_u64("top_k", "-1", 1, 100).is_err());
        assert!(parse_u64("top_k", "five", 1, 100).is_err());
    }

    #[test]
    fn booleans_accept_common_spellings() {
        for raw in ["true", "TRUE", "1", "yes", "on"] {
            assert_eq!(parse_bool("x", raw), Ok(true), "{raw}");
        }
        for raw in ["false", "False", "0", "no", "off"] {
            assert_eq!(parse_bool("x", raw), Ok(false), "{raw}");
        }
        assert!(parse_bool("x", "maybe").is_err());
    }

    #[test]
    fn addresses_must_have_the_right_scheme() {
        assert!(parse_redis_address("r", "redis://127.0.0.1:6379").is_ok());
        assert!(parse_redis_address("r", "rediss://cache.example.com:6380").is_ok());
        assert!(parse_redis_address("r", "http://127.0.0.1:6379").is_err());
        assert_eq!(
            parse_redis_address("r", "  "),
            Err(ConfigError::Missing { name: "r".into() })
        );
        assert!(parse_postgres_address("p", "postgres://u:p@localhost/db").is_ok());
        assert!(parse_postgres_address("p", "mysql://localhost/db").is_err());
    }

    #[test]
    fn invalid_address_errors_do_not_leak_passwords() {
        let err = parse_postgres_address("p", "pg://user:hunter2@db/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_userinfo("postgres://user:pw@db:5432/app?sslmode=require"),
            "postgres://[redacted]@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_userinfo("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_userinfo("not a url"), "not a url");
        // A password with `/` in it, and every URL of an error message.
        assert_eq!(
            redact_userinfo("connecting to redis://:p/w@cache:6379 and postgres://u:x@db failed"),
            "connecting to redis://[redacted]@cache:6379 and postgres://[redacted]@db failed"
        );
    }
}
