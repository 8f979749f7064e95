-- Several conversations per session (issue #19): a request may continue one
-- of its session's conversations or start a new one. The unique index that
-- made a session's conversation one goes; lookups by session keep an index.
-- Idempotent: safe to apply again.

DROP INDEX IF EXISTS ix_conversations_user_session_id;
CREATE INDEX IF NOT EXISTS ix_conversations_session ON conversations (user_session_id, id);
-- A conversation's last messages, read when Redis lost its turns.
CREATE INDEX IF NOT EXISTS ix_messages_conversation_timestamp ON messages (conversation_id, "timestamp", id);
