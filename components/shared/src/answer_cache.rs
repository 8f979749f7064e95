//! The query cache around the pipeline: a question is looked up once, and
//! identical concurrent misses run the pipeline once (the first takes a
//! short lock, the others wait for its answer or share its failure). The
//! scripts, their keys and replies are `chatbot_core::cache::answers`.

use std::time::{Duration, Instant};

use chatbot_core::cache::answers::{
    self, AcquireOrRead, Acquired, CacheScope, CachedAnswer, Confirmation, Found, Lookup,
    ReadAnswer, ReleaseLock, SharedFailure, StoreAnswer,
};
use chatbot_core::cache::semantic::{self, Indexed};
use chatbot_core::chat::conversation::Turn;
use chatbot_core::chat::query::QueryRequest;
use chatbot_core::chat::upstream::{UpstreamError, OPENAI};
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::CacheType;

use crate::caches::Telemetry;
use crate::pipeline::{self, Answer, Progress};
use crate::redis_script::{run, Conn};
use crate::semantic::SemanticLookup;
use crate::settings::PipelineSettings;

/// Looks the question up (one round trip): its answer as a first question
/// (`first`, keyed with no turns), the conversation asked in and its last
/// turns. `count_question` counts the ask for analytics (not for warm-up).
/// In `global` scope with the semantic cache on, a hit on an answer another
/// session stored confirms it (`Found::confirmed`), in the same round trip.
pub async fn lookup(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    first: &Asked<'_>,
    count_question: bool,
    telemetry: &mut Telemetry,
) -> Found {
    let Some(conn) = conn else {
        return Found::default();
    };
    let request = first.request;
    let lookup = Lookup {
        cache_key: &first.cache_key,
        session_id: &request.session_id,
        collection: &settings.qdrant_collection,
        entry: if count_question {
            answers::question_entry(request)
        } else {
            String::new()
        },
        conversation: request.conversation,
        turns: settings.conversation.turns,
        confirming: settings.confirmation(first.warm_up) == Confirmation::Pending,
    };
    run(conn, &lookup).await.unwrap_or_else(|e| {
        crate::log::warn("query_cache_read_failed", crate::log::Dependency::Redis, &e);
        telemetry.redis_error();
        Found::default()
    })
}

/// A question as the query cache sees it.
pub struct Asked<'a> {
    pub request: &'a QueryRequest,
    /// Where its answer is cached ([`answers::query_cache_key`]: keyed by
    /// `turns` when there are some).
    pub cache_key: String,
    /// The earlier turns it is answered with, oldest first.
    pub turns: &'a [Turn],
    /// Asked by an admin's warm-up: its answer is confirmed as stored, and
    /// its hits confirm nothing (see `Confirmation`).
    pub warm_up: bool,
    /// The asker was verified as the session's owner (`jwt` mode): a
    /// semantic hit on the session's own question may show it.
    pub verified: bool,
}

impl<'a> Asked<'a> {
    /// A question, keyed by `turns` (none: a first question's key).
    pub fn new(request: &'a QueryRequest, settings: &PipelineSettings, turns: &'a [Turn]) -> Self {
        let context = chatbot_core::chat::conversation::context_digest(
            turns,
            settings.conversation.retrieval,
        );
        Self {
            request,
            cache_key: answers::query_cache_key(request, &settings.shape(), context.as_deref()),
            turns,
            warm_up: false,
            verified: false,
        }
    }
}

/// A follow-up's cached answer, keyed by its turns (one round trip).
pub async fn read_follow_up(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    cache_key: &str,
    telemetry: &mut Telemetry,
) -> Option<CachedAnswer> {
    let read = ReadAnswer {
        cache_keys: &[cache_key],
        collection: &settings.qdrant_collection,
    };
    let found = run(conn?, &read).await.unwrap_or_else(|e| {
        crate::log::warn("query_cache_read_failed", crate::log::Dependency::Redis, &e);
        telemetry.redis_error();
        None
    });
    found.map(|(_, answer)| answer)
}

fn hit(value: CachedAnswer, telemetry: &mut Telemetry) -> Answer {
    telemetry.add(Observation::CacheHits(CacheType::Query, 1.0));
    telemetry.add(Observation::TokensSaved(
        CacheType::Query,
        value.tokens as f64,
    ));
    Answer::cached(value, None)
}

/// How long the stampede lock is held at most: the slowest pipeline (every
/// call is capped by the request's deadline, and a streamed answer lasts up
/// to it); a crashed holder's lock expires on its own.
fn lock_ttl(settings: &PipelineSettings, streams: bool) -> Duration {
    // Embedding, a follow-up's rewrite, the answer; the search.
    let per_call = settings.openai_timeout * 3 + settings.qdrant_timeout;
    let slowest = if streams {
        settings.request_timeout
    } else {
        per_call.min(settings.request_timeout)
    };
    slowest + Duration::from_secs(5)
}

/// Waits for an identical question's holder, or takes the lock: the answer
/// found meanwhile, the generation the lock was taken at (`Ok(None)`: answer
/// without the lock), or the holder's failure.
async fn acquire(
    conn: &Conn,
    settings: &PipelineSettings,
    cache_key: &str,
    token: &str,
    lock_ttl: Duration,
) -> Result<Result<Option<Vec<u8>>, CachedAnswer>, UpstreamError> {
    let waited_since = Instant::now();
    // The lock holder this request waits on, whose failure it would share.
    let mut holder = Vec::new();
    let mut attempt = 0;
    loop {
        let acquire = AcquireOrRead {
            cache_key,
            collection: &settings.qdrant_collection,
            token,
            lock_ttl_ms: lock_ttl.as_millis() as u64,
            holder: &holder,
        };
        match run(conn, &acquire).await {
            Ok(Acquired::Cached(value)) => return Ok(Err(value)),
            Ok(Acquired::Locked { generation }) => return Ok(Ok(Some(generation))),
            Ok(Acquired::HolderFailed(shared)) => return Err(shared.into_error()),
            Ok(Acquired::Held { .. }) if crate::time_left().is_zero() => {
                crate::log::warn(
                    "query_cache_wait_timed_out",
                    crate::log::Dependency::None,
                    "the request's deadline passed waiting for an identical question's answer",
                );
                return Err(UpstreamError::Timeout { service: OPENAI });
            }
            Ok(Acquired::Held { holder: current }) if waited_since.elapsed() <= lock_ttl => {
                if let Some(current) = current {
                    holder = current;
                }
                spin_sdk::time::sleep(answers::wait_step(attempt).min(crate::time_left())).await;
                attempt += 1;
            }
            // Waited long enough, or Redis failed: compute it ourselves.
            _ => return Ok(Ok(None)),
        }
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
    asked: &Asked<'_>,
    found: Option<CachedAnswer>,
    progress: &mut dyn Progress,
    telemetry: &mut Telemetry,
) -> Result<Answer, UpstreamError> {
    let Asked {
        request,
        cache_key,
        turns,
        warm_up,
        verified,
    } = asked;
    let (request, turns) = (*request, *turns);
    let Some(conn) = conn else {
        // Redis is down: no cache, no lock; answer anyway.
        return pipeline::run(None, settings, request, turns, None, progress, telemetry).await;
    };
    if let Some(value) = found {
        return Ok(hit(value, telemetry));
    }
    let cache_key = cache_key.clone();
    let token = crate::random_token();
    let lock_ttl = lock_ttl(settings, progress.streams());
    let generation = match acquire(conn, settings, &cache_key, &token, lock_ttl).await? {
        Err(value) => return Ok(hit(value, telemetry)),
        Ok(generation) => generation,
    };
    telemetry.add(Observation::CacheMisses(CacheType::Query, 1.0));

    // A first question answered under the lock may be served an earlier
    // question's answer of the same scope and generation.
    // Its scope, computed once: looked up in, and indexed with.
    let mut scope = (settings.semantic_cache_threshold.is_some() && turns.is_empty())
        .then(|| semantic::answer_scope(request, &settings.shape()));
    let semantic = match (&generation, settings.semantic_cache_threshold, &scope) {
        (Some(generation), Some(threshold), Some(scope)) => Some(SemanticLookup {
            among: semantic::Among {
                scope,
                generation,
                session: &request.session_id,
                // Shared answers: another session's serves only once confirmed.
                confirmed_only: settings.cache_scope == CacheScope::Global,
                verified: *verified,
            },
            threshold,
        }),
        _ => None,
    };
    let answered = pipeline::run(
        Some(conn),
        settings,
        request,
        turns,
        semantic.as_ref(),
        progress,
        telemetry,
    )
    .await;
    match answered {
        Ok(answer) if answer.matched.is_some() => {
            // Served an earlier question's answer: nothing new to store. The
            // requests waiting on the lock look it up for themselves.
            release_lock(conn, &cache_key, &token, Vec::new()).await;
            Ok(answer)
        }
        Ok(mut answer) => {
            if let Some((dependency, why)) = never_cached_because(&answer) {
                // Shown, never cached: the lock goes with no failure to share,
                // so the requests waiting on it ask for their own answers.
                crate::log::warn("answer_not_cached", dependency, why);
                if generation.is_some() {
                    release_lock(conn, &cache_key, &token, Vec::new()).await;
                }
                return Ok(answer);
            }
            // Without the lock (Redis failed, or a holder outlived its lock) the answer is not cached.
            if let Some(generation) = generation {
                let confirmation = settings.confirmation(*warm_up);
                let store = StoreAnswer {
                    cache_key: &cache_key,
                    session_id: &request.session_id,
                    page_context: request.page_context.as_deref(),
                    answer: &answer.value,
                    ttl_seconds: settings.query_cache_ttl_seconds,
                    token: &token,
                    generation: &generation,
                    confirmation,
                };
                match run(conn, &store).await {
                    // Cached: indexed for the semantic cache once the client has it.
                    Ok(()) => {
                        let looked_up = answer.question_vector.take().zip(scope.take());
                        answer.index = looked_up.and_then(|(vector, scope)| {
                            Indexed::new(
                                request,
                                scope,
                                &cache_key,
                                &generation,
                                crate::now_epoch_seconds(),
                                settings.query_cache_ttl_seconds,
                                vector,
                            )
                            .map(|indexed| indexed.confirmed(confirmation.indexed_confirmed()))
                        })
                    }
                    Err(e) => {
                        crate::log::warn(
                            "query_cache_store_failed",
                            crate::log::Dependency::Redis,
                            &e,
                        );
                        telemetry.redis_error();
                    }
                }
            }
            Ok(answer)
        }
        Err(e) => {
            // Errors (and answers that broke off) are never cached: the lock
            // goes, and the requests waiting on this one answer the same failure at once.
            // The failure is decided: releasing the lock gets the bookkeeping's
            // allowance, even when the failure is the request's deadline.
            crate::context::answer_decided();
            let failure = serde_json::to_vec(&SharedFailure::of(&e)).expect("serialises");
            release_lock(conn, &cache_key, &token, failure).await;
            Err(e)
        }
    }
}

/// Why an answer is shown but never cached: the model cut it short, or it
/// is larger than a cached answer may be (what Redis holds is bounded: see
/// `chatbot_core::redis::families`).
fn never_cached_because(answer: &Answer) -> Option<(crate::log::Dependency, &'static str)> {
    if !answer.whole {
        Some((
            crate::log::Dependency::OpenAi,
            "the model cut the answer short (finish_reason length or content_filter) or left it empty",
        ))
    } else if !answers::fits_the_cache(&answer.value) {
        Some((
            crate::log::Dependency::Redis,
            "the answer is larger than a cached answer may be",
        ))
    } else {
        None
    }
}

/// Releases the stampede lock (if still ours) and leaves `failure` for the
/// requests that waited on it; an empty one sends them to ask for themselves.
async fn release_lock(conn: &Conn, cache_key: &str, token: &str, failure: Vec<u8>) {
    let release = ReleaseLock {
        cache_key,
        token,
        failure,
    };
    let _ = run(conn, &release).await;
}
