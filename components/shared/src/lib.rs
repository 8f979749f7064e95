//! spin-sdk adapters more than one component uses. Thin: all decisions are in
//! `chatbot-core`; this crate only moves bytes to and from the host.

pub mod audit;
pub mod caches;
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
pub mod settings;

pub use error::StoreError;

/// This request's id: in the `X-Request-Id` header, in 5xx bodies and in the
/// log lines about the request. Spin gives every request a fresh instance, so
/// a static is exactly one request's.
pub fn request_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(random_token)
}

/// When this request started (the first call fixes it: the handler's entry).
pub fn request_started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// What is left of the request's deadline (zero once it has passed).
pub fn time_left(request_timeout: std::time::Duration) -> std::time::Duration {
    request_timeout.saturating_sub(request_started().elapsed())
}

/// What a call may wait: its own timeout, or what is left of the request's
/// deadline if that is less.
pub fn bounded(
    per_call: std::time::Duration,
    request_timeout: std::time::Duration,
) -> std::time::Duration {
    per_call.min(time_left(request_timeout))
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
