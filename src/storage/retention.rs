//! Retention: expired rows are deleted in bounded batches.
//!
//! These statements go through `execute` (their rows are not needed), never
//! `query`: see `crate::storage::sql` (issue #10).

/// Deletes up to `$1` expired rows of a table per call; run until it deletes fewer.
pub const CLEANUP_STATEMENTS: [(&str, &str); 3] = [
    ("messages", "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE expires_at <= now() LIMIT $1)"),
    ("conversations", "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations WHERE expires_at <= now() LIMIT $1)"),
    ("user_sessions", "DELETE FROM user_sessions WHERE id IN (SELECT id FROM user_sessions WHERE expires_at <= now() LIMIT $1)"),
];

pub const DEFAULT_CLEANUP_BATCH: i64 = 1000;
pub const MAX_CLEANUP_BATCHES: u32 = 1000;
