//! Admin actions: retention cleanup, warm-up, the audit log (cache
//! invalidation is `invalidation`).
//! Every action is audited; the router has checked the admin token.

use chatbot_core::cache::answers::{CacheScope, QueryCacheEntry};
use chatbot_core::chat::conversation::ConversationChoice;
use chatbot_core::chat::query::{self, QueryRequest};
use chatbot_core::http::api::{self, ApiError, ErrorCode, SessionId};
use chatbot_core::limits::sessions::{self, Reserved, Spent};
use chatbot_core::redis::keys;
use chatbot_core::redis::script::{all_bytes, integers, Arg};
use chatbot_core::storage::retention;
use chatbot_core::telemetry::audit::{self, AuditAction};
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{ErrorType, Operation};
use chatbot_spin::answer_cache;
use chatbot_spin::audit::append;
use chatbot_spin::caches::Telemetry;
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::log::Dependency;
use chatbot_spin::pipeline;
use chatbot_spin::redis_script::execute;
use chatbot_spin::respond::{json, Response};
use chatbot_spin::routing::{client_address, Params};
use chatbot_spin::{settings, StoreError};
use serde::Deserialize;
use serde_json::json;
use spin_sdk::pg::ParameterValue;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CleanupRequest {
    #[serde(default, deserialize_with = "api::whole_number")]
    batch_size: Option<i64>,
}

/// Deletes expired sessions, conversations and messages in bounded batches,
/// within the request's deadline (`request_timeout_ms`): a backlog larger
/// than one call can delete answers 200 with what it deleted and
/// `"more": true`, and the next call goes on. Idempotent: a run after the
/// last finds nothing to delete.
pub async fn cleanup(req: Request, _: Params) -> Result<Response, ApiError> {
    let request: CleanupRequest = api::json_body_or_default(req.body())?;
    let batch = request
        .batch_size
        .unwrap_or(retention::DEFAULT_CLEANUP_BATCH);
    if !(1..=100_000).contains(&batch) {
        return Err(ApiError::invalid("`batch_size` must be from 1 to 100000"));
    }
    let address = settings::postgres_address().await?;
    let started = std::time::Instant::now();
    let deleted = delete_expired(&address, batch).await;
    // What the call did is decided: pruning the index, the metrics and the
    // audit entry get the bookkeeping's allowance even when the deletion
    // ran to the deadline.
    if chatbot_spin::time_left() < chatbot_spin::context::BOOKKEEPING {
        chatbot_spin::context::answer_decided();
    }
    let mut telemetry = Telemetry::default();
    match &deleted {
        Ok(_) => telemetry.add(Observation::DatabaseLatency(
            Operation::Cleanup,
            started.elapsed().as_secs_f64(),
        )),
        Err(_) => telemetry.add(Observation::Error(ErrorType::Postgres)),
    }
    // The semantic cache's points of expired answers (never served: their
    // answers are gone from Redis) go too, so its index stays bounded.
    let semantic_index = match settings::pipeline().await {
        Ok(pipeline) if pipeline.semantic_cache_threshold.is_some() => {
            match chatbot_spin::semantic::delete_expired(&pipeline).await {
                Ok(()) => Some("pruned"),
                Err(e) => {
                    chatbot_spin::log::warn("semantic_cache_prune_failed", Dependency::Qdrant, &e);
                    telemetry.upstream_error(&e);
                    Some("failed")
                }
            }
        }
        _ => None,
    };
    let redis = crate::redis().await.ok();
    if let Some(conn) = &redis {
        crate::record(conn, &telemetry).await;
    }
    let mut body = deleted
        .map_err(|e| {
            ApiError::unavailable("the history store (Postgres) is unavailable").caused_by(
                "cleanup_failed",
                Dependency::Postgres,
                e,
            )
        })?
        .report();
    if let Some(state) = semantic_index {
        body["semantic_index"] = json!(state);
    }
    if let Some(conn) = &redis {
        append(
            conn,
            AuditAction::RetentionCleanup,
            &client_address(&req).await,
            body["deleted"].clone(),
        )
        .await;
    }
    Ok(json(200, &body))
}

/// Runs the cleanup's batches while another fits in what is left of the
/// deadline. A batch the deadline cuts ends the call as one stopped in
/// time (what the earlier batches deleted stays deleted, and the cut one's
/// rows are deleted by the next call if not by it); any other failure is
/// the store's.
async fn delete_expired(address: &str, batch: i64) -> Result<retention::Cleanup, StoreError> {
    let conn = chatbot_spin::pg::open(address).await?;
    let mut cleanup = retention::Cleanup::new(batch);
    let mut longest = std::time::Duration::ZERO;
    while let Some(statement) = cleanup.next() {
        if cleanup.batches() > 0
            && !retention::another_batch_fits(chatbot_spin::time_left(), longest)
        {
            cleanup.cut_short();
            break;
        }
        let started = std::time::Instant::now();
        let params = vec![ParameterValue::Int64(cleanup.batch_size())];
        match chatbot_spin::pg::execute(&conn, statement, params).await {
            Ok(rows) => cleanup.deleted(rows),
            Err(e) if chatbot_spin::time_left().is_zero() => {
                chatbot_spin::log::warn(
                    "cleanup_cut_short",
                    Dependency::Postgres,
                    format_args!(
                        "a batch ran to the request's deadline ({e}); the next call goes on"
                    ),
                );
                cleanup.cut_short();
            }
            Err(e) => return Err(e),
        }
        longest = longest.max(started.elapsed());
    }
    Ok(cleanup)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WarmupRequest {
    #[serde(default, deserialize_with = "api::whole_number")]
    limit: Option<i64>,
}

/// Asks the most-asked questions through the query pipeline, with the query
/// handler's keys, so they are cached before users ask again.
pub async fn warmup(req: Request, _: Params) -> Result<Response, ApiError> {
    let request: WarmupRequest = api::json_body_or_default(req.body())?;
    let limit = request.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be from 1 to 100"));
    }
    let settings = settings::pipeline().await?;
    // A batch, not a question: each call keeps its own timeout, and the
    // question deadline (`request_timeout_ms`) does not apply.
    chatbot_spin::context::set_request_timeout(std::time::Duration::MAX);
    if settings.cache_scope != CacheScope::Global {
        return Err(ApiError::new(ErrorCode::Conflict,
            "warm-up needs query_cache_scope = global: with per-session answers there is nothing to share",
        ));
    }
    let conn = crate::redis().await?;
    let reply =
        execute(
            &conn,
            "ZREVRANGE",
            vec![
                Arg::bytes(keys::TOP_QUESTIONS),
                Arg::bytes("0"),
                Arg::bytes((limit - 1).to_string()),
            ],
        )
        .await
        .map_err(|e| {
            ApiError::unavailable("reading the top questions failed: Redis is unavailable")
                .caused_by("warmup_read_failed", Dependency::Redis, e)
        })?;
    let (mut warmed, mut already, mut failed) = (0, 0, Vec::new());
    let mut telemetry = Telemetry::default();
    let questions: Vec<QueryCacheEntry> = all_bytes(reply)
        .iter()
        .filter_map(|member| serde_json::from_slice(member).ok())
        .collect();
    let questions_listed = questions.len();
    let mut stopped: Option<(usize, String)> = None;
    for (i, entry) in questions.into_iter().enumerate() {
        let request = QueryRequest {
            question: entry.q,
            session_id: SessionId::parse("warmup").expect("a valid id"),
            page_context: entry.p,
            user_id: None,
            stream: false,
            // Asked as a first question: in no conversation, with no turns.
            conversation: ConversationChoice::New,
        };
        // An admin's answers are confirmed as stored; its hits confirm nothing.
        let mut asked = answer_cache::Asked::new(&request, &settings, &[]);
        asked.warm_up = true;
        let found =
            answer_cache::lookup(Some(&conn), &settings, &asked, false, &mut telemetry).await;
        // A miss spends the deployment's tokens as a user's does: its worst
        // case is reserved from the day's ceiling first, and once what is
        // left cannot cover it, warm-up asks nothing more.
        let reservation = match found.answer {
            Some(_) => None,
            None => match reserve_from_the_ceiling(&conn, &settings, &request).await {
                Ok(reservation) => reservation,
                Err(why) => {
                    telemetry.add(Observation::DeploymentBudgetDenial);
                    stopped = Some((i, why));
                    break;
                }
            },
        };
        // What this question's chat call spent, apart from the others'.
        telemetry.chat_called = false;
        telemetry.chat_tokens_reported = 0;
        let answered = answer_cache::answer(
            Some(&conn),
            &settings,
            &asked,
            found.answer,
            &mut pipeline::Quiet,
            &mut telemetry,
        )
        .await;
        if let Some((keys, tokens)) = &reservation {
            let spent = match &answered {
                Ok(answer) => Spent::on_answer(answer.cached, answer.value.tokens),
                Err(e) => {
                    Spent::on_failure(e, telemetry.chat_called, telemetry.chat_tokens_reported)
                }
            };
            chatbot_spin::budget::settle(Some(&conn), keys, *tokens, spent).await;
        }
        match answered {
            Ok(answer) if answer.cached => already += 1,
            Ok(answer) => {
                warmed += 1;
                if let Some(indexed) = &answer.index {
                    chatbot_spin::semantic::remember(&settings, indexed, &mut telemetry).await;
                }
            }
            Err(e) => failed.push(json!({"question": request.question, "error": e.to_string()})),
        }
    }
    // Warm-up's OpenAI calls, tokens and cache counts are real traffic: recorded like a request's.
    crate::record(&conn, &telemetry).await;
    let not_asked = stopped.as_ref().map_or(0, |(at, _)| questions_listed - at);
    append(
        &conn,
        AuditAction::CacheWarmup,
        &client_address(&req).await,
        json!({"warmed": warmed, "already_cached": already, "failed": failed.len(), "not_asked": not_asked}),
    )
    .await;
    let mut body = json!({
        "status": if stopped.is_some() { "stopped" } else { "done" },
        "warmed": warmed,
        "already_cached": already,
        "failed": failed,
        "not_asked": not_asked,
    });
    if let Some((_, why)) = stopped {
        body["detail"] = json!(why);
    }
    Ok(json(200, &body))
}

/// Reserves a warm-up miss's worst case (a first question's: the core's
/// `worst_case_tokens`) from the deployment's count for the day, when
/// `deployment_token_budget_per_day` sets a ceiling: the counts and tokens
/// to settle, or why warm-up must stop (the ceiling cannot cover it, or
/// cannot be counted: a ceiling fails closed).
async fn reserve_from_the_ceiling(
    conn: &chatbot_spin::redis_script::Conn,
    settings: &settings::PipelineSettings,
    request: &QueryRequest,
) -> Result<Option<(Vec<String>, u64)>, String> {
    let ceiling = settings.deployment_token_budget_per_day;
    if ceiling == 0 {
        return Ok(None);
    }
    let (day, _) = sessions::budget_day(chatbot_spin::now_epoch_seconds());
    let counts = [(keys::deployment_tokens(day), ceiling)];
    let tokens = query::worst_case_tokens(request, settings.top_k, settings.chat_max_tokens);
    match chatbot_spin::budget::reserve(conn, &counts, tokens).await {
        Ok(Reserved::Taken) => Ok(Some((vec![counts[0].0.clone()], tokens))),
        Ok(Reserved::DoesNotFit { used, .. }) => Err(format!(
            "stopped at today's OpenAI token ceiling (deployment_token_budget_per_day): {used} of {ceiling} tokens are used and a miss may cost up to {tokens}; the rest are not asked, so the ceiling is left to users' questions"
        )),
        Err(e) => {
            chatbot_spin::log::warn("budget_reserve_failed", Dependency::Redis, &e);
            Err("stopped: the deployment's token ceiling (deployment_token_budget_per_day) cannot be counted while Redis fails".to_string())
        }
    }
}

pub async fn audit_page(req: Request, _: Params) -> Result<Response, ApiError> {
    let page = api::parse_page(req.query())?;
    let log = audit::AuditLog::from_query(req.query())?;
    let conn = crate::redis().await?;
    let (start, end) = audit::page_bounds(page);
    let read = async {
        let entries = execute(
            &conn,
            "ZREVRANGE",
            vec![
                Arg::bytes(log.key()),
                Arg::bytes(start.to_string()),
                Arg::bytes(end.to_string()),
            ],
        )
        .await?;
        let total = integers(&execute(&conn, "ZCARD", vec![Arg::bytes(log.key())]).await?);
        Ok::<_, StoreError>((all_bytes(entries), total.first().copied().unwrap_or(0)))
    };
    let (entries, total) = read.await.map_err(|e| {
        ApiError::unavailable("reading the audit log failed: Redis is unavailable").caused_by(
            "audit_read_failed",
            Dependency::Redis,
            e,
        )
    })?;
    let entries: Vec<serde_json::Value> = entries.iter().map(|e| audit::decode_member(e)).collect();
    Ok(json(
        200,
        &json!({
            "log": log.as_str(),
            "page": page,
            "page_size": audit::AUDIT_PAGE_SIZE,
            "total": total,
            "entries": entries,
        }),
    ))
}
