//! Conversations that remember: the earlier turns a follow-up is answered
//! with, the standalone rewrite its retrieval uses, the digest its cached
//! answer is keyed by, and the two scripts that keep a session's current
//! conversation and its last turns in Redis.
//!
//! Redis holds one conversation per session, the one asked in last: its id
//! ([`crate::redis::keys::conversation`]) and, while a client continues it,
//! its last turns, oldest first ([`crate::redis::keys::turns`], after
//! [`TURNS_MARKER`]), both expiring with the session's history. Postgres
//! holds every turn; when Redis does not hold them all (lost, or a question
//! asked alone came between), or a request names another of the session's
//! conversations, they are read back in the statement that finds the
//! conversation. A question asked alone writes no turn: the hit path costs
//! what it cost before conversations.

use serde::{Deserialize, Serialize};

use crate::chat::query::WORST_CASE_CHARS_PER_TOKEN;
use crate::chat::upstream::{ChatMessage, Role};
use crate::redis::digest::md5_of_parts;
use crate::redis::keys;
use crate::redis::script::{Arg, Script, Value};
use crate::storage::history::{ConversationHandle, RememberedConversation};

/// One exchange of a conversation, as a later question sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    #[serde(rename = "q")]
    pub question: String,
    #[serde(rename = "a")]
    pub answer: String,
    /// When its messages expire (Unix seconds; 0: not known): a turn is
    /// never sent once its history is due for deletion, wherever it is kept.
    #[serde(rename = "e", default)]
    pub expires_at: u64,
    /// Its question's message id, when known: a turn is kept once however
    /// it reached Redis (read back from Postgres, or added after its
    /// exchange was stored).
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<i64>,
}

/// The turns whose history is not yet due for deletion at `now` (Unix seconds).
pub fn unexpired(turns: Vec<Turn>, now: u64) -> Vec<Turn> {
    turns
        .into_iter()
        .filter(|turn| turn.expires_at == 0 || turn.expires_at > now)
        .collect()
}

/// Which conversation of its session a question belongs to, and whether it
/// is answered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConversationChoice {
    /// Asked alone, as the seeds ask, and stored in the conversation the
    /// session asked in last (a session's first question starts one).
    #[default]
    Current,
    /// Continues one whose handle a response gave the client
    /// (`conversation_id`): answered with its earlier turns.
    Named(ConversationHandle),
    /// Starts a new one (`"new_conversation": true`).
    New,
}

impl ConversationChoice {
    /// Whether the question is answered with its conversation's earlier turns.
    pub fn continues(&self) -> bool {
        matches!(self, Self::Named(_))
    }

    /// What Lookup compares with the session's current conversation: the
    /// named handle, `new` for a new conversation, empty for the current one.
    pub fn lookup_arg(&self) -> String {
        match self {
            Self::Current => String::new(),
            Self::Named(handle) => handle.to_string(),
            Self::New => "new".into(),
        }
    }
}

/// The handle a response names: to a request that named its conversation
/// (it knew it), or that made it (a session's first question, a new
/// conversation), the conversation's; to any other none. A conversation's
/// handle is the capability to continue it, and a client that knows only a
/// session id (all `none` mode asks for) learns none by asking in it.
pub fn handle_shown(
    choice: &ConversationChoice,
    conversation: Option<RememberedConversation>,
    made: bool,
) -> Option<ConversationHandle> {
    let conversation = conversation?;
    match choice {
        ConversationChoice::Named(named) => (*named == conversation.handle).then_some(*named),
        ConversationChoice::Current | ConversationChoice::New => {
            made.then_some(conversation.handle)
        }
    }
}

/// What a follow-up embeds and searches with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    /// A standalone rewrite of the question (one short chat call, charged).
    Rewrite,
    /// The recent user turns and the question, as one text.
    Recent,
    /// The question alone, as a first question is.
    Question,
}

impl Retrieval {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "rewrite" => Some(Self::Rewrite),
            "recent" => Some(Self::Recent),
            "question" => Some(Self::Question),
            _ => None,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Self::Rewrite => "rewrite",
            Self::Recent => "recent",
            Self::Question => "question",
        }
    }
}

/// How much of a conversation a follow-up is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextSettings {
    /// Earlier turns sent with a question, newest first (0: every question alone).
    pub turns: u32,
    /// The most tokens those turns may add to a prompt (older ones are left out).
    pub max_tokens: u32,
    pub retrieval: Retrieval,
    /// How long Redis keeps a session's conversation and its last turns
    /// after its last question (`session_idle_seconds`): they are a cache of
    /// what Postgres holds, kept about as long as the session is active.
    pub kept_seconds: u64,
}

pub const DEFAULT_CONTEXT_TURNS: u64 = 5;
pub const DEFAULT_CONTEXT_MAX_TOKENS: u64 = 1500;

impl ContextSettings {
    /// Whether earlier turns are kept at all.
    pub fn remembers(&self) -> bool {
        self.turns > 0
    }
}

/// Tokens a text may take at most, in any script.
fn worst_tokens(text: &str) -> u64 {
    crate::chat::query::worst_case_text_tokens(text)
}

/// Tokens a turn adds to a prompt at most (two messages and their roles).
fn turn_tokens(turn: &Turn) -> u64 {
    worst_tokens(&turn.question) + worst_tokens(&turn.answer) + 8
}

/// The turns a question is answered with: the newest `settings.turns`,
/// fewer if they would take more than `settings.max_tokens`. The newest turn
/// is never lost to its size: when it alone is larger, its answer is cut to
/// what fits (and older turns are left out); only a question that alone
/// exceeds the cap leaves no context.
pub fn recent(turns: &[Turn], settings: &ContextSettings) -> Vec<Turn> {
    let newest = &turns[turns.len().saturating_sub(settings.turns as usize)..];
    let cap = u64::from(settings.max_tokens);
    let mut spent = 0;
    let mut start = newest.len();
    for (i, turn) in newest.iter().enumerate().rev() {
        spent += turn_tokens(turn);
        if spent > cap {
            break;
        }
        start = i;
    }
    if start == newest.len() {
        // The newest alone does not fit: cut its answer, if its question fits.
        return newest
            .last()
            .and_then(|turn| cut_to_fit(turn, cap))
            .into_iter()
            .collect();
    }
    newest[start..].to_vec()
}

/// `turn` with its answer cut to the longest start that keeps the turn
/// within `cap` tokens (`None` when its question alone exceeds it).
fn cut_to_fit(turn: &Turn, cap: u64) -> Option<Turn> {
    let without_answer = worst_tokens(&turn.question) + 8;
    if without_answer > cap {
        return None;
    }
    let allowed = cap - without_answer;
    // Char boundaries, in order: a longer start never costs fewer tokens.
    let ends: Vec<usize> = turn
        .answer
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .chain([turn.answer.len()])
        .collect();
    let fitting = ends.partition_point(|&end| worst_tokens(&turn.answer[..end]) <= allowed);
    let end = if fitting == 0 { 0 } else { ends[fitting - 1] };
    Some(Turn {
        question: turn.question.clone(),
        answer: turn.answer[..end].to_string(),
        ..turn.clone()
    })
}

/// What keys an answer given with `turns`: the turns as sent and how the
/// follow-up was retrieved. `None` for a first question, whose key stays
/// what it always was.
pub fn context_digest(turns: &[Turn], retrieval: Retrieval) -> Option<String> {
    if turns.is_empty() {
        return None;
    }
    let mut parts = vec![retrieval.as_str()];
    for turn in turns {
        parts.push(&turn.question);
        parts.push(&turn.answer);
    }
    Some(md5_of_parts(&parts))
}

/// The turns as chat messages, oldest first.
pub fn turn_messages(turns: &[Turn]) -> Vec<ChatMessage> {
    turns
        .iter()
        .flat_map(|turn| {
            [
                ChatMessage::new(Role::User, turn.question.clone()),
                ChatMessage::new(Role::Assistant, turn.answer.clone()),
            ]
        })
        .collect()
}

pub const REWRITE_PROMPT: &str = "Rewrite the user's last question as a standalone question that \
can be understood without the conversation before it: resolve pronouns and references to earlier \
turns. Keep its language and meaning; do not answer it. Reply with the standalone question only.";

/// The rewrite's `max_tokens`: a question, not an answer.
pub const REWRITE_MAX_TOKENS: u32 = 120;

/// The chat call that makes a follow-up standalone: its prompt, the
/// turns, and the question.
pub fn rewrite_messages(turns: &[Turn], question: &str) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::new(Role::System, REWRITE_PROMPT)];
    messages.extend(turn_messages(turns));
    messages.push(ChatMessage::new(
        Role::User,
        format!("Follow-up question: {question}"),
    ));
    messages
}

/// The standalone question from the rewrite's reply: trimmed of quotes and
/// a `Standalone question:` label; the question itself when the reply is
/// empty or longer than any question may be.
pub fn standalone(reply: &str, question: &str) -> String {
    let mut text = reply.trim();
    for label in ["standalone question:", "question:"] {
        if text
            .get(..label.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(label))
        {
            text = text[label.len()..].trim();
        }
    }
    let text = text
        .trim_matches(|c| c == '"' || c == '“' || c == '”')
        .trim();
    if text.is_empty() || text.chars().count() > crate::chat::query::MAX_QUESTION_CHARS {
        question.to_string()
    } else {
        text.to_string()
    }
}

/// What a follow-up embeds: per `retrieval`, the rewrite (given), the
/// recent user turns with the question, or the question.
pub fn retrieval_text(
    retrieval: Retrieval,
    turns: &[Turn],
    question: &str,
    rewritten: Option<&str>,
) -> String {
    match (retrieval, rewritten) {
        (Retrieval::Rewrite, Some(rewritten)) => rewritten.to_string(),
        (Retrieval::Recent, _) => {
            let mut text: Vec<&str> = turns.iter().map(|t| t.question.as_str()).collect();
            text.push(question);
            text.join("\n")
        }
        _ => question.to_string(),
    }
}

/// The most tokens answering with `turns` adds to a question's worst case:
/// the turns in the answer's prompt and, with a rewrite, the rewrite call
/// (its prompt carries the turns and the question too, and its reply).
pub fn worst_case_extra_tokens(turns: &[Turn], question: &str, retrieval: Retrieval) -> u64 {
    if turns.is_empty() {
        return 0;
    }
    let in_prompt: u64 = turns.iter().map(turn_tokens).sum();
    match retrieval {
        Retrieval::Rewrite => in_prompt + rewrite_worst_case_tokens(turns, question),
        Retrieval::Recent | Retrieval::Question => in_prompt,
    }
}

/// The most tokens the rewrite call can cost: its prompt (with the turns
/// and the question) and a reply of [`REWRITE_MAX_TOKENS`]. What a rewrite
/// that may have been billed but never reported is charged.
pub fn rewrite_worst_case_tokens(turns: &[Turn], question: &str) -> u64 {
    let in_prompt: u64 = turns.iter().map(turn_tokens).sum();
    worst_tokens(REWRITE_PROMPT)
        + in_prompt
        + worst_tokens(question)
        + 20
        + u64::from(REWRITE_MAX_TOKENS)
}

/// A message as a conversation's turns are read from Postgres: role, text,
/// expiry (Unix seconds), its id, and for an answer the id of the question
/// it answers (`None` when stored before answers said so).
pub type StoredMessage = (String, String, f64, i64, Option<i64>);

/// Turns from a conversation's messages (oldest first): each question with
/// its answer (expiring with the earlier of the two), in the questions'
/// order. An answer names its question, so two follow-ups in flight at once
/// (both questions stored before either answer) keep both turns, each
/// answer with its own question; one stored before answers named their
/// question pairs with the question just before it. A question without an
/// answer (still being written) is left out.
pub fn turns_of(messages: &[StoredMessage]) -> Vec<Turn> {
    // Each question (id, text, expiry), and its answer (text, expiry) once found.
    type Asked<'a> = (i64, &'a str, f64, Option<(&'a str, f64)>);
    let mut questions: Vec<Asked> = Vec::new();
    let mut last_unanswered: Option<usize> = None;
    for (role, content, expires_at, id, reply_to) in messages {
        match role.as_str() {
            "user" => {
                questions.push((*id, content, *expires_at, None));
                last_unanswered = Some(questions.len() - 1);
            }
            "assistant" => {
                let asked = match reply_to {
                    Some(question) => questions.iter().position(|q| q.0 == *question),
                    None => last_unanswered.take(),
                };
                if let Some(asked) = asked {
                    questions[asked].3.get_or_insert((content, *expires_at));
                }
            }
            _ => {}
        }
    }
    questions
        .into_iter()
        .filter_map(|(id, question, asked_expiry, answer)| {
            let (answer, answer_expiry) = answer?;
            Some(Turn {
                question: question.to_string(),
                answer: answer.to_string(),
                expires_at: asked_expiry.min(answer_expiry).max(0.0) as u64,
                question_id: Some(id),
            })
        })
        .collect()
}

/// The most bytes of an answer a turn keeps in Redis. A text of n bytes
/// counts at least n / 3 tokens for [`worst_tokens`] (whatever its script),
/// so a prompt's turns, capped at `max_tokens`, never send more than this of
/// an answer: what is kept never changes what is sent.
pub fn kept_answer_bytes(settings: &ContextSettings) -> usize {
    settings.max_tokens as usize * WORST_CASE_CHARS_PER_TOKEN
}

/// An answer as a turn keeps it in Redis: at most [`kept_answer_bytes`], cut
/// at a character boundary.
pub fn kept_answer(answer: &str, settings: &ContextSettings) -> String {
    let mut end = answer.len().min(kept_answer_bytes(settings));
    while !answer.is_char_boundary(end) {
        end -= 1;
    }
    answer[..end].to_string()
}

/// The most bytes a session's kept turns hold in Redis (the marker and
/// `turns` turns, each a JSON object with a question of at most
/// `MAX_QUESTION_CHARS` characters and a kept answer; JSON at most doubles a
/// text's bytes, as only whitespace controls are escaped): the bound the
/// table of Redis keys states for the turns family.
pub fn kept_turns_max_bytes(settings: &ContextSettings) -> usize {
    let question = crate::chat::query::MAX_QUESTION_CHARS * 4;
    // The JSON object's keys, quotes, its expiry and question id: 64 bytes.
    let turn = 2 * (question + kept_answer_bytes(settings)) + 64;
    TURNS_MARKER.len() + settings.turns as usize * turn
}

/// The first element of a session's turns list: the list exists (with
/// this marker) only while it holds every turn of the current conversation
/// (up to the count kept). A question asked alone removes it, as its
/// exchange does not join the list; a follow-up that finds no list reads the
/// turns from Postgres.
pub const TURNS_MARKER: &str = "*";

/// Both conversation scripts' keys: the session's conversation, its turns.
fn session_keys(session_id: &str) -> Vec<String> {
    vec![keys::conversation(session_id), keys::turns(session_id)]
}

/// Makes `conversation` the session's current one in Redis, replacing what
/// was there: with `turns` (oldest first) as all its last turns, or with
/// `None`, turns unknown (read from Postgres by the next follow-up).
pub struct RememberConversation<'a> {
    pub session_id: &'a str,
    pub conversation: RememberedConversation,
    pub turns: Option<&'a [Turn]>,
    pub ttl_seconds: u64,
}

impl Script for RememberConversation<'_> {
    const SOURCE: &'static str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"#;
    type Reply = ();

    fn keys(&self) -> Vec<String> {
        session_keys(self.session_id)
    }

    /// The conversation, the TTL, "1" when the turns are known, then the
    /// marker and each turn (JSON).
    fn args(&self) -> Vec<Arg> {
        let mut args = vec![
            Arg::from(self.conversation.value()),
            Arg::from(self.ttl_seconds),
            Arg::from(if self.turns.is_some() { "1" } else { "0" }),
        ];
        if let Some(turns) = self.turns {
            args.push(Arg::from(TURNS_MARKER));
            args.extend(
                turns
                    .iter()
                    .map(|turn| Arg::from(serde_json::to_vec(turn).expect("turns serialise"))),
            );
        }
        args
    }

    fn parse(&self, _: Vec<Value>) {}
}

/// Adds a follow-up's turn to the session's kept turns, once its exchange
/// is stored, keeping the last `keep`; `now` is what Redis remembers of the
/// conversation from then on. Nothing changes when the session's current
/// conversation is another (a later question started or named one) or
/// unknown, or its turns are not all kept (Redis lost them, or a question
/// asked alone came meanwhile): the next follow-up reads them from
/// Postgres, this one included. Stored elsewhere (`now` is not `asked_in`:
/// the conversation was gone), the turns are marked unknown.
pub struct AppendTurn<'a> {
    pub session_id: &'a str,
    /// The conversation the question was asked in.
    pub asked_in: i64,
    /// Where the exchange was stored: `asked_in`, or the conversation
    /// Postgres found or made instead when it was gone.
    pub now: RememberedConversation,
    pub turn: &'a Turn,
    pub keep: u32,
    pub ttl_seconds: u64,
}

impl Script for AppendTurn<'_> {
    const SOURCE: &'static str = r#"
local current = redis.call('GET', KEYS[1])
if not current or string.match(current, '^(%d+)') ~= ARGV[1] then
  return 0
end
if ARGV[6] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[5])
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[5])
-- Already kept (read back from Postgres by a follow-up that came after
-- this one's exchange was stored): kept once.
local id = tonumber(ARGV[8])
if id then
  for _, kept in ipairs(redis.call('LRANGE', KEYS[2], 1, -1)) do
    local ok, turn = pcall(cjson.decode, kept)
    if ok and type(turn) == 'table' and turn.i == id then
      redis.call('EXPIRE', KEYS[2], ARGV[5])
      return 1
    end
  end
end
redis.call('RPUSH', KEYS[2], ARGV[3])
local keep = tonumber(ARGV[4])
local length = redis.call('LLEN', KEYS[2])
if length > keep + 1 then
  redis.call('LTRIM', KEYS[2], length - keep - 1, -1)
  redis.call('LSET', KEYS[2], 0, ARGV[7])
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"#;
    type Reply = ();

    fn keys(&self) -> Vec<String> {
        session_keys(self.session_id)
    }

    /// The id asked in, the conversation now, the turn (JSON), how many to
    /// keep, the TTL, "1" when stored in another conversation, the marker,
    /// the turn's question id ("" when not known).
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.asked_in.to_string()),
            Arg::from(self.now.value()),
            Arg::from(serde_json::to_vec(self.turn).expect("turns serialise")),
            Arg::from(u64::from(self.keep.max(1))),
            Arg::from(self.ttl_seconds),
            Arg::from(if self.now.id == self.asked_in {
                "0"
            } else {
                "1"
            }),
            Arg::from(TURNS_MARKER),
            Arg::from(
                self.turn
                    .question_id
                    .map_or_else(String::new, |id| id.to_string()),
            ),
        ]
    }

    fn parse(&self, _: Vec<Value>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> ConversationHandle {
        ConversationHandle::parse("conv_00000000000000000000000000000009").unwrap()
    }

    fn turn(q: &str, a: &str) -> Turn {
        Turn {
            question: q.into(),
            answer: a.into(),
            expires_at: 0,
            question_id: None,
        }
    }

    fn settings(turns: u32, max_tokens: u32) -> ContextSettings {
        ContextSettings {
            turns,
            max_tokens,
            retrieval: Retrieval::Rewrite,
            kept_seconds: 1800,
        }
    }

    #[test]
    fn recent_keeps_the_newest_turns_within_count_and_tokens() {
        let turns: Vec<Turn> = (0..8)
            .map(|i| turn(&format!("q{i}"), &"a".repeat(30)))
            .collect();
        let kept = recent(&turns, &settings(3, 10_000));
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].question, "q5");
        assert_eq!(kept[2].question, "q7");
        // Each turn costs 1 + 10 + 8 = 19 tokens at most: two fit in 40.
        let kept = recent(&turns, &settings(5, 40));
        assert_eq!(
            kept.iter().map(|t| t.question.as_str()).collect::<Vec<_>>(),
            ["q6", "q7"]
        );
        // The newest alone too large: cut to fit, never dropped (and older
        // turns never jump the queue).
        let big = vec![turn("old", "a"), turn("new", &"a".repeat(3000))];
        let cut = recent(&big, &settings(5, 100));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].question, "new");
        assert!(!cut[0].answer.is_empty() && cut[0].answer.len() < 3000);
        assert!(turn_tokens(&cut[0]) <= 100);
        assert!(
            turn_tokens(&Turn {
                answer: format!("{}a", cut[0].answer),
                ..cut[0].clone()
            }) > 100,
            "the longest start that fits"
        );
        // Cut from what Redis keeps or from Postgres's whole answer: the same turn.
        let kept = turn("new", &kept_answer(&big[1].answer, &settings(5, 100)));
        assert_eq!(recent(&[kept], &settings(5, 100)), cut);
        // Non-ASCII is cut at a character boundary.
        let japanese = recent(&[turn("q", &"日本語".repeat(500))], &settings(5, 100));
        assert!(japanese[0].answer.chars().all(|c| "日本語".contains(c)));
        // A question that alone exceeds the cap leaves no context.
        assert!(recent(&[turn(&"q".repeat(600), "a")], &settings(5, 100)).is_empty());
        assert!(recent(&turns, &settings(0, 10_000)).is_empty());
    }

    #[test]
    fn kept_turns_are_bounded_in_bytes() {
        let settings = settings(5, 1500);
        let answer = "語".repeat(10_000);
        let kept = kept_answer(&answer, &settings);
        assert!(kept.len() <= kept_answer_bytes(&settings));
        assert!(kept.len() > kept_answer_bytes(&settings) - 3);
        let question = "\n".repeat(crate::chat::query::MAX_QUESTION_CHARS / 2);
        let widest = Turn {
            expires_at: u64::MAX,
            question_id: Some(i64::MIN),
            ..turn(&question, &"\n".repeat(4500))
        };
        let json = serde_json::to_vec(&widest).unwrap();
        assert!(
            TURNS_MARKER.len() + 5 * json.len() <= kept_turns_max_bytes(&settings),
            "the worst JSON turn fits the stated bound"
        );
    }

    #[test]
    fn the_digest_is_none_for_a_first_question_and_follows_every_turn() {
        assert_eq!(context_digest(&[], Retrieval::Rewrite), None);
        let one = [turn("What is a transformer?", "A model.")];
        let digest = context_digest(&one, Retrieval::Rewrite).unwrap();
        assert_eq!(digest.len(), 32);
        assert_ne!(
            Some(digest.clone()),
            context_digest(
                &[turn("What is a transformer?", "A film.")],
                Retrieval::Rewrite
            )
        );
        assert_ne!(
            Some(digest.clone()),
            context_digest(&one, Retrieval::Recent)
        );
        // Parts are length-prefixed: moving text between question and answer changes it.
        assert_ne!(
            context_digest(&[turn("ab", "c")], Retrieval::Rewrite),
            context_digest(&[turn("a", "bc")], Retrieval::Rewrite)
        );
    }

    #[test]
    fn the_rewrite_carries_the_turns_then_the_follow_up() {
        let turns = [turn("What is a transformer?", "A neural network.")];
        let messages = rewrite_messages(&turns, "Who introduced it?");
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0].content, REWRITE_PROMPT);
        assert_eq!(
            (messages[1].role, messages[2].role, messages[3].role),
            (Role::User, Role::Assistant, Role::User)
        );
        assert!(messages[3].content.ends_with("Who introduced it?"));
    }

    #[test]
    fn a_standalone_reply_is_cleaned_or_replaced_by_the_question() {
        assert_eq!(
            standalone(
                " Standalone question: \"Who introduced the transformer?\" ",
                "q"
            ),
            "Who introduced the transformer?"
        );
        assert_eq!(standalone("  ", "Who?"), "Who?");
        // A label's length may fall inside a character of another language.
        assert_eq!(
            standalone("Qui a présenté le transformer ?", "q"),
            "Qui a présenté le transformer ?"
        );
        assert_eq!(
            standalone("Кто представил трансформер?", "q"),
            "Кто представил трансформер?"
        );
        assert_eq!(standalone(&"x".repeat(5000), "Who?"), "Who?");
    }

    #[test]
    fn retrieval_text_follows_the_setting() {
        let turns = [turn("What is a transformer?", "A model.")];
        let q = "Who introduced it?";
        assert_eq!(
            retrieval_text(
                Retrieval::Rewrite,
                &turns,
                q,
                Some("Who introduced transformers?")
            ),
            "Who introduced transformers?"
        );
        assert_eq!(
            retrieval_text(Retrieval::Recent, &turns, q, None),
            "What is a transformer?\nWho introduced it?"
        );
        assert_eq!(retrieval_text(Retrieval::Question, &turns, q, None), q);
    }

    #[test]
    fn the_worst_case_covers_the_turns_twice_with_a_rewrite() {
        let turns = [turn(&"q".repeat(300), &"a".repeat(900))];
        assert_eq!(worst_case_extra_tokens(&[], "q", Retrieval::Rewrite), 0);
        let plain = worst_case_extra_tokens(&turns, "q", Retrieval::Question);
        assert!(plain >= 1200 / 3);
        let with_rewrite = worst_case_extra_tokens(&turns, "q", Retrieval::Rewrite);
        let rewrite_prompt: usize = rewrite_messages(&turns, "q")
            .iter()
            .map(|m| m.content.len())
            .sum();
        assert!(
            with_rewrite >= plain + (rewrite_prompt / 3) as u64 + u64::from(REWRITE_MAX_TOKENS)
        );
    }

    #[test]
    fn turns_pair_each_question_with_its_answer() {
        // Stored before answers named their question: the one just before.
        let m =
            |role: &str, text: &str, id: i64| (role.to_string(), text.to_string(), 100.0, id, None);
        let turns = turns_of(&[
            m("assistant", "orphan", 1),
            m("user", "q1", 2),
            ("assistant".into(), "a1".into(), 90.0, 3, None),
            m("user", "q2 unanswered", 4),
            m("user", "q3", 5),
            m("assistant", "a3", 6),
        ]);
        let expiring = |t: Turn, at, id| Turn {
            expires_at: at,
            question_id: Some(id),
            ..t
        };
        assert_eq!(
            turns,
            vec![
                expiring(turn("q1", "a1"), 90, 2),
                expiring(turn("q3", "a3"), 100, 5)
            ]
        );
        // Past its history's expiry a turn is never sent; one of unknown expiry is.
        let kept = unexpired(turns.clone(), 95);
        assert_eq!(kept, vec![turns[1].clone()]);
        assert_eq!(unexpired(vec![turn("q", "a")], u64::MAX).len(), 1);
    }

    /// Issue #38 (Low): two follow-ups in flight at once store both
    /// questions before either answer; each answer names its question, so
    /// both turns are read back, in the questions' order.
    #[test]
    fn two_follow_ups_in_flight_keep_both_turns() {
        let m = |role: &str, text: &str, id: i64, reply_to: Option<i64>| {
            (role.to_string(), text.to_string(), 100.0, id, reply_to)
        };
        let turns = turns_of(&[
            m("user", "first?", 10, None),
            m("user", "second?", 11, None),
            m("assistant", "answer to second", 13, Some(11)),
            m("assistant", "answer to first", 12, Some(10)),
            m(
                "assistant",
                "answer to a question outside the window",
                14,
                Some(2),
            ),
        ]);
        assert_eq!(
            turns
                .iter()
                .map(|t| (t.question.as_str(), t.answer.as_str(), t.question_id))
                .collect::<Vec<_>>(),
            [
                ("first?", "answer to first", Some(10)),
                ("second?", "answer to second", Some(11))
            ]
        );
    }

    #[test]
    fn retrieval_reads_its_three_names() {
        assert_eq!(Retrieval::parse(" Rewrite "), Some(Retrieval::Rewrite));
        assert_eq!(Retrieval::parse("recent"), Some(Retrieval::Recent));
        assert_eq!(Retrieval::parse("QUESTION"), Some(Retrieval::Question));
        assert_eq!(Retrieval::parse("always"), None);
    }

    #[test]
    fn a_response_names_only_the_conversation_its_request_made_or_named() {
        let current = RememberedConversation::refreshed_on(4, handle(), 1);
        let other = ConversationHandle::parse("conv_0000000000000000000000000000000a").unwrap();
        let named = ConversationChoice::Named(handle());
        assert_eq!(handle_shown(&named, Some(current), false), Some(handle()));
        assert_eq!(
            handle_shown(&ConversationChoice::Named(other), Some(current), false),
            None
        );
        for choice in [ConversationChoice::Current, ConversationChoice::New] {
            assert_eq!(handle_shown(&choice, Some(current), true), Some(handle()));
            assert_eq!(
                handle_shown(&choice, Some(current), false),
                None,
                "{choice:?}"
            );
            assert_eq!(handle_shown(&choice, None, true), None);
        }
    }

    #[test]
    fn the_scripts_name_the_sessions_keys_and_say_what_changed() {
        let t = turn("q", "a");
        let append = AppendTurn {
            session_id: "s",
            asked_in: 4,
            now: RememberedConversation::refreshed_on(9, handle(), 20_000),
            turn: &t,
            keep: 5,
            ttl_seconds: 60,
        };
        assert_eq!(
            append.keys(),
            vec![keys::conversation("s"), keys::turns("s")]
        );
        let args = append.args();
        assert_eq!(args[0], Arg::from("4"));
        assert_eq!(args[1], Arg::from(format!("9:20000:{}", handle())));
        assert_eq!(
            args[5],
            Arg::from("1"),
            "stored elsewhere: the turns are unknown"
        );
        let turns = [t.clone(), t];
        let remember = RememberConversation {
            session_id: "s",
            conversation: RememberedConversation::refreshed_on(4, handle(), 1),
            turns: Some(&turns),
            ttl_seconds: 60,
        };
        let args = remember.args();
        assert_eq!(args.len(), 6);
        assert_eq!(
            (&args[2], &args[3]),
            (&Arg::from("1"), &Arg::from(TURNS_MARKER))
        );
        let unknown = RememberConversation {
            turns: None,
            ..remember
        };
        assert_eq!(unknown.args().len(), 3);
        assert_eq!(
            ConversationChoice::Named(handle()).lookup_arg(),
            handle().to_string()
        );
        assert_eq!(ConversationChoice::New.lookup_arg(), "new");
        assert_eq!(ConversationChoice::Current.lookup_arg(), "");
    }
}
