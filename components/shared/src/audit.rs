//! Appending to the audit log (entries are built by `chatbot_core::audit`).

use chatbot_core::audit::{AuditAction, AuditEntry, APPEND_SCRIPT};
use chatbot_core::keys;
use spin_sdk::redis::Connection;

use crate::redis_script::{binary, eval};

/// A new entry, stamped now with a random id.
pub fn entry(action: AuditAction, detail: serde_json::Value) -> AuditEntry {
    AuditEntry::new(
        action,
        detail,
        crate::now_epoch_seconds(),
        crate::random_token(),
    )
}

/// Appends an entry; a failure is logged, never fails the request.
pub fn append(conn: &Connection, action: AuditAction, detail: serde_json::Value) {
    let entry = entry(action, detail).to_json();
    if let Err(e) = eval(conn, APPEND_SCRIPT, &[keys::AUDIT_LOG], &[binary(entry)]) {
        eprintln!("audit: {e}");
    }
}
