//! What Redis holds, family by family: the promise that what clients make
//! Redis hold is bounded (issue #38). Each family of [`keys`] has a Redis
//! type, a bound in bytes (what its strings, fields, values and members add
//! up to, eight bytes a score) at the largest inputs the API accepts, and a
//! lifetime. `tests/tests/suite/promises.rs` drives every write path with those
//! inputs and fails on a key outside every family, over its bound, or
//! without the TTL its family promises. A new key family goes here first.

use crate::chat::conversation::{kept_turns_max_bytes, ContextSettings, Retrieval};
use crate::redis::keys::{self, metrics};

/// How much one key of a family may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// At most this many bytes in all.
    Total(u64),
    /// One member per answer or session in its TTL (an index, a user's
    /// sessions), each at most this many bytes: bounded by the requests the
    /// limiter admits in that time, not by a count of its own.
    EachMember(u64),
}

/// How long a family's keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Always set with a TTL of at most this many seconds (at the settings
    /// [`Sizing`] names).
    Expires(u64),
    /// No TTL: one key per deployment (or per collection), capped by
    /// [`Bound::Total`].
    Kept,
}

/// A key family: its keys start with `prefix` (or are `prefix`, for the
/// deployment's single keys).
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub prefix: &'static str,
    /// `string`, `hash`, `list`, `set` or `zset` (as `TYPE` names them).
    pub kind: &'static str,
    pub bound: Bound,
    pub lifetime: Lifetime,
    pub holds: &'static str,
}

/// The settings the bounds follow from: the defaults unless a deployment
/// sets them.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub context: ContextSettings,
    pub query_cache_ttl_seconds: u64,
    pub embedding_cache_ttl_seconds: u64,
    pub retention_days: u64,
    pub session_idle_seconds: u64,
    pub request_timeout_seconds: u64,
    pub rate_limit_window_seconds: u64,
}

impl Default for Sizing {
    fn default() -> Self {
        let session_idle_seconds = crate::config::settings::DEFAULT_SESSION_IDLE_SECONDS;
        Self {
            context: ContextSettings {
                turns: crate::chat::conversation::DEFAULT_CONTEXT_TURNS as u32,
                max_tokens: crate::chat::conversation::DEFAULT_CONTEXT_MAX_TOKENS as u32,
                retrieval: Retrieval::Rewrite,
                kept_seconds: session_idle_seconds,
            },
            query_cache_ttl_seconds: 3600,
            embedding_cache_ttl_seconds: 86_400,
            retention_days: 30,
            session_idle_seconds,
            request_timeout_seconds: crate::config::settings::DEFAULT_REQUEST_TIMEOUT_MS / 1000,
            rate_limit_window_seconds: 3600,
        }
    }
}

/// The longest a cached answer (its text, citations and usage, as JSON)
/// may be: longer ones are answered, never cached.
pub const MAX_CACHED_ANSWER_BYTES: u64 = 64 * 1024;
/// The longest a cached embedding may be (3,072 floats, JSON).
pub const MAX_CACHED_EMBEDDING_BYTES: u64 = 3072 * 24;
/// An audit or security entry at most: its fields and texts of at most
/// [`crate::telemetry::audit::MAX_ENTRY_TEXT_CHARS`] characters each.
const MAX_AUDIT_ENTRY_BYTES: u64 = 8 * crate::telemetry::audit::MAX_ENTRY_TEXT_CHARS as u64 * 4;
/// The deployment's metrics: a bounded set of series (the seed's names and
/// their fixed labels).
const MAX_METRICS_BYTES: u64 = 256 * 1024;
const DIGEST_KEY_BYTES: u64 = 96;

/// Every key family, at `sizing`.
pub fn families(sizing: &Sizing) -> Vec<Family> {
    use Bound::{EachMember, Total};
    use Lifetime::{Expires, Kept};
    let day = crate::limits::sessions::DAY_SECONDS;
    let ranked = crate::cache::answers::MAX_RANKED_ENTRY_BYTES as u64 + 8;
    let subject_bytes = 4 * crate::limits::identity::MAX_SUBJECT_LEN as u64;
    vec![
        Family {
            prefix: keys::QUERY_PREFIX,
            kind: "hash",
            bound: Total(MAX_CACHED_ANSWER_BYTES + crate::http::api::MAX_ID_LEN as u64 + 64),
            lifetime: Expires(sizing.query_cache_ttl_seconds),
            holds: "a cached answer, its generation and (global scope) the session that stored it",
        },
        Family {
            prefix: keys::LOCK_PREFIX,
            kind: "string",
            bound: Total(64),
            lifetime: Expires(sizing.request_timeout_seconds + 60),
            holds: "the token of the request answering a question (a stampede lock)",
        },
        Family {
            prefix: keys::FAILURE_PREFIX,
            kind: "hash",
            bound: Total(4096),
            lifetime: Expires(crate::cache::answers::SHARED_FAILURE_MS as u64 / 1000),
            holds: "a failed answer, for the requests that waited on it",
        },
        Family {
            prefix: keys::GENERATION_PREFIX,
            kind: "string",
            bound: Total(20),
            lifetime: Kept,
            holds: "a collection's generation (one per collection)",
        },
        Family {
            prefix: keys::EMBEDDING_PREFIX,
            kind: "string",
            bound: Total(MAX_CACHED_EMBEDDING_BYTES),
            lifetime: Expires(sizing.embedding_cache_ttl_seconds),
            holds: "a cached embedding",
        },
        Family {
            prefix: keys::SESSION_INDEX_PREFIX,
            kind: "set",
            bound: EachMember(DIGEST_KEY_BYTES),
            lifetime: Expires(sizing.query_cache_ttl_seconds),
            holds: "a session's cached answers' keys",
        },
        Family {
            prefix: keys::PAGE_INDEX_PREFIX,
            kind: "set",
            bound: EachMember(DIGEST_KEY_BYTES),
            lifetime: Expires(sizing.query_cache_ttl_seconds),
            holds: "a page context's cached answers' keys",
        },
        Family {
            prefix: keys::TOP_QUESTIONS,
            kind: "zset",
            bound: Total(crate::cache::ranking::QUESTIONS_CAP * ranked),
            lifetime: Kept,
            holds: "the most asked questions, capped",
        },
        Family {
            prefix: keys::RATE_LIMITED_SESSIONS,
            kind: "zset",
            bound: Total(crate::cache::ranking::RATE_LIMITED_CAP * ranked),
            lifetime: Kept,
            holds: "the most rate-limited sessions, capped",
        },
        Family {
            prefix: keys::AUDIT_LOG,
            kind: "zset",
            bound: Total(crate::telemetry::audit::AUDIT_CAP as u64 * MAX_AUDIT_ENTRY_BYTES),
            lifetime: Kept,
            holds: "the admin audit log, capped",
        },
        Family {
            prefix: keys::SECURITY_LOG,
            kind: "zset",
            bound: Total(crate::telemetry::audit::AUDIT_CAP as u64 * MAX_AUDIT_ENTRY_BYTES),
            lifetime: Kept,
            holds: "the security log (refusals, sampled per address), capped",
        },
        Family {
            prefix: keys::AUDIT_THROTTLE_PREFIX,
            kind: "string",
            bound: Total(8),
            lifetime: Expires(crate::telemetry::audit::SECURITY_SAMPLE_SECONDS as u64),
            holds: "a security entry's sampling marker",
        },
        Family {
            prefix: keys::SESSION_OWNER_PREFIX,
            kind: "string",
            bound: Total(subject_bytes),
            lifetime: Expires(sizing.retention_days * day),
            holds: "a session's owner in jwt mode (its `sub`)",
        },
        Family {
            prefix: keys::CONVERSATION_PREFIX,
            kind: "string",
            // `<id>:<day>:<handle>`: 19 digits, 6, and `conv_` with 32.
            bound: Total(64),
            lifetime: Expires(sizing.session_idle_seconds),
            holds: "a session's current conversation (row id, refresh day, handle)",
        },
        Family {
            prefix: keys::TURNS_PREFIX,
            kind: "list",
            bound: Total(kept_turns_max_bytes(&sizing.context) as u64),
            lifetime: Expires(sizing.session_idle_seconds),
            holds: "the last turns of a continued conversation (Postgres holds them all)",
        },
        Family {
            prefix: keys::USER_TOKENS_PREFIX,
            kind: "string",
            bound: Total(20),
            lifetime: Expires(crate::limits::sessions::COUNT_TTL_SECONDS),
            holds: "a user's tokens on a UTC day",
        },
        Family {
            prefix: keys::DEPLOYMENT_TOKENS_PREFIX,
            kind: "string",
            bound: Total(20),
            lifetime: Expires(crate::limits::sessions::COUNT_TTL_SECONDS),
            holds: "the deployment's tokens on a UTC day",
        },
        Family {
            prefix: keys::USER_SESSIONS_PREFIX,
            kind: "zset",
            bound: EachMember(crate::http::api::MAX_ID_LEN as u64 + 8),
            lifetime: Expires(sizing.session_idle_seconds),
            holds: "a user's active sessions",
        },
        Family {
            prefix: keys::HEALTH_REPORT,
            kind: "string",
            bound: Total(8192),
            lifetime: Expires(crate::telemetry::health::REPORT_SECONDS),
            holds: "the last dependency report",
        },
        Family {
            prefix: keys::JWKS_PREFIX,
            kind: "string",
            bound: Total(crate::limits::identity::MAX_KEY_SET_BYTES as u64 + 64),
            lifetime: Expires(crate::limits::identity::LAST_GOOD_KEY_SET_SECONDS + 86_400),
            holds: "the issuer's key set and when it was fetched",
        },
        Family {
            prefix: keys::JWKS_REFETCH_PREFIX,
            kind: "string",
            bound: Total(8),
            lifetime: Expires(3600),
            holds: "a refetch for an unknown key id, not allowed again yet",
        },
        Family {
            prefix: keys::JWKS_REFRESH_PREFIX,
            kind: "string",
            bound: Total(64),
            lifetime: Expires(3600),
            holds: "the request refreshing an expired key set",
        },
        Family {
            prefix: keys::RATE_LIMIT_PREFIX,
            kind: "hash",
            bound: Total(64),
            lifetime: Expires(sizing.rate_limit_window_seconds + 60),
            holds: "a token bucket",
        },
        Family {
            prefix: metrics::COUNTERS,
            kind: "hash",
            bound: Total(MAX_METRICS_BYTES),
            lifetime: Kept,
            holds: "the counters",
        },
        Family {
            prefix: metrics::HISTOGRAMS,
            kind: "hash",
            bound: Total(MAX_METRICS_BYTES),
            lifetime: Kept,
            holds: "the histograms",
        },
        Family {
            prefix: metrics::SESSIONS,
            kind: "zset",
            bound: EachMember(DIGEST_KEY_BYTES),
            lifetime: Kept,
            holds: "sessions active in the last minutes (members older are dropped as it is read)",
        },
    ]
}

/// The family `key` belongs to: the one with the longest prefix it starts
/// with, its type `kind` (the rankings' `:base` companions are strings of
/// their ranking's family).
pub fn family_of<'a>(families: &'a [Family], key: &str, kind: &str) -> Option<&'a Family> {
    families
        .iter()
        .filter(|f| key.starts_with(f.prefix))
        .filter(|f| {
            f.kind == kind || (kind == "string" && key.ends_with(":base") && f.kind == "zset")
        })
        .max_by_key(|f| f.prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_builder_lands_in_one_family() {
        let families = families(&Sizing::default());
        for (key, kind) in [
            (keys::query_cache("d"), "hash"),
            (keys::lock(&keys::query_cache("d")), "string"),
            (keys::turns("s"), "list"),
            (keys::conversation("s"), "string"),
            (keys::user_tokens("u", 1), "string"),
            (keys::rate_limit_bucket("k"), "hash"),
            (format!("{}:base", keys::TOP_QUESTIONS), "string"),
            (keys::SECURITY_LOG.to_string(), "zset"),
        ] {
            assert!(family_of(&families, &key, kind).is_some(), "{key}");
        }
        assert!(family_of(&families, "chatbot:other", "string").is_none());
        assert!(
            family_of(&families, &keys::turns("s"), "string").is_none(),
            "types count"
        );
    }
}
