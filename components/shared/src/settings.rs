//! Spin variables, read through the core's one parser of every setting
//! (`chatbot_core::settings`).

use chatbot_core::config::ConfigError;
use spin_sdk::variables;

pub use chatbot_core::settings::{LimiterSettings, PipelineSettings, SessionLimits};

/// Reads a Spin variable; `None` when it is not set or not visible.
pub fn lookup(name: &str) -> Option<String> {
    variables::get(name).ok()
}

pub fn pipeline() -> Result<PipelineSettings, ConfigError> {
    PipelineSettings::from_lookup(&lookup)
}

pub fn session_limits() -> Result<SessionLimits, ConfigError> {
    SessionLimits::from_lookup(&lookup)
}

pub fn limiter() -> Result<LimiterSettings, ConfigError> {
    LimiterSettings::from_lookup(&lookup)
}

pub fn redis_address() -> Result<String, ConfigError> {
    chatbot_core::settings::redis_address(&lookup)
}

pub fn postgres_address() -> Result<String, ConfigError> {
    chatbot_core::settings::postgres_address(&lookup)
}

/// Opens Redis at the configured address (a connection of the caller's own).
pub fn open_redis() -> Result<spin_sdk::redis::Connection, crate::StoreError> {
    let address = redis_address().map_err(|e| crate::StoreError::Redis(e.to_string()))?;
    Ok(spin_sdk::redis::Connection::open(&address)?)
}
