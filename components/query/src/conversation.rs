//! The conversation a question is asked in: found or created in Postgres
//! when Redis does not know it (a session's first question, a new or a
//! named conversation, or Redis lost it), so the answer can name it and a
//! follow-up is answered with its earlier turns; remembered in Redis with
//! its last turns, and a follow-up's turn added once it is stored.

use crate::gate::{no_such_conversation, no_such_session};
use crate::scope::Scope;
use chatbot_core::chat::conversation::{
    self, AppendTurn, ConversationChoice, RememberConversation, Turn,
};
use chatbot_core::chat::query::QueryRequest;
use chatbot_core::http::api::ApiError;
use chatbot_core::limits::sessions::OwnerCheck;
use chatbot_core::redis::script::Script;
use chatbot_core::storage::history::{day_of, RememberedConversation};
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_spin::redis_script::run;
use chatbot_spin::settings::PipelineSettings;

/// The conversation asked in, when Redis does not know it, and its earlier
/// turns (oldest first), from Postgres. A question asked alone finds or
/// creates it (with its session) in one statement, and Redis remembers it.
/// A follow-up's is only read: its budget is checked next, and a refused
/// follow-up must change nothing (Redis learns it once it is admitted, the
/// exchange's statement refreshes its rows). A
/// Postgres that fails costs the id and the context, not the answer.
pub(crate) async fn conversation_of(
    scope: &mut Scope,
    settings: &PipelineSettings,
    request: &QueryRequest,
    owner: OwnerCheck,
) -> Result<Found, ApiError> {
    let address = &settings.postgres_address;
    let turns = settings.conversation.turns;
    let read = match request.conversation {
        ConversationChoice::Named(handle) => {
            chatbot_spin::history::named_conversation(address, request, handle, owner, turns).await
        }
        _ => {
            chatbot_spin::history::ensure_conversation(
                address,
                settings.retention_days,
                request,
                owner,
                turns,
            )
            .await
        }
    };
    match read {
        Ok(Some(ensured)) if request.conversation.continues() => Ok(Found {
            // Not refreshed (day 0): its exchange takes the full statement.
            conversation: Some(RememberedConversation::refreshed_on(
                ensured.id,
                ensured.handle,
                0,
            )),
            turns: ensured.turns,
            made: false,
        }),
        Ok(Some(ensured)) => {
            // Its session and conversation rows were refreshed just now.
            let found = RememberedConversation::refreshed_on(
                ensured.id,
                ensured.handle,
                day_of(chatbot_spin::now_epoch_seconds()),
            );
            // A question asked alone (a flood of new sessions among them)
            // keeps no turns: the next follow-up reads them from Postgres.
            remember_conversation(scope, settings, &request.session_id, found, None).await;
            Ok(Found {
                conversation: Some(found),
                turns: ensured.turns,
                made: ensured.made,
            })
        }
        Ok(None) => match request.conversation {
            ConversationChoice::Named(_) => Err(no_such_conversation(&request.session_id)),
            _ => {
                scope
                    .audit(
                        AuditAction::SessionNotOwned,
                        serde_json::json!({"user_id": request.user_id, "session_id": request.session_id}),
                    )
                    .await;
                Err(no_such_session(&request.session_id))
            }
        },
        Err(e) => {
            chatbot_spin::log::write(
                chatbot_spin::log::Level::Error,
                "conversation_create_failed",
                chatbot_spin::log::Dependency::Postgres,
                &e,
                &[("session_id", &request.session_id)],
            );
            scope.telemetry.add(Observation::Error(
                chatbot_core::telemetry::metrics::ErrorType::Postgres,
            ));
            Ok(Found::default())
        }
    }
}

/// The conversation asked in, as Postgres found or made it.
#[derive(Default)]
pub(crate) struct Found {
    /// `None`: Postgres failed (the exchange finds its conversation later).
    pub conversation: Option<RememberedConversation>,
    /// Its earlier turns, oldest first.
    pub turns: Vec<Turn>,
    /// Made by this request: its response may name it.
    pub made: bool,
}

/// Seconds a session's conversation and turns stay in Redis after its last
/// question: about as long as the session is active (`session_idle_seconds`).
fn kept_seconds(settings: &PipelineSettings) -> u64 {
    settings.conversation.kept_seconds
}

/// When a turn's messages expire: `retention_days` from now, as they were stored.
fn retained_until(settings: &PipelineSettings) -> u64 {
    chatbot_spin::now_epoch_seconds() + u64::from(settings.retention_days) * 86_400
}

/// Makes `conversation` the session's current one in Redis, with all its
/// last `turns` (`None`: not known).
pub(crate) async fn remember_conversation(
    scope: &mut Scope,
    settings: &PipelineSettings,
    session: &str,
    conversation: RememberedConversation,
    turns: Option<&[Turn]>,
) {
    let remember = RememberConversation {
        session_id: session,
        conversation,
        turns,
        ttl_seconds: kept_seconds(settings),
    };
    write(scope, session, &remember).await;
}

/// Once the exchange is stored (in `now`): its turn joins the conversation
/// it was asked in (`asked_in`), when Redis keeps all that conversation's
/// turns (`turns_kept`: a follow-up, or a question whose conversation was
/// just read from Postgres) and it is still the session's current one. A
/// question asked alone in a conversation Redis knew writes nothing (its
/// turn is read from Postgres by the next follow-up), unless its exchange
/// went to another conversation.
pub(crate) async fn add_turn(
    scope: &mut Scope,
    settings: &PipelineSettings,
    request: &QueryRequest,
    asked_in: Option<RememberedConversation>,
    turns_kept: bool,
    (now, question_id): (RememberedConversation, i64),
    answer: &str,
) {
    // Not known before the answer (Postgres failed then): Redis learns where
    // it went; the next follow-up reads its turns from Postgres.
    let Some(asked_in) = asked_in else {
        remember_conversation(scope, settings, &request.session_id, now, None).await;
        return;
    };
    if !(turns_kept && settings.conversation.remembers()) {
        if now != asked_in {
            remember_conversation(scope, settings, &request.session_id, now, None).await;
        }
        return;
    }
    let turn = Turn {
        question: request.question.clone(),
        answer: conversation::kept_answer(answer, &settings.conversation),
        expires_at: retained_until(settings),
        question_id: Some(question_id),
    };
    let append = AppendTurn {
        session_id: &request.session_id,
        asked_in: asked_in.id,
        now,
        turn: &turn,
        keep: settings.conversation.turns,
        ttl_seconds: kept_seconds(settings),
    };
    write(scope, &request.session_id, &append).await;
}

async fn write<S: Script<Reply = ()>>(scope: &mut Scope, session: &str, script: &S) {
    let Some(conn) = &scope.conn else {
        return;
    };
    if let Err(e) = run(conn, script).await {
        chatbot_spin::log::write(
            chatbot_spin::log::Level::Warn,
            "conversation_remember_failed",
            chatbot_spin::log::Dependency::Redis,
            &e,
            &[("session_id", session)],
        );
        scope.telemetry.redis_error();
    }
}
