-- Conversations named by an unguessable handle (issue #38): `conv_` and 32
-- hex digits from gen_random_uuid() (122 random bits, PostgreSQL 13+). A
-- response gives it only to the request that made or named the conversation,
-- and a follow-up must name it: the handle is the capability to continue a
-- conversation, and the row's id (a small integer) never leaves the service.
-- Existing conversations get a handle each (a volatile default is computed
-- per row). Idempotent: safe to apply again.

ALTER TABLE conversations
    ADD COLUMN IF NOT EXISTS handle TEXT NOT NULL
    DEFAULT ('conv_' || replace(gen_random_uuid()::text, '-', ''));
CREATE UNIQUE INDEX IF NOT EXISTS ix_conversations_handle ON conversations (handle);
