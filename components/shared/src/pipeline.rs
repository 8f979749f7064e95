//! The RAG pipeline behind the query cache (`answer_cache`): embed (through
//! the embedding cache), search Qdrant, ask the chat model.

use chatbot_core::cache::answers::CachedAnswer;
use chatbot_core::cache::semantic::Indexed;
use chatbot_core::chat::conversation::{self, Retrieval, Turn};
use chatbot_core::chat::query::{self, Citation, QueryRequest};
use chatbot_core::chat::upstream::{UpstreamError, Usage};
use chatbot_core::redis::keys;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{CacheType, Operation};

use crate::caches::{embed_cached, Telemetry};
use crate::redis_script::Conn;
use crate::semantic::SemanticLookup;
use crate::settings::PipelineSettings;

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
    /// Served by the semantic cache: the earlier question it was answered for.
    pub matched: Option<MatchedQuestion>,
    /// A semantically looked-up miss's question vector, to index its answer with.
    pub question_vector: Option<Vec<f32>>,
    /// An answer just cached, to index for the semantic cache once the client has it.
    pub index: Option<Indexed>,
    /// An exact hit that confirmed another session's answer (`global`
    /// scope): its cache key, whose point is confirmed once the client has it.
    pub confirms: Option<String>,
}

/// The earlier question whose answer the semantic cache served.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedQuestion {
    /// Shown only to the session that asked it (`None` for another's).
    pub question: Option<String>,
    /// Cosine similarity of the two questions' embeddings.
    pub score: f64,
}

impl Answer {
    /// An answer from the cache (exact, unless `matched`).
    pub fn cached(value: CachedAnswer, matched: Option<MatchedQuestion>) -> Self {
        Self {
            value,
            cached: true,
            usage: None,
            whole: true,
            matched,
            question_vector: None,
            index: None,
            confirms: None,
        }
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

/// A follow-up made standalone for retrieval (one short chat call, its
/// tokens counted): the rewrite and the tokens it cost.
async fn rewrite(
    settings: &PipelineSettings,
    turns: &[Turn],
    question: &str,
    telemetry: &mut Telemetry,
) -> Result<(String, Usage), UpstreamError> {
    telemetry.add(Observation::OpenAiCall(Operation::Rewrite));
    let messages = conversation::rewrite_messages(turns, question);
    let (reply, latency) =
        crate::openai::chat(settings, &messages, conversation::REWRITE_MAX_TOKENS)
            .await
            .inspect_err(|e| {
                telemetry.upstream_error(e);
                // A call that timed out or broke off may have been billed:
                // its worst case is charged (the answer's call was never made).
                if e.may_have_been_billed() {
                    telemetry.chat_tokens_reported +=
                        conversation::rewrite_worst_case_tokens(turns, question);
                }
            })?;
    telemetry.openai_answered(Operation::Rewrite, latency, &reply.usage);
    telemetry.chat_tokens_reported += reply.usage.prompt_tokens + reply.usage.completion_tokens;
    Ok((
        conversation::standalone(&reply.answer, question),
        reply.usage,
    ))
}

/// Embeds (through the embedding cache), searches, and asks the chat model
/// with `turns`, the earlier turns of the question's conversation (oldest
/// first, as many as the prompt takes): a follow-up is retrieved with
/// what `conversation_retrieval` says (its standalone rewrite unless set).
/// With `semantic` (a first question, the semantic cache on), the question's
/// vector is also searched among earlier questions, alongside the passages:
/// a match is served without calling the chat model.
pub async fn run(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    request: &QueryRequest,
    turns: &[Turn],
    semantic: Option<&SemanticLookup<'_>>,
    progress: &mut dyn Progress,
    telemetry: &mut Telemetry,
) -> Result<Answer, UpstreamError> {
    let retrieval = settings.conversation.retrieval;
    let rewritten = match (turns.is_empty(), retrieval) {
        (false, Retrieval::Rewrite) => {
            Some(rewrite(settings, turns, &request.question, telemetry).await?)
        }
        _ => None,
    };
    let asked = conversation::retrieval_text(
        retrieval,
        turns,
        &request.question,
        rewritten.as_ref().map(|(text, _)| text.as_str()),
    );
    let text = keys::normalise(&asked);
    let mut vector = embed_cached(conn, settings, &[text], telemetry)
        .await?
        .pop()
        .expect("one vector per text");

    telemetry.add(Observation::QdrantSearch);
    let (matched, searched) = match (semantic, conn) {
        (Some(lookup), Some(conn)) => {
            // The index's search is a Qdrant search too.
            telemetry.add(Observation::QdrantSearch);
            let mut looked_up = Telemetry::default();
            let (matched, searched) = futures::join!(
                crate::semantic::lookup(conn, settings, lookup, &vector, &mut looked_up),
                crate::qdrant::search(settings, &vector)
            );
            telemetry.samples.extend(looked_up.samples);
            (matched, searched)
        }
        _ => (None, crate::qdrant::search(settings, &vector).await),
    };
    if let Some(matched) = matched {
        telemetry.add(Observation::CacheHits(CacheType::Semantic, 1.0));
        telemetry.add(Observation::TokensSaved(
            CacheType::Semantic,
            matched.answer.tokens as f64,
        ));
        return Ok(Answer::cached(
            matched.answer,
            Some(MatchedQuestion {
                question: matched.question,
                score: matched.score,
            }),
        ));
    }
    if semantic.is_some() {
        telemetry.add(Observation::CacheMisses(CacheType::Semantic, 1.0));
    }
    let searched = searched.inspect_err(|e| telemetry.upstream_error(e))?;
    telemetry.add(Observation::QdrantSearchLatency(
        searched.latency.as_secs_f64(),
    ));
    if searched.collection_missing {
        telemetry.add(Observation::QdrantCollectionMissing);
    }
    let passages = searched.passages;

    telemetry.add(Observation::OpenAiCall(Operation::Chat));
    telemetry.chat_called = true;
    let messages = query::prompt_messages(request, turns, &passages);
    let citations = query::citations(&passages);
    let answered = if progress.streams() {
        crate::openai::chat_streamed(settings, &messages, progress, &citations).await
    } else {
        crate::openai::chat(settings, &messages, settings.chat_max_tokens).await
    };
    let (reply, latency) = answered.inspect_err(|e| telemetry.upstream_error(e))?;
    telemetry.openai_answered(Operation::Chat, latency, &reply.usage);
    // What the answer cost, its rewrite included: what a hit saves, what a budget charges.
    // (An answer whose usage is unknown stays unknown: its whole reservation is charged.)
    let answer_reported = reply.usage.prompt_tokens + reply.usage.completion_tokens > 0;
    let usage = match rewritten {
        Some((_, spent)) if answer_reported => Usage {
            prompt_tokens: reply.usage.prompt_tokens + spent.prompt_tokens,
            completion_tokens: reply.usage.completion_tokens + spent.completion_tokens,
        },
        _ => reply.usage,
    };
    Ok(Answer {
        value: CachedAnswer {
            answer: reply.answer,
            citations,
            tokens: usage.prompt_tokens + usage.completion_tokens,
        },
        cached: false,
        usage: Some(usage),
        whole: reply.complete,
        matched: None,
        question_vector: semantic.is_some().then(|| std::mem::take(&mut vector)),
        index: None,
        confirms: None,
    })
}
