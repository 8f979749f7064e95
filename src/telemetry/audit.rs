//! The audit logs: one typed entry, one shape, one script that appends and caps.
//!
//! Two logs, each a Redis sorted set scored by the server's clock in
//! microseconds and capped at [`AUDIT_CAP`] entries (seed 003): admin actions,
//! and security events (refusals). Strangers can only ever write the second,
//! and only one entry per address and kind of refusal every
//! [`SECURITY_SAMPLE_SECONDS`], so no flood of cheap anonymous requests
//! pushes an admin action out. Entries are built here and nowhere else, so
//! every writer leaves the same JSON: `{"at", "action", "address", "detail", "id"}`.

use crate::redis::script::{self, integers, Arg, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Entries kept; older ones are dropped first.
pub const AUDIT_CAP: i64 = 10_000;
/// Entries per page of `GET /admin/audit`.
pub const AUDIT_PAGE_SIZE: i64 = 50;

/// At most one security entry per address and action in this many seconds.
pub const SECURITY_SAMPLE_SECONDS: i64 = 10;

/// Which log an entry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLog {
    /// What an administrator did.
    Admin,
    /// What was refused, and to whom.
    Security,
}

impl AuditLog {
    pub const fn key(self) -> &'static str {
        match self {
            Self::Admin => crate::redis::keys::AUDIT_LOG,
            Self::Security => crate::redis::keys::SECURITY_LOG,
        }
    }

    /// Its name in `?log=` of `GET /admin/audit` and in the page it answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Security => "security",
        }
    }

    /// `?log=`: `admin` (the default) or `security`.
    pub fn parse(raw: Option<&str>) -> Option<Self> {
        [Self::Admin, Self::Security]
            .into_iter()
            .find(|log| log.as_str() == raw.unwrap_or("admin"))
    }

    /// The log a query string asks for, or 400.
    pub fn from_query(query: &str) -> Result<Self, crate::http::api::ApiError> {
        let raw = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "log")
            .map(|(_, value)| value.into_owned());
        Self::parse(raw.as_deref()).ok_or_else(|| {
            crate::http::api::ApiError::invalid("`log` must be `admin` or `security`")
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    // Admin actions.
    CacheCleared,
    RetentionCleanup,
    CacheWarmup,
    DocumentsIngested,
    // Security events.
    /// A wrong or missing admin token.
    Unauthorized,
    /// A missing or bad end-user token.
    TokenRejected,
    RateLimitDenied,
    SessionRefused,
    BudgetExceeded,
    /// A user asked in, or for the history of, a session that is not theirs.
    SessionNotOwned,
}

impl AuditAction {
    pub const fn log(self) -> AuditLog {
        match self {
            Self::CacheCleared
            | Self::RetentionCleanup
            | Self::CacheWarmup
            | Self::DocumentsIngested => AuditLog::Admin,
            Self::Unauthorized
            | Self::TokenRejected
            | Self::RateLimitDenied
            | Self::SessionRefused
            | Self::BudgetExceeded
            | Self::SessionNotOwned => AuditLog::Security,
        }
    }

    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The seconds a security entry throttles its kind for its address (0: never throttled).
    pub const fn sample_seconds(self) -> i64 {
        match self.log() {
            AuditLog::Admin => 0,
            AuditLog::Security => SECURITY_SAMPLE_SECONDS,
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds, by the writer's clock (the score is the server's).
    pub at: u64,
    pub action: AuditAction,
    /// The client address the request came from.
    pub address: String,
    pub detail: Value,
    /// Random: entries are set members, so two alike must still differ.
    pub id: String,
}

/// The most an entry keeps of any text it carries (a path, a session id, an
/// address): strangers write the security log, so what they send must not
/// make an entry, and so the capped log, any larger.
pub const MAX_ENTRY_TEXT_CHARS: usize = 256;

/// `text` cut to [`MAX_ENTRY_TEXT_CHARS`] characters, with `…` where it was cut.
fn bounded_text(text: &str) -> String {
    match text.char_indices().nth(MAX_ENTRY_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `value` with every string in it (object keys too) bounded.
fn bounded_detail(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(bounded_text(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(bounded_detail).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| (bounded_text(&name), bounded_detail(value)))
                .collect(),
        ),
        other => other,
    }
}

impl AuditEntry {
    /// An entry whose texts are bounded ([`MAX_ENTRY_TEXT_CHARS`]).
    pub fn new(action: AuditAction, address: &str, detail: Value, at: u64, id: String) -> Self {
        Self {
            at,
            action,
            address: bounded_text(address),
            detail: bounded_detail(detail),
            id,
        }
    }

    /// The `KEYS` of [`Append`]: the entry's log and its throttle.
    pub fn script_keys(&self) -> [String; 2] {
        [
            self.action.log().key().to_string(),
            crate::redis::keys::audit_throttle(&self.action.as_str(), &self.address),
        ]
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit entries serialise")
    }
}

/// The Lua that appends `ARGV[n]` to the log `KEYS[n]`, capped, unless the
/// throttle `KEYS[n+1]` was set in the last `ARGV[n+1]` seconds (0: never
/// throttled). Shared by the scripts that append as a side effect.
#[macro_export]
#[doc(hidden)]
macro_rules! audit_append_lua {
    ($log:literal, $throttle:literal, $entry:literal, $seconds:literal) => {
        concat!(
            "local sample = tonumber(ARGV[",
            $seconds,
            "])\n",
            "if sample == 0 or redis.call('SET', KEYS[",
            $throttle,
            "], 1, 'NX', 'EX', sample) then\n",
            "  local t = redis.call('TIME')\n",
            "  redis.call('ZADD', KEYS[",
            $log,
            "], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[",
            $entry,
            "])\n",
            "  redis.call('ZREMRANGEBYRANK', KEYS[",
            $log,
            "], 0, -10001)\n",
            "  return 1\n",
            "end\n",
            "return 0\n"
        )
    };
}

/// Appends an entry to its log and caps the log (a security entry only if
/// its address has not left one of its kind lately).
pub struct Append<'a>(pub &'a AuditEntry);

impl Script for Append<'_> {
    const SOURCE: &'static str = audit_append_lua!("1", "2", "1", "2");
    /// Written (`false`: throttled).
    type Reply = bool;

    /// The log, the throttle ([`AuditEntry::script_keys`]).
    fn keys(&self) -> Vec<String> {
        self.0.script_keys().to_vec()
    }

    /// The entry, its sample seconds.
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.0.to_json()),
            Arg::from(self.0.action.sample_seconds()),
        ]
    }

    fn parse(&self, reply: Vec<script::Value>) -> bool {
        integers(&reply) == [1]
    }
}

/// The `ZREVRANGE` bounds of a page of the log, newest first.
pub fn page_bounds(page: i64) -> (i64, i64) {
    let start = crate::http::api::page_start(page, AUDIT_PAGE_SIZE);
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
    fn an_entry_keeps_a_bounded_part_of_what_a_stranger_sent() {
        let long = "é".repeat(60_000);
        let entry = AuditEntry::new(
            AuditAction::Unauthorized,
            &long,
            serde_json::json!({"path": long, "nested": [{"session": long}], "count": 3, "ok": true}),
            1,
            "id".into(),
        );
        let kept = bounded_text(&long);
        assert_eq!(
            kept.chars().count(),
            MAX_ENTRY_TEXT_CHARS + 1,
            "cut, and marked"
        );
        assert!(kept.ends_with('…'));
        assert_eq!(entry.address, kept);
        assert_eq!(entry.detail["path"], kept.as_str());
        assert_eq!(entry.detail["nested"][0]["session"], kept.as_str());
        assert_eq!(entry.detail["count"], 3);
        assert!(
            entry.to_json().len() < 4 * 1024,
            "{} bytes",
            entry.to_json().len()
        );
        // Short texts are kept whole.
        assert_eq!(bounded_text("/api/v1/documents"), "/api/v1/documents");
        assert_eq!(
            bounded_text(&"a".repeat(MAX_ENTRY_TEXT_CHARS)).len(),
            MAX_ENTRY_TEXT_CHARS
        );
    }

    #[test]
    fn admin_actions_and_security_events_go_to_their_own_logs() {
        assert_eq!(AuditAction::CacheCleared.log(), AuditLog::Admin);
        assert_eq!(AuditAction::CacheCleared.sample_seconds(), 0);
        assert_eq!(AuditAction::Unauthorized.log(), AuditLog::Security);
        assert_eq!(
            AuditAction::TokenRejected.sample_seconds(),
            SECURITY_SAMPLE_SECONDS
        );
        assert_ne!(AuditLog::Admin.key(), AuditLog::Security.key());
        assert_eq!(AuditLog::parse(None), Some(AuditLog::Admin));
        assert_eq!(AuditLog::parse(Some("security")), Some(AuditLog::Security));
        assert_eq!(AuditLog::parse(Some("all")), None);
        assert_eq!(
            AuditLog::from_query("page=2&log=security"),
            Ok(AuditLog::Security)
        );
        assert_eq!(AuditLog::from_query(""), Ok(AuditLog::Admin));
        assert_eq!(AuditLog::from_query("log=x").unwrap_err().status(), 400);
        assert_eq!(AuditAction::SessionNotOwned.as_str(), "session_not_owned");
        let entry = AuditEntry::new(
            AuditAction::TokenRejected,
            "1.2.3.4",
            Value::Null,
            1,
            "i".into(),
        );
        let [log, throttle] = entry.script_keys();
        assert_eq!(log, crate::redis::keys::SECURITY_LOG);
        assert_ne!(
            throttle,
            AuditEntry::new(
                AuditAction::TokenRejected,
                "1.2.3.5",
                Value::Null,
                1,
                "i".into()
            )
            .script_keys()[1]
        );
    }

    #[test]
    fn every_entry_has_one_shape() {
        let entry = AuditEntry::new(
            AuditAction::RateLimitDenied,
            "10.0.0.1",
            serde_json::json!({"session_id": "s"}),
            7,
            "id1".into(),
        );
        let value: Value = serde_json::from_str(&entry.to_json()).unwrap();
        assert_eq!(value["action"], "rate_limit_denied");
        assert_eq!(value["detail"]["session_id"], "s");
        assert_eq!(value["at"], 7);
        assert_eq!(value["address"], "10.0.0.1");
        assert_eq!(value.as_object().unwrap().len(), 5);
        assert_eq!(decode_member(entry.to_json().as_bytes()), value);
        assert_eq!(decode_member(b"plain"), Value::String("plain".into()));
    }

    #[test]
    fn the_script_caps_at_the_documented_size() {
        assert!(Append::SOURCE.contains(&format!("-{}", AUDIT_CAP + 1)));
        assert!(Append::SOURCE.contains("KEYS[2], 1, 'NX', 'EX', sample"));
        assert_eq!(page_bounds(1), (0, 49));
        assert_eq!(page_bounds(2), (50, 99));
    }
}
