//! Appending to the audit logs (entries are built by `chatbot_core::audit`,
//! which also decides each entry's log and sampling).

use chatbot_core::audit::{AuditAction, AuditEntry, APPEND_SCRIPT};
use spin_sdk::redis::RedisParameter;

use crate::redis_script::{binary, eval, Conn};

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
    let [log, throttle] = entry.script_keys();
    if let Err(e) = eval(
        conn,
        APPEND_SCRIPT,
        &[&log, &throttle],
        &[
            binary(entry.to_json()),
            RedisParameter::Int64(action.sample_seconds()),
        ],
    )
    .await
    {
        crate::log::warn("audit_write_failed", crate::log::Dependency::Redis, &e);
    }
}
