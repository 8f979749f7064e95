//! spin-sdk adapters more than one component uses: all decisions are in
//! `chatbot-core`; this crate moves bytes to and from the host, each call
//! bounded by what is left of its request's deadline (`context`).

pub mod answer_cache;
pub mod audit;
pub mod budget;
pub mod caches;
pub mod context;
pub mod error;
pub mod history;
pub mod http;
pub mod identity;
pub mod incoming;
pub mod log;
pub mod metrics_store;
pub mod openai;
pub mod pg;
pub mod pipeline;
pub mod qdrant;
pub mod redis_script;
pub mod respond;
pub mod routing;
pub mod semantic;
pub mod settings;

pub use error::StoreError;

pub use context::{bounded, request_id, request_started, time_left, within};

/// A random token (for locks), from the host's secure random source.
pub fn random_token() -> String {
    let bytes = wasi::random::random::get_random_bytes(16);
    hex::encode(bytes)
}

/// Seconds since the Unix epoch.
pub fn now_epoch_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
