//! The query cache: the key an answer is stored under (everything that
//! shapes it), and the four scripts a question's way through the cache runs
//! (look up, take the stampede lock or read, store, release), each one type.
//!
//! A cached answer is a hash: `v`, the answer, and `g`, the generation of
//! the collection it was computed from; an answer of an older generation
//! (a document was ingested since) is not served. In `global` scope with
//! the semantic cache on, also `s`, the session that stored it, and `c`
//! once it is confirmed (see [`Confirmation`]).

use serde::{Deserialize, Serialize};

use crate::cache::ranking;
use crate::chat::conversation::{ConversationChoice, Turn};
use crate::chat::query::{Citation, QueryRequest, PROMPT_VERSION};
use crate::redis::digest::md5_of_parts;
use crate::redis::keys::{self, normalise};
use crate::redis::script::{bytes_at, Arg, Script, Value};
use crate::storage::history::RememberedConversation;
use crate::telemetry::metrics::CacheStatus;

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

/// Whether a cached answer may serve other sessions than its own from the
/// semantic cache. In `global` scope, a session's answer is indexed
/// unconfirmed: a search serves it to other sessions only once confirmed,
/// when a second session is served it as an exact hit (the [`Lookup`]
/// marks the entry, and its point is then confirmed in the index), so one
/// session alone cannot plant the answer to a near miss for every later
/// asker. An admin's warm-up answers are confirmed as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Session scope, or the semantic cache off: answers never cross sessions.
    Unneeded,
    /// Stored with its session; the first exact hit of another confirms it.
    Pending,
    /// Confirmed as stored (an admin's warm-up).
    Confirmed,
}

impl Confirmation {
    /// An answer stored in `scope`, with the semantic cache on or off, by
    /// an admin's warm-up or not.
    pub fn of(scope: CacheScope, semantic_cache: bool, warm_up: bool) -> Self {
        match (scope, semantic_cache, warm_up) {
            (CacheScope::Global, true, false) => Self::Pending,
            (CacheScope::Global, true, true) => Self::Confirmed,
            _ => Self::Unneeded,
        }
    }

    /// Whether its point is indexed confirmed (only a pending one is not).
    pub fn indexed_confirmed(self) -> bool {
        self != Self::Pending
    }

    fn arg(self) -> &'static str {
        match self {
            Self::Unneeded => "",
            Self::Pending => "p",
            Self::Confirmed => "c",
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

/// The query-cache key for a request: of a first question (`context`
/// `None`), or of a follow-up, keyed by the turns it was answered with
/// ([`crate::chat::conversation::context_digest`]).
pub fn query_cache_key(
    request: &QueryRequest,
    shape: &AnswerShape,
    context: Option<&str>,
) -> String {
    keys::query_cache(&answer_digest(
        request,
        shape,
        &normalise(&request.question),
        context,
    ))
}

/// Everything but the question that shapes `request`'s answer, as one
/// digest (the semantic cache's scope): two questions may share an answer
/// only within one. The same parts as the key's, the question left empty
/// (no question asked is empty).
pub fn answer_scope(request: &QueryRequest, shape: &AnswerShape) -> String {
    answer_digest(request, shape, "", None)
}

/// The normalised page context ("" without one), as answers are keyed by it.
pub fn normalised_page(request: &QueryRequest) -> String {
    request
        .page_context
        .as_deref()
        .map(normalise)
        .unwrap_or_default()
}

fn answer_digest(
    request: &QueryRequest,
    shape: &AnswerShape,
    question: &str,
    context: Option<&str>,
) -> String {
    let top_k = shape.top_k.to_string();
    let session = match shape.scope {
        CacheScope::Session => request.session_id.as_str(),
        CacheScope::Global => "",
    };
    let page = normalised_page(request);
    let mut parts = vec![
        PROMPT_VERSION,
        shape.chat_model,
        shape.embedding_model,
        shape.collection,
        &top_k,
        question,
        &page,
        session,
    ];
    // A first question's key is what it always was.
    parts.extend(context);
    md5_of_parts(&parts)
}

/// Looks a first question's answer up, counts the question (for analytics
/// and warm-up, when `entry` is not empty, and only for a first question:
/// a follow-up asked again alone would mean something else) and reads the
/// session's current conversation, with its last turns when the question
/// continues it, in one round trip. With `confirming`, an answer found that
/// another session stored and that is not yet confirmed is marked confirmed
/// ([`Confirmation`]), in the same round trip.
pub struct Lookup<'a> {
    pub cache_key: &'a str,
    pub session_id: &'a str,
    pub collection: &'a str,
    /// The question's ranking member ([`question_entry`]), or "" not to count it.
    pub entry: String,
    /// Which conversation the question is asked in.
    pub conversation: ConversationChoice,
    /// How many of the last turns to read (0: none).
    pub turns: u32,
    /// `global` scope with the semantic cache on (and not a warm-up): a hit
    /// on another session's answer confirms it.
    pub confirming: bool,
}

/// What Redis knows of a question: a first question's answer, and the
/// session's current conversation with its last turns (so a response can
/// name the conversation before the exchange is written, and a follow-up
/// is answered in context without Postgres).
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// Only for a question with no earlier turns.
    pub answer: Option<CachedAnswer>,
    /// `None`: Redis does not know the conversation asked in (a session's
    /// first question, a new one, a named one that is not the current, or
    /// Redis lost it).
    pub conversation: Option<RememberedConversation>,
    /// Its last turns, oldest first, when the question continues it.
    pub turns: Vec<Turn>,
    /// This lookup confirmed `answer` (a `confirming` lookup's hit on an
    /// answer another session stored, not confirmed before): its point in
    /// the semantic index is to be confirmed too.
    pub confirmed: bool,
}

impl Script for Lookup<'_> {
    const SOURCE: &'static str = concat!(
        r#"
local conversation = false
local turns = {}
if ARGV[4] ~= 'new' then
  conversation = redis.call('GET', KEYS[4])
end
if ARGV[4] == '' then
  -- Asked alone: its exchange joins no kept turns, which are then not all there.
  if redis.call('EXISTS', KEYS[6]) == 1 then
    redis.call('DEL', KEYS[6])
  end
elseif ARGV[4] ~= 'new' then
  -- Continued: answered with its turns, when it is the session's current
  -- conversation and they are all kept (else they are read from Postgres).
  local current = conversation and string.match(conversation, ':(conv_%x+)$')
  if current ~= ARGV[4] then
    return {false, false}
  end
  if tonumber(ARGV[5]) > 0 then
    local kept = redis.call('LRANGE', KEYS[6], -tonumber(ARGV[5]) - 1, -1)
    if #kept == 0 then
      return {false, false}
    end
    for _, turn in ipairs(kept) do
      if turn ~= ARGV[6] then
        turns[#turns + 1] = turn
      end
    end
  end
end
if ARGV[1] ~= '' and #turns == 0 then
"#,
        crate::ranking_bump_lua!("2", "3", "1", "2", "3"),
        "end\n",
        r#"
local answer = false
local confirmed = 0
if #turns == 0 then
  local generation = redis.call('GET', KEYS[5]) or '0'
  local entry
  if ARGV[7] == '' then
    entry = redis.call('HMGET', KEYS[1], 'g', 'v')
  else
    entry = redis.call('HMGET', KEYS[1], 'g', 'v', 's', 'c')
  end
  if entry[2] and entry[1] == generation then
    answer = entry[2]
    -- Served to a session other than the one that stored it: confirmed.
    if entry[3] and entry[3] ~= ARGV[7] and not entry[4] then
      redis.call('HSET', KEYS[1], 'c', '1')
      confirmed = 1
    end
  end
end
local reply = {answer, conversation, confirmed}
for _, turn in ipairs(turns) do
  reply[#reply + 1] = turn
end
return reply
"#
    );
    type Reply = Found;

    /// The answer, the top questions and their base, the session's
    /// conversation, the collection's generation, the conversation's turns.
    fn keys(&self) -> Vec<String> {
        vec![
            self.cache_key.to_string(),
            keys::TOP_QUESTIONS.to_string(),
            crate::cache::ranking::base_key(keys::TOP_QUESTIONS),
            keys::conversation(self.session_id),
            keys::generation(self.collection),
            keys::turns(self.session_id),
        ]
    }

    /// The entry, the ranking's half-life and its cap, the conversation
    /// asked in ("" asked alone, "new", or the handle continued), how many turns
    /// to read, the turns list's marker, the session when `confirming` (else "").
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.entry.as_str()),
            Arg::from(ranking::QUESTIONS_HALF_LIFE_SECONDS),
            Arg::from(ranking::QUESTIONS_CAP),
            Arg::from(self.conversation.lookup_arg()),
            Arg::from(self.turns),
            Arg::from(crate::chat::conversation::TURNS_MARKER),
            Arg::from(if self.confirming { self.session_id } else { "" }),
        ]
    }

    /// `{answer or false, conversation or false, confirmed 0 or 1, turn...}`
    /// (a conversation not continued: `{false, false}`); what does not
    /// parse is not there (a turn that does not parse ends the turns read:
    /// the conversation is read back from Postgres).
    fn parse(&self, reply: Vec<Value>) -> Found {
        let conversation = bytes_at(&reply, 1)
            .and_then(|bytes| RememberedConversation::parse(std::str::from_utf8(bytes).ok()?));
        let turns: Option<Vec<Turn>> = reply
            .iter()
            .skip(3)
            .map(|value| serde_json::from_slice(value.bytes()?).ok())
            .collect();
        match turns {
            Some(turns) => {
                let answer: Option<CachedAnswer> =
                    bytes_at(&reply, 0).and_then(|bytes| serde_json::from_slice(bytes).ok());
                Found {
                    confirmed: answer.is_some() && reply.get(2).and_then(Value::int) == Some(1),
                    answer,
                    conversation,
                    turns,
                }
            }
            None => Found::default(),
        }
    }
}

/// Reads the first of `cache_keys` whose answer is of the collection's
/// generation: a follow-up's (keyed by its turns), or a semantic match's
/// (its nearest answered questions, nearest first). All the keys are of the
/// query cache's `{q}` slot.
pub struct ReadAnswer<'a> {
    pub cache_keys: &'a [&'a str],
    pub collection: &'a str,
}

impl Script for ReadAnswer<'_> {
    const SOURCE: &'static str = r#"
local generation = redis.call('GET', KEYS[#KEYS]) or '0'
for i = 1, #KEYS - 1 do
  local entry = redis.call('HMGET', KEYS[i], 'g', 'v')
  if entry[2] and entry[1] == generation then
    return {i - 1, entry[2]}
  end
end
return {false}
"#;
    /// Which of the keys answered (from 0), and its answer.
    type Reply = Option<(usize, CachedAnswer)>;

    /// The answers, then the collection's generation.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.cache_keys.iter().map(|k| k.to_string()).collect();
        keys.push(keys::generation(self.collection));
        keys
    }

    fn args(&self) -> Vec<Arg> {
        Vec::new()
    }

    fn parse(&self, reply: Vec<Value>) -> Option<(usize, CachedAnswer)> {
        let index = match reply.first()? {
            Value::Int(i) => usize::try_from(*i).ok()?,
            _ => return None,
        };
        let answer = bytes_at(&reply, 1).and_then(|bytes| serde_json::from_slice(bytes).ok())?;
        (index < self.cache_keys.len()).then_some((index, answer))
    }
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

/// Whether `answer` may be cached: at most
/// [`crate::redis::families::MAX_CACHED_ANSWER_BYTES`] as stored.
pub fn fits_the_cache(answer: &CachedAnswer) -> bool {
    serde_json::to_vec(answer)
        .is_ok_and(|stored| stored.len() as u64 <= crate::redis::families::MAX_CACHED_ANSWER_BYTES)
}

/// Stores the answer with its generation (and, pending confirmation, the
/// session that stores it; see [`Confirmation`]), indexes it by session and
/// page context (for scoped invalidation) and releases the stampede lock, in
/// one round trip.
///
/// An index outlives the answers it points at while its session or page
/// keeps being asked about, so each store also drops up to
/// [`INDEX_PRUNE_SAMPLE`] members whose answers have expired: an index holds
/// about as many members as there are live answers, not every answer ever
/// stored. (The members are answer keys of this script's own `{q}` family.)
pub struct StoreAnswer<'a> {
    pub cache_key: &'a str,
    pub session_id: &'a str,
    pub page_context: Option<&'a str>,
    pub answer: &'a CachedAnswer,
    pub ttl_seconds: u64,
    /// The stampede lock's token, released if it is still ours.
    pub token: &'a str,
    /// The collection's generation when the lock was taken.
    pub generation: &'a [u8],
    /// Whether it will need another session's hit to serve other sessions.
    pub confirmation: Confirmation,
}

impl Script for StoreAnswer<'_> {
    const SOURCE: &'static str = r#"
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
if ARGV[7] == 'p' then
  -- A new answer: confirmed by the first hit of another session (Lookup).
  redis.call('HSET', KEYS[1], 's', ARGV[8])
  redis.call('HDEL', KEYS[1], 'c')
elseif ARGV[7] == 'c' then
  redis.call('HSET', KEYS[1], 'c', '1')
end
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
    type Reply = ();

    /// The answer, the session's index, the page context's index (a
    /// placeholder of the same family without one), the lock.
    fn keys(&self) -> Vec<String> {
        vec![
            self.cache_key.to_string(),
            keys::session_index(self.session_id),
            keys::page_index(self.page_context.unwrap_or_default()),
            keys::lock(self.cache_key),
        ]
    }

    /// The answer, its TTL, the lock token, the generation, "1" when the page
    /// index is used, [`INDEX_PRUNE_SAMPLE`], the confirmation ("", "p"
    /// pending, "c" confirmed), the session when pending (else "").
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(serde_json::to_vec(self.answer).expect("answers serialise")),
            Arg::from(self.ttl_seconds),
            Arg::from(self.token),
            Arg::from(self.generation),
            Arg::from(if self.page_context.is_some() {
                "1"
            } else {
                "0"
            }),
            Arg::from(INDEX_PRUNE_SAMPLE as u64),
            Arg::from(self.confirmation.arg()),
            Arg::from(if self.confirmation == Confirmation::Pending {
                self.session_id
            } else {
                ""
            }),
        ]
    }

    fn parse(&self, _: Vec<Value>) {}
}

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

/// Takes the stampede lock unless the answer is already there, atomically, so a
/// request never recomputes an answer another request stored after its lookup;
/// a request waiting on a holder (`holder`, its lock token) gets the
/// holder's failure if it failed.
pub struct AcquireOrRead<'a> {
    pub cache_key: &'a str,
    pub collection: &'a str,
    /// This request's lock token.
    pub token: &'a str,
    pub lock_ttl_ms: u64,
    /// The token of the holder this request waits on, or empty.
    pub holder: &'a [u8],
}

/// What [`AcquireOrRead`] found.
#[derive(Debug, PartialEq)]
pub enum Acquired {
    /// Another request stored the answer after the lookup.
    Cached(CachedAnswer),
    /// The lock is ours: the answer will be of this generation.
    Locked { generation: Vec<u8> },
    /// The holder waited on failed: answer as it did (it counted the failure).
    HolderFailed(SharedFailure),
    /// Someone else holds the lock (its token, when Redis still has it).
    Held { holder: Option<Vec<u8>> },
    /// A reply that does not read: answer without the lock.
    Unreadable,
}

impl Script for AcquireOrRead<'_> {
    const SOURCE: &'static str = r#"
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
    type Reply = Acquired;

    /// The answer, its lock, the collection's generation, the answer's shared failure.
    fn keys(&self) -> Vec<String> {
        vec![
            self.cache_key.to_string(),
            keys::lock(self.cache_key),
            keys::generation(self.collection),
            keys::failure(self.cache_key),
        ]
    }

    /// The token, the lock's TTL in ms, the holder waited on or "".
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.token),
            Arg::from(self.lock_ttl_ms),
            Arg::from(self.holder),
        ]
    }

    /// `{1, answer}`, `{2, generation}`, `{3, failure}` or `{0, holder's token}`.
    fn parse(&self, reply: Vec<Value>) -> Acquired {
        let second = bytes_at(&reply, 1);
        match (reply.first().and_then(Value::int), second) {
            (Some(1), Some(bytes)) => serde_json::from_slice(bytes)
                .map(Acquired::Cached)
                .unwrap_or(Acquired::Unreadable),
            (Some(2), generation) => Acquired::Locked {
                generation: generation.unwrap_or(b"0").to_vec(),
            },
            (Some(3), Some(failure)) => serde_json::from_slice(failure)
                .map(Acquired::HolderFailed)
                .unwrap_or(Acquired::Unreadable),
            (Some(0), holder) => Acquired::Held {
                holder: holder.map(<[u8]>::to_vec),
            },
            _ => Acquired::Unreadable,
        }
    }
}

/// Releases the stampede lock if this request still holds it and leaves
/// its failure for the requests that waited on it; an empty failure sends
/// them to ask for themselves.
pub struct ReleaseLock<'a> {
    pub cache_key: &'a str,
    pub token: &'a str,
    /// [`SharedFailure`] JSON, or empty.
    pub failure: Vec<u8>,
}

impl Script for ReleaseLock<'_> {
    const SOURCE: &'static str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 't', ARGV[1], 'e', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"#;
    type Reply = ();

    /// The lock, the shared failure.
    fn keys(&self) -> Vec<String> {
        vec![keys::lock(self.cache_key), keys::failure(self.cache_key)]
    }

    /// The token, the failure, how long waiters may find it (ms).
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.token),
            Arg::from(self.failure.clone()),
            Arg::from(SHARED_FAILURE_MS),
        ]
    }

    fn parse(&self, _: Vec<Value>) {}
}

/// How long a holder's failure waits for the requests that waited on it (they
/// look every few tens of milliseconds; later requests try again themselves).
pub const SHARED_FAILURE_MS: i64 = 5_000;

/// A holder's failure as the requests that waited on it answer it: the same
/// status, words and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFailure {
    pub service: FailedService,
    pub status: u16,
    pub detail: String,
    pub retry_after_seconds: Option<u32>,
}

/// The dependency a shared failure names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailedService {
    OpenAi,
    Qdrant,
}

impl FailedService {
    fn of(service: &str) -> Self {
        if service == crate::chat::upstream::QDRANT {
            Self::Qdrant
        } else {
            Self::OpenAi
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::OpenAi => crate::chat::upstream::OPENAI,
            Self::Qdrant => crate::chat::upstream::QDRANT,
        }
    }
}

impl SharedFailure {
    pub fn of(error: &crate::chat::upstream::UpstreamError) -> Self {
        Self {
            service: FailedService::of(error.service()),
            status: error.http_status(),
            detail: error.public_detail(),
            retry_after_seconds: error.retry_after_seconds(),
        }
    }

    /// The error the waiting request answers with.
    pub fn into_error(self) -> crate::chat::upstream::UpstreamError {
        crate::chat::upstream::UpstreamError::Shared {
            service: self.service.name(),
            status: self.status,
            detail: self.detail,
            retry_after_seconds: self.retry_after_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::query::{parse_query, MAX_PAGE_CONTEXT_CHARS, MAX_QUESTION_CHARS};
    use crate::http::api::SessionId;

    fn parse(body: &str) -> QueryRequest {
        parse_query(Some("application/json"), body.as_bytes(), None).unwrap()
    }

    const SHAPE: AnswerShape = AnswerShape {
        chat_model: "gpt",
        embedding_model: "emb",
        collection: "docs",
        top_k: 5,
        scope: CacheScope::Session,
    };

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
            session_id: SessionId::parse("s").unwrap(),
            page_context: page.map(str::to_string),
            user_id: None,
            stream: false,
            conversation: ConversationChoice::Current,
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
    fn a_shared_failure_answers_like_the_original() {
        let original = crate::chat::upstream::UpstreamError::RateLimited {
            service: crate::chat::upstream::OPENAI,
            retry_after_seconds: Some(7),
        };
        let shared: SharedFailure =
            serde_json::from_slice(&serde_json::to_vec(&SharedFailure::of(&original)).unwrap())
                .unwrap();
        let error = shared.into_error();
        assert_eq!(error.api_error().status(), original.api_error().status());
        assert_eq!(error.api_error().detail, original.api_error().detail);
        assert_eq!(error.retry_after_seconds(), Some(7));
        assert_eq!(error.service(), crate::chat::upstream::OPENAI);
    }

    #[test]
    fn cache_keys_follow_what_shapes_the_answer() {
        let q = parse(r#"{"question":"What is AI?","session_id":"s1","page_context":"p"}"#);
        let key = query_cache_key(&q, &SHAPE, None);
        assert!(key.starts_with(keys::QUERY_PREFIX));
        // Same question, different spacing and case: same entry.
        let same = parse(r#"{"question":"what  is ai?","session_id":"s1","page_context":"p"}"#);
        assert_eq!(query_cache_key(&same, &SHAPE, None), key);
        // Different page context, session, model, top_k: different entries.
        let other_page =
            parse(r#"{"question":"What is AI?","session_id":"s1","page_context":"q"}"#);
        assert_ne!(query_cache_key(&other_page, &SHAPE, None), key);
        let other_session =
            parse(r#"{"question":"What is AI?","session_id":"s2","page_context":"p"}"#);
        assert_ne!(query_cache_key(&other_session, &SHAPE, None), key);
        assert_ne!(
            query_cache_key(
                &q,
                &AnswerShape {
                    chat_model: "other",
                    ..SHAPE
                },
                None
            ),
            key
        );
        assert_ne!(
            query_cache_key(&q, &AnswerShape { top_k: 6, ..SHAPE }, None),
            key
        );
        // With a global scope, sessions share the entry.
        let global = AnswerShape {
            scope: CacheScope::Global,
            ..SHAPE
        };
        assert_eq!(
            query_cache_key(&q, &global, None),
            query_cache_key(&other_session, &global, None)
        );
        // A follow-up is keyed by its turns: never a first question's
        // answer, nor one given after other turns.
        let after_one = query_cache_key(&q, &SHAPE, Some("d1"));
        assert_ne!(after_one, key);
        assert_ne!(query_cache_key(&q, &SHAPE, Some("d2")), after_one);
        assert_eq!(
            query_cache_key(&q, &global, Some("d1")),
            query_cache_key(&other_session, &global, Some("d1")),
            "globally, identical conversations share their answers"
        );
    }

    #[test]
    fn acquire_reads_every_reply_the_lua_gives() {
        let call = AcquireOrRead {
            cache_key: "k",
            collection: "c",
            token: "t",
            lock_ttl_ms: 9,
            holder: b"",
        };
        let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
        let answer = CachedAnswer {
            answer: "a".into(),
            citations: Vec::new(),
            tokens: 3,
        };
        let stored = serde_json::to_vec(&answer).unwrap();
        assert_eq!(
            call.parse(vec![Value::Int(1), bytes(&stored)]),
            Acquired::Cached(answer)
        );
        assert_eq!(
            call.parse(vec![Value::Int(2), bytes(b"7")]),
            Acquired::Locked {
                generation: b"7".to_vec()
            }
        );
        assert_eq!(
            call.parse(vec![Value::Int(0), bytes(b"other")]),
            Acquired::Held {
                holder: Some(b"other".to_vec())
            }
        );
        assert_eq!(
            call.parse(vec![Value::Int(1), bytes(b"{")]),
            Acquired::Unreadable
        );
        assert_eq!(
            call.parse(vec![Value::Int(3), bytes(b"x")]),
            Acquired::Unreadable
        );
        assert_eq!(call.parse(vec![Value::Int(9)]), Acquired::Unreadable);
        assert_eq!(call.args()[1], Arg::Int(9));
    }

    #[test]
    fn a_lookup_reads_the_answer_the_conversation_and_its_turns() {
        const HANDLE: &str = "conv_0000000000000000000000000000000c";
        let handle = crate::storage::history::ConversationHandle::parse(HANDLE).unwrap();
        let remembered = format!("12:20000:{HANDLE}");
        let call = Lookup {
            cache_key: "k",
            session_id: "s",
            collection: "c",
            entry: String::new(),
            conversation: ConversationChoice::Named(handle),
            turns: 5,
            confirming: false,
        };
        let found = call.parse(vec![Value::Nil, Value::Nil]);
        assert_eq!(found, Found::default());
        assert_eq!(call.args()[0], Arg::from(""));
        assert_eq!(call.args()[3], Arg::from(HANDLE));
        assert_eq!(call.args()[4], Arg::Int(5));
        assert_eq!(call.args()[6], Arg::from(""), "not confirming");
        assert_eq!(call.keys()[0], "k");
        assert_eq!(call.keys()[5], keys::turns("s"));
        let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
        let found = call.parse(vec![
            Value::Nil,
            bytes(remembered.as_bytes()),
            Value::Int(0),
            bytes(br#"{"q":"What is a transformer?","a":"A model."}"#),
        ]);
        assert_eq!(
            found.conversation.map(|c| (c.id, c.handle)),
            Some((12, handle))
        );
        assert_eq!(found.turns[0].question, "What is a transformer?");
        assert!(!found.confirmed);
        // A turn that does not read: nothing is trusted, Postgres is asked.
        let found = call.parse(vec![
            Value::Nil,
            bytes(remembered.as_bytes()),
            Value::Int(0),
            bytes(b"{"),
        ]);
        assert_eq!(found, Found::default());
        let read = ReadAnswer {
            cache_keys: &["k1", "k2"],
            collection: "c",
        };
        assert_eq!(read.parse(vec![Value::Nil]), None);
        assert_eq!(read.keys(), ["k1", "k2", &keys::generation("c")]);
        let answer = br#"{"answer":"A model.","citations":[]}"#;
        let (index, found) = read.parse(vec![Value::Int(1), bytes(answer)]).unwrap();
        assert_eq!((index, found.answer.as_str()), (1, "A model."));
        // An index past the keys, or an answer that does not read, is no answer.
        assert_eq!(read.parse(vec![Value::Int(2), bytes(answer)]), None);
        assert_eq!(read.parse(vec![Value::Int(0), bytes(b"{")]), None);
    }

    #[test]
    fn a_global_lookup_confirms_another_sessions_answer_in_its_round_trip() {
        let call = |confirming| Lookup {
            cache_key: "k",
            session_id: "s2",
            collection: "c",
            entry: String::new(),
            conversation: ConversationChoice::Current,
            turns: 0,
            confirming,
        };
        // The requester is named only when confirming: the script compares it
        // with the entry's `s` (no more fields are read in session scope).
        assert_eq!(call(true).args()[6], Arg::from("s2"));
        assert_eq!(call(false).args()[6], Arg::from(""));
        assert_eq!(call(true).keys(), call(false).keys());
        assert!(Lookup::SOURCE.contains("HMGET', KEYS[1], 'g', 'v', 's', 'c'"));
        assert!(Lookup::SOURCE.contains("HSET', KEYS[1], 'c', '1'"));
        let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
        let answer = br#"{"answer":"A model.","citations":[]}"#;
        let found = call(true).parse(vec![bytes(answer), Value::Nil, Value::Int(1)]);
        assert!(found.confirmed);
        assert_eq!(found.answer.unwrap().answer, "A model.");
        let found = call(true).parse(vec![bytes(answer), Value::Nil, Value::Int(0)]);
        assert!(!found.confirmed);
        // Nothing served, nothing confirmed.
        let found = call(true).parse(vec![Value::Nil, Value::Nil, Value::Int(1)]);
        assert!(!found.confirmed);
    }

    #[test]
    fn a_stored_answer_keeps_its_session_until_another_confirms_it() {
        assert_eq!(
            Confirmation::of(CacheScope::Session, true, false),
            Confirmation::Unneeded
        );
        assert_eq!(
            Confirmation::of(CacheScope::Global, false, false),
            Confirmation::Unneeded,
            "nothing is indexed with the semantic cache off"
        );
        assert_eq!(
            Confirmation::of(CacheScope::Global, true, false),
            Confirmation::Pending
        );
        assert_eq!(
            Confirmation::of(CacheScope::Global, true, true),
            Confirmation::Confirmed
        );
        assert!(!Confirmation::Pending.indexed_confirmed());
        assert!(Confirmation::Confirmed.indexed_confirmed());
        assert!(Confirmation::Unneeded.indexed_confirmed());
        let answer = CachedAnswer {
            answer: "a".into(),
            citations: Vec::new(),
            tokens: 1,
        };
        let store = |confirmation| StoreAnswer {
            cache_key: "k",
            session_id: "s1",
            page_context: None,
            answer: &answer,
            ttl_seconds: 60,
            token: "t",
            generation: b"1",
            confirmation,
        };
        let tail = |confirmation| store(confirmation).args()[6..].to_vec();
        assert_eq!(
            tail(Confirmation::Pending),
            [Arg::from("p"), Arg::from("s1")]
        );
        assert_eq!(
            tail(Confirmation::Confirmed),
            [Arg::from("c"), Arg::from("")]
        );
        assert_eq!(tail(Confirmation::Unneeded), [Arg::from(""), Arg::from("")]);
        // A new answer under a key once confirmed is not confirmed.
        assert!(StoreAnswer::SOURCE.contains("HDEL', KEYS[1], 'c'"));
    }
}
