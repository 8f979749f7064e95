//! The chat query: request validation, cache keys, the grounded prompt,
//! citations and the response, as pure functions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::conversation::{self, ConversationChoice, Turn};
use crate::chat::upstream::{ChatMessage, Role};
use crate::http::api::{self, ApiError, ConversationHandle, ErrorCode, SessionId, UserId};

pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_QUESTION_CHARS: usize = 4000;
pub const MAX_PAGE_CONTEXT_CHARS: usize = 4000;
/// Bumped whenever the prompt changes, so cached answers from an older prompt are not served.
pub const PROMPT_VERSION: &str = "v1";

/// A validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    /// As asked, trimmed.
    pub question: String,
    pub session_id: SessionId,
    pub page_context: Option<String>,
    pub user_id: Option<UserId>,
    /// `"stream": true`: answer with server-sent events (see `stream`).
    pub stream: bool,
    /// `conversation_id` or `"new_conversation": true`.
    pub conversation: ConversationChoice,
}

fn string_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("`{field}` must be a string"))),
    }
}

const FIELDS: [&str; 7] = [
    "question",
    "session_id",
    "page_context",
    "user_id",
    "stream",
    "conversation_id",
    "new_conversation",
];

/// Refuses control characters other than whitespace (NUL among them: Postgres
/// text cannot hold it, and it has no business in a question).
fn refuse_control_characters(field: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        Err(ApiError::invalid(format!(
            "`{field}` contains control characters"
        )))
    } else {
        Ok(())
    }
}

/// Parses and validates a query body. Nothing is touched before this passes.
/// A body without `session_id` is refused, unless `new_session` supplies one
/// (`jwt` mode: the server creates sessions).
pub fn parse_query(
    content_type: Option<&str>,
    body: &[u8],
    new_session: Option<String>,
) -> Result<QueryRequest, ApiError> {
    api::require_json(content_type, "the query")?;
    api::require_size(body, MAX_BODY_BYTES)?;
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "the body is not valid UTF-8"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown field `{unknown}`; expected {}",
            FIELDS.join(", ")
        )));
    }
    let question = string_field(&object, "question")?
        .ok_or_else(|| ApiError::invalid("`question` is required"))?;
    // Lengths count the text as sent (as the OpenAPI `maxLength` does), before trimming.
    if question.chars().count() > MAX_QUESTION_CHARS {
        return Err(ApiError::invalid(format!(
            "`question` may be at most {MAX_QUESTION_CHARS} characters"
        )));
    }
    let question = question.trim().to_string();
    if question.is_empty() {
        return Err(ApiError::invalid("`question` must not be blank"));
    }
    refuse_control_characters("question", &question)?;
    let session_id = string_field(&object, "session_id")?
        .or(new_session)
        .ok_or_else(|| ApiError::invalid("`session_id` is required"))?;
    let session_id = SessionId::parse(&session_id)?;
    let page_context = string_field(&object, "page_context")?;
    if page_context
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PAGE_CONTEXT_CHARS)
    {
        return Err(ApiError::invalid(format!(
            "`page_context` may be at most {MAX_PAGE_CONTEXT_CHARS} characters"
        )));
    }
    let page_context = page_context
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    if let Some(page) = &page_context {
        refuse_control_characters("page_context", page)?;
    }
    let user_id = string_field(&object, "user_id")?
        .as_deref()
        .map(UserId::parse)
        .transpose()?;
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean")),
    };
    let conversation = parse_conversation(&object)?;
    Ok(QueryRequest {
        question,
        session_id,
        page_context,
        user_id,
        stream,
        conversation,
    })
}

fn parse_conversation(
    object: &serde_json::Map<String, Value>,
) -> Result<ConversationChoice, ApiError> {
    let new = match object.get("new_conversation") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`new_conversation` must be a boolean")),
    };
    let named = match object.get("conversation_id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(ConversationHandle::parse)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`conversation_id` must be a conversation id as a response named it (`conv_` and 32 hex digits)",
                    )
                })?,
        ),
    };
    match (named, new) {
        (Some(_), true) => Err(ApiError::invalid(
            "name a `conversation_id` to continue, or ask for a `new_conversation`, not both",
        )),
        (Some(handle), false) => Ok(ConversationChoice::Named(handle)),
        (None, true) => Ok(ConversationChoice::New),
        (None, false) => Ok(ConversationChoice::Current),
    }
}

/// A passage retrieved from the vector store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub source: String,
    pub chunk_id: String,
    pub score: f64,
    pub text: String,
}

/// What the answer cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub source: String,
    pub chunk_id: String,
    pub score: f64,
    pub snippet: String,
}

pub const SNIPPET_CHARS: usize = 200;

pub fn snippet(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= SNIPPET_CHARS {
        collapsed
    } else {
        let cut: String = collapsed.chars().take(SNIPPET_CHARS).collect();
        format!("{}…", cut.trim_end())
    }
}

/// Text as Postgres can store it: NUL removed (a passage stored before
/// ingestion refused NUL, or written by another tool, must not make the
/// history write fail).
pub fn storable(text: &str) -> String {
    text.replace('\0', "")
}

pub fn citations(passages: &[Passage]) -> Vec<Citation> {
    passages
        .iter()
        .map(|p| Citation {
            source: storable(&p.source),
            chunk_id: storable(&p.chunk_id),
            score: (p.score * 10_000.0).round() / 10_000.0,
            snippet: storable(&snippet(&p.text)),
        })
        .collect()
}

pub const SYSTEM_PROMPT: &str =
    "You are a helpful assistant that answers questions about a document \
collection. Answer only from the numbered context passages and the page context; cite the passages \
you use as [1], [2], ... If the passages do not contain the answer, say that you do not know.";

/// The chat messages for a question: the system prompt, the earlier turns
/// it is asked after (oldest first), and one user message carrying the page
/// context, the numbered passages and the question.
pub fn prompt_messages(
    request: &QueryRequest,
    turns: &[Turn],
    passages: &[Passage],
) -> Vec<ChatMessage> {
    let mut user = String::new();
    if let Some(page) = &request.page_context {
        user.push_str("Page context: ");
        user.push_str(page);
        user.push_str("\n\n");
    }
    user.push_str("Context passages:\n");
    if passages.is_empty() {
        user.push_str("(none found)\n");
    }
    for (i, p) in passages.iter().enumerate() {
        user.push_str(&format!("[{}] ({}) {}\n", i + 1, p.source, p.text));
    }
    user.push_str("\nQuestion: ");
    user.push_str(&request.question);
    let mut messages = vec![ChatMessage::new(Role::System, SYSTEM_PROMPT)];
    messages.extend(conversation::turn_messages(turns));
    messages.push(ChatMessage::new(Role::User, user));
    messages
}

/// Characters per token assumed for a worst case: English runs near four, and
/// a budget reservation should err towards too many. (What a kept answer of
/// `max_tokens` may hold is `max_tokens` times this, in bytes.)
pub const WORST_CASE_CHARS_PER_TOKEN: usize = 3;

/// Tokens a character of a script other than ASCII may take at most: Chinese
/// and Japanese, the densest scripts in use, run from one to two a character
/// in OpenAI's tokenizers (three-byte characters), where Latin text runs four
/// characters a token. Emoji may take more; whole passages of them are not
/// what anyone ingests.
const WORST_CASE_TOKENS_PER_WIDE_CHAR: u64 = 2;

/// The most tokens `text` can take in a prompt, for any script: ASCII at
/// [`WORST_CASE_CHARS_PER_TOKEN`], a two-byte character (Cyrillic, Greek,
/// Arabic, accented Latin) one token, anything wider two.
pub fn worst_case_text_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let wide: u64 = text
        .chars()
        .filter(|c| !c.is_ascii())
        .map(|c| match c.len_utf8() {
            2 => 1,
            _ => WORST_CASE_TOKENS_PER_WIDE_CHAR,
        })
        .sum();
    ascii.div_ceil(WORST_CASE_CHARS_PER_TOKEN) as u64 + wide
}

/// The most tokens a retrieved passage may add to the prompt: a chunk this
/// project ingests and its source (see `ingest`), each of their characters
/// at the widest script's cost since neither is known before the search,
/// and its number and brackets.
const PASSAGE_WORST_CASE_TOKENS: u64 = (crate::chat::ingest::CHUNK_CHARS
    + crate::chat::ingest::MAX_SOURCE_CHARS) as u64
    * WORST_CASE_TOKENS_PER_WIDE_CHAR
    + 4;

/// The most tokens answering `request` can cost before the answer is known:
/// the prompt [`prompt_messages`] builds, with `top_k` passages of the largest
/// size in any script, plus an answer of `max_tokens`. What a budget reserves.
pub fn worst_case_tokens(request: &QueryRequest, top_k: u32, max_tokens: u32) -> u64 {
    worst_case_text_tokens(SYSTEM_PROMPT)
        + request
            .page_context
            .as_deref()
            .map_or(0, worst_case_text_tokens)
        + worst_case_text_tokens(&request.question)
        + u64::from(top_k) * PASSAGE_WORST_CASE_TOKENS
        + 40
        + u64::from(max_tokens)
}

/// The response body of `POST /api/v1/chat/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub session_id: String,
    /// The conversation's handle, given only to the request that made the
    /// conversation (a session's first question, a new conversation) or
    /// named it: the capability to continue it.
    pub conversation_id: Option<ConversationHandle>,
    pub cached: bool,
    /// Served by the semantic cache: the earlier question whose answer this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_question: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_covers_the_largest_prompt_and_a_whole_answer() {
        let request = QueryRequest {
            question: "q".repeat(300),
            session_id: SessionId::parse("s").unwrap(),
            page_context: Some("p".repeat(600)),
            user_id: None,
            stream: false,
            conversation: ConversationChoice::Current,
        };
        let passages: Vec<Passage> = (0..5)
            .map(|i| Passage {
                text: "t".repeat(crate::chat::ingest::CHUNK_CHARS),
                source: format!("document-{i}.md"),
                chunk_id: format!("document-{i}.md#0"),
                score: 0.9,
            })
            .collect();
        let prompt_chars: usize = prompt_messages(&request, &[], &passages)
            .iter()
            .map(|message| message.content.len() + "assistant".len())
            .sum();
        let worst = worst_case_tokens(&request, 5, 1024);
        // At four characters a token the prompt takes prompt_chars / 4.
        assert!(worst >= (prompt_chars / 4) as u64 + 1024, "{worst}");
        assert!(worst > worst_case_tokens(&request, 1, 1024));
        assert_eq!(
            worst_case_tokens(&request, 5, 2048) - worst,
            1024,
            "the answer's cap is reserved whole"
        );
    }

    /// Tokens as OpenAI's byte-level tokenizers can take them at most for
    /// the scripts a budget must hold for: a token per ASCII character only
    /// for runs of symbols, never more than a token per byte. Real Japanese
    /// runs one to two a character; the reservation must cover two.
    #[test]
    fn the_worst_case_holds_for_japanese_passages_and_questions() {
        let japanese = "東京の天気はどうですか。";
        assert_eq!(
            worst_case_text_tokens(japanese),
            2 * japanese.chars().count() as u64
        );
        assert_eq!(
            worst_case_text_tokens("привет"),
            6,
            "two-byte letters: one each"
        );
        assert_eq!(worst_case_text_tokens("abcdef"), 2);
        let question = "日".repeat(crate::chat::query::MAX_QUESTION_CHARS);
        let request = QueryRequest {
            question: question.clone(),
            session_id: SessionId::parse("s").unwrap(),
            page_context: Some("頁".repeat(600)),
            user_id: None,
            stream: false,
            conversation: ConversationChoice::Current,
        };
        let passages: Vec<Passage> = (0..5)
            .map(|i| Passage {
                text: "語".repeat(crate::chat::ingest::CHUNK_CHARS),
                source: "資".repeat(crate::chat::ingest::MAX_SOURCE_CHARS),
                chunk_id: format!("document-{i}.md#0"),
                score: 0.9,
            })
            .collect();
        // Two tokens a CJK character, a token for every three ASCII bytes.
        let prompt_tokens: u64 = prompt_messages(&request, &[], &passages)
            .iter()
            .map(|message| worst_case_text_tokens(&message.content) + 4)
            .sum();
        let worst = worst_case_tokens(&request, 5, 1024);
        assert!(
            worst >= prompt_tokens + 1024,
            "{worst} < {prompt_tokens} + 1024"
        );
        // The Latin-text rule this replaces (three bytes a token, 1,200 bytes a
        // passage) fell short by about three times on this prompt.
        let latin_rule = (SYSTEM_PROMPT.len() + 600 * 3 + question.len() + 5 * 1200 + 100)
            .div_ceil(3) as u64
            + 1024;
        assert!(
            latin_rule < prompt_tokens,
            "{latin_rule} >= {prompt_tokens}"
        );
    }

    fn parse(body: &str) -> Result<QueryRequest, ApiError> {
        parse_query(Some("application/json"), body.as_bytes(), None)
    }

    #[test]
    fn a_good_request_parses_and_trims() {
        let q = parse(
            r#"{"question":"  What is AI? ","session_id":"sess1","page_context":"AI textbook"}"#,
        )
        .unwrap();
        assert_eq!(q.question, "What is AI?");
        assert_eq!(q.session_id, "sess1");
        assert_eq!(q.page_context.as_deref(), Some("AI textbook"));
        assert_eq!(q.user_id, None);
        let q = parse(r#"{"question":"q","session_id":"s","page_context":null}"#).unwrap();
        assert_eq!(q.page_context, None);
        // jwt mode: a missing session is the server's to create.
        let q = parse_query(
            Some("application/json"),
            br#"{"question":"q"}"#,
            Some("generated".into()),
        )
        .unwrap();
        assert_eq!(q.session_id, "generated");
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        for bad in [r"\u0000", r"\u0007", r"\u001b[31m", r"\u007f"] {
            for body in [
                format!(r#"{{"question":"a{bad}b","session_id":"s"}}"#),
                format!(r#"{{"question":"q","session_id":"s","page_context":"p{bad}"}}"#),
                format!(r#"{{"question":"q","session_id":"s{bad}"}}"#),
                format!(r#"{{"question":"q","session_id":"s","user_id":"u{bad}"}}"#),
            ] {
                let e = parse(&body).unwrap_err();
                assert_eq!(e.status(), 400, "{body}");
            }
        }
        // Ordinary whitespace is text.
        assert!(parse(
            r#"{"question":"line one\nline two\ttab","session_id":"s","page_context":"a\nb"}"#
        )
        .is_ok());
    }

    #[test]
    fn bad_requests_are_rejected_with_the_right_status() {
        let cases: &[(Option<&str>, &str, u16)] = &[
            (
                Some("text/plain"),
                r#"{"question":"q","session_id":"s"}"#,
                415,
            ),
            (None, r#"{"question":"q","session_id":"s"}"#, 415),
            (Some("application/json"), "{", 400),
            (Some("application/json"), "[]", 400),
            (Some("application/json"), r#"{"session_id":"s"}"#, 400),
            (
                Some("application/json"),
                r#"{"question":"   ","session_id":"s"}"#,
                400,
            ),
            (
                Some("application/json"),
                r#"{"question":5,"session_id":"s"}"#,
                400,
            ),
            (Some("application/json"), r#"{"question":"q"}"#, 400),
            (
                Some("application/json"),
                r#"{"question":"q","session_id":"a b"}"#,
                400,
            ),
            (
                Some("application/json"),
                r#"{"question":"q","session_id":"s","extra":1}"#,
                400,
            ),
        ];
        for (ct, body, status) in cases {
            let r = parse_query(*ct, body.as_bytes(), None).unwrap_err();
            assert_eq!(r.status(), *status, "{body}: {r:?}");
        }
        let big = format!(
            r#"{{"question":"{}","session_id":"s"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().status(), 413);
        // Lengths count the text as sent, whitespace and all (as `maxLength` does).
        let padded = |field: &str, chars: usize| {
            let text = format!(" {} ", "x".repeat(chars - 2));
            match field {
                "question" => format!(r#"{{"question":"{text}","session_id":"s"}}"#),
                _ => format!(r#"{{"question":"q","session_id":"s","{field}":"{text}"}}"#),
            }
        };
        for (field, limit) in [
            ("question", MAX_QUESTION_CHARS),
            ("page_context", MAX_PAGE_CONTEXT_CHARS),
        ] {
            assert!(parse(&padded(field, limit)).is_ok(), "{field}");
            assert_eq!(parse(&padded(field, limit + 1)).unwrap_err().status(), 400);
        }
        assert_eq!(
            parse_query(Some("application/json"), &[0xff, 0xfe], None)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn prompt_numbers_passages_and_carries_page_context() {
        let q =
            parse(r#"{"question":"Why?","session_id":"s","page_context":"Chapter 2"}"#).unwrap();
        let passages = vec![Passage {
            source: "book.pdf".into(),
            chunk_id: "c1".into(),
            score: 0.9,
            text: "Because.".into(),
        }];
        let messages = prompt_messages(&q, &[], &passages);
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].role, Role::User);
        assert!(messages[1].content.contains("Page context: Chapter 2"));
        assert!(messages[1].content.contains("[1] (book.pdf) Because."));
        assert!(messages[1].content.ends_with("Question: Why?"));
    }

    #[test]
    fn a_follow_up_prompt_carries_the_earlier_turns_before_the_question() {
        let q = parse(r#"{"question":"Who introduced it?","session_id":"s"}"#).unwrap();
        let turns = [Turn {
            question: "What is a transformer?".into(),
            answer: "A neural network [1].".into(),
            expires_at: 0,
            question_id: None,
        }];
        let messages = prompt_messages(&q, &turns, &[]);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(messages[1].content, "What is a transformer?");
        assert_eq!(messages[2].content, "A neural network [1].");
        assert!(messages[3]
            .content
            .ends_with("Question: Who introduced it?"));
    }

    #[test]
    fn a_request_names_its_conversation_or_asks_for_a_new_one() {
        let choice = |extra: &str| {
            parse(&format!(r#"{{"question":"q","session_id":"s"{extra}}}"#)).map(|q| q.conversation)
        };
        assert_eq!(choice(""), Ok(ConversationChoice::Current));
        assert_eq!(
            choice(r#","conversation_id":null"#),
            Ok(ConversationChoice::Current)
        );
        let handle = "conv_0123456789abcdef0123456789abcdef";
        assert_eq!(
            choice(&format!(r#","conversation_id":"{handle}""#)),
            Ok(ConversationChoice::Named(
                ConversationHandle::parse(handle).unwrap()
            ))
        );
        assert_eq!(
            choice(r#","new_conversation":true"#),
            Ok(ConversationChoice::New)
        );
        assert_eq!(
            choice(r#","new_conversation":false"#),
            Ok(ConversationChoice::Current)
        );
        for bad in [
            r#","conversation_id":42"#,
            r#","conversation_id":42.0"#,
            r#","conversation_id":0"#,
            r#","conversation_id":-3"#,
            r#","conversation_id":1.5"#,
            r#","conversation_id":9007199254740992.0"#,
            r#","conversation_id":"42""#,
            r#","conversation_id":9007199254740992"#,
            r#","new_conversation":"yes""#,
            r#","conversation_id":"conv_0123456789ABCDEF0123456789abcdef""#,
            r#","conversation_id":"conv_0123456789abcdef0123456789abcdef ""#,
            r#","conversation_id":["conv_0123456789abcdef0123456789abcdef"]"#,
            r#","conversation_id":"conv_0123456789abcdef0123456789abcdef","new_conversation":true"#,
        ] {
            let e = choice(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }

    #[test]
    fn citations_never_carry_nul() {
        let passage = Passage {
            source: "a\0.pdf".into(),
            chunk_id: "c\u{0}1".into(),
            score: 0.5,
            text: "x\0y".into(),
        };
        let c = &citations(&[passage])[0];
        assert_eq!(
            (c.source.as_str(), c.chunk_id.as_str(), c.snippet.as_str()),
            ("a.pdf", "c1", "xy")
        );
    }

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet("a  b\nc"), "a b c");
        let long = snippet(&"word ".repeat(100));
        assert!(long.chars().count() <= SNIPPET_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
