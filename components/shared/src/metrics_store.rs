//! The metrics in Redis: recording a request's samples (the metrics
//! component's recorder, and ops, which records its own), and reading them
//! (for `/metrics` and ops).

use chatbot_core::keys::metrics as keys;
use chatbot_core::metrics::{self, Sample, SampleError, Snapshot};
use spin_sdk::redis::RedisResult;

use crate::redis_script::{binaries, binary, eval, execute, Conn};
use crate::StoreError;

/// Why a batch was not recorded.
#[derive(Debug)]
pub enum RecordError {
    Invalid(SampleError),
    Storage(StoreError),
}

/// Records a batch atomically, in one round trip (nothing to do for an empty batch).
pub async fn record(
    conn: &Conn,
    samples: &[Sample],
    seen_session: Option<&str>,
) -> Result<(), RecordError> {
    let args = metrics::record_arguments(samples, seen_session).map_err(RecordError::Invalid)?;
    if samples.is_empty() && seen_session.is_none() {
        return Ok(());
    }
    let args: Vec<_> = args.iter().map(binary).collect();
    eval(conn, metrics::RECORD_SCRIPT, &keys::ALL, &args)
        .await
        .map(drop)
        .map_err(RecordError::Storage)
}

/// Everything in three round trips: two hashes and the active-session count.
pub async fn snapshot(conn: &Conn) -> Result<Snapshot, StoreError> {
    let hash = |key: &'static str| async move {
        let flat = execute(conn, "HGETALL", vec![binary(key)]).await?;
        Ok::<_, StoreError>(Snapshot::hash_from_pairs(&binaries(flat)))
    };
    let counters = hash(keys::COUNTERS).await?;
    let histograms = hash(keys::HISTOGRAMS).await?;
    let active = eval(
        conn,
        metrics::ACTIVE_SESSIONS_SCRIPT,
        &[keys::SESSIONS],
        &[binary(metrics::ACTIVE_SESSION_WINDOW_SECONDS.to_string())],
    )
    .await?;
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
        active_sessions,
    })
}
