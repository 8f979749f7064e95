//! The pipeline's settings, read from Spin variables and checked by the core.

use std::time::Duration;

use chatbot_core::config::{self, names, ConfigError, Secret};
use chatbot_core::query::{AnswerShape, CacheScope};
use spin_sdk::variables;

pub fn variable(name: &str) -> Result<String, ConfigError> {
    variables::get(name).map_err(|_| ConfigError::Missing {
        name: name.to_string(),
    })
}

fn number(name: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    config::parse_u64(name, &variable(name)?, min, max)
}

/// Everything the RAG pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub redis_address: String,
    pub postgres_address: String,
    pub openai_base_url: String,
    pub openai_api_key: Secret,
    pub embedding_model: String,
    pub chat_model: String,
    pub qdrant_url: String,
    pub qdrant_api_key: Secret,
    pub qdrant_collection: String,
    pub top_k: u32,
    pub query_cache_ttl_seconds: u64,
    pub embedding_cache_ttl_seconds: u64,
    pub cache_scope: CacheScope,
    pub retention_days: u32,
    pub openai_timeout: Duration,
    pub qdrant_timeout: Duration,
}

impl PipelineSettings {
    pub fn load() -> Result<Self, ConfigError> {
        let scope_raw = variable(names::QUERY_CACHE_SCOPE)?;
        Ok(Self {
            redis_address: config::parse_redis_address(
                names::REDIS_ADDRESS,
                &variable(names::REDIS_ADDRESS)?,
            )?,
            postgres_address: config::parse_postgres_address(
                names::POSTGRES_ADDRESS,
                &variable(names::POSTGRES_ADDRESS)?,
            )?,
            openai_base_url: config::require_non_empty(
                names::OPENAI_BASE_URL,
                &variable(names::OPENAI_BASE_URL)?,
            )?
            .trim_end_matches('/')
            .to_string(),
            openai_api_key: Secret::new(variable(names::OPENAI_API_KEY)?),
            embedding_model: config::require_non_empty(
                names::EMBEDDING_MODEL,
                &variable(names::EMBEDDING_MODEL)?,
            )?,
            chat_model: config::require_non_empty(
                names::CHAT_MODEL,
                &variable(names::CHAT_MODEL)?,
            )?,
            qdrant_url: config::require_non_empty(
                names::QDRANT_URL,
                &variable(names::QDRANT_URL)?,
            )?
            .trim_end_matches('/')
            .to_string(),
            qdrant_api_key: Secret::new(variable(names::QDRANT_API_KEY)?),
            qdrant_collection: {
                let c = config::require_non_empty(
                    names::QDRANT_COLLECTION,
                    &variable(names::QDRANT_COLLECTION)?,
                )?;
                chatbot_core::query::validate_id(names::QDRANT_COLLECTION, &c).map_err(|_| {
                    ConfigError::Invalid {
                        name: names::QDRANT_COLLECTION.into(),
                        value: c.clone(),
                        expected: "a collection name of letters, digits, '-', '_', '.' or ':'",
                    }
                })?;
                c
            },
            top_k: number(names::TOP_K, 1, 100)? as u32,
            query_cache_ttl_seconds: number(names::QUERY_CACHE_TTL_SECONDS, 1, 30 * 86_400)?,
            embedding_cache_ttl_seconds: number(
                names::EMBEDDING_CACHE_TTL_SECONDS,
                1,
                365 * 86_400,
            )?,
            cache_scope: CacheScope::parse(&scope_raw).ok_or(ConfigError::Invalid {
                name: names::QUERY_CACHE_SCOPE.into(),
                value: scope_raw,
                expected: "`session` or `global`",
            })?,
            retention_days: number(names::RETENTION_DAYS, 1, 36_500)? as u32,
            openai_timeout: Duration::from_millis(number(names::OPENAI_TIMEOUT_MS, 100, 600_000)?),
            qdrant_timeout: Duration::from_millis(number(names::QDRANT_TIMEOUT_MS, 100, 600_000)?),
        })
    }

    pub fn shape(&self) -> AnswerShape<'_> {
        AnswerShape {
            chat_model: &self.chat_model,
            embedding_model: &self.embedding_model,
            collection: &self.qdrant_collection,
            top_k: self.top_k,
            scope: self.cache_scope,
        }
    }
}
