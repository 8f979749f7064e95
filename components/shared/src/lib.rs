//! spin-sdk adapters more than one component uses. Thin: all decisions are in
//! `chatbot-core`; this crate only moves bytes to and from the host.

pub mod caches;
pub mod history;
pub mod http;
pub mod metrics_store;
pub mod openai;
pub mod pg;
pub mod pipeline;
pub mod qdrant;
pub mod redis_script;
pub mod settings;

/// A random token (for locks), from the host's secure random source.
pub fn random_token() -> String {
    let bytes = wasi::random::random::get_random_bytes(16);
    chatbot_core::ratelimit::hex(&bytes)
}

/// Seconds since the Unix epoch.
pub fn now_epoch_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends an entry to the audit log (a sorted set by time, capped at 10,000).
pub fn audit(
    conn: &spin_sdk::redis::Connection,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), String> {
    let entry = serde_json::json!({
        "at": now_epoch_seconds(),
        "action": action,
        "detail": detail,
        "id": random_token(),
    })
    .to_string();
    redis_script::eval(
        conn,
        AUDIT_SCRIPT,
        &[chatbot_core::query::keys::AUDIT_LOG],
        &[redis_script::binary(entry)],
    )
    .map(drop)
}

/// KEYS: the audit log. ARGV: the entry. Scored by the server's clock in microseconds.
pub const AUDIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -10001)
return 1
"#;
