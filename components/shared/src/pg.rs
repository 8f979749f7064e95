//! Postgres reads through Spin's `query`, kept to the one-row rule of
//! `chatbot_core::sql` (a zero-row `query` hangs Spin 4.0.x: issue #10).

use chatbot_core::sql::OneRowQuery;
use spin_sdk::pg4::{Connection, DbValue, Decode, ParameterValue};

use crate::StoreError;

/// The row of a [`OneRowQuery`], by column index.
pub type OneRow = Vec<DbValue>;

/// Runs a statement declared to yield exactly one row and returns that row.
/// The components call `query` only through here.
pub fn query_one_row(
    conn: &Connection,
    statement: OneRowQuery,
    params: &[ParameterValue],
) -> Result<OneRow, StoreError> {
    let rows = conn.query(statement.sql(), params)?;
    match <[_; 1]>::try_from(rows.rows) {
        Ok([row]) => Ok(row),
        Err(rows) => Err(StoreError::Unexpected(format!(
            "a one-row statement yielded {} rows",
            rows.len()
        ))),
    }
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
    spin_sdk::pg4::from_jsonb(value)
        .map_err(|e| StoreError::Unexpected(format!("column {index}: {e}")))
}
