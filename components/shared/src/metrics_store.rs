//! Reading what the metrics component keeps in Redis (for `/metrics` and ops).

use chatbot_core::keys::metrics as keys;
use chatbot_core::metrics::{self, Snapshot};
use spin_sdk::redis::{Connection, RedisResult};

use crate::redis_script::{binaries, binary, eval};
use crate::StoreError;

/// Everything in four round trips: three hashes and the active-session count.
pub fn snapshot(conn: &Connection) -> Result<Snapshot, StoreError> {
    let hash = |key: &str| -> Result<_, StoreError> {
        let flat = conn.execute("HGETALL", &[binary(key)])?;
        Ok(Snapshot::hash_from_pairs(&binaries(flat)))
    };
    let counters = hash(keys::COUNTERS)?;
    let histograms = hash(keys::HISTOGRAMS)?;
    let gauges = hash(keys::GAUGES)?;
    let active = eval(
        conn,
        metrics::ACTIVE_SESSIONS_SCRIPT,
        &[keys::SESSIONS],
        &[binary(metrics::ACTIVE_SESSION_WINDOW_SECONDS.to_string())],
    )?;
    let active_sessions = match active.first() {
        Some(RedisResult::Int64(n)) => *n as u64,
        other => {
            return Err(StoreError::Unexpected(format!(
                "active-session reply {other:?}"
            )))
        }
    };
    Ok(Snapshot {
        counters,
        histograms,
        gauges,
        active_sessions,
    })
}
