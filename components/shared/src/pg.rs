//! Postgres through Spin 4's async interface (`spin:postgres@4.2.0`'s
//! `open-async` and `query-async`, which answer a zero-row query at once:
//! the spin#3671 hang is in the synchronous `query`). Every call is bounded
//! by what is left of the request's deadline, and a query by
//! `context::STORE_CALL`: a Postgres that accepts and never answers costs a
//! request some latency, not its answer, and the instance nothing.

use chatbot_core::storage::sql::OneRowQuery;
use spin_sdk::pg::{Connection, DbValue, Decode, ParameterValue};

use crate::StoreError;

/// The row of a [`OneRowQuery`], by column index.
pub type OneRow = Vec<DbValue>;

fn timed_out() -> StoreError {
    StoreError::Postgres("no answer in time (the request's deadline, or 2 s for one call)".into())
}

/// `work` within `limit`.
async fn bounded_by<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::within(limit, work)
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

/// `work` within what is left of the request's deadline, and at most
/// `context::STORE_CALL`.
async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    bounded_by(crate::bounded(crate::context::STORE_CALL), work).await
}

/// Opens a connection to `address`.
pub async fn open(address: &str) -> Result<Connection, StoreError> {
    bounded(async { Ok(Connection::open(address).await?) }).await
}

/// Every row `sql` yields.
pub async fn rows(
    conn: &Connection,
    sql: &str,
    params: Vec<ParameterValue>,
) -> Result<Vec<OneRow>, StoreError> {
    bounded(async {
        let (_, mut rows, result) = conn.query(sql, params).await?.into_inner();
        let mut all = Vec::new();
        while let Some(row) = rows.next().await {
            all.push(row);
        }
        result.await?;
        Ok(all)
    })
    .await
}

/// Runs a statement that yields no rows (a batch of the retention cleanup,
/// which may take a while: bounded by the request's deadline only); the
/// number of rows it changed.
pub async fn execute(
    conn: &Connection,
    sql: &str,
    params: Vec<ParameterValue>,
) -> Result<u64, StoreError> {
    bounded_by(crate::time_left(), async {
        Ok(conn.execute(sql, params).await?)
    })
    .await
}

/// Runs a statement declared to yield exactly one row and returns that row.
pub async fn query_one_row(
    conn: &Connection,
    statement: OneRowQuery,
    params: Vec<ParameterValue>,
) -> Result<OneRow, StoreError> {
    let rows = rows(conn, statement.sql(), params).await?;
    match <[_; 1]>::try_from(rows) {
        Ok([row]) => Ok(row),
        Err(rows) => Err(StoreError::Unexpected(format!(
            "a one-row statement yielded {} rows",
            rows.len()
        ))),
    }
}

/// Opens `address` and runs a one-row statement there.
pub async fn one_row_at(
    address: &str,
    statement: OneRowQuery,
    params: Vec<ParameterValue>,
) -> Result<OneRow, StoreError> {
    let conn = open(address).await?;
    query_one_row(&conn, statement, params).await
}

/// Decodes column `index` of a row (spin-sdk's `Decode`).
pub fn column<T: Decode>(row: &OneRow, index: usize) -> Result<T, StoreError> {
    let value = row
        .get(index)
        .ok_or_else(|| StoreError::Unexpected(format!("no column {index} in {row:?}")))?;
    T::decode(value).map_err(|e| StoreError::Unexpected(format!("column {index}: {e}")))
}

/// Decodes a `jsonb` column with serde.
pub fn json_column<T: serde::de::DeserializeOwned>(
    row: &OneRow,
    index: usize,
) -> Result<T, StoreError> {
    let value = row
        .get(index)
        .ok_or_else(|| StoreError::Unexpected(format!("no column {index} in {row:?}")))?;
    spin_sdk::pg::from_jsonb(value)
        .map_err(|e| StoreError::Unexpected(format!("column {index}: {e}")))
}
