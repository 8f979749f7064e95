//! What the host I/O adapters fail with.

/// A failure of Redis or Postgres, or a reply that was not what was asked for.
/// Never carries a password: addresses are redacted before they get here.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// A row's foreign key names a row that is gone (SQLSTATE 23503).
    #[error("postgres: a referenced row is gone")]
    ForeignKeyViolation,
}

impl StoreError {
    /// Redis refused a write because it is full (`maxmemory`, `noeviction`).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Redis(message) if chatbot_core::limits::ratelimit::is_out_of_memory(message))
    }
}

impl From<spin_sdk::redis::Error> for StoreError {
    fn from(e: spin_sdk::redis::Error) -> Self {
        Self::Redis(e.to_string())
    }
}

impl From<spin_sdk::pg::Error> for StoreError {
    fn from(e: spin_sdk::pg::Error) -> Self {
        match e {
            spin_sdk::pg::Error::PgError(e) => e.into(),
            other => Self::Postgres(chatbot_core::config::redact_userinfo(&other.to_string())),
        }
    }
}

impl From<spin_sdk::pg::PgError> for StoreError {
    fn from(e: spin_sdk::pg::PgError) -> Self {
        match e {
            spin_sdk::pg::PgError::QueryFailed(spin_sdk::pg::QueryError::DbError(db))
                if db.code == chatbot_core::storage::history::FOREIGN_KEY_VIOLATION =>
            {
                Self::ForeignKeyViolation
            }
            other => Self::Postgres(chatbot_core::config::redact_userinfo(&format!("{other:?}"))),
        }
    }
}

impl From<StoreError> for chatbot_core::http::api::ApiError {
    /// 503 naming the store that failed, never its words (they go to the log).
    fn from(e: StoreError) -> Self {
        use chatbot_core::http::api::ApiError;
        use chatbot_core::telemetry::log::Dependency;
        match e {
            StoreError::Redis(_) => ApiError::unavailable("Redis is unavailable").caused_by(
                "redis_unavailable",
                Dependency::Redis,
                e,
            ),
            StoreError::Postgres(_) | StoreError::ForeignKeyViolation => ApiError::unavailable(
                "the history store (Postgres) is unavailable",
            )
            .caused_by("postgres_unavailable", Dependency::Postgres, e),
            StoreError::Unexpected(_) => ApiError::unavailable(
                "a store answered something unexpected",
            )
            .caused_by("store_reply_unexpected", Dependency::None, e),
        }
    }
}
