//! The conversation history in Postgres (through Spin's pooled connections).

use chatbot_core::history::{self, HistoryPage};
use chatbot_core::query::{Citation, QueryRequest};
use spin_sdk::pg4::{Connection, DbValue, ParameterValue};

use crate::pg::query_one_row;

fn opt_str(v: Option<&str>) -> ParameterValue {
    v.map_or(ParameterValue::DbNull, |s| {
        ParameterValue::Str(s.to_string())
    })
}

/// Stores one exchange in one statement. Returns the conversation id.
pub fn store_exchange(
    address: &str,
    retention_days: u32,
    request: &QueryRequest,
    answer: &str,
    citations: &[Citation],
    cached: bool,
) -> Result<i64, String> {
    let conn = Connection::open(address).map_err(|e| format!("open: {e}"))?;
    let citations = serde_json::to_vec(citations).expect("citations serialise");
    let row = query_one_row(
        &conn,
        history::STORE_EXCHANGE_SQL,
        &[
            ParameterValue::Str(request.session_id.clone()),
            opt_str(request.user_id.as_deref()),
            ParameterValue::Int32(retention_days as i32),
            ParameterValue::Str(request.question.clone()),
            opt_str(request.page_context.as_deref()),
            ParameterValue::Boolean(cached),
            ParameterValue::Str(answer.to_string()),
            ParameterValue::Jsonb(citations),
        ],
    )
    .map_err(|e| format!("store exchange: {e}"))?;
    match row.first() {
        Some(DbValue::Int64(id)) => Ok(*id),
        other => Err(format!("unexpected result {other:?}")),
    }
}

/// One page of a session's messages, oldest first, and the session's total, in
/// one statement that yields one row even for a session with no messages.
pub fn page(address: &str, session_id: &str, page: i64) -> Result<HistoryPage, String> {
    let conn = Connection::open(address).map_err(|e| format!("open: {e}"))?;
    let row = query_one_row(
        &conn,
        history::HISTORY_PAGE_SQL,
        &[
            ParameterValue::Str(session_id.to_string()),
            ParameterValue::Int64(history::offset(page)),
            ParameterValue::Int64(history::PAGE_SIZE),
        ],
    )
    .map_err(|e| format!("read history: {e}"))?;
    let [DbValue::Int64(total), DbValue::Jsonb(messages)] = row.as_slice() else {
        return Err(format!("unexpected history row {row:?}"));
    };
    let messages =
        history::decode_page_messages(messages).map_err(|e| format!("decode history page: {e}"))?;
    Ok(HistoryPage::new(session_id, page, *total, messages))
}
