//! The RAG pipeline behind the query cache (`answer_cache`): embed (through
//! the embedding cache), search Qdrant, ask the chat model.

use chatbot_core::cache::answers::CachedAnswer;
use chatbot_core::chat::query::{self, Citation, QueryRequest};
use chatbot_core::chat::upstream::{UpstreamError, Usage};
use chatbot_core::redis::keys;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::Operation;

use crate::caches::{embed_cached, Telemetry};
use crate::redis_script::Conn;
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

pub async fn run(
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
