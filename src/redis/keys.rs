//! Every Redis key the components use: prefixes and builders in one place.
//!
//! Caller text never becomes key syntax: ids and texts are hashed first.
//! Every key carries the `{hash tag}` of its family, and every command or
//! script is given keys of one family only, so each runs in one Redis Cluster
//! slot (the tests below compute the slots). A family's keys therefore live
//! on one shard: the tags make the scripts correct behind a cluster proxy,
//! they do not spread a family's load.

use crate::redis::digest::{md5_hex, md5_of_parts};

/// The query cache's family: answers, their locks and failures, their
/// indexes, the top questions, conversation ids, collection generations.
pub const QUERY_TAG: &str = "{q}";
/// The embedding cache's family.
pub const EMBEDDING_TAG: &str = "{e}";
/// The rate limiter's buckets (a request's buckets are checked together).
pub const LIMITER_TAG: &str = "{rl}";
/// The user gate's family: sessions per user, token budgets, session owners.
pub const GATE_TAG: &str = "{g}";
/// The audit logs, their sampling markers, the rate-limited sessions.
pub const AUDIT_TAG: &str = "{a}";
/// The issuer's key sets.
pub const JWKS_TAG: &str = "{j}";
/// The ops component's cached dependency report.
pub const HEALTH_TAG: &str = "{h}";

/// Cached answers: `chatbot:query:{q}:<md5>` (see `cache::answers::query_cache_key`).
pub const QUERY_PREFIX: &str = "chatbot:query:{q}:";
/// The stampede lock of a cached answer.
pub const LOCK_PREFIX: &str = "chatbot:query-lock:{q}:";
/// A failed answer, shared with the requests that waited for it.
pub const FAILURE_PREFIX: &str = "chatbot:query-failed:{q}:";
/// The answers of a collection are valid for its generation only: ingesting
/// a document bumps it (`chatbot:generation:{q}:<md5 of collection>`).
pub const GENERATION_PREFIX: &str = "chatbot:generation:{q}:";
/// Cached embeddings: `chatbot:embedding:{e}:<md5 of model and text>`.
pub const EMBEDDING_PREFIX: &str = "chatbot:embedding:{e}:";
/// The cached answers of a session, for scoped invalidation.
pub const SESSION_INDEX_PREFIX: &str = "chatbot:query-index:session:{q}:";
/// The cached answers of a page context, for scoped invalidation.
pub const PAGE_INDEX_PREFIX: &str = "chatbot:query-index:page:{q}:";
/// The most asked questions, by decaying count (see `ranking`), for analytics and warm-up.
pub const TOP_QUESTIONS: &str = "chatbot:analytics:top-questions:{q}";
/// The most rate-limited sessions, by decaying count.
pub const RATE_LIMITED_SESSIONS: &str = "chatbot:analytics:rate-limited-sessions:{a}";
/// The admin audit log (a sorted set by time, capped: see `audit`).
pub const AUDIT_LOG: &str = "chatbot:audit:{a}";
/// The security log: refusals (see `audit`).
pub const SECURITY_LOG: &str = "chatbot:audit:security:{a}";
/// A security entry's sampling marker: `chatbot:audit-throttle:{a}:<md5 of action and address>`.
pub const AUDIT_THROTTLE_PREFIX: &str = "chatbot:audit-throttle:{a}:";
/// A session's owner in `jwt` mode: `chatbot:session-owner:{g}:<md5 of session>`.
pub const SESSION_OWNER_PREFIX: &str = "chatbot:session-owner:{g}:";
/// A session's conversation id (Postgres), so that an answer can name it
/// before its exchange is written: `chatbot:conversation:{q}:<md5 of session>`.
pub const CONVERSATION_PREFIX: &str = "chatbot:conversation:{q}:";
/// The last turns of a session's current conversation, oldest first (a
/// list, capped): `chatbot:turns:{q}:<md5 of session>`.
pub const TURNS_PREFIX: &str = "chatbot:turns:{q}:";
/// A user's OpenAI tokens for a UTC day: `chatbot:user-tokens:{g}:<md5 of user>:<day>`.
pub const USER_TOKENS_PREFIX: &str = "chatbot:user-tokens:{g}:";
/// Tokens all misses spent on one UTC day: `chatbot:deployment-tokens:{g}:<day>`
/// (in the gate's family, so one script reserves from it and a user's count together).
pub const DEPLOYMENT_TOKENS_PREFIX: &str = "chatbot:deployment-tokens:{g}:";
/// The last `/health/services` report, kept [`crate::telemetry::health::REPORT_SECONDS`]
/// so that polling it does not call every dependency each time.
pub const HEALTH_REPORT: &str = "chatbot:health:{h}:services";
/// The issuer's key set, as fetched: `chatbot:jwks:{j}:<md5 of URL>`.
pub const JWKS_PREFIX: &str = "chatbot:jwks:{j}:";
/// Set while a refetch of the key set for an unknown `kid` is not allowed again.
pub const JWKS_REFETCH_PREFIX: &str = "chatbot:jwks-refetch:{j}:";
/// Held by the one request refreshing an expired key set (and for 30 s after).
pub const JWKS_REFRESH_PREFIX: &str = "chatbot:jwks-refresh:{j}:";
/// A user's active sessions: `chatbot:user-sessions:{g}:<md5 of user>`.
pub const USER_SESSIONS_PREFIX: &str = "chatbot:user-sessions:{g}:";
/// A token bucket: `chatbot:ratelimit:{rl}:<md5 of caller key>`.
pub const RATE_LIMIT_PREFIX: &str = "chatbot:ratelimit:{rl}:";

/// Where the metrics live; one hash tag, so the record script's keys share a slot.
pub mod metrics {
    pub const COUNTERS: &str = "chatbot:metrics:{m}:counters";
    pub const HISTOGRAMS: &str = "chatbot:metrics:{m}:histograms";
    pub const SESSIONS: &str = "chatbot:metrics:{m}:sessions";
    pub const ALL: [&str; 3] = [COUNTERS, HISTOGRAMS, SESSIONS];
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

/// Where a failed answer waits for the requests that waited on it.
pub fn failure(cache_key: &str) -> String {
    format!(
        "{FAILURE_PREFIX}{}",
        cache_key.trim_start_matches(QUERY_PREFIX)
    )
}

/// The generation of a collection's answers.
pub fn generation(collection: &str) -> String {
    format!("{GENERATION_PREFIX}{}", md5_of_parts(&[collection]))
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

pub fn turns(session_id: &str) -> String {
    format!("{TURNS_PREFIX}{}", md5_of_parts(&[session_id]))
}

pub fn user_tokens(user_id: &str, day: u64) -> String {
    format!("{USER_TOKENS_PREFIX}{}:{day}", md5_of_parts(&[user_id]))
}

pub fn deployment_tokens(day: u64) -> String {
    format!("{DEPLOYMENT_TOKENS_PREFIX}{day}")
}

pub fn jwks(url: &str) -> String {
    format!("{JWKS_PREFIX}{}", md5_of_parts(&[url]))
}

pub fn jwks_refetch(url: &str) -> String {
    format!("{JWKS_REFETCH_PREFIX}{}", md5_of_parts(&[url]))
}

pub fn jwks_refresh(url: &str) -> String {
    format!("{JWKS_REFRESH_PREFIX}{}", md5_of_parts(&[url]))
}

/// A token bucket's key (all buckets share the limiter's tag: a request's are checked in one script).
pub fn rate_limit_bucket(caller_key: &str) -> String {
    format!("{RATE_LIMIT_PREFIX}{}", md5_hex(caller_key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_caller_text_and_keep_their_prefixes() {
        assert_eq!(normalise("  What is\tAI? "), "what is ai?");
        let cache = query_cache("abc");
        assert_eq!(lock(&cache), "chatbot:query-lock:{q}:abc");
        assert_eq!(failure(&cache), "chatbot:query-failed:{q}:abc");
        assert_eq!(page_index("Ch  1"), page_index("ch 1"));
        assert!(session_index("a b").starts_with(SESSION_INDEX_PREFIX));
        assert!(!session_index("a b").contains(' '));
        assert_ne!(embedding("m", "ab"), embedding("ma", "b"));
        let bucket = rate_limit_bucket("session:{x}");
        assert!(bucket.starts_with(RATE_LIMIT_PREFIX));
        assert_eq!(
            bucket.matches('{').count(),
            1,
            "caller braces never reach the key"
        );
        assert!(metrics::ALL.iter().all(|k| k.contains("{m}")));
    }

    /// Redis Cluster's slot of a key: CRC16/XMODEM of its hash tag (the text
    /// between the first `{` and the next `}`, when not empty) or of the whole key.
    fn slot(key: &str) -> u16 {
        let hashed = key
            .find('{')
            .and_then(|open| {
                let close = key[open + 1..].find('}')? + open + 1;
                (close > open + 1).then(|| &key[open + 1..close])
            })
            .unwrap_or(key);
        crc::Crc::<u16>::new(&crc::CRC_16_XMODEM).checksum(hashed.as_bytes()) % 16384
    }

    fn one_slot(script: &str, keys: &[String]) {
        let slots: std::collections::BTreeSet<u16> = keys.iter().map(|k| slot(k)).collect();
        assert_eq!(slots.len(), 1, "{script} spans slots {slots:?}: {keys:?}");
    }

    #[test]
    fn the_slot_is_redis_clusters() {
        // Redis Cluster's specification: CRC16 of "123456789" is 0x31C3 (12739).
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // The specification's examples: an empty tag hashes the whole key,
        // and only the first tag counts.
        assert_eq!(slot("foo{}{bar}"), 8363);
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_ne!(
            slot("foo{}{bar}"),
            slot("bar"),
            "an empty tag hashes the whole key"
        );
    }

    /// Every key each script or multi-key command is given, for a spread of
    /// inputs, falls in one slot.
    #[test]
    fn every_script_and_multi_key_command_stays_in_one_slot() {
        use crate::cache::answers::{AcquireOrRead, Lookup, ReleaseLock, StoreAnswer};
        use crate::cache::ranking::base_key;
        use crate::limits::ratelimit::{bucket_key, Scope};
        use crate::limits::sessions::{GateCheck, NoteRateLimited, OwnerCheck};
        use crate::redis::script::Script;
        let answer = crate::cache::answers::CachedAnswer {
            answer: "a".into(),
            citations: Vec::new(),
            tokens: 1,
        };
        let inputs = ["s1", "another session", "ü{x}", "", "9"];
        for (i, text) in inputs.iter().enumerate() {
            let cache = query_cache(&md5_of_parts(&[text]));
            let collection = format!("docs-{i}");
            let lookup = Lookup {
                cache_key: &cache,
                session_id: text,
                collection: &collection,
                entry: String::new(),
                conversation: crate::chat::conversation::ConversationChoice::Current,
                turns: 5,
                confirming: true,
            };
            one_slot("lookup", &lookup.keys());
            let other = query_cache(&md5_of_parts(&[text, "other"]));
            let read = crate::cache::answers::ReadAnswer {
                cache_keys: &[&cache, &other],
                collection: &collection,
            };
            one_slot("read answer", &read.keys());
            let turn = crate::chat::conversation::Turn {
                question: text.to_string(),
                answer: "a".into(),
                expires_at: 0,
                question_id: Some(i64::MAX),
            };
            let remembered = crate::storage::history::RememberedConversation::refreshed_on(
                1,
                crate::storage::history::ConversationHandle::parse(
                    "conv_00000000000000000000000000000001",
                )
                .unwrap(),
                1,
            );
            let remember = crate::chat::conversation::RememberConversation {
                session_id: text,
                conversation: remembered,
                turns: Some(std::slice::from_ref(&turn)),
                ttl_seconds: 1,
            };
            one_slot("remember conversation", &remember.keys());
            let append = crate::chat::conversation::AppendTurn {
                session_id: text,
                asked_in: 1,
                now: remembered,
                turn: &turn,
                keep: 5,
                ttl_seconds: 1,
            };
            one_slot("append turn", &append.keys());
            let acquire = AcquireOrRead {
                cache_key: &cache,
                collection: &collection,
                token: "t",
                lock_ttl_ms: 1,
                holder: b"",
            };
            one_slot("acquire or read", &acquire.keys());
            for page_context in [Some(*text), None] {
                let store = StoreAnswer {
                    cache_key: &cache,
                    session_id: text,
                    page_context,
                    answer: &answer,
                    ttl_seconds: 1,
                    token: "t",
                    generation: b"0",
                    confirmation: crate::cache::answers::Confirmation::Pending,
                };
                one_slot("store answer", &store.keys());
            }
            let release = ReleaseLock {
                cache_key: &cache,
                token: "t",
                failure: Vec::new(),
            };
            one_slot("release lock", &release.keys());
            let gate = GateCheck {
                user: text,
                session: "s9",
                max_sessions: 1,
                idle_seconds: 1,
                budget_per_day: 1,
                owner: OwnerCheck::Enforced,
                owner_ttl_seconds: 1,
                now_epoch_seconds: (20_000 + i as u64) * 86_400,
            };
            one_slot("user gate", &gate.keys());
            let entry = crate::telemetry::audit::AuditEntry::new(
                crate::telemetry::audit::AuditAction::RateLimitDenied,
                text,
                serde_json::json!({}),
                0,
                "id".into(),
            );
            one_slot("audit append", &entry.script_keys());
            let note = NoteRateLimited {
                session_id: text,
                entry: &entry,
            };
            one_slot("note rate limited", &note.keys());
            one_slot(
                "limiter",
                &[
                    bucket_key(Scope::ClientAddress, "10.0.0.1").unwrap(),
                    bucket_key(Scope::ClientNetwork, "2001:db8:1::/48").unwrap(),
                    bucket_key(Scope::Session, &format!("s{text}")).unwrap(),
                    bucket_key(Scope::User, &format!("u{text}")).unwrap(),
                ],
            );
            one_slot(
                "embedding MGET / SET",
                &[
                    embedding("m", text),
                    embedding("m", "other"),
                    embedding("n", "x"),
                ],
            );
            one_slot(
                "cache clear UNLINK",
                &[
                    cache.clone(),
                    session_index(text),
                    page_index(text),
                    lock(&cache),
                ],
            );
            one_slot(
                "top questions",
                &[TOP_QUESTIONS.to_string(), base_key(TOP_QUESTIONS)],
            );
            one_slot("jwks", &[jwks(text), jwks_refetch(text)]);
            one_slot(
                "budget reserve and settle",
                &[user_tokens(text, 20_000), deployment_tokens(20_000)],
            );
        }
        let metrics: Vec<String> = metrics::ALL.iter().map(|k| k.to_string()).collect();
        one_slot("record metrics", &metrics);
    }
}
