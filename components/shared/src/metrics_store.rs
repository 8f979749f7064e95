//! Reading what the metrics component keeps in Redis (for `/metrics` and ops).

use chatbot_core::metrics::{self, keys, Snapshot};
use spin_sdk::redis::{Connection, RedisResult};

use crate::redis_script::{binary, eval};

pub fn binaries(results: Vec<RedisResult>) -> Vec<Vec<u8>> {
    results
        .into_iter()
        .map(|r| match r {
            RedisResult::Binary(b) => b,
            RedisResult::Status(s) => s.into_bytes(),
            RedisResult::Int64(i) => i.to_string().into_bytes(),
            RedisResult::Nil => Vec::new(),
        })
        .collect()
}

/// Everything in four round trips: three hashes and the active-session count.
pub fn snapshot(conn: &Connection) -> Result<Snapshot, String> {
    let hash = |key: &str| -> Result<_, String> {
        let flat = conn
            .execute("HGETALL", &[binary(key)])
            .map_err(|e| format!("HGETALL: {e}"))?;
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
        other => return Err(format!("unexpected active-session reply {other:?}")),
    };
    Ok(Snapshot {
        counters,
        histograms,
        gauges,
        active_sessions,
    })
}
