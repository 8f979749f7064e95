//! spin-sdk adapters more than one component uses. Thin: all decisions are in
//! `chatbot-core`; this crate only moves bytes to and from the host.

pub mod audit;
pub mod caches;
pub mod error;
pub mod history;
pub mod http;
pub mod identity;
pub mod metrics_store;
pub mod openai;
pub mod pg;
pub mod pipeline;
pub mod qdrant;
pub mod redis_script;
pub mod respond;
pub mod routing;
pub mod settings;

pub use error::StoreError;

/// This request's id: in the `X-Request-Id` header, in 5xx bodies and in the
/// log lines about the request. Spin gives every request a fresh instance, so
/// a static is exactly one request's.
pub fn request_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(random_token)
}

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
