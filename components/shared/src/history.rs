//! The conversation history in Postgres.

use chatbot_core::chat::conversation::{self, ConversationChoice, Turn};
use chatbot_core::chat::query::{self, Citation, QueryRequest};
use chatbot_core::storage::history::{self, HistoryPage};
use spin_sdk::pg::ParameterValue;

use crate::caches::Telemetry;
use crate::pg::{column, json_column, one_row_at};
use crate::pipeline::Answer;
use crate::settings::PipelineSettings;
use crate::StoreError;
use chatbot_core::limits::sessions::OwnerCheck;
use chatbot_core::storage::history::{day_of, ConversationHandle, RememberedConversation};
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{ErrorType, Operation};
use std::time::Instant;

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

/// Stores one exchange in one statement, in conversation `asked_in` (the
/// one the session asked in last when it is gone or unknown; a new one when
/// the question asked for one and none could be made before). Returns the
/// conversation's id and handle, and the question's message id.
pub async fn store_exchange(
    address: &str,
    exchange: &NewExchange<'_>,
    owner: OwnerCheck,
    asked_in: Option<ConversationHandle>,
) -> Result<(i64, ConversationHandle, i64), StoreError> {
    let request = exchange.request;
    let mut params = vec![
        ParameterValue::Str(request.session_id.to_string()),
        opt_str(request.user_id.as_deref()),
    ];
    params.extend(exchange.params());
    params.push(ParameterValue::Boolean(owner.enforced()));
    params.push(ParameterValue::Floating64(exchange.asked_at));
    params.push(asked_in.map_or(ParameterValue::DbNull, |handle| {
        ParameterValue::Str(handle.to_string())
    }));
    params.push(ParameterValue::Boolean(
        asked_in.is_none() && request.conversation == ConversationChoice::New,
    ));
    let row = one_row_at(address, history::STORE_EXCHANGE_SQL, params).await?;
    // NULL: the session belongs to another user (jwt mode); nothing was stored.
    let conversation: Option<i64> = column(&row, 0)?;
    let Some(id) = conversation else {
        return Err(StoreError::Unexpected(format!(
            "session {} belongs to another user; the exchange was not stored",
            request.session_id
        )));
    };
    Ok((id, handle_column(&row, 1)?, column(&row, 3)?))
}

/// A conversation's handle, as Postgres made it.
fn handle_column(row: &crate::pg::OneRow, index: usize) -> Result<ConversationHandle, StoreError> {
    let text: String = column(row, index)?;
    ConversationHandle::parse(&text)
        .ok_or_else(|| StoreError::Unexpected(format!("column {index}: not a conversation handle")))
}

/// The conversation a question is asked in, as Postgres found or made it.
pub struct EnsuredConversation {
    pub id: i64,
    pub handle: ConversationHandle,
    /// Made by this request (the session's first, or a new one asked for).
    pub made: bool,
    /// Its last turns, oldest first.
    pub turns: Vec<Turn>,
}

/// Appends an exchange to a conversation of the request's session (see
/// `chatbot_core::storage::history::APPEND_EXCHANGE_SQL`). `Ok(false)`: the
/// conversation is not the session's (ids repeat after a Postgres restore)
/// or is gone (deleted by cleanup since Redis learnt its id); nothing was
/// stored. Appended: the question's message id.
pub async fn append_exchange(
    address: &str,
    conversation: i64,
    exchange: &NewExchange<'_>,
    owner: OwnerCheck,
) -> Result<Option<i64>, StoreError> {
    let request = exchange.request;
    let mut params = vec![ParameterValue::Int64(conversation)];
    params.extend(exchange.params());
    params.extend([
        ParameterValue::Str(request.session_id.to_string()),
        opt_str(request.user_id.as_deref()),
        ParameterValue::Boolean(owner.enforced()),
        ParameterValue::Floating64(exchange.asked_at),
    ]);
    let row = match one_row_at(address, history::APPEND_EXCHANGE_SQL, params).await {
        Ok(row) => row,
        Err(StoreError::ForeignKeyViolation) => return Ok(None),
        Err(e) => return Err(e),
    };
    let appended: i64 = column(&row, 0)?;
    if appended == 0 {
        return Ok(None);
    }
    column::<Option<i64>>(&row, 1)
}

/// The conversation a question is asked in, found or created (with the
/// session) before the answer exists, and its last `turns` turns.
/// `None`: the session belongs to another user (`owner` enforced), or the
/// conversation named is not the session's; nothing was written.
pub async fn ensure_conversation(
    address: &str,
    retention_days: u32,
    request: &QueryRequest,
    owner: OwnerCheck,
    turns: u32,
) -> Result<Option<EnsuredConversation>, StoreError> {
    let named = match request.conversation {
        ConversationChoice::Named(handle) => ParameterValue::Str(handle.to_string()),
        _ => ParameterValue::DbNull,
    };
    let row = one_row_at(
        address,
        history::ENSURE_CONVERSATION_SQL,
        vec![
            ParameterValue::Str(request.session_id.to_string()),
            opt_str(request.user_id.as_deref()),
            ParameterValue::Int32(retention_days as i32),
            ParameterValue::Boolean(owner.enforced()),
            named,
            ParameterValue::Boolean(request.conversation == ConversationChoice::New),
            // Read for every question, as Redis keeps them for the next
            // follow-up: each turn is two messages, and one more pairs a
            // question answered after it.
            ParameterValue::Int64(i64::from(turns) * 2 + 1),
        ],
    )
    .await?;
    ensured(&row)
}

/// The conversation a follow-up names, and its last `turns` turns, read
/// without writing anything (`NAMED_CONVERSATION_SQL`). `None`: it is not
/// the session's, or (`owner` enforced) the session is not the user's.
pub async fn named_conversation(
    address: &str,
    request: &QueryRequest,
    handle: ConversationHandle,
    owner: OwnerCheck,
    turns: u32,
) -> Result<Option<EnsuredConversation>, StoreError> {
    let row = one_row_at(
        address,
        history::NAMED_CONVERSATION_SQL,
        vec![
            ParameterValue::Str(request.session_id.to_string()),
            ParameterValue::Str(handle.to_string()),
            ParameterValue::Boolean(owner.enforced()),
            opt_str(request.user_id.as_deref()),
            ParameterValue::Int64(i64::from(turns) * 2 + 1),
        ],
    )
    .await?;
    ensured(&row)
}

/// [`EnsuredConversation`] from a row of `ENSURE_CONVERSATION_SQL`'s columns.
fn ensured(row: &crate::pg::OneRow) -> Result<Option<EnsuredConversation>, StoreError> {
    let Some(id) = column::<Option<i64>>(row, 0)? else {
        return Ok(None);
    };
    let messages: Vec<conversation::StoredMessage> = json_column(row, 3)?;
    Ok(Some(EnsuredConversation {
        id,
        handle: handle_column(row, 1)?,
        made: column(row, 2)?,
        turns: conversation::turns_of(&messages),
    }))
}

/// A history page as read: the page, the session's owner, and whether the
/// conversation paged (if one was) is the session's.
pub struct ReadPage {
    pub page: HistoryPage,
    pub owner: Option<String>,
    pub conversation_known: bool,
}

/// One page of a session's messages (or of one of its conversations),
/// oldest first, their total, the session's conversations and its owner, in
/// one statement that yields one row even for a session with no messages.
pub async fn page(
    address: &str,
    session_id: &str,
    conversation: Option<ConversationHandle>,
    page: i64,
) -> Result<ReadPage, StoreError> {
    let row = one_row_at(
        address,
        history::HISTORY_PAGE_SQL,
        vec![
            ParameterValue::Str(session_id.to_string()),
            ParameterValue::Int64(history::offset(page)),
            ParameterValue::Int64(history::PAGE_SIZE),
            conversation.map_or(ParameterValue::DbNull, |handle| {
                ParameterValue::Str(handle.to_string())
            }),
        ],
    )
    .await?;
    let total: i64 = column(&row, 0)?;
    let messages = json_column(&row, 1)?;
    let owner: Option<String> = column(&row, 2)?;
    let mut read = HistoryPage::new(session_id, page, total, messages);
    read.conversation_id = conversation;
    read.conversations = json_column(&row, 3)?;
    Ok(ReadPage {
        page: read,
        owner,
        conversation_known: column(&row, 4)?,
    })
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

/// The conversation an exchange is stored in: the one Redis or Postgres
/// named before the answer, else the one the request named.
fn asked_in(
    request: &QueryRequest,
    remembered: Option<RememberedConversation>,
) -> Option<ConversationHandle> {
    remembered.map(|r| r.handle).or(match request.conversation {
        ConversationChoice::Named(handle) => Some(handle),
        _ => None,
    })
}

/// Stores the exchange after the response. An exchange in a conversation
/// Redis remembers as refreshed today is appended (two messages and the
/// citations); otherwise, or when that conversation is gone, the whole
/// statement upserts the session and conversation too. Returns where it was
/// stored, as Redis should remember it from now on, and the question's
/// message id (`None` when the write failed: it is logged and counted).
pub async fn store_history(
    settings: &PipelineSettings,
    request: &QueryRequest,
    answer: &Answer,
    owner: OwnerCheck,
    remembered: Option<RememberedConversation>,
    telemetry: &mut Telemetry,
) -> Option<(RememberedConversation, i64)> {
    let started = Instant::now();
    let today = day_of(crate::now_epoch_seconds());
    let exchange = NewExchange {
        request,
        answer: &answer.value.answer,
        citations: &answer.value.citations,
        cached: answer.cached,
        retention_days: settings.retention_days,
        asked_at: crate::context::request_started_at(),
    };
    let address = &settings.postgres_address;
    // Appended when Redis knows the conversation as refreshed today and it
    // still exists; else the whole statement, which refreshes (or recreates) it.
    let appended = match remembered.filter(|r| r.appendable_on(today)) {
        Some(known) => append_exchange(address, known.id, &exchange, owner)
            .await
            .map(|appended| appended.map(|question| (known, question))),
        None => Ok(None),
    };
    let stored = match appended {
        Ok(Some(known)) => Ok(known),
        Ok(None) => store_exchange(address, &exchange, owner, asked_in(request, remembered))
            .await
            .map(|(id, handle, question)| {
                (
                    RememberedConversation::refreshed_on(id, handle, today),
                    question,
                )
            }),
        Err(e) => Err(e),
    };
    match stored {
        Ok(now) => {
            telemetry.add(Observation::DatabaseLatency(
                Operation::StoreExchange,
                started.elapsed().as_secs_f64(),
            ));
            Some(now)
        }
        Err(e) => {
            crate::log::write(
                crate::log::Level::Error,
                "history_write_lost",
                crate::log::Dependency::Postgres,
                &e,
                &[("session_id", &request.session_id)],
            );
            telemetry.add(Observation::HistoryWriteLost);
            telemetry.add(Observation::Error(ErrorType::Postgres));
            None
        }
    }
}
