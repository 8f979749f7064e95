//! The rate limiter's buckets for a request (its address, its network, its
//! session, its user), taken in one call, and the 429 of the bucket that refused.

use crate::bindings::{limiter, timeout_ms};
use crate::scope::Scope;
use chatbot_core::chat::query::QueryRequest;
use chatbot_core::http::api::{ApiError, ErrorCode};
use chatbot_core::limits::ratelimit;
use chatbot_core::telemetry::audit::AuditAction;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::LimiterOutcome;
use chatbot_spin::log::Dependency;
use chatbot_spin::redis_script::Conn;

fn bucket(scope: limiter::Scope, key: &str) -> limiter::Bucket {
    limiter::Bucket {
        scope,
        key: key.to_string(),
    }
}

/// The client's buckets: its address's and, for an IPv6 client, its /48's.
pub(crate) fn address_buckets(address: &str) -> Vec<limiter::Bucket> {
    let mut buckets = vec![bucket(limiter::Scope::ClientAddress, address)];
    if let Some(network) = chatbot_core::limits::identity::network_of(address) {
        buckets.push(bucket(limiter::Scope::ClientNetwork, &network));
    }
    buckets
}

/// Every bucket the request is counted against (its address, its session,
/// its user), in one limiter call and one Redis round trip: all take a token
/// or none does. In jwt mode the address's token was taken before the token
/// was verified, and this call takes the session's and the user's.
pub(crate) async fn limit(scope: &mut Scope, request: &QueryRequest) -> Result<(), ApiError> {
    let mut buckets = Vec::with_capacity(4);
    if !scope.address_limited {
        buckets.extend(address_buckets(&scope.address));
    }
    buckets.push(bucket(limiter::Scope::Session, &request.session_id));
    if let Some(user) = &request.user_id {
        buckets.push(bucket(limiter::Scope::User, user));
    }
    take_tokens(scope, buckets, Some(request)).await
}

/// jwt mode: the address's bucket alone, before the token is verified, so a
/// flood of tokens (each an RSA or EC verification, perhaps a key fetch) is
/// throttled like any other flood from that address.
pub(crate) async fn limit_address(scope: &mut Scope) -> Result<(), ApiError> {
    let buckets = address_buckets(&scope.address);
    take_tokens(scope, buckets, None).await?;
    scope.address_limited = true;
    Ok(())
}

/// One limiter call. The decision is counted once per request: when it
/// refuses, or when it is the request's last (`request` given).
async fn take_tokens(
    scope: &mut Scope,
    buckets: Vec<limiter::Bucket>,
    request: Option<&QueryRequest>,
) -> Result<(), ApiError> {
    let decision = decide(buckets).await?;
    if request.is_some() || !decision.allowed {
        scope
            .telemetry
            .add(Observation::RateLimiterDecision(decision.outcome.into()));
    }
    let reported = ratelimit::Decision::from(&decision);
    scope.decision = Some(reported);
    if decision.allowed {
        return Ok(());
    }
    let which = ratelimit::Scope::from(decision.scope);
    scope.telemetry.add(Observation::RateLimitHit);
    match (&scope.conn, request) {
        (Some(conn), Some(request)) => {
            chatbot_spin::audit::note_rate_limited(
                conn,
                &request.session_id,
                &scope.address,
                serde_json::json!({
                    "session_id": request.session_id,
                    "user_id": request.user_id,
                    "bucket": which.as_str(),
                }),
            )
            .await
        }
        (_, None) => {
            return Err(refused_before_verification(
                scope.conn.as_ref(),
                &scope.address,
                which,
                &reported,
                decision.outcome.into(),
            )
            .await)
        }
        (None, Some(_)) => {}
    }
    Err(refusal(which, &reported, decision.outcome.into()))
}

/// The address's (or its network's) bucket refused before the bearer token
/// was read (jwt mode): the security log notes it, with no session or user yet known.
pub(crate) async fn refused_before_verification(
    conn: Option<&Conn>,
    address: &str,
    which: ratelimit::Scope,
    decision: &ratelimit::Decision,
    outcome: LimiterOutcome,
) -> ApiError {
    if let Some(conn) = conn {
        chatbot_spin::audit::append(
            conn,
            AuditAction::RateLimitDenied,
            address,
            serde_json::json!({"bucket": which.as_str(), "before": "token verification"}),
        )
        .await;
    }
    refusal(which, decision, outcome)
}

/// One check of `buckets`; the limiter refuses only what is misconfigured.
pub(crate) async fn decide(buckets: Vec<limiter::Bucket>) -> Result<limiter::Decision, ApiError> {
    limiter::check(buckets, 1, timeout_ms()).await.map_err(|e| {
        let e = format!("rate limiter: {e:?}");
        ApiError::configuration(&e).caused_by("configuration_error", Dependency::Config, e)
    })
}

/// The 429 for the bucket that refused, or for a limiter that could not
/// count and fails closed.
pub(crate) fn refusal(
    which: ratelimit::Scope,
    decision: &ratelimit::Decision,
    outcome: LimiterOutcome,
) -> ApiError {
    let detail = ratelimit::refusal_detail(which, outcome != LimiterOutcome::FailedClosed);
    ApiError::new(ErrorCode::RateLimited, detail).with_header("retry-after", decision.retry_after())
}
