//! Appending to the audit logs (entries are built by `chatbot_core::telemetry::audit`,
//! which also decides each entry's log and sampling).

use chatbot_core::limits::sessions::NoteRateLimited;
use chatbot_core::telemetry::audit::{Append, AuditAction, AuditEntry};

use crate::redis_script::{run, Conn};

/// A new entry, stamped now with a random id.
pub fn entry(action: AuditAction, address: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry::new(
        action,
        address,
        detail,
        crate::now_epoch_seconds(),
        crate::random_token(),
    )
}

/// Appends an entry to its log (a security entry only if its address has
/// not left one of its kind lately); a failure is logged, never fails the request.
pub async fn append(conn: &Conn, action: AuditAction, address: &str, detail: serde_json::Value) {
    let entry = entry(action, address, detail);
    if let Err(e) = run(conn, &Append(&entry)).await {
        crate::log::warn("audit_write_failed", crate::log::Dependency::Redis, &e);
    }
}

/// Top rate-limited sessions and the security log (sampled per address), in one round trip.
pub async fn note_rate_limited(
    conn: &Conn,
    session_id: &str,
    address: &str,
    detail: serde_json::Value,
) {
    let entry = entry(AuditAction::RateLimitDenied, address, detail);
    let note = NoteRateLimited {
        session_id,
        entry: &entry,
    };
    if let Err(e) = run(conn, &note).await {
        crate::log::warn("analytics_write_failed", crate::log::Dependency::Redis, &e);
    }
}
