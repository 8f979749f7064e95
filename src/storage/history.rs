//! Postgres statements for the conversation history, and paging.
//!
//! An exchange (question and answer, with citations) is stored in **one**
//! statement: data-modifying CTEs upsert the session and conversation, insert
//! both messages and all citations. One statement is one transaction and one
//! round trip.

use serde::{Deserialize, Serialize};

pub use crate::http::api::ConversationHandle;
use crate::storage::sql::OneRowQuery;

/// Messages per page of `GET /api/v1/chat/history/{session_id}` (seed 002).
pub const PAGE_SIZE: i64 = 50;

/// Upserts the session (its owner never changes; with the `enforce`
/// parameter set another user's session is not touched, nor one stored
/// without an owner, in `none` mode: nobody may adopt it) and picks its
/// conversation: the `s` and `c` CTEs, from `$1` session id, `$2` user id,
/// `$3` retention days, and the `conversation` (the one asked in, nullable)
/// and `new` (start one) parameters. Without `new`, `c` is the named
/// conversation if it is the session's; else (the named one is gone, or none
/// was named) the one asked in last (by its last message, or its creation:
/// as Redis's current conversation is the one asked in last); else a new one. With `strict`, a named
/// conversation that is not the session's touches nothing (`s` and `c`
/// are empty): a request naming someone else's conversation changes nothing.
///
/// The session and conversation expire a day after their messages would:
/// they are refreshed by the first exchange of a day (UTC) only, and the
/// day's later exchanges, appended with [`APPEND_EXCHANGE_SQL`], must not
/// outlive the rows their deletion cascades from. Messages still go after
/// `retention_days` (cleanup deletes them by their own `expires_at`); an
/// emptied session row may stay one day longer.
///
/// Two first questions of one new session at once may start two
/// conversations (each statement's snapshot sees none): the session then
/// has two, and Redis remembers one of them.
macro_rules! session_and_conversation_ctes {
    ($enforce:literal, $conversation:literal, $new:literal, $strict:literal) => {
        concat!(
            "\
WITH s AS (
    INSERT INTO user_sessions (session_id, user_id, expires_at)
    SELECT $1::text, $2::text, now() + make_interval(days => $3::int + 1)
    WHERE NOT ",
            $strict,
            "::bool OR ",
            $conversation,
            "::text IS NULL OR EXISTS (
        SELECT 1 FROM conversations oc JOIN user_sessions os ON os.id = oc.user_session_id
        WHERE oc.handle = ",
            $conversation,
            "::text AND os.session_id = $1::text)
    ON CONFLICT (session_id) DO UPDATE
        SET last_seen_at = now(),
            expires_at = EXCLUDED.expires_at,
            user_id = COALESCE(user_sessions.user_id, EXCLUDED.user_id)
        WHERE NOT ",
            $enforce,
            "::bool
            OR user_sessions.user_id = EXCLUDED.user_id
    RETURNING id
), found AS (
    SELECT c.id, c.handle FROM conversations c, s
    WHERE c.user_session_id = s.id AND NOT ",
            $new,
            "::bool
    ORDER BY (c.handle = ",
            $conversation,
            "::text) IS TRUE DESC,
        GREATEST(c.created_at, (SELECT max(m.\"timestamp\") FROM messages m WHERE m.conversation_id = c.id)) DESC,
        c.id DESC
    LIMIT 1
), refreshed AS (
    UPDATE conversations SET expires_at = now() + make_interval(days => $3::int + 1)
    WHERE id IN (SELECT id FROM found)
    RETURNING id, handle
), created AS (
    INSERT INTO conversations (user_session_id, expires_at)
    SELECT id, now() + make_interval(days => $3::int + 1) FROM s
    WHERE NOT EXISTS (SELECT 1 FROM found)
    RETURNING id, handle
), c AS (
    SELECT id, handle FROM refreshed UNION ALL SELECT id, handle FROM created
)"
        )
    };
}

/// The exchange's rows, after a CTE `$conversation` that yields its
/// conversation's id: the question (`q`, stamped `$asked_at`), the answer
/// (`a`) and the answer's citations (`cit`), each expiring after `$days`.
/// Both exchange statements end with these, with their own parameter numbers.
macro_rules! exchange_ctes {
    ($conversation:literal, $days:literal, $question:literal, $page:literal, $cached:literal,
     $answer:literal, $citations:literal, $asked_at:literal) => {
        concat!(
            ", q AS (
    INSERT INTO messages (conversation_id, role, content, page_context, cached, expires_at, \"timestamp\")
    SELECT id, 'user', ", $question, ", ", $page, ", ", $cached, ", now() + make_interval(days => ", $days, "::int), to_timestamp(", $asked_at, "::float8)
    FROM ", $conversation, "
    RETURNING id
), a AS (
    INSERT INTO messages (conversation_id, role, content, page_context, cached, expires_at, reply_to)
    SELECT ", $conversation, ".id, 'assistant', ", $answer, ", ", $page, ", ", $cached, ", now() + make_interval(days => ", $days, "::int), q.id
    FROM ", $conversation, ", q
    RETURNING id
), cit AS (
    INSERT INTO citations (message_id, source, chunk_id, score, snippet)
    SELECT a.id, x.source, x.chunk_id, x.score, x.snippet
    FROM a, jsonb_to_recordset(", $citations, "::jsonb) AS x(source text, chunk_id text, score float8, snippet text)
    RETURNING id
)"
        )
    };
}

/// `$1` session id, `$2` user id (nullable), `$3` retention days, `$4`
/// question, `$5` page context (nullable), `$6` cached, `$7` answer, `$8`
/// citations as a JSON array of `{source, chunk_id, score, snippet}`, `$9`
/// whether the session's owner is enforced (`jwt` mode), `$10` when the
/// question was asked (Unix seconds, fractional), `$11` the handle of the
/// conversation asked in (nullable: the one the session asked in last), `$12`
/// whether to start a new one (the question asked for one and it could not
/// be made before). Returns the conversation's id and handle, the number of
/// citations stored and the question's message id (its answer names it in
/// `reply_to`).
///
/// The question's message is stamped with when it was asked, the answer's
/// with when it was stored (once the client had it): a history lists
/// exchanges in the order they were asked, whichever write committed first
/// (a quick hit's before a slow miss asked earlier in the same session).
///
/// A session's owner never changes once set (a later request naming another
/// user does not take it over). With `$9`, an exchange for a session owned by
/// someone else stores nothing and answers a NULL conversation id.
///
/// One row always (issue #10): the final `SELECT` has no `FROM`.
pub const STORE_EXCHANGE_SQL: OneRowQuery = OneRowQuery::new(concat!(
    session_and_conversation_ctes!("$9", "$11", "$12", "false"),
    exchange_ctes!("c", "$3", "$4", "$5", "$6", "$7", "$8", "$10"),
    "
SELECT (SELECT id FROM c) AS conversation_id, (SELECT handle FROM c) AS handle,
    (SELECT count(*) FROM cit) AS citations, (SELECT id FROM q) AS question_id"
));

/// A conversation's last `$limit` messages not yet expired, oldest first,
/// as a jsonb array of `[role, content, expires_at as Unix seconds, id,
/// reply_to]` (`chatbot_core::chat::conversation::StoredMessage`; the
/// `messages` column), after a CTE `found` that yields its id.
macro_rules! last_messages {
    ($limit:literal) => {
        concat!(
            "
    COALESCE((
        SELECT jsonb_agg(jsonb_build_array(t.role, t.content, extract(epoch FROM t.expires_at),
                                           t.id, t.reply_to)
                         ORDER BY t.\"timestamp\", t.id)
        FROM (
            SELECT m.role, m.content, m.expires_at, m.\"timestamp\", m.id, m.reply_to FROM messages m
            WHERE m.conversation_id = (SELECT id FROM found) AND m.expires_at > now()
            ORDER BY m.\"timestamp\" DESC, m.id DESC
            LIMIT ",
            $limit,
            "
        ) t), '[]'::jsonb) AS messages"
        )
    };
}

/// The conversation a question is asked in, before the answer is known
/// (the response names it, and the exchange is written after the response),
/// with its last messages (a follow-up is answered with them when Redis
/// lost them): found, or created with its session.
/// `$1` session id, `$2` user id (nullable), `$3` retention days, `$4`
/// whether the owner is enforced, `$5` the handle of the conversation named
/// (nullable), `$6` whether to start a new one, `$7` how many of its last
/// messages to read. Returns the conversation's id and handle (NULL when the
/// session belongs to another user (`$4`) or the named conversation is not
/// the session's: then nothing was written), whether this statement made
/// it, and its last messages not yet expired, oldest
/// first, as a jsonb array of `[role, content, expires_at as Unix seconds]`.
/// One row always.
pub const ENSURE_CONVERSATION_SQL: OneRowQuery = OneRowQuery::new(concat!(
    session_and_conversation_ctes!("$4", "$5", "$6", "true"),
    "
SELECT (SELECT id FROM c) AS conversation_id, (SELECT handle FROM c) AS handle,
    EXISTS (SELECT 1 FROM created) AS created,
",
    last_messages!("$7")
));

/// The conversation a follow-up names, read without writing anything (a
/// follow-up's budget is checked after its turns are known, and a refused
/// one must change nothing): `$1` session id, `$2` the handle named, `$3`
/// whether the owner is enforced, `$4` the user (nullable), `$5` how many
/// of its last messages to read. The columns of [`ENSURE_CONVERSATION_SQL`]
/// (`created` always false): NULLs when the conversation is not the
/// session's, or (`$3`) the session is not the user's. The exchange's own
/// statement refreshes the rows later. One row always.
pub const NAMED_CONVERSATION_SQL: OneRowQuery = OneRowQuery::new(concat!(
    "\
WITH found AS (
    SELECT c.id, c.handle
    FROM conversations c JOIN user_sessions s ON s.id = c.user_session_id
    WHERE c.handle = $2::text AND s.session_id = $1::text
      AND (NOT $3::bool OR s.user_id = $4::text)
)
SELECT (SELECT id FROM found) AS conversation_id, (SELECT handle FROM found) AS handle,
    false AS created,",
    last_messages!("$5")
));

/// `$1` conversation id, `$2` retention days, `$3` question, `$4` page
/// context (nullable), `$5` cached, `$6` answer, `$7` citations as in
/// [`STORE_EXCHANGE_SQL`], `$8` session id, `$9` user id (nullable), `$10`
/// whether the session's owner is enforced, `$11` when the question was asked
/// (as in [`STORE_EXCHANGE_SQL`]). An exchange in a conversation
/// whose session was refreshed today (see [`RememberedConversation`]): the
/// two messages and the citations, without touching the session or the
/// conversation, and without planning their upserts.
///
/// Only into a conversation of the request's own session (and, with `$10`,
/// of a session its user may write to): after a Postgres restore or rebuild,
/// ids repeat, and the id Redis remembers may name another session's
/// conversation. Answers how many exchanges were appended: 0 when the
/// conversation is not the session's (or is gone), and the exchange is then
/// stored with [`STORE_EXCHANGE_SQL`], which finds or recreates the
/// session's own. A conversation deleted during the statement fails its
/// foreign key ([`FOREIGN_KEY_VIOLATION`]), with the same remedy. One row always.
pub const APPEND_EXCHANGE_SQL: OneRowQuery = OneRowQuery::new(concat!(
    "\
WITH own AS (
    SELECT c.id
    FROM conversations c JOIN user_sessions s ON s.id = c.user_session_id
    WHERE c.id = $1 AND s.session_id = $8
      AND (NOT $10::bool OR s.user_id IS NULL OR s.user_id = $9)
)",
    exchange_ctes!("own", "$2", "$3", "$4", "$5", "$6", "$7", "$11"),
    "
SELECT (SELECT count(*) FROM a) AS appended, (SELECT id FROM q) AS question_id"
));

/// Postgres's SQLSTATE for a foreign key violation.
pub const FOREIGN_KEY_VIOLATION: &str = "23503";

/// What Redis remembers of a session's conversation
/// ([`crate::redis::keys::conversation`]): its row's id, the day (UTC, days
/// since the epoch) its session and conversation rows were last refreshed,
/// and its handle. Written `<id>:<day>:<handle>`; a value written before
/// handles were (`<id>` or `<id>:<day>`) is not understood, and the
/// conversation is read from Postgres again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberedConversation {
    pub id: i64,
    pub handle: ConversationHandle,
    pub refreshed_day: u64,
}

impl RememberedConversation {
    /// A conversation whose session and conversation rows were refreshed on `day`.
    pub fn refreshed_on(id: i64, handle: ConversationHandle, day: u64) -> Self {
        Self {
            id,
            handle,
            refreshed_day: day,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let parsed = Self {
            id: parts.next()?.parse().ok()?,
            refreshed_day: parts.next()?.parse().ok()?,
            handle: ConversationHandle::parse(parts.next()?)?,
        };
        parts.next().is_none().then_some(parsed)
    }

    pub fn value(&self) -> String {
        format!("{}:{}:{}", self.id, self.refreshed_day, self.handle)
    }

    /// Whether an exchange on `today` may be appended without refreshing
    /// the session and conversation rows ([`APPEND_EXCHANGE_SQL`]).
    pub fn appendable_on(&self, today: u64) -> bool {
        self.refreshed_day == today
    }
}

/// The UTC day of a Unix time, as [`RememberedConversation`] counts days.
pub fn day_of(unix_seconds: u64) -> u64 {
    unix_seconds / 86_400
}

/// `$1` session id, `$2` offset, `$3` page size, `$4` a conversation
/// (nullable: all of them). One page of a session's messages (or of one of
/// its conversations), oldest first, with their citations, and their total,
/// in one round trip: columns `total` (int8), `messages` (a jsonb array of
/// [`HistoryMessage`]s, decoded with serde), `owner` (the session's user,
/// NULL for an unknown session or one without a user), `conversations` (a
/// jsonb array of the session's [`ConversationSummary`]s, the
/// [`CONVERSATIONS_LISTED`] latest, newest first) and `conversation_known`
/// (whether `$4` is one of the session's conversations).
///
/// One row always (issue #10), for a session that never existed and for a
/// page past the end too: the outer `SELECT` has no `FROM`, `count(*)` has no
/// `GROUP BY`, and an empty page aggregates to `'[]'`.
pub const HISTORY_PAGE_SQL: OneRowQuery = OneRowQuery::new(
    "\
WITH session_conversations AS (
    SELECT c.id, c.handle, c.created_at
    FROM conversations c
    JOIN user_sessions s ON s.id = c.user_session_id
    WHERE s.session_id = $1
), session_messages AS (
    SELECT m.id, c.handle AS conversation_id, m.role, m.content, m.page_context, m.cached, m.\"timestamp\"
    FROM messages m
    JOIN session_conversations c ON c.id = m.conversation_id
    WHERE $4::text IS NULL OR c.handle = $4::text
), page AS (
    SELECT * FROM session_messages
    ORDER BY \"timestamp\", id
    LIMIT $3 OFFSET $2
)
SELECT
    (SELECT count(*) FROM session_messages) AS total,
    COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
            'id', p.id,
            'conversation_id', p.conversation_id,
            'role', p.role,
            'content', p.content,
            'page_context', p.page_context,
            'cached', p.cached,
            'timestamp', to_char(p.\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
            'citations', COALESCE((
                SELECT jsonb_agg(jsonb_build_object('source', ci.source, 'chunk_id', ci.chunk_id,
                                                    'score', ci.score, 'snippet', ci.snippet) ORDER BY ci.id)
                FROM citations ci WHERE ci.message_id = p.id), '[]'::jsonb)
        ) ORDER BY p.\"timestamp\", p.id)
        FROM page p), '[]'::jsonb) AS messages,
    (SELECT user_id FROM user_sessions WHERE session_id = $1) AS owner,
    COALESCE((
        SELECT jsonb_agg(jsonb_build_object(
            'conversation_id', l.handle,
            'created_at', to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
            'messages', l.messages,
            'last_message_at', to_char(l.last_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
        ) ORDER BY l.id DESC)
        FROM (
            SELECT sc.id, sc.handle, sc.created_at, count(m.id) AS messages, max(m.\"timestamp\") AS last_at
            FROM session_conversations sc LEFT JOIN messages m ON m.conversation_id = sc.id
            GROUP BY sc.id, sc.handle, sc.created_at
            ORDER BY sc.id DESC
            LIMIT 100
        ) l), '[]'::jsonb) AS conversations,
    ($4::text IS NULL OR EXISTS (SELECT 1 FROM session_conversations WHERE handle = $4::text)) AS conversation_known",
);

/// How many of a session's conversations a history page lists (its latest).
pub const CONVERSATIONS_LISTED: usize = 100;

/// `$1` session id: its owner (NULL for an unknown session or one stored
/// without an owner) and whether it is known. One row always: scalar
/// subqueries with no `FROM` around them.
pub const SESSION_OWNER_SQL: OneRowQuery = OneRowQuery::new(
    "SELECT (SELECT user_id FROM user_sessions WHERE session_id = $1) AS owner, \
     EXISTS (SELECT 1 FROM user_sessions WHERE session_id = $1) AS known",
);

/// Whose a stored session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOwner {
    /// No such session: whoever asks first may own it.
    Unknown,
    /// Stored without an owner (in `none` mode): in `jwt` mode nobody may
    /// adopt it, or its anonymous history would become someone's.
    Nobody,
    User(String),
}

impl SessionOwner {
    /// From [`SESSION_OWNER_SQL`]'s row.
    pub fn from_row(owner: Option<String>, known: bool) -> Self {
        match (owner, known) {
            (Some(user), _) => Self::User(user),
            (None, true) => Self::Nobody,
            (None, false) => Self::Unknown,
        }
    }

    /// Whether `user` may ask in the session (and so own it, if unknown).
    pub fn admits(&self, user: &str) -> bool {
        match self {
            Self::Unknown => true,
            Self::Nobody => false,
            Self::User(owner) => owner == user,
        }
    }
}

/// The offset of a page's first message.
pub fn offset(page: i64) -> i64 {
    crate::http::api::page_start(page, PAGE_SIZE)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub id: i64,
    pub conversation_id: ConversationHandle,
    pub role: String,
    pub content: String,
    pub page_context: Option<String>,
    pub cached: bool,
    pub timestamp: String,
    pub citations: serde_json::Value,
}

/// One of a session's conversations, as a history lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conversation_id: ConversationHandle,
    pub created_at: String,
    pub messages: i64,
    /// `None` for a conversation with no message yet.
    pub last_message_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub session_id: String,
    /// The conversation paged, or `None` for all of the session's.
    pub conversation_id: Option<ConversationHandle>,
    pub page: i64,
    pub page_size: i64,
    pub total: i64,
    pub total_pages: i64,
    pub messages: Vec<HistoryMessage>,
    /// The session's latest conversations, newest first.
    pub conversations: Vec<ConversationSummary>,
}

impl HistoryPage {
    pub fn new(session_id: &str, page: i64, total: i64, messages: Vec<HistoryMessage>) -> Self {
        Self {
            session_id: session_id.to_string(),
            conversation_id: None,
            page,
            page_size: PAGE_SIZE,
            total,
            total_pages: (total + PAGE_SIZE - 1) / PAGE_SIZE,
            messages,
            conversations: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ownerless_session_admits_nobody_and_an_unknown_one_anybody() {
        assert_eq!(SessionOwner::from_row(None, false), SessionOwner::Unknown);
        assert_eq!(SessionOwner::from_row(None, true), SessionOwner::Nobody);
        let alice = SessionOwner::from_row(Some("alice".into()), true);
        assert!(alice.admits("alice"));
        assert!(!alice.admits("bob"));
        assert!(!SessionOwner::Nobody.admits("alice"));
        assert!(SessionOwner::Unknown.admits("alice"));
    }

    #[test]
    fn a_history_lists_as_many_conversations_as_it_says() {
        let sql = HISTORY_PAGE_SQL.sql();
        assert!(
            sql.contains(&format!("LIMIT {CONVERSATIONS_LISTED}\n")),
            "{sql}"
        );
        // Both conversation statements pick the session's conversation the same way.
        for statement in [STORE_EXCHANGE_SQL, ENSURE_CONVERSATION_SQL] {
            assert!(statement.sql().contains("ORDER BY (c.handle = "));
        }
        assert!(ENSURE_CONVERSATION_SQL
            .sql()
            .contains("WHERE NOT true::bool OR $5::text"));
        assert!(STORE_EXCHANGE_SQL
            .sql()
            .contains("WHERE NOT false::bool OR $11::text"));
    }

    #[test]
    fn pages_start_fifty_apart() {
        assert_eq!(offset(1), 0);
        assert_eq!(offset(3), 100);
    }

    #[test]
    fn a_page_decodes_from_its_jsonb_aggregate() {
        let decode = serde_json::from_slice::<Vec<HistoryMessage>>;
        assert_eq!(decode(b"[]").unwrap(), vec![]);
        let messages = decode(
            br#"[{"id": 7, "conversation_id": "conv_0123456789abcdef0123456789abcdef", "role": "user", "content": "Why?", "page_context": null,
                  "cached": false, "timestamp": "2026-11-23T10:00:00.000000Z", "citations": []},
                 {"id": 8, "conversation_id": "conv_0123456789abcdef0123456789abcdef", "role": "assistant", "content": "Because.", "page_context": "ch 1",
                  "cached": true, "timestamp": "2026-11-23T10:00:00.000001Z",
                  "citations": [{"source": "a.pdf", "chunk_id": "c", "score": 0.5, "snippet": "s"}]}]"#,
        )
        .unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].page_context, None);
        assert_eq!(messages[1].page_context.as_deref(), Some("ch 1"));
        assert!(messages[1].cached);
        assert_eq!(messages[1].citations[0]["source"], "a.pdf");
        assert!(decode(br#"[{"id": "x"}]"#).is_err());
        assert!(decode(br#"[{"id": 7, "conversation_id": 3, "role": "user", "content": "Why?", "page_context": null,
                  "cached": false, "timestamp": "2026-11-23T10:00:00.000000Z", "citations": []}]"#)
        .is_err());
    }

    const HANDLE: &str = "conv_0123456789abcdef0123456789abcdef";

    #[test]
    fn a_remembered_conversation_keeps_its_refresh_day_and_handle() {
        let value = format!("41:20421:{HANDLE}");
        let parsed = RememberedConversation::parse(&value).unwrap();
        assert_eq!(
            parsed,
            RememberedConversation {
                id: 41,
                handle: ConversationHandle::parse(HANDLE).unwrap(),
                refreshed_day: 20421
            }
        );
        assert_eq!(parsed.value(), value);
        assert!(parsed.appendable_on(20421));
        assert!(!parsed.appendable_on(20422));
        // Written before handles were: not understood (read from Postgres again).
        for bad in [
            "",
            "x",
            "41",
            "41:20421",
            "41:",
            "41:x",
            ":1",
            "41:20421:conv_1",
            &format!("41:x:{HANDLE}"),
            &format!("41:20421:{HANDLE}:1"),
        ] {
            assert_eq!(RememberedConversation::parse(bad), None, "{bad}");
        }
        assert_eq!(day_of(86_399), 0);
        assert_eq!(day_of(86_400), 1);
    }

    #[test]
    fn total_pages_round_up() {
        assert_eq!(HistoryPage::new("s", 1, 0, vec![]).total_pages, 0);
        assert_eq!(HistoryPage::new("s", 1, 50, vec![]).total_pages, 1);
        assert_eq!(HistoryPage::new("s", 1, 51, vec![]).total_pages, 2);
    }
}
