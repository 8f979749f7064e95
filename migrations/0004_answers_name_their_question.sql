-- An answer names the question it answers (issue #38): two follow-ups in
-- flight in one conversation store both questions before either answer, and
-- a conversation's turns are read back by pairing each answer with its own
-- question, not with the question just before it. Answers stored before this
-- column have none and pair as before. No foreign key: both messages are
-- deleted together (same conversation, same expiry), and a constraint would
-- cost every cleanup a lookup per message. Idempotent: safe to apply again.

ALTER TABLE messages ADD COLUMN IF NOT EXISTS reply_to BIGINT;
