//! The audit log: one typed entry, one shape, one script that appends and caps.
//!
//! The log is a Redis sorted set scored by the server's clock in microseconds
//! and capped at [`AUDIT_CAP`] entries (seed 003). Entries are built here and
//! nowhere else, so every writer (admin actions, refusals, session limits)
//! leaves the same JSON: `{"at", "action", "detail", "id"}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entries kept; older ones are dropped first.
pub const AUDIT_CAP: i64 = 10_000;
/// Entries per page of `GET /admin/audit`.
pub const AUDIT_PAGE_SIZE: i64 = 50;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Unauthorized,
    CacheCleared,
    RetentionCleanup,
    CacheWarmup,
    DocumentsIngested,
    RateLimitDenied,
    SessionRefused,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds, by the writer's clock (the score is the server's).
    pub at: u64,
    pub action: AuditAction,
    pub detail: Value,
    /// Random: entries are set members, so two alike must still differ.
    pub id: String,
}

impl AuditEntry {
    pub fn new(action: AuditAction, detail: Value, at: u64, id: String) -> Self {
        Self {
            at,
            action,
            detail,
            id,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit entries serialise")
    }
}

/// Appends an entry and caps the log. KEYS: the log. ARGV: the entry.
pub const APPEND_SCRIPT: &str = r#"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -10001)
return 1
"#;

/// The `ZREVRANGE` bounds of a page of the log, newest first.
pub fn page_bounds(page: i64) -> (i64, i64) {
    let start = crate::api::page_start(page, AUDIT_PAGE_SIZE);
    (start, start + AUDIT_PAGE_SIZE - 1)
}

/// A stored member as JSON (a member that is not JSON is shown as a string).
pub fn decode_member(member: &[u8]) -> Value {
    serde_json::from_slice(member)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(member).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_one_shape() {
        let entry = AuditEntry::new(
            AuditAction::RateLimitDenied,
            serde_json::json!({"session_id": "s"}),
            7,
            "id1".into(),
        );
        let value: Value = serde_json::from_str(&entry.to_json()).unwrap();
        assert_eq!(value["action"], "rate_limit_denied");
        assert_eq!(value["detail"]["session_id"], "s");
        assert_eq!(value["at"], 7);
        assert_eq!(value.as_object().unwrap().len(), 4);
        assert_eq!(decode_member(entry.to_json().as_bytes()), value);
        assert_eq!(decode_member(b"plain"), Value::String("plain".into()));
    }

    #[test]
    fn the_script_caps_at_the_documented_size() {
        assert!(APPEND_SCRIPT.contains(&format!("-{}", AUDIT_CAP + 1)));
        assert_eq!(page_bounds(1), (0, 49));
        assert_eq!(page_bounds(2), (50, 99));
    }
}
