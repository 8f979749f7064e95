//! The conversation history in Postgres.

use chatbot_core::history::{self, HistoryPage};
use chatbot_core::query::{self, Citation, QueryRequest};
use spin_sdk::pg::ParameterValue;

use crate::pg::{column, json_column, one_row_at};
use crate::StoreError;

fn opt_str(v: Option<&str>) -> ParameterValue {
    v.map_or(ParameterValue::DbNull, |s| {
        ParameterValue::Str(s.to_string())
    })
}

/// An exchange to write: what both statements store.
pub struct NewExchange<'a> {
    pub request: &'a QueryRequest,
    pub answer: &'a str,
    pub citations: &'a [Citation],
    pub cached: bool,
    pub retention_days: u32,
    /// When the question was asked (Unix seconds): its message's timestamp.
    pub asked_at: f64,
}

impl NewExchange<'_> {
    /// The parameters both statements share, in their order: retention days,
    /// question, page context, cached, answer, citations (JSON).
    fn params(&self) -> [ParameterValue; 6] {
        [
            ParameterValue::Int32(self.retention_days as i32),
            ParameterValue::Str(self.request.question.clone()),
            opt_str(self.request.page_context.as_deref()),
            ParameterValue::Boolean(self.cached),
            ParameterValue::Str(query::storable(self.answer)),
            ParameterValue::Jsonb(serde_json::to_vec(self.citations).expect("citations serialise")),
        ]
    }
}

/// Stores one exchange in one statement. Returns the conversation id.
pub async fn store_exchange(
    address: &str,
    exchange: &NewExchange<'_>,
    enforce_owner: bool,
) -> Result<i64, StoreError> {
    let request = exchange.request;
    let mut params = vec![
        ParameterValue::Str(request.session_id.clone()),
        opt_str(request.user_id.as_deref()),
    ];
    params.extend(exchange.params());
    params.push(ParameterValue::Boolean(enforce_owner));
    params.push(ParameterValue::Floating64(exchange.asked_at));
    let row = one_row_at(address, history::STORE_EXCHANGE_SQL, params).await?;
    // NULL: the session belongs to another user (jwt mode); nothing was stored.
    let conversation: Option<i64> = column(&row, 0)?;
    conversation.ok_or_else(|| {
        StoreError::Unexpected(format!(
            "session {} belongs to another user; the exchange was not stored",
            request.session_id
        ))
    })
}

/// Appends an exchange to a conversation of the request's session (see
/// `chatbot_core::history::APPEND_EXCHANGE_SQL`). `Ok(false)`: the
/// conversation is not the session's (ids repeat after a Postgres restore)
/// or is gone (deleted by cleanup since Redis learnt its id); nothing was stored.
pub async fn append_exchange(
    address: &str,
    conversation: i64,
    exchange: &NewExchange<'_>,
    enforce_owner: bool,
) -> Result<bool, StoreError> {
    let request = exchange.request;
    let mut params = vec![ParameterValue::Int64(conversation)];
    params.extend(exchange.params());
    params.extend([
        ParameterValue::Str(request.session_id.clone()),
        opt_str(request.user_id.as_deref()),
        ParameterValue::Boolean(enforce_owner),
        ParameterValue::Floating64(exchange.asked_at),
    ]);
    let row = match one_row_at(address, history::APPEND_EXCHANGE_SQL, params).await {
        Ok(row) => row,
        Err(StoreError::ForeignKeyViolation) => return Ok(false),
        Err(e) => return Err(e),
    };
    let appended: i64 = column(&row, 0)?;
    Ok(appended > 0)
}

/// The session's conversation, created with the session if need be, before
/// the answer exists. `None`: the session belongs to another user (`enforce_owner`).
pub async fn ensure_conversation(
    address: &str,
    retention_days: u32,
    request: &QueryRequest,
    enforce_owner: bool,
) -> Result<Option<i64>, StoreError> {
    let row = one_row_at(
        address,
        history::ENSURE_CONVERSATION_SQL,
        vec![
            ParameterValue::Str(request.session_id.clone()),
            opt_str(request.user_id.as_deref()),
            ParameterValue::Int32(retention_days as i32),
            ParameterValue::Boolean(enforce_owner),
        ],
    )
    .await?;
    column(&row, 0)
}

/// One page of a session's messages, oldest first, the session's total and its
/// owner, in one statement that yields one row even for a session with no messages.
pub async fn page(
    address: &str,
    session_id: &str,
    page: i64,
) -> Result<(HistoryPage, Option<String>), StoreError> {
    let row = one_row_at(
        address,
        history::HISTORY_PAGE_SQL,
        vec![
            ParameterValue::Str(session_id.to_string()),
            ParameterValue::Int64(history::offset(page)),
            ParameterValue::Int64(history::PAGE_SIZE),
        ],
    )
    .await?;
    let total: i64 = column(&row, 0)?;
    let messages = json_column(&row, 1)?;
    let owner: Option<String> = column(&row, 2)?;
    Ok((HistoryPage::new(session_id, page, total, messages), owner))
}

/// Whose the session is: checked once when Redis first sees a session, in
/// case Redis forgot an owner.
pub async fn owner(address: &str, session_id: &str) -> Result<history::SessionOwner, StoreError> {
    let row = one_row_at(
        address,
        history::SESSION_OWNER_SQL,
        vec![ParameterValue::Str(session_id.to_string())],
    )
    .await?;
    Ok(history::SessionOwner::from_row(
        column(&row, 0)?,
        column(&row, 1)?,
    ))
}
