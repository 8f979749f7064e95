//! The embedding cache and the telemetry a request accumulates.

use chatbot_core::codec;
use chatbot_core::metrics::{names, Sample};
use chatbot_core::query::{embedding_cache_key, SET_MANY_SCRIPT};
use chatbot_core::upstream::UpstreamError;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::redis_script::{binary, eval};
use crate::settings::PipelineSettings;

/// The samples a request will hand the recorder in one batch at the end.
#[derive(Debug, Default, Clone)]
pub struct Telemetry {
    pub samples: Vec<Sample>,
}

impl Telemetry {
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.samples.push(Sample::new(name, labels, value));
    }

    pub fn upstream_error(&mut self, e: &UpstreamError) {
        let kind = match e {
            UpstreamError::Timeout { .. } => "timeout",
            _ => e.service(),
        };
        self.add(names::ERRORS, &[("error_type", kind)], 1.0);
        if matches!(
            e,
            UpstreamError::RateLimited {
                service: "openai",
                ..
            }
        ) {
            self.add(names::OPENAI_RATE_LIMIT_ERRORS, &[], 1.0);
        }
    }

    pub fn redis_error(&mut self) {
        self.add(names::REDIS_CONNECTION_ERRORS, &[], 1.0);
        self.add(names::ERRORS, &[("error_type", "redis")], 1.0);
    }
}

/// Embeds `texts` through the cache: one `MGET` for all, one OpenAI call per
/// batch of misses, one script to store them. Without Redis, it embeds all.
pub fn embed_cached(
    conn: Option<&Connection>,
    settings: &PipelineSettings,
    texts: &[String],
    telemetry: &mut Telemetry,
) -> Result<Vec<Vec<f32>>, UpstreamError> {
    let keys: Vec<String> = texts
        .iter()
        .map(|t| embedding_cache_key(&settings.embedding_model, t))
        .collect();
    let mut found: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    if let Some(conn) = conn {
        let params: Vec<RedisParameter> = keys.iter().map(binary).collect();
        match conn.execute("MGET", &params) {
            Ok(values) => {
                for (slot, value) in found.iter_mut().zip(values) {
                    if let RedisResult::Binary(bytes) = value {
                        *slot = codec::decode_embedding(&bytes);
                    }
                }
            }
            Err(e) => {
                eprintln!("embedding cache: MGET failed: {e}");
                telemetry.redis_error();
            }
        }
    }
    let missing: Vec<usize> = (0..texts.len()).filter(|i| found[*i].is_none()).collect();
    let hits = texts.len() - missing.len();
    if hits > 0 {
        telemetry.add(
            names::CACHE_HITS,
            &[("cache_type", "embedding")],
            hits as f64,
        );
    }
    if !missing.is_empty() {
        telemetry.add(
            names::CACHE_MISSES,
            &[("cache_type", "embedding")],
            missing.len() as f64,
        );
    }
    for batch in missing.chunks(chatbot_core::ingest::EMBEDDING_BATCH) {
        let inputs: Vec<String> = batch.iter().map(|i| texts[*i].clone()).collect();
        telemetry.add(names::OPENAI_CALLS, &[("operation", "embedding")], 1.0);
        let (vectors, usage, latency) = match crate::openai::embed(settings, &inputs) {
            Ok(v) => v,
            Err(e) => {
                telemetry.upstream_error(&e);
                return Err(e);
            }
        };
        telemetry.add(
            names::OPENAI_LATENCY,
            &[("operation", "embedding")],
            latency.as_secs_f64(),
        );
        telemetry.add(
            names::OPENAI_TOKENS,
            &[("operation", "embedding"), ("kind", "prompt")],
            usage.prompt_tokens as f64,
        );
        if let Some(conn) = conn {
            let batch_keys: Vec<&str> = batch.iter().map(|i| keys[*i].as_str()).collect();
            let mut args = vec![RedisParameter::Int64(
                settings.embedding_cache_ttl_seconds as i64,
            )];
            args.extend(
                vectors
                    .iter()
                    .map(|v| RedisParameter::Binary(codec::encode_embedding(v))),
            );
            if let Err(e) = eval(conn, SET_MANY_SCRIPT, &batch_keys, &args) {
                eprintln!("embedding cache: store failed: {e}");
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
