//! Postgres reads through Spin's `query`, kept to the one-row rule of
//! `chatbot_core::sql` (a zero-row `query` hangs Spin 4.0.x: issue #10).

use chatbot_core::sql::OneRowQuery;
use spin_sdk::pg4::{Connection, DbValue, ParameterValue};

/// Runs a statement declared to yield exactly one row and returns that row.
/// The components call `query` only through here.
pub fn query_one_row(
    conn: &Connection,
    statement: OneRowQuery,
    params: &[ParameterValue],
) -> Result<Vec<DbValue>, String> {
    let rows = conn
        .query(statement.sql(), params)
        .map_err(|e| e.to_string())?;
    match <[_; 1]>::try_from(rows.rows) {
        Ok([row]) => Ok(row),
        Err(rows) => Err(format!("a one-row statement yielded {} rows", rows.len())),
    }
}
