//! The RAG pipeline behind the query cache: embed (through the embedding
//! cache), search Qdrant, ask the chat model, cache the answer.

use std::time::{Duration, Instant};

use crate::caches::{embed_cached, Telemetry};
use crate::redis_script::{binary, binary_at, eval, Conn};
use crate::settings::PipelineSettings;
use chatbot_core::audit::AuditAction;
use chatbot_core::history::{day_of, RememberedConversation};
use chatbot_core::keys;
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::{CacheType, ErrorType, Operation};
use chatbot_core::query::{self, CachedAnswer, Citation, QueryRequest};
use chatbot_core::upstream::{UpstreamError, Usage, OPENAI};
use chatbot_core::{ranking, sessions};
use spin_sdk::redis::{RedisParameter, RedisResult};

/// A future the caller waits on, borrowing what it was given.
pub type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

pub struct Answer {
    pub value: CachedAnswer,
    pub cached: bool,
    /// The chat completion's tokens (a miss's only).
    pub usage: Option<Usage>,
    /// Whether it may be cached: false for an answer the model cut short
    /// (`finish_reason` `length` or `content_filter`) or left empty.
    pub whole: bool,
}

/// What the query cache knows of a question: its answer, and the session's
/// conversation id (so a response can name it before the exchange is written).
#[derive(Default)]
pub struct Found {
    pub answer: Option<CachedAnswer>,
    pub conversation: Option<RememberedConversation>,
}

/// Looks the question up (one round trip). `count_question` counts the ask
/// for analytics and reads the session's conversation (not for warm-up).
pub async fn lookup(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    request: &QueryRequest,
    count_question: bool,
    telemetry: &mut Telemetry,
) -> Found {
    let Some(conn) = conn else {
        return Found::default();
    };
    let cache_key = query::query_cache_key(request, &settings.shape());
    let entry = if count_question {
        query::question_entry(request)
    } else {
        String::new()
    };
    let reply = eval(
        conn,
        query::LOOKUP_SCRIPT,
        &query::lookup_keys(&cache_key, &request.session_id, &settings.qdrant_collection),
        &[
            binary(entry),
            RedisParameter::Int64(ranking::QUESTIONS_HALF_LIFE_SECONDS as i64),
            RedisParameter::Int64(ranking::QUESTIONS_CAP as i64),
        ],
    )
    .await;
    match reply {
        Ok(results) => Found {
            answer: binary_at(&results, 0).and_then(|bytes| serde_json::from_slice(bytes).ok()),
            conversation: binary_at(&results, 1)
                .and_then(|bytes| RememberedConversation::parse(std::str::from_utf8(bytes).ok()?)),
        },
        Err(e) => {
            crate::log::warn("query_cache_read_failed", crate::log::Dependency::Redis, &e);
            telemetry.redis_error();
            Found::default()
        }
    }
}

fn hit(value: CachedAnswer, telemetry: &mut Telemetry) -> Answer {
    telemetry.add(Observation::CacheHits(CacheType::Query, 1.0));
    telemetry.add(Observation::TokensSaved(
        CacheType::Query,
        value.tokens as f64,
    ));
    Answer {
        value,
        cached: true,
        usage: None,
        whole: true,
    }
}

/// Watches a miss being answered: a streamed answer's text goes to the
/// client as the model writes it.
pub trait Progress {
    /// Whether to stream the chat completion at all.
    fn streams(&self) -> bool;
    /// The next piece of the answer's text, with what the answer cites.
    fn delta<'a>(&'a mut self, citations: &'a [Citation], text: &'a str) -> Pending<'a>;
}

/// No one is watching: the chat completion comes whole.
pub struct Quiet;

impl Progress for Quiet {
    fn streams(&self) -> bool {
        false
    }
    fn delta<'a>(&'a mut self, _: &'a [Citation], _: &'a str) -> Pending<'a> {
        Box::pin(async {})
    }
}

/// Answers from the cache (`found`, from [`lookup`]), or runs the pipeline
/// once for all identical concurrent misses: the first takes a short lock,
/// the others wait for its answer, within the request's deadline, and answer
/// its failure if it fails. A request counts one cache hit (served from the
/// cache, at once or after waiting) or one miss (it ran the pipeline).
pub async fn answer(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    request: &QueryRequest,
    found: Option<CachedAnswer>,
    progress: &mut dyn Progress,
    telemetry: &mut Telemetry,
) -> Result<Answer, UpstreamError> {
    let Some(conn) = conn else {
        // Redis is down: no cache, no lock; answer anyway.
        return run(None, settings, request, progress, telemetry).await;
    };
    if let Some(value) = found {
        return Ok(hit(value, telemetry));
    }

    let cache_key = query::query_cache_key(request, &settings.shape());
    let token = crate::random_token();
    // Long enough for the slowest pipeline (every call is capped by the request's
    // deadline, and a streamed answer lasts up to it); a crashed holder's lock expires on its own.
    let per_call = settings.openai_timeout * 2 + settings.qdrant_timeout;
    let slowest = if progress.streams() {
        settings.request_timeout
    } else {
        per_call.min(settings.request_timeout)
    };
    let lock_ttl = slowest + Duration::from_secs(5);
    let waited_since = Instant::now();
    // The lock holder this request waits on, whose failure it would share.
    let mut holder = Vec::new();
    let mut attempt = 0;
    let generation = loop {
        let reply = eval(
            conn,
            query::ACQUIRE_OR_READ_SCRIPT,
            &query::answer_keys(&cache_key, &settings.qdrant_collection),
            &[
                binary(&token),
                RedisParameter::Int64(lock_ttl.as_millis() as i64),
                RedisParameter::Binary(holder.clone()),
            ],
        )
        .await;
        match reply.as_deref() {
            // Another request stored the answer after our lookup.
            Ok([RedisResult::Int64(1), RedisResult::Binary(bytes), ..]) => {
                match serde_json::from_slice(bytes) {
                    Ok(value) => return Ok(hit(value, telemetry)),
                    Err(_) => break None,
                }
            }
            // The lock is ours; the answer will be of this generation.
            Ok(results @ [RedisResult::Int64(2), ..]) => {
                break Some(binary_at(results, 1).unwrap_or(b"0").to_vec())
            }
            // The request we waited on failed: answer as it did (it counted the failure).
            Ok([RedisResult::Int64(3), RedisResult::Binary(failure), ..]) => {
                if let Ok(shared) = serde_json::from_slice::<query::SharedFailure>(failure) {
                    return Err(shared.into_error());
                }
                break None;
            }
            Ok([RedisResult::Int64(0), ..]) if crate::time_left().is_zero() => {
                crate::log::warn(
                    "query_cache_wait_timed_out",
                    crate::log::Dependency::None,
                    "the request's deadline passed waiting for an identical question's answer",
                );
                return Err(UpstreamError::Timeout { service: OPENAI });
            }
            Ok(results @ [RedisResult::Int64(0), ..]) if waited_since.elapsed() <= lock_ttl => {
                if let Some(current) = binary_at(results, 1) {
                    holder = current.to_vec();
                }
                spin_sdk::time::sleep(query::wait_step(attempt).min(crate::time_left())).await;
                attempt += 1;
            }
            // Waited long enough, or Redis failed: compute it ourselves.
            _ => break None,
        }
    };
    telemetry.add(Observation::CacheMisses(CacheType::Query, 1.0));

    match run(Some(conn), settings, request, progress, telemetry).await {
        Ok(answer) if !answer.whole => {
            // Shown, never cached: the lock goes with no failure to share, so
            // the requests waiting on it ask for their own answers.
            crate::log::warn(
                "answer_not_cached",
                crate::log::Dependency::OpenAi,
                "the model cut the answer short (finish_reason length or content_filter) or left it empty",
            );
            if generation.is_some() {
                release_lock(conn, &cache_key, &token, Vec::new()).await;
            }
            Ok(answer)
        }
        Ok(answer) => {
            // Without the lock (Redis failed, or a holder outlived its lock) the answer is not cached.
            if let Some(generation) = generation {
                let stored = eval(
                    conn,
                    query::STORE_ANSWER_SCRIPT,
                    &query::store_keys(
                        &cache_key,
                        &request.session_id,
                        request.page_context.as_deref(),
                    ),
                    &[
                        RedisParameter::Binary(
                            serde_json::to_vec(&answer.value).expect("answers serialise"),
                        ),
                        RedisParameter::Int64(settings.query_cache_ttl_seconds as i64),
                        binary(&token),
                        RedisParameter::Binary(generation),
                        binary(if request.page_context.is_some() {
                            "1"
                        } else {
                            "0"
                        }),
                        RedisParameter::Int64(query::INDEX_PRUNE_SAMPLE as i64),
                    ],
                )
                .await;
                if let Err(e) = stored {
                    crate::log::warn(
                        "query_cache_store_failed",
                        crate::log::Dependency::Redis,
                        &e,
                    );
                    telemetry.redis_error();
                }
            }
            Ok(answer)
        }
        Err(e) => {
            // Errors (and answers that broke off) are never cached: the lock
            // goes, and the requests waiting on this one answer the same failure at once.
            let failure = serde_json::to_vec(&query::SharedFailure::of(&e)).expect("serialises");
            release_lock(conn, &cache_key, &token, failure).await;
            Err(e)
        }
    }
}

/// Releases the stampede lock (if still ours) and leaves `failure` for the
/// requests that waited on it; an empty one sends them to ask for themselves.
async fn release_lock(conn: &Conn, cache_key: &str, token: &str, failure: Vec<u8>) {
    let _ = eval(
        conn,
        query::RELEASE_LOCK_SCRIPT,
        &query::release_keys(cache_key),
        &[
            binary(token),
            RedisParameter::Binary(failure),
            RedisParameter::Int64(query::SHARED_FAILURE_MS),
        ],
    )
    .await;
}

async fn run(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    request: &QueryRequest,
    progress: &mut dyn Progress,
    telemetry: &mut Telemetry,
) -> Result<Answer, UpstreamError> {
    let text = keys::normalise(&request.question);
    let vector = embed_cached(conn, settings, &[text], telemetry)
        .await?
        .pop()
        .expect("one vector per text");

    telemetry.add(Observation::QdrantSearch);
    let searched = crate::qdrant::search(settings, &vector)
        .await
        .inspect_err(|e| telemetry.upstream_error(e))?;
    telemetry.add(Observation::QdrantSearchLatency(
        searched.latency.as_secs_f64(),
    ));
    if searched.collection_missing {
        telemetry.add(Observation::QdrantCollectionMissing);
    }
    let passages = searched.passages;

    telemetry.add(Observation::OpenAiCall(Operation::Chat));
    telemetry.chat_called = true;
    let messages = query::prompt_messages(request, &passages);
    let citations = query::citations(&passages);
    let answered = if progress.streams() {
        crate::openai::chat_streamed(settings, &messages, progress, &citations).await
    } else {
        crate::openai::chat(settings, &messages).await
    };
    let (reply, latency) = answered.inspect_err(|e| telemetry.upstream_error(e))?;
    let usage = reply.usage;
    telemetry.openai_answered(Operation::Chat, latency, &usage);
    Ok(Answer {
        value: CachedAnswer {
            answer: reply.answer,
            citations,
            tokens: usage.prompt_tokens + usage.completion_tokens,
        },
        cached: false,
        usage: Some(usage),
        whole: reply.complete,
    })
}

/// Stores the exchange after the response. An exchange in a conversation
/// Redis remembers as refreshed today is appended (two messages and the
/// citations); otherwise, or when that conversation is gone, the whole
/// statement upserts the session and conversation too. Returns what Redis
/// should remember from now on when it differs from `remembered` (`None`
/// when the write failed: it is logged and counted).
pub async fn store_history(
    settings: &PipelineSettings,
    request: &QueryRequest,
    answer: &Answer,
    enforce_owner: bool,
    remembered: Option<RememberedConversation>,
    telemetry: &mut Telemetry,
) -> Option<RememberedConversation> {
    let started = Instant::now();
    let today = day_of(crate::now_epoch_seconds());
    let exchange = crate::history::NewExchange {
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
        Some(known) => crate::history::append_exchange(address, known.id, &exchange, enforce_owner)
            .await
            .map(|appended| appended.then_some(known)),
        None => Ok(None),
    };
    let stored = match appended {
        Ok(Some(known)) => Ok(known),
        Ok(None) => crate::history::store_exchange(address, &exchange, enforce_owner)
            .await
            .map(|id| RememberedConversation::refreshed_on(id, today)),
        Err(e) => Err(e),
    };
    match stored {
        Ok(now) => {
            telemetry.add(Observation::DatabaseLatency(
                Operation::StoreExchange,
                started.elapsed().as_secs_f64(),
            ));
            (Some(now) != remembered).then_some(now)
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

/// Top rate-limited sessions and the security log (sampled per address), in one round trip.
pub async fn note_rate_limited(
    conn: &Conn,
    session_id: &str,
    address: &str,
    detail: serde_json::Value,
) {
    let entry = crate::audit::entry(AuditAction::RateLimitDenied, address, detail);
    if let Err(e) = eval(
        conn,
        sessions::NOTE_RATE_LIMITED_SCRIPT,
        &sessions::note_rate_limited_keys(&entry),
        &[
            binary(session_id),
            RedisParameter::Int64(ranking::RATE_LIMITED_HALF_LIFE_SECONDS as i64),
            RedisParameter::Int64(ranking::RATE_LIMITED_CAP as i64),
            binary(entry.to_json()),
            RedisParameter::Int64(AuditAction::RateLimitDenied.sample_seconds()),
        ],
    )
    .await
    {
        crate::log::warn("analytics_write_failed", crate::log::Dependency::Redis, &e);
    }
}
