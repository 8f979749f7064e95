//! The chat query: request validation, cache keys, the grounded prompt,
//! citations and the response, as pure functions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{self, validate_id, ApiError, ErrorCode};
use crate::digest::md5_of_parts;
use crate::keys::{self, normalise};
use crate::metrics::CacheStatus;

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
    pub session_id: String,
    pub page_context: Option<String>,
    pub user_id: Option<String>,
    /// `"stream": true`: answer with server-sent events (see `stream`).
    pub stream: bool,
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

const FIELDS: [&str; 5] = [
    "question",
    "session_id",
    "page_context",
    "user_id",
    "stream",
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
        .map_err(|_| ApiError::new(400, ErrorCode::InvalidJson, "the body is not valid UTF-8"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            400,
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
    validate_id("session_id", &session_id)?;
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
    let user_id = string_field(&object, "user_id")?;
    if let Some(user) = &user_id {
        validate_id("user_id", user)?;
    }
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean")),
    };
    Ok(QueryRequest {
        question,
        session_id,
        page_context,
        user_id,
        stream,
    })
}

/// Whether cached answers are per session (the seed's behaviour) or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    Session,
    Global,
}

impl CacheScope {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "session" => Some(Self::Session),
            "global" => Some(Self::Global),
            _ => None,
        }
    }
}

/// Everything besides the question that shapes an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerShape<'a> {
    pub chat_model: &'a str,
    pub embedding_model: &'a str,
    pub collection: &'a str,
    pub top_k: u32,
    pub scope: CacheScope,
}

/// The query-cache key for a request.
pub fn query_cache_key(request: &QueryRequest, shape: &AnswerShape) -> String {
    let top_k = shape.top_k.to_string();
    let session = match shape.scope {
        CacheScope::Session => request.session_id.as_str(),
        CacheScope::Global => "",
    };
    let question = normalise(&request.question);
    let page = request
        .page_context
        .as_deref()
        .map(normalise)
        .unwrap_or_default();
    let digest = md5_of_parts(&[
        PROMPT_VERSION,
        shape.chat_model,
        shape.embedding_model,
        shape.collection,
        &top_k,
        &question,
        &page,
        session,
    ]);
    keys::query_cache(&digest)
}

/// A cached answer is a hash: `v`, the answer, and `g`, the generation of
/// the collection it was computed from; an answer of an older generation
/// (a document was ingested since) is not served.
///
/// Looks an answer up, counts the question (for analytics and warm-up, when
/// `ARGV[1]` is not empty) and reads the session's conversation id, in one
/// round trip. KEYS: [`lookup_keys`]. ARGV: the question entry or "", the
/// ranking's half-life, its cap. Answers `{answer or false, conversation id or false}`.
pub const LOOKUP_SCRIPT: &str = concat!(
    "if ARGV[1] ~= '' then\n",
    crate::ranking_bump_lua!("2", "3", "1", "2", "3"),
    "end\n",
    r#"
local generation = redis.call('GET', KEYS[5]) or '0'
local entry = redis.call('HMGET', KEYS[1], 'g', 'v')
local answer = false
if entry[2] and entry[1] == generation then
  answer = entry[2]
end
return {answer, redis.call('GET', KEYS[4])}
"#
);

/// The keys of [`LOOKUP_SCRIPT`]: the answer, the top questions and their
/// base, the session's conversation, the collection's generation.
pub fn lookup_keys(cache_key: &str, session_id: &str, collection: &str) -> [String; 5] {
    [
        cache_key.to_string(),
        keys::TOP_QUESTIONS.to_string(),
        crate::ranking::base_key(keys::TOP_QUESTIONS),
        keys::conversation(session_id),
        keys::generation(collection),
    ]
}

/// A top-questions member: what warm-up needs to ask a question again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryCacheEntry {
    pub q: String,
    pub p: Option<String>,
}

/// Largest top-questions member: with the ranking's cap of
/// `ranking::QUESTIONS_CAP` members, the ranking holds at most ~10 MB.
pub const MAX_RANKED_ENTRY_BYTES: usize = 1024;

/// The question's member in the top-questions ranking, which warm-up asks
/// again as it is; empty (not ranked) when it would exceed
/// [`MAX_RANKED_ENTRY_BYTES`], as a question with a long page context does.
pub fn question_entry(request: &QueryRequest) -> String {
    let entry = QueryCacheEntry {
        q: normalise(&request.question),
        p: request.page_context.clone(),
    };
    let member = serde_json::to_string(&entry).expect("entries serialise");
    if member.len() > MAX_RANKED_ENTRY_BYTES {
        String::new()
    } else {
        member
    }
}

/// Stores the answer with its generation, indexes it by session and page
/// context (for scoped invalidation) and releases the stampede lock, in one
/// round trip. KEYS: [`store_keys`]. ARGV: value, ttl seconds, lock token,
/// generation, "1" when the page index is used, [`INDEX_PRUNE_SAMPLE`].
///
/// An index outlives the answers it points at while its session or page
/// keeps being asked about, so each store also drops up to
/// [`INDEX_PRUNE_SAMPLE`] members whose answers have expired: an index holds
/// about as many members as there are live answers, not every answer ever
/// stored. (The members are answer keys of this script's own `{q}` family.)
pub const STORE_ANSWER_SCRIPT: &str = r#"
local function add_and_prune(index)
  redis.call('SADD', index, KEYS[1])
  redis.call('EXPIRE', index, ARGV[2])
  for _, member in ipairs(redis.call('SRANDMEMBER', index, tonumber(ARGV[6]))) do
    if redis.call('EXISTS', member) == 0 then
      redis.call('SREM', index, member)
    end
  end
end
redis.call('HSET', KEYS[1], 'g', ARGV[4], 'v', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
add_and_prune(KEYS[2])
if ARGV[5] == '1' then
  add_and_prune(KEYS[3])
end
if redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('DEL', KEYS[4])
end
return 1
"#;

/// How long a request waiting on an identical question's answer sleeps
/// before its `attempt`-th look (from 0): 25 ms, doubling to at most 250 ms,
/// so a crowd waiting on one slow answer polls Redis a few times a second
/// each, not forty.
pub fn wait_step(attempt: u32) -> std::time::Duration {
    let ms = 25u64.saturating_mul(1u64 << attempt.min(8));
    std::time::Duration::from_millis(ms.min(250))
}

/// Members of an index each store checks for expired answers (`SRANDMEMBER`'s
/// count): an index of up to this many is pruned whole.
pub const INDEX_PRUNE_SAMPLE: usize = 10;

/// The keys of [`STORE_ANSWER_SCRIPT`]: the answer, the session's index, the
/// page context's index (a placeholder of the same family without one), the lock.
pub fn store_keys(cache_key: &str, session_id: &str, page_context: Option<&str>) -> [String; 4] {
    [
        cache_key.to_string(),
        keys::session_index(session_id),
        keys::page_index(page_context.unwrap_or_default()),
        keys::lock(cache_key),
    ]
}

/// Takes the stampede lock unless the answer is already there, atomically, so a
/// request never recomputes an answer another request stored after its lookup;
/// a request waiting on a holder (`ARGV[3]`, its lock token) gets the
/// holder's failure if it failed. KEYS: [`answer_keys`]. ARGV: token, lock
/// ttl in ms, the holder waited on or "". Answers `{1, answer}` (cached
/// meanwhile), `{2, generation}` (lock taken: the answer will be of this
/// generation), `{3, failure}` (the holder failed: [`SharedFailure`]) or
/// `{0, holder's token}` (someone else holds it).
pub const ACQUIRE_OR_READ_SCRIPT: &str = r#"
local generation = redis.call('GET', KEYS[3]) or '0'
local entry = redis.call('HMGET', KEYS[1], 'g', 'v')
if entry[2] and entry[1] == generation then
  return {1, entry[2]}
end
if ARGV[3] ~= '' then
  local failed = redis.call('HMGET', KEYS[4], 't', 'e')
  if failed[1] == ARGV[3] then
    return {3, failed[2]}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, generation}
end
return {0, redis.call('GET', KEYS[2]) or ''}
"#;

/// The keys of [`ACQUIRE_OR_READ_SCRIPT`]: the answer, its lock, the
/// collection's generation, the answer's shared failure.
pub fn answer_keys(cache_key: &str, collection: &str) -> [String; 4] {
    [
        cache_key.to_string(),
        keys::lock(cache_key),
        keys::generation(collection),
        keys::failure(cache_key),
    ]
}

/// Releases the stampede lock if we still hold it and leaves the failure for
/// the requests that waited on us. KEYS: [`release_keys`]. ARGV: token, the
/// failure ([`SharedFailure`] JSON), how long waiters may find it (ms).
pub const RELEASE_LOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 't', ARGV[1], 'e', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"#;

/// The keys of [`RELEASE_LOCK_SCRIPT`]: the lock, the shared failure.
pub fn release_keys(cache_key: &str) -> [String; 2] {
    [keys::lock(cache_key), keys::failure(cache_key)]
}

/// How long a holder's failure waits for the requests that waited on it (they
/// look every few tens of milliseconds; later requests try again themselves).
pub const SHARED_FAILURE_MS: i64 = 5_000;

/// A holder's failure as the requests that waited on it answer it: the same
/// status, words and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFailure {
    pub service: String,
    pub status: u16,
    pub detail: String,
    pub retry_after_seconds: Option<u32>,
}

impl SharedFailure {
    pub fn of(error: &crate::upstream::UpstreamError) -> Self {
        Self {
            service: error.service().to_string(),
            status: error.http_status(),
            detail: error.public_detail(),
            retry_after_seconds: error.retry_after_seconds(),
        }
    }

    /// The error the waiting request answers with.
    pub fn into_error(self) -> crate::upstream::UpstreamError {
        use crate::upstream::{OPENAI, QDRANT};
        crate::upstream::UpstreamError::Shared {
            service: if self.service == QDRANT {
                QDRANT
            } else {
                OPENAI
            },
            status: self.status,
            detail: self.detail,
            retry_after_seconds: self.retry_after_seconds,
        }
    }
}

/// Sets several keys with one TTL. KEYS: the keys. ARGV[1]: ttl, then the values.
pub const SET_MANY_SCRIPT: &str = r#"
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"#;

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

/// The chat messages for a question: the system prompt and one user message
/// carrying the page context, the numbered passages and the question.
pub fn prompt_messages(request: &QueryRequest, passages: &[Passage]) -> Vec<(String, String)> {
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
    vec![
        ("system".to_string(), SYSTEM_PROMPT.to_string()),
        ("user".to_string(), user),
    ]
}

/// Characters per token assumed for a worst case: English runs near four, and
/// a budget reservation should err towards too many.
pub const WORST_CASE_CHARS_PER_TOKEN: usize = 3;

/// Characters a retrieved passage may add to the prompt: a chunk this project
/// ingests, its number and its source (see `ingest`).
const PASSAGE_PROMPT_CHARS: usize = crate::ingest::CHUNK_CHARS + 200;

/// The most tokens answering `request` can cost before the answer is known:
/// the prompt [`prompt_messages`] builds, with `top_k` passages of the largest
/// size, plus an answer of `max_tokens`. What a budget reserves.
pub fn worst_case_tokens(request: &QueryRequest, top_k: u32, max_tokens: u32) -> u64 {
    let chars = SYSTEM_PROMPT.len()
        + request.page_context.as_deref().map_or(0, str::len)
        + request.question.len()
        + top_k as usize * PASSAGE_PROMPT_CHARS
        + 100;
    chars.div_ceil(WORST_CASE_CHARS_PER_TOKEN) as u64 + u64::from(max_tokens)
}

/// What the query cache holds: the answer and its citations (never an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub answer: String,
    pub citations: Vec<Citation>,
    /// Tokens the answer cost, to count what a hit saves.
    #[serde(default)]
    pub tokens: u64,
}

/// How the query cache served a request, for the latency histogram.
pub fn cache_status(cached: bool, redis_available: bool) -> CacheStatus {
    match (cached, redis_available) {
        (true, _) => CacheStatus::Hit,
        (false, true) => CacheStatus::Miss,
        (false, false) => CacheStatus::Bypass,
    }
}

/// The response body of `POST /api/v1/chat/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub session_id: String,
    pub conversation_id: Option<i64>,
    pub cached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_back_off_to_a_quarter_second() {
        let steps: Vec<u64> = (0..7).map(|a| wait_step(a).as_millis() as u64).collect();
        assert_eq!(steps, [25, 50, 100, 200, 250, 250, 250]);
        assert_eq!(wait_step(u32::MAX).as_millis(), 250);
    }

    #[test]
    fn a_ranked_question_is_kept_whole_or_not_ranked() {
        let ask = |question: &str, page: Option<&str>| QueryRequest {
            question: question.into(),
            session_id: "s".into(),
            page_context: page.map(str::to_string),
            user_id: None,
            stream: false,
        };
        let entry = question_entry(&ask("What is AI?", Some("/docs")));
        let parsed: QueryCacheEntry = serde_json::from_str(&entry).unwrap();
        assert_eq!(parsed.q, "what is ai?");
        assert_eq!(parsed.p.as_deref(), Some("/docs"));
        // Anything larger is not ranked, rather than ranked cut (warm-up would
        // then ask a question nobody asked).
        let long_page = "p".repeat(MAX_PAGE_CONTEXT_CHARS);
        assert_eq!(question_entry(&ask("What is AI?", Some(&long_page))), "");
        let wide = "\u{1F600}".repeat(MAX_QUESTION_CHARS);
        assert_eq!(question_entry(&ask(&wide, None)), "");
        let fits = "q".repeat(MAX_RANKED_ENTRY_BYTES - 20);
        assert!(question_entry(&ask(&fits, None)).len() <= MAX_RANKED_ENTRY_BYTES);
        assert_ne!(question_entry(&ask(&fits, None)), "");
    }

    #[test]
    fn the_worst_case_covers_the_largest_prompt_and_a_whole_answer() {
        let request = QueryRequest {
            question: "q".repeat(300),
            session_id: "s".into(),
            page_context: Some("p".repeat(600)),
            user_id: None,
            stream: false,
        };
        let passages: Vec<Passage> = (0..5)
            .map(|i| Passage {
                text: "t".repeat(crate::ingest::CHUNK_CHARS),
                source: format!("document-{i}.md"),
                chunk_id: format!("document-{i}.md#0"),
                score: 0.9,
            })
            .collect();
        let prompt_chars: usize = prompt_messages(&request, &passages)
            .iter()
            .map(|(role, content)| role.len() + content.len())
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

    fn parse(body: &str) -> Result<QueryRequest, ApiError> {
        parse_query(Some("application/json"), body.as_bytes(), None)
    }

    const SHAPE: AnswerShape = AnswerShape {
        chat_model: "gpt",
        embedding_model: "emb",
        collection: "docs",
        top_k: 5,
        scope: CacheScope::Session,
    };

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
                assert_eq!(e.status, 400, "{body}");
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
            assert_eq!(r.status, *status, "{body}: {r:?}");
        }
        let big = format!(
            r#"{{"question":"{}","session_id":"s"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().status, 413);
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
            assert_eq!(parse(&padded(field, limit + 1)).unwrap_err().status, 400);
        }
        assert_eq!(
            parse_query(Some("application/json"), &[0xff, 0xfe], None)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn a_shared_failure_answers_like_the_original() {
        let original = crate::upstream::UpstreamError::RateLimited {
            service: crate::upstream::OPENAI,
            retry_after_seconds: Some(7),
        };
        let shared: SharedFailure =
            serde_json::from_slice(&serde_json::to_vec(&SharedFailure::of(&original)).unwrap())
                .unwrap();
        let error = shared.into_error();
        assert_eq!(error.api_error().status, original.api_error().status);
        assert_eq!(error.api_error().detail, original.api_error().detail);
        assert_eq!(error.retry_after_seconds(), Some(7));
        assert_eq!(error.service(), crate::upstream::OPENAI);
    }

    #[test]
    fn cache_keys_follow_what_shapes_the_answer() {
        let q =
            parse(r#"{"question":"What is AI?","session_id":"s1","page_context":"p"}"#).unwrap();
        let key = query_cache_key(&q, &SHAPE);
        assert!(key.starts_with(keys::QUERY_PREFIX));
        // Same question, different spacing and case: same entry.
        let same =
            parse(r#"{"question":"what  is ai?","session_id":"s1","page_context":"p"}"#).unwrap();
        assert_eq!(query_cache_key(&same, &SHAPE), key);
        // Different page context, session, model, top_k: different entries.
        let other_page =
            parse(r#"{"question":"What is AI?","session_id":"s1","page_context":"q"}"#).unwrap();
        assert_ne!(query_cache_key(&other_page, &SHAPE), key);
        let other_session =
            parse(r#"{"question":"What is AI?","session_id":"s2","page_context":"p"}"#).unwrap();
        assert_ne!(query_cache_key(&other_session, &SHAPE), key);
        assert_ne!(
            query_cache_key(
                &q,
                &AnswerShape {
                    chat_model: "other",
                    ..SHAPE
                }
            ),
            key
        );
        assert_ne!(query_cache_key(&q, &AnswerShape { top_k: 6, ..SHAPE }), key);
        // With a global scope, sessions share the entry.
        let global = AnswerShape {
            scope: CacheScope::Global,
            ..SHAPE
        };
        assert_eq!(
            query_cache_key(&q, &global),
            query_cache_key(&other_session, &global)
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
        let messages = prompt_messages(&q, &passages);
        assert_eq!(messages[0].0, "system");
        assert!(messages[1].1.contains("Page context: Chapter 2"));
        assert!(messages[1].1.contains("[1] (book.pdf) Because."));
        assert!(messages[1].1.ends_with("Question: Why?"));
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
