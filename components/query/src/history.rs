//! `GET /api/v1/chat/history/{session_id}` (`?conversation_id=` pages one
//! of its conversations): the admin's, or in jwt mode the session owner's,
//! after the address's bucket.

use crate::gate::{no_such_conversation, no_such_session};
use crate::limits::{address_buckets, decide, refused_before_verification};
use crate::scope::count_alone;
use chatbot_core::http::api::{self, ApiError};
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{Endpoint, ErrorType, Operation};
use chatbot_spin::identity::{self, AuthFailure};
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::Params;
use chatbot_spin::settings::{self};

/// `GET /api/v1/chat/history/{session_id}`, counted, with the read's latency.
pub(crate) async fn history(req: Request, params: Params) -> Result<Response, ApiError> {
    let mut observed = Vec::new();
    let result = read_history(req, &params, &mut observed).await;
    count_alone(Endpoint::History, &result, observed).await;
    result
}

async fn read_history(
    req: Request,
    params: &Params,
    observed: &mut Vec<Observation>,
) -> Result<Response, ApiError> {
    let session_id = params.get("session_id").unwrap_or_default();
    let identity_settings = identity::settings().await?;
    // Who may read: the admin token, in any mode; in jwt mode, the session's owner.
    let reader = if identity::is_admin(&req).await {
        None
    } else {
        let conn = settings::open_redis().await.ok();
        let address = identity::client_address(&req, &identity_settings);
        let refuse = |why: String, reason: &'static str| {
            let conn = conn.clone();
            let address = address.clone();
            let path = req.path().to_string();
            async move {
                if let Some(conn) = &conn {
                    chatbot_spin::audit::append(
                        conn,
                        AuditAction::TokenRejected,
                        &address,
                        serde_json::json!({"path": path, "reason": reason}),
                    )
                    .await;
                }
                ApiError::unauthorized(why)
            }
        };
        let Some(jwt) = &identity_settings.jwt else {
            return Err(refuse(
                "the admin token is required to read a history (auth_mode is none)".into(),
                "missing_admin_token",
            )
            .await);
        };
        // As for questions: the address pays before the token is verified.
        let decision = decide(address_buckets(&address)).await?;
        if !decision.allowed {
            observed.push(Observation::RateLimitHit);
            return Err(refused_before_verification(
                conn.as_ref(),
                &address,
                decision.scope.into(),
                &(&decision).into(),
                decision.outcome.into(),
            )
            .await);
        }
        match identity::authenticate(&req, jwt, conn.as_ref()).await {
            Ok(user) => Some(user),
            Err(AuthFailure::Token(why)) => return Err(refuse(why.to_string(), why.reason()).await),
            Err(failure) => return Err(failure.api_error()),
        }
    };
    let session_id = &api::path_segment("session_id", session_id)?;
    api::validate_id("session_id", session_id)?;
    let page = api::parse_page(req.query())?;
    let conversation = api::parse_conversation_param(req.query())?;
    let address = settings::postgres_address().await?;
    let started = std::time::Instant::now();
    let read = chatbot_spin::history::page(&address, session_id, conversation, page)
        .await
        .map_err(|e| {
            observed.push(Observation::Error(ErrorType::Postgres));
            ApiError::unavailable("the history store (Postgres) is unavailable").caused_by(
                "history_read_failed",
                chatbot_spin::log::Dependency::Postgres,
                e,
            )
        })?;
    observed.push(Observation::DatabaseLatency(
        Operation::ReadHistory,
        started.elapsed().as_secs_f64(),
    ));
    if let Some(user) = reader {
        if read.owner.as_deref() != Some(user.as_str()) {
            return Err(no_such_session(session_id));
        }
    }
    if conversation.is_some() && !read.conversation_known {
        return Err(no_such_conversation(session_id));
    }
    Ok(json(200, &read.page))
}
