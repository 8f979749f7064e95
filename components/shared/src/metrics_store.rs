//! The metrics in Redis: recording a request's samples (the metrics
//! component's recorder, and ops, which records its own), and reading them
//! (for `/metrics` and ops).

use chatbot_core::redis::keys::metrics as keys;
use chatbot_core::redis::script::{all_bytes, Arg};
use chatbot_core::telemetry::metrics::{ActiveSessions, Record, Sample, SampleError, Snapshot};

use crate::redis_script::{execute, run, Conn};
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
    let batch = Record::batch(samples, seen_session).map_err(RecordError::Invalid)?;
    if batch.is_empty() {
        return Ok(());
    }
    run(conn, &batch).await.map_err(RecordError::Storage)
}

/// Everything in three round trips: two hashes and the active-session count.
pub async fn snapshot(conn: &Conn) -> Result<Snapshot, StoreError> {
    let hash = |key: &'static str| async move {
        let flat = execute(conn, "HGETALL", vec![Arg::bytes(key)]).await?;
        Ok::<_, StoreError>(Snapshot::hash_from_pairs(&all_bytes(flat)))
    };
    let counters = hash(keys::COUNTERS).await?;
    let histograms = hash(keys::HISTOGRAMS).await?;
    let active_sessions = run(conn, &ActiveSessions)
        .await?
        .map_err(|values| StoreError::Unexpected(format!("active-session reply {values:?}")))?;
    Ok(Snapshot {
        counters,
        histograms,
        active_sessions,
    })
}
