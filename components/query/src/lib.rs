//! The query handler. Its instance keeps one Redis connection for all the
//! requests it serves (Spin 4 reuses a WASIp3 instance; the rate limiter and
//! the metrics recorder it imports keep theirs), and every call is bounded by
//! what is left of the request's deadline (`request_timeout_ms`).
//!
//! Hit path: limiter (1 Redis round trip for every bucket), the user's gate
//! when there is a user (1), cache lookup and the session's conversation id
//! (1); then the response goes out, and after its last byte (before its body
//! ends, so that nothing is lost if the instance is then recycled) the
//! exchange's one Postgres statement and the recorder (1).
//!
//! `Accept: text/event-stream` (or `"stream": true`) answers with server-sent
//! events: `meta`, the answer's `delta`s as the model writes them, `done`.

mod answer;
mod documents;

use chatbot_core::api::{self, ApiError, ErrorCode};
use chatbot_core::history::SessionOwner;
use chatbot_core::identity::IdentitySettings;
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::{
    CacheStatus, Cached, Endpoint, ErrorType, LimiterOutcome, Operation, QueryStatus,
};
use chatbot_core::query::{self, QueryRequest};
use chatbot_core::ratelimit;
use chatbot_core::routes;
use chatbot_core::sessions::{self, Gate, Reserved, Spent};
use chatbot_core::{audit::AuditAction, keys};
use chatbot_spin::caches::Telemetry;
use chatbot_spin::identity::{self, AuthFailure};
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::redis_script::{binary, eval, execute, integers, Conn};
use chatbot_spin::respond::{self, json, Outgoing, Response, SetHeader};
use chatbot_spin::routing::{self, Handler, Params};
use chatbot_spin::settings::{self, PipelineSettings};
use chatbot_spin::{now_epoch_seconds, pipeline};
use spin_sdk::http_service;
use spin_sdk::redis::RedisParameter;

spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../wit/ratelimit.wit", "../../wit/metrics.wit", "../../wit/app.wit"],
    world: "chatbot:app/query-handler",
    generate_all,
});

use chatbot::metrics::recorder;
use chatbot::ratelimit::limiter;

fn handler(route: &routes::Route) -> Handler {
    match *route {
        // Served before routing (it writes its own response); the router keeps it for 405s.
        routes::CHAT_QUERY => |req, _| {
            let path = req.path().to_string();
            Box::pin(async move { Err(ApiError::not_found(&path)) })
        },
        routes::CHAT_HISTORY => |req, p| Box::pin(history(req, p)),
        routes::DOCUMENTS => |req, p| Box::pin(documents::ingest(req, p)),
        other => unreachable!("{other:?} is not a query route"),
    }
}

#[http_service]
async fn handle(incoming: spin_sdk::http::Request) -> Outgoing {
    respond::entry("query", incoming, serve).await
}

async fn serve(incoming: spin_sdk::http::Request, out: respond::Out) {
    let req = match routing::read(routes::QUERY_ROUTES, incoming).await {
        Ok(req) => req,
        Err(refused) => return routing::send(out, refused).await,
    };
    if req.method() == spin_sdk::http::Method::POST && routes::CHAT_QUERY.matches(req.path()) {
        return answer::chat_query(req, out).await;
    }
    let response = routing::serve(routes::QUERY_ROUTES, handler, req).await;
    routing::send(out, response).await;
}

/// What is left of the request's deadline, in the limiter's and the recorder's terms.
fn timeout_ms() -> u32 {
    chatbot_spin::time_left().as_millis().min(u32::MAX as u128) as u32
}

pub(crate) fn config_failure(e: impl std::fmt::Display) -> ApiError {
    chatbot_spin::log::error(
        "configuration_error",
        chatbot_spin::log::Dependency::Config,
        &e,
    );
    ApiError::configuration(e)
}

/// One request of the query API from its first Redis open to its answer: every
/// exit records the request's telemetry and carries the rate-limit headers.
pub(crate) struct Scope {
    pub conn: Option<Conn>,
    pub telemetry: Telemetry,
    /// The client address (for the address bucket and the security log).
    pub address: String,
    pub(crate) session: Option<String>,
    decision: Option<ratelimit::Decision>,
    /// The address's token is already taken ([`limit_address`], jwt mode).
    address_limited: bool,
    /// How the query cache served the request so far (`bypass` until the lookup).
    pub(crate) cache_status: CacheStatus,
    /// The worst case this miss took from its user's budget, until [`settle`].
    reservation: Option<Reservation>,
}

/// Tokens reserved from the day's counts (the user's, the deployment's).
struct Reservation {
    keys: Vec<String>,
    tokens: u64,
    /// One of the counts is the user's (`chatbot_user_tokens_charged_total`).
    charges_user: bool,
}

impl Scope {
    /// The instance's Redis connection for the whole request; without it the request goes on.
    pub async fn open(settings: &PipelineSettings, address: String) -> Self {
        let mut telemetry = Telemetry::default();
        let conn = match chatbot_spin::redis_script::connect(&settings.redis_address).await {
            Ok(c) => Some(c),
            Err(e) => {
                chatbot_spin::log::warn(
                    "redis_unavailable",
                    chatbot_spin::log::Dependency::Redis,
                    &e,
                );
                telemetry.redis_error();
                None
            }
        };
        Self {
            conn,
            telemetry,
            address,
            session: None,
            decision: None,
            address_limited: false,
            cache_status: CacheStatus::Bypass,
            reservation: None,
        }
    }

    /// A security event for the security log (sampled per address).
    pub(crate) async fn audit(&self, action: AuditAction, detail: serde_json::Value) {
        if let Some(conn) = &self.conn {
            chatbot_spin::audit::append(conn, action, &self.address, detail).await;
        }
    }

    /// Counts an answered question in `chatbot_queries_total`, from the query cache or not.
    pub(crate) fn answered(&mut self, cached: bool) {
        self.telemetry.add(Observation::Query(
            Endpoint::Query,
            QueryStatus::Success,
            Cached::from_bool(cached),
        ));
    }

    /// Counts a refused question in `chatbot_queries_total` by its error's
    /// code (the one place every refusal passes) and, when the request or the
    /// configuration was at fault, the error.
    pub(crate) fn refused(&mut self, error: &ApiError) {
        self.telemetry.add(Observation::Query(
            Endpoint::Query,
            QueryStatus::of_refusal(error.code),
            Cached::No,
        ));
        if let Some(kind) = ErrorType::of_refusal(error.code) {
            self.telemetry.add(Observation::Error(kind));
        }
    }

    /// The request's latency, whatever its outcome.
    pub(crate) fn observe_latency(&mut self) {
        self.telemetry.add(Observation::QueryLatency(
            self.cache_status,
            chatbot_spin::request_started().elapsed().as_secs_f64(),
        ));
    }

    /// The response for `result`, with the rate-limit headers, after the
    /// samples went to the recorder (a failure never fails the request).
    pub async fn finish(self, result: Result<Response, ApiError>) -> Response {
        let response = self.respond(result);
        self.record().await;
        response
    }

    /// The rate-limit headers of the request's decision.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        self.decision
            .as_ref()
            .map(|decision| decision.headers().to_vec())
            .unwrap_or_default()
    }

    /// The response for `result`, with the rate-limit headers.
    pub(crate) fn respond(&self, result: Result<Response, ApiError>) -> Response {
        let mut response = respond::reply(result);
        for (name, value) in self.headers() {
            response.set_header(name, value);
        }
        response
    }

    /// Hands the samples to the recorder (a failure never fails the request).
    pub(crate) async fn record(self) {
        let batch = recorder::Batch {
            samples: self
                .telemetry
                .samples
                .into_iter()
                .map(|s| recorder::Sample {
                    name: s.name,
                    labels: s.labels,
                    value: s.value,
                })
                .collect(),
            seen_session: self.session,
        };
        // Without a connection Redis is down, and so is the recorder's storage: skip the second failure.
        if self.conn.is_some() {
            if let Err(e) = recorder::record_batch(batch, timeout_ms()).await {
                chatbot_spin::log::warn(
                    "metrics_record_failed",
                    chatbot_spin::log::Dependency::Redis,
                    format_args!("{e:?}"),
                );
            }
        }
    }
}

fn bucket(scope: limiter::Scope, key: &str) -> limiter::Bucket {
    limiter::Bucket {
        scope,
        key: key.to_string(),
    }
}

/// The client's buckets: its address's and, for an IPv6 client, its /48's.
pub(crate) fn address_buckets(address: &str) -> Vec<limiter::Bucket> {
    let mut buckets = vec![bucket(limiter::Scope::ClientAddress, address)];
    if let Some(network) = chatbot_core::identity::network_of(address) {
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
            .add(Observation::RateLimiterDecision(match decision.outcome {
                limiter::Outcome::Enforced => LimiterOutcome::Enforced,
                limiter::Outcome::Disabled => LimiterOutcome::Disabled,
                limiter::Outcome::FailedOpen => LimiterOutcome::FailedOpen,
                limiter::Outcome::FailedClosed => LimiterOutcome::FailedClosed,
            }));
    }
    let reported = reported(&decision);
    scope.decision = Some(reported);
    if decision.allowed {
        return Ok(());
    }
    let which = scope_of(decision.scope);
    scope.telemetry.add(Observation::RateLimitHit);
    match (&scope.conn, request) {
        (Some(conn), Some(request)) => {
            pipeline::note_rate_limited(
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
            )
            .await)
        }
        (None, Some(_)) => {}
    }
    Err(refusal(which, &reported))
}

fn scope_of(scope: limiter::Scope) -> ratelimit::Scope {
    match scope {
        limiter::Scope::ClientAddress => ratelimit::Scope::ClientAddress,
        limiter::Scope::ClientNetwork => ratelimit::Scope::ClientNetwork,
        limiter::Scope::Session => ratelimit::Scope::Session,
        limiter::Scope::User => ratelimit::Scope::User,
    }
}

/// The address's (or its network's) bucket refused before the bearer token
/// was read (jwt mode): the security log notes it, with no session or user yet known.
async fn refused_before_verification(
    conn: Option<&Conn>,
    address: &str,
    which: ratelimit::Scope,
    decision: &ratelimit::Decision,
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
    refusal(which, decision)
}

async fn decide(buckets: Vec<limiter::Bucket>) -> Result<limiter::Decision, ApiError> {
    limiter::check(buckets, 1, timeout_ms())
        .await
        .map_err(|e| config_failure(format!("rate limiter: {e:?}")))
}

/// The limiter's decision in the terms the headers are written from.
fn reported(decision: &limiter::Decision) -> ratelimit::Decision {
    ratelimit::Decision {
        allowed: decision.allowed,
        limit: decision.limit,
        remaining: decision.remaining,
        reset_at_epoch_seconds: decision.reset_at_epoch_seconds,
        retry_after_seconds: decision.retry_after_seconds,
    }
}

/// The 429 for the bucket that refused.
fn refusal(which: ratelimit::Scope, decision: &ratelimit::Decision) -> ApiError {
    // The seed's words for the session's bucket; the others say which they are.
    let detail = match which {
        ratelimit::Scope::Session => "Rate limit exceeded. Too many requests.",
        ratelimit::Scope::ClientAddress => {
            "Rate limit exceeded. Too many requests from this address."
        }
        ratelimit::Scope::ClientNetwork => {
            "Rate limit exceeded. Too many requests from this network."
        }
        ratelimit::Scope::User => "Rate limit exceeded. Too many requests for this user.",
    };
    ApiError::new(429, ErrorCode::RateLimited, detail)
        .with_header("retry-after", decision.retry_after())
}

/// The end user: the verified token's `sub` in `jwt` mode (401 without one),
/// nobody in `none` mode (the body's `user_id` is then taken at its word).
pub(crate) async fn authenticate(
    scope: &mut Scope,
    identity_settings: &IdentitySettings,
    req: &Request,
) -> Result<Option<String>, ApiError> {
    let Some(jwt) = &identity_settings.jwt else {
        return Ok(None);
    };
    match identity::authenticate(req, jwt, scope.conn.as_ref()).await {
        Ok(user) => Ok(Some(user)),
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
    ApiError::new(404, ErrorCode::NotFound, format!("no session `{session}`"))
}

/// The user's gate, in one round trip: the session is theirs (jwt mode),
/// today's token budget is not spent, and they hold at most
/// `max_sessions_per_user` active sessions (seed 003, 1.2). Without Redis
/// none of it can be checked, and the request goes through (the exchange
/// statement still refuses to write into another user's session).
pub(crate) async fn gate(
    scope: &mut Scope,
    settings: &PipelineSettings,
    limits: &settings::SessionLimits,
    user: &str,
    session: &str,
    enforce_owner: bool,
) -> Result<(), ApiError> {
    let Some(conn) = &scope.conn else {
        return Ok(());
    };
    let now = now_epoch_seconds();
    let (day, _) = sessions::budget_day(now);
    let owner_ttl = sessions::owner_ttl_seconds(settings.retention_days) as i64;
    let reply = eval(
        conn,
        sessions::GATE_SCRIPT,
        &sessions::gate_keys(user, day, session),
        &[
            binary(session),
            RedisParameter::Int64(limits.max_per_user as i64),
            RedisParameter::Int64(limits.idle_seconds as i64),
            RedisParameter::Int64(limits.token_budget_per_day as i64),
            binary(if enforce_owner { user } else { "" }),
            RedisParameter::Int64(owner_ttl),
        ],
    )
    .await;
    let reply = match reply {
        Ok(results) => integers(&results),
        Err(e) if e.is_out_of_memory() => return Err(redis_full(scope, &e)),
        Err(e) => {
            chatbot_spin::log::warn(
                "user_gate_not_enforced",
                chatbot_spin::log::Dependency::Redis,
                &e,
            );
            return Ok(());
        }
    };
    let detail = serde_json::json!({"user_id": user, "session_id": session});
    match Gate::from_reply(&reply, limits.idle_seconds, now) {
        Gate::Admitted { claimed: false } => Ok(()),
        Gate::Admitted { claimed: true } => {
            if enforce_owner {
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
            Err(ApiError::new(
                429,
                ErrorCode::SessionLimit,
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
                        binary(keys::session_owner(session)),
                        binary(&owner),
                        binary("EX"),
                        RedisParameter::Int64(
                            sessions::owner_ttl_seconds(settings.retention_days) as i64
                        ),
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

/// Redis is up but full (`maxmemory` under `noeviction`): a limit that cannot
/// be counted refuses, where a Redis that is down would leave it advisory.
fn redis_full(scope: &mut Scope, e: &chatbot_spin::StoreError) -> ApiError {
    chatbot_spin::log::error("redis_full", chatbot_spin::log::Dependency::Redis, e);
    scope.telemetry.redis_error();
    ApiError::unavailable(
        "Redis is full (maxmemory): questions are refused until it has room, so that no limit goes uncounted",
    )
}

/// The 429 of a spent budget: counted, audited, and retried at 00:00 UTC.
async fn budget_spent(scope: &mut Scope, detail: serde_json::Value, message: String) -> ApiError {
    let (_, day_left) = sessions::budget_day(now_epoch_seconds());
    scope.telemetry.add(Observation::BudgetDenial);
    scope.audit(AuditAction::BudgetExceeded, detail).await;
    ApiError::new(429, ErrorCode::BudgetExceeded, message)
        .with_header("retry-after", day_left.to_string())
}

/// Before a miss spends anything: takes its worst case (the largest prompt
/// plus `chat_max_tokens`) from its user's budget for the day and from the
/// deployment's ceiling, atomically and from both or neither, or refuses
/// when what is left of either cannot cover it. Concurrent misses each take
/// their own share, so together they cannot overspend. [`settle`] corrects
/// the counts once the answer's usage is known.
pub(crate) async fn reserve(
    scope: &mut Scope,
    settings: &PipelineSettings,
    user_budget: Option<(&str, &settings::SessionLimits)>,
    request: &QueryRequest,
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
        return Ok(());
    };
    let tokens = query::worst_case_tokens(request, settings.top_k, settings.chat_max_tokens);
    let mut args = vec![
        RedisParameter::Int64(tokens as i64),
        RedisParameter::Int64(sessions::COUNT_TTL_SECONDS as i64),
    ];
    args.extend(
        counts
            .iter()
            .map(|(_, budget)| RedisParameter::Int64(*budget as i64)),
    );
    let keys: Vec<&str> = counts.iter().map(|(key, _)| key.as_str()).collect();
    let reply = match eval(conn, sessions::RESERVE_SCRIPT, &keys, &args).await {
        Ok(results) => integers(&results),
        Err(e) if e.is_out_of_memory() => return Err(redis_full(scope, &e)),
        Err(e) => {
            chatbot_spin::log::warn(
                "budget_not_enforced",
                chatbot_spin::log::Dependency::Redis,
                &e,
            );
            return Ok(());
        }
    };
    match Reserved::from_reply(&reply) {
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
    let (change, charged) = sessions::settlement(reservation.tokens, spent);
    if charged > 0 && reservation.charges_user {
        scope
            .telemetry
            .add(Observation::UserTokensCharged(charged as f64));
    }
    if change == 0 {
        return;
    }
    let Some(conn) = &scope.conn else {
        return;
    };
    let keys: Vec<&str> = reservation.keys.iter().map(String::as_str).collect();
    let settled = eval(
        conn,
        sessions::CHARGE_SCRIPT,
        &keys,
        &[
            RedisParameter::Int64(change),
            RedisParameter::Int64(sessions::COUNT_TTL_SECONDS as i64),
        ],
    )
    .await;
    if let Err(e) = settled {
        chatbot_spin::log::write(
            chatbot_spin::log::Level::Warn,
            "budget_settle_failed",
            chatbot_spin::log::Dependency::Redis,
            &e,
            &[("change", &change.to_string())],
        );
    }
}

/// Counts a request the router served (history, documents) in
/// `chatbot_queries_total`, with `extra` samples.
/// Validation and configuration errors are counted by the router.
pub(crate) async fn count_alone(
    endpoint: Endpoint,
    result: &Result<Response, ApiError>,
    extra: Vec<Observation>,
) {
    let status = match result {
        Ok(_) => QueryStatus::Success,
        Err(e) => QueryStatus::of_refusal(e.code),
    };
    let samples = std::iter::once(Observation::Query(endpoint, status, Cached::No))
        .chain(extra)
        .map(|o| {
            let s = o.sample();
            recorder::Sample {
                name: s.name,
                labels: s.labels,
                value: s.value,
            }
        })
        .collect();
    let batch = recorder::Batch {
        samples,
        seen_session: None,
    };
    if let Err(e) = recorder::record_batch(batch, timeout_ms()).await {
        chatbot_spin::log::warn(
            "metrics_record_failed",
            chatbot_spin::log::Dependency::Redis,
            format_args!("{e:?}"),
        );
    }
}

/// `GET /api/v1/chat/history/{session_id}`, counted, with the read's latency.
async fn history(req: Request, params: Params) -> Result<Response, ApiError> {
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
    let identity_settings = identity::settings().await.map_err(config_failure)?;
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
                scope_of(decision.scope),
                &reported(&decision),
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
    let address = settings::postgres_address().await.map_err(config_failure)?;
    let started = std::time::Instant::now();
    let (page, owner) = chatbot_spin::history::page(&address, session_id, page)
        .await
        .map_err(|e| {
            chatbot_spin::log::error(
                "history_read_failed",
                chatbot_spin::log::Dependency::Postgres,
                &e,
            );
            observed.push(Observation::Error(ErrorType::Postgres));
            ApiError::unavailable("the history store (Postgres) is unavailable")
        })?;
    observed.push(Observation::DatabaseLatency(
        Operation::ReadHistory,
        started.elapsed().as_secs_f64(),
    ));
    if let Some(user) = reader {
        if owner.as_deref() != Some(user.as_str()) {
            return Err(no_such_session(session_id));
        }
    }
    Ok(json(200, &page))
}
