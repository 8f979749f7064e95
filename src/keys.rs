//! Every Redis key the components use: prefixes and builders in one place.
//!
//! Caller text never becomes key syntax: ids and texts are hashed first. Keys a
//! single Lua script touches together share a `{hash tag}`, so each script's
//! keys sit in one Redis Cluster slot (see DESIGN.md).

use crate::digest::{md5_hex, md5_of_parts};

/// Cached answers: `chatbot:query:<md5>` (see `query::query_cache_key`).
pub const QUERY_PREFIX: &str = "chatbot:query:";
/// The stampede lock of a cached answer.
pub const LOCK_PREFIX: &str = "chatbot:query-lock:";
/// Cached embeddings: `chatbot:embedding:<md5 of model and text>`.
pub const EMBEDDING_PREFIX: &str = "chatbot:embedding:";
/// The cached answers of a session, for scoped invalidation.
pub const SESSION_INDEX_PREFIX: &str = "chatbot:query-index:session:";
/// The cached answers of a page context, for scoped invalidation.
pub const PAGE_INDEX_PREFIX: &str = "chatbot:query-index:page:";
/// The most asked questions (a sorted set, capped), for analytics and warm-up.
pub const TOP_QUESTIONS: &str = "chatbot:analytics:top-questions";
/// The most rate-limited sessions (a sorted set, capped).
pub const RATE_LIMITED_SESSIONS: &str = "chatbot:analytics:rate-limited-sessions";
/// The admin audit log (a sorted set by time, capped: see `audit`).
pub const AUDIT_LOG: &str = "chatbot:audit";
/// The security log: refusals (see `audit`).
pub const SECURITY_LOG: &str = "chatbot:audit:security";
/// A security entry's sampling marker: `chatbot:audit-throttle:<md5 of action and address>`.
pub const AUDIT_THROTTLE_PREFIX: &str = "chatbot:audit-throttle:";
/// A session's owner in `jwt` mode: `chatbot:session-owner:<md5 of session>`.
pub const SESSION_OWNER_PREFIX: &str = "chatbot:session-owner:";
/// A session's conversation id (Postgres), so that an answer can name it
/// before its exchange is written: `chatbot:conversation:<md5 of session>`.
pub const CONVERSATION_PREFIX: &str = "chatbot:conversation:";
/// A user's OpenAI tokens for a UTC day: `chatbot:user-tokens:<md5 of user>:<day>`.
pub const USER_TOKENS_PREFIX: &str = "chatbot:user-tokens:";
/// The issuer's key set, as fetched: `chatbot:jwks:<md5 of URL>`.
pub const JWKS_PREFIX: &str = "chatbot:jwks:";
/// Set while a refetch of the key set for an unknown `kid` is not allowed again.
pub const JWKS_REFETCH_PREFIX: &str = "chatbot:jwks-refetch:";
/// A user's active sessions: `chatbot:user-sessions:<md5 of user>`.
pub const USER_SESSIONS_PREFIX: &str = "chatbot:user-sessions:";
/// A token bucket: `chatbot:ratelimit:{<md5 of caller key>}`.
pub const RATE_LIMIT_PREFIX: &str = "chatbot:ratelimit:";

/// Where the metrics live; one hash tag, so the record script's keys share a slot.
pub mod metrics {
    pub const COUNTERS: &str = "chatbot:metrics:{m}:counters";
    pub const HISTOGRAMS: &str = "chatbot:metrics:{m}:histograms";
    pub const GAUGES: &str = "chatbot:metrics:{m}:gauges";
    pub const SESSIONS: &str = "chatbot:metrics:{m}:sessions";
    pub const ALL: [&str; 4] = [COUNTERS, HISTOGRAMS, GAUGES, SESSIONS];
}

/// Trim, collapse whitespace, lowercase: "What is  AI?" and "what is ai?" are
/// one question, one cache entry, one page context.
pub fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// A cached answer's key, from the digest of what shapes the answer.
pub fn query_cache(digest: &str) -> String {
    format!("{QUERY_PREFIX}{digest}")
}

/// The stampede lock of a cached answer.
pub fn lock(cache_key: &str) -> String {
    format!(
        "{LOCK_PREFIX}{}",
        cache_key.trim_start_matches(QUERY_PREFIX)
    )
}

pub fn session_index(session_id: &str) -> String {
    format!("{SESSION_INDEX_PREFIX}{}", md5_of_parts(&[session_id]))
}

pub fn page_index(page_context: &str) -> String {
    format!(
        "{PAGE_INDEX_PREFIX}{}",
        md5_of_parts(&[&normalise(page_context)])
    )
}

/// The embedding-cache key: MD5 of model and text.
pub fn embedding(model: &str, text: &str) -> String {
    format!("{EMBEDDING_PREFIX}{}", md5_of_parts(&[model, text]))
}

pub fn user_sessions(user_id: &str) -> String {
    format!("{USER_SESSIONS_PREFIX}{}", md5_of_parts(&[user_id]))
}

pub fn audit_throttle(action: &str, address: &str) -> String {
    format!(
        "{AUDIT_THROTTLE_PREFIX}{}",
        md5_of_parts(&[action, address])
    )
}

pub fn session_owner(session_id: &str) -> String {
    format!("{SESSION_OWNER_PREFIX}{}", md5_of_parts(&[session_id]))
}

pub fn conversation(session_id: &str) -> String {
    format!("{CONVERSATION_PREFIX}{}", md5_of_parts(&[session_id]))
}

pub fn user_tokens(user_id: &str, day: u64) -> String {
    format!("{USER_TOKENS_PREFIX}{}:{day}", md5_of_parts(&[user_id]))
}

pub fn jwks(url: &str) -> String {
    format!("{JWKS_PREFIX}{}", md5_of_parts(&[url]))
}

pub fn jwks_refetch(url: &str) -> String {
    format!("{JWKS_REFETCH_PREFIX}{}", md5_of_parts(&[url]))
}

/// A token bucket's key; the hash tag keeps one bucket in one Cluster slot.
pub fn rate_limit_bucket(caller_key: &str) -> String {
    format!("{RATE_LIMIT_PREFIX}{{{}}}", md5_hex(caller_key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_caller_text_and_keep_their_prefixes() {
        assert_eq!(normalise("  What is\tAI? "), "what is ai?");
        let cache = query_cache("abc");
        assert_eq!(lock(&cache), "chatbot:query-lock:abc");
        assert_eq!(page_index("Ch  1"), page_index("ch 1"));
        assert!(session_index("a b").starts_with(SESSION_INDEX_PREFIX));
        assert!(!session_index("a b").contains(' '));
        assert_ne!(embedding("m", "ab"), embedding("ma", "b"));
        let bucket = rate_limit_bucket("session:{x}");
        assert!(bucket.starts_with("chatbot:ratelimit:{") && bucket.ends_with('}'));
        assert_eq!(
            bucket.matches('{').count(),
            1,
            "caller braces never reach the key"
        );
        assert!(metrics::ALL.iter().all(|k| k.contains("{m}")));
    }
}
