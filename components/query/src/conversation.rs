//! The session's conversation: created in Postgres on its first question
//! (so the answer can name it) and remembered in Redis.

use crate::gate::no_such_session;
use crate::scope::Scope;
use chatbot_core::chat::query::QueryRequest;
use chatbot_core::http::api::ApiError;
use chatbot_core::limits::sessions::OwnerCheck;
use chatbot_core::redis::keys;
use chatbot_core::redis::script::Arg;
use chatbot_core::storage::history::{day_of, RememberedConversation};
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_spin::redis_script::execute;
use chatbot_spin::settings::PipelineSettings;

/// The session's conversation id when Redis does not know it (a session's
/// first question): created now in Postgres, so the answer can name it,
/// and remembered in Redis. A Postgres that fails costs the id, not the answer.
pub(crate) async fn conversation_of(
    scope: &mut Scope,
    settings: &PipelineSettings,
    request: &QueryRequest,
    owner: OwnerCheck,
) -> Result<Option<RememberedConversation>, ApiError> {
    match chatbot_spin::history::ensure_conversation(
        &settings.postgres_address,
        settings.retention_days,
        request,
        owner,
    )
    .await
    {
        Ok(Some(id)) => {
            // Its session and conversation rows were refreshed just now.
            let created =
                RememberedConversation::refreshed_on(id, day_of(chatbot_spin::now_epoch_seconds()));
            remember_conversation(scope, settings, &request.session_id, created).await;
            Ok(Some(created))
        }
        Ok(None) => {
            scope
                .audit(
                    AuditAction::SessionNotOwned,
                    serde_json::json!({"user_id": request.user_id, "session_id": request.session_id}),
                )
                .await;
            Err(no_such_session(&request.session_id))
        }
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
            Ok(None)
        }
    }
}

pub(crate) async fn remember_conversation(
    scope: &mut Scope,
    settings: &PipelineSettings,
    session: &str,
    conversation: RememberedConversation,
) {
    let Some(conn) = &scope.conn else {
        return;
    };
    let ttl = i64::from(settings.retention_days) * 86_400;
    if let Err(e) = execute(
        conn,
        "SET",
        vec![
            Arg::bytes(keys::conversation(session)),
            Arg::bytes(conversation.value()),
            Arg::bytes("EX"),
            Arg::Int(ttl),
        ],
    )
    .await
    {
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
