//! The embedding cache and the telemetry a request accumulates.

use chatbot_core::cache::codec;
use chatbot_core::chat::upstream::{UpstreamError, Usage};
use chatbot_core::redis::keys;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{CacheType, ErrorType, Operation, Sample, TokenKind};

use std::time::Duration;

use crate::redis_script::{execute, run, Conn};
use crate::settings::PipelineSettings;
use chatbot_core::redis::script::{Arg, Value};

/// The samples a request will hand the recorder in one batch at the end.
#[derive(Debug, Default, Clone)]
pub struct Telemetry {
    pub samples: Vec<Sample>,
    /// The chat model was called (whatever came of it): a budget charges a
    /// failure after this, never one before.
    pub chat_called: bool,
    /// Tokens a follow-up's rewrite cost (as reported, or its worst case
    /// when it may have been billed unreported): charged even if the answer
    /// then fails.
    pub chat_tokens_reported: u64,
}

impl Telemetry {
    pub fn add(&mut self, observation: Observation) {
        self.samples.push(observation.sample());
    }

    pub fn upstream_error(&mut self, e: &UpstreamError) {
        self.add(Observation::Error(e.error_type()));
        if e.is_openai_rate_limit() {
            self.add(Observation::OpenAiRateLimited);
        }
    }

    /// An OpenAI call that answered: its latency and the tokens it billed
    /// (embeddings bill prompt tokens only).
    pub fn openai_answered(&mut self, operation: Operation, latency: Duration, usage: &Usage) {
        self.add(Observation::OpenAiLatency(operation, latency.as_secs_f64()));
        self.add(Observation::OpenAiTokens(
            operation,
            TokenKind::Prompt,
            usage.prompt_tokens as f64,
        ));
        if operation != Operation::Embedding {
            self.add(Observation::OpenAiTokens(
                operation,
                TokenKind::Completion,
                usage.completion_tokens as f64,
            ));
        }
    }

    pub fn redis_error(&mut self) {
        self.add(Observation::RedisConnectionError);
        self.add(Observation::Error(ErrorType::Redis));
    }
}

/// Embeds `texts` through the cache: one `MGET` for all, one OpenAI call per
/// batch of misses, one script to store them. Without Redis, it embeds all.
pub async fn embed_cached(
    conn: Option<&Conn>,
    settings: &PipelineSettings,
    texts: &[String],
    telemetry: &mut Telemetry,
) -> Result<Vec<Vec<f32>>, UpstreamError> {
    let keys: Vec<String> = texts
        .iter()
        .map(|t| keys::embedding(&settings.embedding_model, t))
        .collect();
    let mut found: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    if let Some(conn) = conn {
        let params: Vec<Arg> = keys.iter().map(Arg::from).collect();
        match execute(conn, "MGET", params).await {
            Ok(values) => {
                for (slot, value) in found.iter_mut().zip(values) {
                    if let Value::Bytes(bytes) = value {
                        *slot = codec::decode_embedding(&bytes);
                    }
                }
            }
            Err(e) => {
                crate::log::warn(
                    "embedding_cache_read_failed",
                    crate::log::Dependency::Redis,
                    &e,
                );
                telemetry.redis_error();
            }
        }
    }
    let missing: Vec<usize> = (0..texts.len()).filter(|i| found[*i].is_none()).collect();
    let hits = texts.len() - missing.len();
    if hits > 0 {
        telemetry.add(Observation::CacheHits(CacheType::Embedding, hits as f64));
    }
    if !missing.is_empty() {
        telemetry.add(Observation::CacheMisses(
            CacheType::Embedding,
            missing.len() as f64,
        ));
    }
    for batch in missing.chunks(chatbot_core::chat::ingest::EMBEDDING_BATCH) {
        let inputs: Vec<String> = batch.iter().map(|i| texts[*i].clone()).collect();
        telemetry.add(Observation::OpenAiCall(Operation::Embedding));
        let (vectors, usage, latency) = match crate::openai::embed(settings, &inputs).await {
            Ok(v) => v,
            Err(e) => {
                telemetry.upstream_error(&e);
                return Err(e);
            }
        };
        telemetry.openai_answered(Operation::Embedding, latency, &usage);
        if let Some(conn) = conn {
            let store = codec::StoreEmbeddings {
                keys: batch.iter().map(|i| keys[*i].as_str()).collect(),
                vectors: &vectors,
                ttl_seconds: settings.embedding_cache_ttl_seconds,
            };
            if let Err(e) = run(conn, &store).await {
                crate::log::warn(
                    "embedding_cache_store_failed",
                    crate::log::Dependency::Redis,
                    &e,
                );
                telemetry.redis_error();
            }
        }
        for (i, vector) in batch.iter().zip(vectors) {
            found[*i] = Some(vector);
        }
    }
    Ok(found
        .into_iter()
        .map(|v| v.expect("every slot filled"))
        .collect())
}
