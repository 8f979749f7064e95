//! A miss's worst case reserved from its user's day and the deployment's
//! before it spends anything, and settled to what it spent.

use crate::gate::{budget_spent, checked_or_refused};
use crate::scope::{Reservation, Scope};
use chatbot_core::chat::conversation::{self, Turn};
use chatbot_core::chat::query::{self, QueryRequest};
use chatbot_core::http::api::ApiError;
use chatbot_core::limits::sessions::{self, Reserved, Spent};
use chatbot_core::redis::keys;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_spin::now_epoch_seconds;
use chatbot_spin::settings::{self, PipelineSettings};

/// Before a miss spends anything: takes its worst case (the largest prompt,
/// with its earlier turns and a follow-up's rewrite, plus `chat_max_tokens`) from its user's budget for the day and from the
/// deployment's ceiling, atomically and from both or neither, or refuses
/// when what is left of either cannot cover it. Concurrent misses each take
/// their own share, so together they cannot overspend. [`settle`] corrects
/// the counts once the answer's usage is known.
pub(crate) async fn reserve(
    scope: &mut Scope,
    settings: &PipelineSettings,
    user_budget: Option<(&str, &settings::SessionLimits)>,
    request: &QueryRequest,
    turns: &[Turn],
) -> Result<(), ApiError> {
    let (day, day_left) = sessions::budget_day(now_epoch_seconds());
    let user_budget = user_budget.filter(|(_, limits)| limits.token_budget_per_day > 0);
    let mut counts: Vec<(String, u64)> = Vec::with_capacity(2);
    if let Some((user, limits)) = user_budget {
        counts.push((keys::user_tokens(user, day), limits.token_budget_per_day));
    }
    if settings.deployment_token_budget_per_day > 0 {
        counts.push((
            keys::deployment_tokens(day),
            settings.deployment_token_budget_per_day,
        ));
    }
    if counts.is_empty() {
        return Ok(());
    }
    let Some(conn) = &scope.conn else {
        // Nothing can be counted: a budget fails closed (a hit needs Redis
        // too, so none could be served either).
        scope.telemetry.redis_error();
        return Err(ApiError::unavailable(
            "Redis is unreachable, so the token budget cannot be counted: questions are refused until it is back",
        )
        .with_header("retry-after", "1"));
    };
    // A follow-up's turns, and its rewrite, are part of its worst case.
    let tokens = query::worst_case_tokens(request, settings.top_k, settings.chat_max_tokens)
        + conversation::worst_case_extra_tokens(
            turns,
            &request.question,
            settings.conversation.retrieval,
        );
    let answered = chatbot_spin::budget::reserve(conn, &counts, tokens).await;
    let reserved =
        checked_or_refused(scope, answered, "the token budget", "budget_reserve_failed")?;
    match reserved {
        Reserved::Taken => {
            scope.reservation = Some(Reservation {
                keys: counts.into_iter().map(|(key, _)| key).collect(),
                tokens,
                charges_user: user_budget.is_some(),
            });
            Ok(())
        }
        Reserved::DoesNotFit { index, used } => match user_budget {
            Some((user, limits)) if index == 0 => Err(budget_spent(
                scope,
                serde_json::json!({"user_id": user, "session_id": request.session_id, "reserve": tokens}),
                format!(
                    "today's token budget cannot cover this question: {used} of {} tokens are used and an answer may cost up to {tokens}; it renews at 00:00 UTC",
                    limits.token_budget_per_day
                ),
            )
            .await),
            _ => {
                // Not this client's doing: the service has spent its day.
                scope.telemetry.add(Observation::DeploymentBudgetDenial);
                Err(ApiError::unavailable(
                    "the service has spent today's OpenAI token ceiling (deployment_token_budget_per_day); answers already cached are still served, new questions from 00:00 UTC",
                )
                .with_header("retry-after", day_left.to_string()))
            }
        },
    }
}

/// Settles the request's reservation (if it made one) to what it spent:
/// the reported usage, nothing, or (the model ran, its usage unknown) the
/// whole reservation, on the reservation's own day.
pub(crate) async fn settle(scope: &mut Scope, spent: Spent) {
    let Some(reservation) = scope.reservation.take() else {
        return;
    };
    let charged = chatbot_spin::budget::settle(
        scope.conn.as_ref(),
        &reservation.keys,
        reservation.tokens,
        spent,
    )
    .await;
    if charged > 0 && reservation.charges_user {
        scope
            .telemetry
            .add(Observation::UserTokensCharged(charged as f64));
    }
}
