//! Who asks and whether they may: the verified user (jwt mode), and the
//! user's gate in Redis (the session is theirs, today's budget is not spent,
//! they hold few enough sessions), Postgres having the last word on owners.

use crate::scope::Scope;
use chatbot_core::http::api::{ApiError, ErrorCode, UserId};
use chatbot_core::limits::identity::IdentitySettings;
use chatbot_core::limits::sessions::{self, Gate, GateCheck, OwnerCheck};
use chatbot_core::redis::keys;
use chatbot_core::redis::script::Arg;
use chatbot_core::storage::history::SessionOwner;
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_spin::identity::{self, AuthFailure};
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::log::Dependency;
use chatbot_spin::now_epoch_seconds;
use chatbot_spin::redis_script::{execute, run};
use chatbot_spin::settings::{self, PipelineSettings};

/// The end user: the verified token's `sub` in `jwt` mode (401 without one),
/// nobody in `none` mode (the body's `user_id` is then taken at its word).
pub(crate) async fn authenticate(
    scope: &mut Scope,
    identity_settings: &IdentitySettings,
    req: &Request,
) -> Result<Option<UserId>, ApiError> {
    let Some(jwt) = &identity_settings.jwt else {
        return Ok(None);
    };
    match identity::authenticate(req, jwt, scope.conn.as_ref()).await {
        Ok(user) => Ok(Some(UserId::verified(user))),
        Err(failure) => {
            if let AuthFailure::Token(why) = &failure {
                scope
                    .audit(
                        AuditAction::TokenRejected,
                        serde_json::json!({"path": req.path(), "reason": why.reason()}),
                    )
                    .await;
            }
            Err(failure.api_error())
        }
    }
}

/// The 404 a user gets for a session that is not theirs: the same words as
/// for one that does not exist, so it tells nothing.
pub(crate) fn no_such_session(session: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no session `{session}`"))
}

/// The 404 for a `conversation_id` that is not one of the session's. It
/// does not repeat the handle: an error body or log line never carries one.
pub(crate) fn no_such_conversation(session: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("`conversation_id` names none of session {session}'s conversations"),
    )
}

/// The user's gate, in one round trip: the session is theirs (jwt mode),
/// today's token budget is not spent, and they hold at most
/// `max_sessions_per_user` active sessions (seed 003, 1.2). Without Redis
/// none of it can be checked, and the request goes through: nothing is then
/// served from Redis, and the exchange statement still refuses to write into
/// another user's session (a budget that cannot be counted refuses misses:
/// see `budget::reserve`). A Redis that fails on a live connection refuses.
pub(crate) async fn gate(
    scope: &mut Scope,
    settings: &PipelineSettings,
    limits: &settings::SessionLimits,
    user: &str,
    session: &str,
    owner: OwnerCheck,
) -> Result<(), ApiError> {
    let Some(conn) = &scope.conn else {
        return Ok(());
    };
    let check = GateCheck {
        user,
        session,
        max_sessions: limits.max_per_user,
        idle_seconds: limits.idle_seconds,
        budget_per_day: limits.token_budget_per_day,
        owner,
        owner_ttl_seconds: sessions::owner_ttl_seconds(settings.retention_days),
        now_epoch_seconds: now_epoch_seconds(),
    };
    let answered = run(conn, &check).await;
    let gate = checked_or_refused(scope, answered, "the user's gate", "user_gate_failed")?;
    let detail = serde_json::json!({"user_id": user, "session_id": session});
    match gate {
        Gate::Admitted { claimed: false } => Ok(()),
        Gate::Admitted { claimed: true } => {
            if owner.enforced() {
                confirm_new_owner(scope, settings, user, session).await?;
            }
            Ok(())
        }
        Gate::NotOwner => {
            scope.audit(AuditAction::SessionNotOwned, detail).await;
            Err(no_such_session(session))
        }
        Gate::BudgetSpent { used } => Err(budget_spent(
            scope,
            detail,
            format!(
                "today's token budget is spent ({used} of {} tokens); it renews at 00:00 UTC",
                limits.token_budget_per_day
            ),
        )
        .await),
        Gate::SessionLimit {
            active,
            retry_after_seconds,
        } => {
            scope.audit(
                AuditAction::SessionRefused,
                serde_json::json!({"user_id": user, "session_id": session, "max_sessions": limits.max_per_user}),
            ).await;
            Err(ApiError::new(ErrorCode::SessionLimit,
                format!(
                    "user already has {active} active sessions (the maximum is {}); reuse one or wait for one to expire",
                    limits.max_per_user
                ),
            )
            .with_header("retry-after", retry_after_seconds.to_string()))
        }
    }
}

/// Redis had no owner for the session and gave it to this user: Postgres,
/// which keeps sessions for the whole retention period, has the last word.
async fn confirm_new_owner(
    scope: &mut Scope,
    settings: &PipelineSettings,
    user: &str,
    session: &str,
) -> Result<(), ApiError> {
    match chatbot_spin::history::owner(&settings.postgres_address, session).await {
        Ok(owner) if !owner.admits(user) => {
            // Redis learns the owner again; a session stored without one (in
            // `none` mode) gets the empty owner, which is no user's.
            let owner = match owner {
                SessionOwner::User(owner) => owner,
                SessionOwner::Nobody | SessionOwner::Unknown => String::new(),
            };
            if let Some(conn) = &scope.conn {
                let restored = execute(
                    conn,
                    "SET",
                    vec![
                        Arg::bytes(keys::session_owner(session)),
                        Arg::bytes(&owner),
                        Arg::bytes("EX"),
                        Arg::Int(sessions::owner_ttl_seconds(settings.retention_days) as i64),
                    ],
                )
                .await;
                if let Err(e) = restored {
                    chatbot_spin::log::write(
                        chatbot_spin::log::Level::Warn,
                        "session_owner_restore_failed",
                        chatbot_spin::log::Dependency::Redis,
                        &e,
                        &[("session_id", session)],
                    );
                }
            }
            scope
                .audit(
                    AuditAction::SessionNotOwned,
                    serde_json::json!({"user_id": user, "session_id": session}),
                )
                .await;
            Err(no_such_session(session))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            // The exchange statement refuses another user's session anyway.
            chatbot_spin::log::write(
                chatbot_spin::log::Level::Warn,
                "session_owner_read_failed",
                chatbot_spin::log::Dependency::Postgres,
                &e,
                &[("session_id", session)],
            );
            Ok(())
        }
    }
}

/// A check's script reply, or its refusal when Redis failed on a live
/// connection: a full Redis ([`redis_full`]) or any other error (a wrong
/// type, a timeout, a reset). The check protects another user's session or
/// money, and the calls after it may well succeed (serving that user's
/// cached answers or turns), so it fails closed (503, logged as `event`).
pub(crate) fn checked_or_refused<T>(
    scope: &mut Scope,
    answered: Result<T, chatbot_spin::StoreError>,
    check: &'static str,
    event: &'static str,
) -> Result<T, ApiError> {
    match answered {
        Ok(reply) => Ok(reply),
        Err(e) if e.is_out_of_memory() => Err(redis_full(scope, &e)),
        Err(e) => {
            scope.telemetry.redis_error();
            Err(ApiError::unavailable(format!(
                "Redis failed while checking {check}: the question is refused rather than answered unchecked; retry shortly"
            ))
            .with_header("retry-after", "1")
            .caused_by(event, Dependency::Redis, &e))
        }
    }
}

/// Redis is up but full (`maxmemory` under `noeviction`): a limit that cannot
/// be counted refuses, where a Redis that is down would leave it advisory.
pub(crate) fn redis_full(scope: &mut Scope, e: &chatbot_spin::StoreError) -> ApiError {
    scope.telemetry.redis_error();
    ApiError::unavailable(
        "Redis is full (maxmemory): questions are refused until it has room, so that no limit goes uncounted",
    )
    .caused_by("redis_full", Dependency::Redis, e)
}

/// The 429 of a spent budget: counted, audited, and retried at 00:00 UTC.
pub(crate) async fn budget_spent(
    scope: &mut Scope,
    detail: serde_json::Value,
    message: String,
) -> ApiError {
    let (_, day_left) = sessions::budget_day(now_epoch_seconds());
    scope.telemetry.add(Observation::BudgetDenial);
    scope.audit(AuditAction::BudgetExceeded, detail).await;
    ApiError::new(ErrorCode::BudgetExceeded, message)
        .with_header("retry-after", day_left.to_string())
}
