//! The conversation history in Postgres (through Spin's pooled connections).

use chatbot_core::history::{self, HistoryMessage, HistoryPage};
use chatbot_core::query::{Citation, QueryRequest};
use spin_sdk::pg4::{Connection, DbValue, ParameterValue};

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
    let rows = conn
        .query(
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
    match rows.rows.first().and_then(|r| r.first()) {
        Some(DbValue::Int64(id)) => Ok(*id),
        other => Err(format!("unexpected result {other:?}")),
    }
}

fn text(v: &DbValue) -> Option<String> {
    match v {
        DbValue::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// One page of a session's messages, oldest first, in one query.
pub fn page(address: &str, session_id: &str, page: i64) -> Result<HistoryPage, String> {
    let conn = Connection::open(address).map_err(|e| format!("open: {e}"))?;
    let rows = conn
        .query(
            history::HISTORY_PAGE_SQL,
            &[
                ParameterValue::Str(session_id.to_string()),
                ParameterValue::Int64(history::offset(page)),
            ],
        )
        .map_err(|e| format!("read history: {e}"))?;
    let mut total = None;
    let mut messages = Vec::with_capacity(rows.rows.len());
    for row in &rows.rows {
        let [DbValue::Int64(id), role, content, page_context, DbValue::Boolean(cached), at, citations, DbValue::Int64(count)] =
            row.as_slice()
        else {
            return Err(format!("unexpected history row {row:?}"));
        };
        total = Some(*count);
        messages.push(HistoryMessage {
            id: *id,
            role: text(role).unwrap_or_default(),
            content: text(content).unwrap_or_default(),
            page_context: text(page_context),
            cached: *cached,
            timestamp: text(at).unwrap_or_default(),
            citations: match citations {
                DbValue::Jsonb(bytes) => serde_json::from_slice(bytes).unwrap_or_default(),
                _ => serde_json::Value::Array(vec![]),
            },
        });
    }
    let total = match total {
        Some(t) => t,
        // Past the last page: ask for the total alone.
        None => {
            let rows = conn
                .query(
                    history::HISTORY_TOTAL_SQL,
                    &[ParameterValue::Str(session_id.to_string())],
                )
                .map_err(|e| format!("count history: {e}"))?;
            match rows.rows.first().and_then(|r| r.first()) {
                Some(DbValue::Int64(n)) => *n,
                _ => 0,
            }
        }
    };
    Ok(HistoryPage::new(session_id, page, total, messages))
}
