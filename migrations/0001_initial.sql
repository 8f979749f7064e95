-- Sessions, conversations, messages and citations (seed 002), with the seed's
-- indexes and an expires_at on every table for retention cleanup.
-- Idempotent: safe to apply again.

CREATE TABLE IF NOT EXISTS user_sessions (
    id            BIGSERIAL PRIMARY KEY,
    session_id    TEXT        NOT NULL UNIQUE,
    user_id       TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_user_sessions_session_id ON user_sessions (session_id);
CREATE INDEX IF NOT EXISTS ix_user_sessions_user_id ON user_sessions (user_id);
CREATE INDEX IF NOT EXISTS ix_user_sessions_expires_at ON user_sessions (expires_at);

CREATE TABLE IF NOT EXISTS conversations (
    id               BIGSERIAL PRIMARY KEY,
    user_session_id  BIGINT      NOT NULL REFERENCES user_sessions (id) ON DELETE CASCADE,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL
);
-- A session holds several conversations: their index is in 0002 (which drops
-- the unique one this file once made), so that applying this file again never
-- meets two conversations of one session.
CREATE INDEX IF NOT EXISTS ix_conversations_created_at ON conversations (created_at);
CREATE INDEX IF NOT EXISTS ix_conversations_expires_at ON conversations (expires_at);

CREATE TABLE IF NOT EXISTS messages (
    id               BIGSERIAL PRIMARY KEY,
    conversation_id  BIGINT      NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             TEXT        NOT NULL CHECK (role IN ('user', 'assistant')),
    content          TEXT        NOT NULL,
    page_context     TEXT,
    cached           BOOLEAN     NOT NULL DEFAULT false,
    "timestamp"      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_messages_conversation_id ON messages (conversation_id);
CREATE INDEX IF NOT EXISTS ix_messages_timestamp ON messages ("timestamp");
CREATE INDEX IF NOT EXISTS ix_messages_expires_at ON messages (expires_at);

CREATE TABLE IF NOT EXISTS citations (
    id          BIGSERIAL PRIMARY KEY,
    message_id  BIGINT           NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    source      TEXT             NOT NULL,
    chunk_id    TEXT             NOT NULL,
    score       DOUBLE PRECISION NOT NULL,
    snippet     TEXT             NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_citations_message_id ON citations (message_id);
