//! The semantic answer cache: on an exact miss, a first question's embedding
//! (the one retrieval needs anyway) is searched among the questions answered
//! before in the same answer scope (everything but the question that shapes
//! an answer: prompt, models, collection, `top_k`, page context, and the
//! session in session scope) and of the collection's current generation. At
//! or above the threshold, the answer cached for the nearest one is served.
//!
//! Qdrant holds only the index, in a collection of its own
//! ([`collection_name`]): one point per cached answer, whose id is the
//! answer's cache-key digest as a UUID, with its question's vector and
//! `{scope, session, page, generation, expires_at, question, confirmed}`. The answer
//! itself stays in Redis under its exact key and is read from there
//! ([`crate::cache::answers::ReadAnswer`], which checks the generation), so
//! whatever removes an answer (its TTL, `/health/cache/clear`, a new
//! generation) removes it from the semantic cache too: a point whose answer
//! is gone is never served, and the clears and the retention cleanup delete
//! such points so the collection stays bounded.
//!
//! Follow-ups are not matched: their answers depend on their turns, which
//! two conversations almost never share.
//!
//! In `global` scope, answers are shared across sessions, so one session's
//! words must neither reach another nor steer what others are served: a
//! match never names an earlier question asked in another session
//! ([`Candidate::question_for`]), and a search serves another session's
//! answer only once it is `confirmed` (a second session was served it as an
//! exact hit, or an admin's warm-up computed it; see
//! [`crate::cache::answers::Confirmation`]), so a stranger cannot plant the
//! answer to a near miss for everyone who asks after.

use serde_json::{json, Value};

pub use crate::cache::answers::answer_scope;
use crate::chat::query::QueryRequest;
use crate::chat::upstream::{Point, UpstreamError};
use crate::redis::keys::{self, normalise};

/// The Qdrant collection of the answered questions of `collection`'s answers.
pub fn collection_name(collection: &str) -> String {
    format!("{collection}_answer_cache")
}

/// How many nearest questions a lookup reads: the first whose answer Redis
/// still holds is served (a nearer one's may have expired or been cleared
/// since its point was written).
pub const CANDIDATES: u32 = 3;

/// The model part of a name, case-folded (`sentence-transformers/all-MiniLM-L6-v2`
/// is `all-minilm-l6-v2`).
fn model_key(model: &str) -> String {
    let model = model.trim().to_ascii_lowercase();
    model.rsplit('/').next().unwrap_or_default().to_string()
}

fn similarity(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err(format!(
            "`{raw}`: expected a cosine similarity above 0 and at most 1"
        )),
    }
}

/// `semantic_cache_threshold`, for `embedding_model`: unset, blank or `off`,
/// the semantic cache is off (no threshold measured on the labelled set in
/// `deploy/bench/semantic` reaches precision 0.99, so none is on by default);
/// a cosine similarity in `(0, 1]`; or one per embedding model,
/// `model=threshold,...` (a model not listed is off), since a threshold
/// means nothing for another model.
pub fn parse_threshold(raw: Option<&str>, embedding_model: &str) -> Result<Option<f64>, String> {
    let raw = raw.map(str::trim).unwrap_or_default();
    if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if !raw.contains('=') {
        return similarity(raw).map(Some);
    }
    let configured = model_key(embedding_model);
    let mut found = None;
    for entry in raw.split(',').filter(|e| !e.trim().is_empty()) {
        let (model, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("`{entry}`: expected model=threshold"))?;
        let value = similarity(value)?;
        if model.trim().is_empty() {
            return Err(format!("`{entry}`: no model named"));
        }
        if model_key(model) == configured {
            found = Some(value);
        }
    }
    Ok(found)
}

/// A cached answer's point id: its cache-key digest as a UUID (so storing
/// the same question again replaces its point). `None` for a key that is
/// not a query-cache key.
pub fn point_id(cache_key: &str) -> Option<String> {
    let digest = cache_key.strip_prefix(keys::QUERY_PREFIX)?;
    if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let d = digest.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &d[..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..]
    ))
}

/// The cache key a point id names (the inverse of [`point_id`]); `None` for
/// an id that is not one.
pub fn cache_key_of(id: &str) -> Option<String> {
    let digest: String = id.chars().filter(|c| *c != '-').collect();
    let key = keys::query_cache(&digest.to_ascii_lowercase());
    point_id(&key).is_some().then_some(key)
}

/// An answer just cached, to be indexed once the client has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed {
    pub cache_key: String,
    pub scope: String,
    pub session: String,
    pub page: String,
    /// The collection's generation the answer was computed from.
    pub generation: String,
    /// When the answer expires from Redis (epoch seconds).
    pub expires_at: u64,
    pub question: String,
    pub vector: Vec<f32>,
    /// Whether it may serve other sessions of a `global` scope (see the
    /// module's documentation): `false` unless set (`confirmed(true)`).
    pub confirmed: bool,
}

impl Indexed {
    /// The entry for `request`'s answer of `scope` ([`answer_scope`])
    /// stored under `cache_key`, or `None` when the key cannot be a point.
    pub fn new(
        request: &QueryRequest,
        scope: String,
        cache_key: &str,
        generation: &[u8],
        now_epoch_seconds: u64,
        ttl_seconds: u64,
        vector: Vec<f32>,
    ) -> Option<Self> {
        point_id(cache_key)?;
        Some(Self {
            cache_key: cache_key.to_string(),
            scope,
            session: request.session_id.to_string(),
            page: crate::cache::answers::normalised_page(request),
            generation: String::from_utf8_lossy(generation).into_owned(),
            expires_at: now_epoch_seconds + ttl_seconds,
            question: request.question.trim().to_string(),
            vector,
            confirmed: false,
        })
    }

    /// The same, `confirmed` as given.
    pub fn confirmed(self, confirmed: bool) -> Self {
        Self { confirmed, ..self }
    }

    pub fn point(&self) -> Point {
        Point {
            id: point_id(&self.cache_key).expect("checked when made"),
            vector: self.vector.clone(),
            payload: json!({
                "scope": self.scope,
                "session": self.session,
                "page": self.page,
                "generation": self.generation,
                "expires_at": self.expires_at,
                "question": self.question,
                "confirmed": self.confirmed,
            }),
        }
    }
}

/// How far below the threshold the search asks Qdrant to go: its
/// `score_threshold` may be exclusive, so candidates are asked for from just
/// below it and kept at or above it ([`at_or_above`]).
const SCORE_SLACK: f64 = 1e-6;

/// The candidates at or above `threshold`, nearest first.
pub fn at_or_above(candidates: Vec<Candidate>, threshold: f64) -> Vec<Candidate> {
    candidates
        .into_iter()
        .filter(|c| c.score >= threshold)
        .collect()
}

/// The payload fields a search or a delete filters on, and their index types
/// (created with the collection: Qdrant's filtered search needs them to stay
/// exact and fast as the collection grows).
pub const PAYLOAD_INDEXES: &[(&str, &str)] = &[
    ("scope", "keyword"),
    ("generation", "keyword"),
    ("session", "keyword"),
    ("page", "keyword"),
    ("expires_at", "integer"),
    ("confirmed", "bool"),
];

/// The `PUT /collections/{name}/index` body of one payload index.
pub fn payload_index_request(field: &str, schema: &str) -> Value {
    json!({"field_name": field, "field_schema": schema})
}

/// What a search looks among: a question's answer scope
/// ([`answer_scope`]) and the generation its answer would be of, and who
/// asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Among<'a> {
    pub scope: &'a str,
    pub generation: &'a [u8],
    /// The asking session.
    pub session: &'a str,
    /// Whether the asker was verified as the session's owner (`jwt` mode):
    /// only then is the session's own earlier question shown, as in `none`
    /// mode anyone who knows a session id may ask in it.
    pub verified: bool,
    /// `global` scope: other sessions' answers only once confirmed.
    pub confirmed_only: bool,
}

/// The search for a question's nearest answered questions: of its scope and
/// generation, unexpired, from just below `threshold` (see [`SCORE_SLACK`]);
/// with `confirmed_only` (`global` scope), the asking session's own or
/// confirmed ones. Only the payload a candidate is read from comes back.
pub fn search_request(
    vector: &[f32],
    among: &Among,
    now_epoch_seconds: u64,
    threshold: f64,
) -> Value {
    let mut filter = json!({"must": [
        {"key": "scope", "match": {"value": among.scope}},
        {"key": "generation", "match": {"value": String::from_utf8_lossy(among.generation)}},
        {"key": "expires_at", "range": {"gt": now_epoch_seconds}},
    ]});
    if among.confirmed_only {
        // Qdrant ANDs the clauses: all of `must`, and one of `should`.
        filter["should"] = json!([
            {"key": "confirmed", "match": {"value": true}},
            {"key": "session", "match": {"value": among.session}},
        ]);
    }
    json!({
        "vector": vector,
        "limit": CANDIDATES,
        "score_threshold": threshold - SCORE_SLACK,
        "with_payload": ["question", "session"],
        "filter": filter,
    })
}

/// An answered question near the one asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub cache_key: String,
    pub question: String,
    /// The session that asked it ("" when its point does not say).
    pub session: String,
    pub score: f64,
}

impl Candidate {
    /// Its question, to show the asker as the one matched: only when
    /// `session` asked it and the asker is verified as its owner
    /// (`verified`: `jwt` mode). Another session's words (`global` scope)
    /// are never shown, nor a session's to whoever knows its id.
    pub fn question_for(&self, session: &str, verified: bool) -> Option<&str> {
        (verified && !self.session.is_empty() && self.session == session)
            .then_some(self.question.as_str())
    }
}

/// The candidates of a search's answer, nearest first (hits whose id is not
/// a cache key's are skipped).
pub fn parse_candidates(body: &[u8]) -> Result<Vec<Candidate>, UpstreamError> {
    Ok(crate::chat::upstream::search_hits(body)?
        .iter()
        .filter_map(|hit| {
            Some(Candidate {
                cache_key: cache_key_of(hit["id"].as_str()?)?,
                question: hit["payload"]["question"].as_str()?.to_string(),
                session: hit["payload"]["session"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                score: hit["score"].as_f64()?,
            })
        })
        .collect())
}

/// The `points/payload` (set payload) body that confirms the point of the
/// answer cached under `cache_key`: from then on, it may serve any session
/// of its scope. `None` for a key that is not a query-cache key.
pub fn confirm_request(cache_key: &str) -> Option<Value> {
    Some(json!({"payload": {"confirmed": true}, "points": [point_id(cache_key)?]}))
}

/// What `/health/cache/clear` deletes from the index, as a `points/delete`
/// body; `None` to drop the whole collection.
pub fn clear_request(scope: &crate::cache::invalidation::ClearScope) -> Option<Option<Value>> {
    use crate::cache::invalidation::ClearScope;
    let matching = |key: &str, value: String| json!({"filter": {"must": [{"key": key, "match": {"value": value}}]}});
    match scope {
        ClearScope::All | ClearScope::Query => Some(None),
        ClearScope::Embedding => None,
        ClearScope::Session(session) => Some(Some(matching("session", session.clone()))),
        ClearScope::PageContext(page) => Some(Some(matching("page", normalise(page)))),
    }
}

/// The points of answers expired by `now` (the retention cleanup's).
pub fn expired_request(now_epoch_seconds: u64) -> Value {
    json!({"filter": {"must": [{"key": "expires_at", "range": {"lte": now_epoch_seconds}}]}})
}

/// The `X-Cache-Match` header of a served answer: `exact`, or `semantic`
/// with the cosine similarity of the question it was answered for.
pub fn match_header(score: Option<f64>) -> String {
    match score {
        None => "exact".to_string(),
        Some(score) => format!("semantic; score={score:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::answers::{AnswerShape, CacheScope};
    use crate::cache::invalidation::ClearScope;
    use crate::chat::conversation::ConversationChoice;
    use crate::http::api::SessionId;

    fn request(question: &str, session: &str, page: Option<&str>) -> QueryRequest {
        QueryRequest {
            question: question.into(),
            session_id: SessionId::parse(session).unwrap(),
            page_context: page.map(str::to_string),
            user_id: None,
            stream: false,
            conversation: ConversationChoice::Current,
        }
    }

    fn shape(scope: CacheScope) -> AnswerShape<'static> {
        AnswerShape {
            chat_model: "gpt-4o-mini",
            embedding_model: "all-minilm-l6-v2",
            collection: "docs",
            top_k: 5,
            scope,
        }
    }

    #[test]
    fn the_threshold_is_off_unless_set_and_may_be_set_per_model() {
        for off in [None, Some(""), Some(" "), Some("OFF")] {
            assert_eq!(parse_threshold(off, "all-minilm-l6-v2"), Ok(None));
        }
        assert_eq!(parse_threshold(Some("0.9"), "any"), Ok(Some(0.9)));
        assert_eq!(parse_threshold(Some("1"), "any"), Ok(Some(1.0)));
        let per_model = Some("all-MiniLM-L6-v2=0.95, text-embedding-3-small = 0.9,");
        assert_eq!(
            parse_threshold(per_model, "sentence-transformers/all-minilm-l6-v2"),
            Ok(Some(0.95))
        );
        assert_eq!(
            parse_threshold(per_model, "text-embedding-3-small"),
            Ok(Some(0.9))
        );
        assert_eq!(
            parse_threshold(per_model, "text-embedding-3-large"),
            Ok(None)
        );
        for bad in ["0", "-0.5", "1.01", "high", "NaN", "a=2", "=0.9", "a=0.9,b"] {
            assert!(parse_threshold(Some(bad), "a").is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_differ_by_session_only_in_session_scope_and_always_by_page() {
        let a = request("How do I reset it?", "s1", None);
        let b = request("What is the reset procedure?", "s1", None);
        let other_session = request("How do I reset it?", "s2", None);
        let other_page = request("How do I reset it?", "s1", Some("/billing"));
        let session = shape(CacheScope::Session);
        let global = shape(CacheScope::Global);
        // The question is not part of the scope.
        assert_eq!(answer_scope(&a, &session), answer_scope(&b, &session));
        assert_ne!(
            answer_scope(&a, &session),
            answer_scope(&other_session, &session)
        );
        assert_eq!(
            answer_scope(&a, &global),
            answer_scope(&other_session, &global)
        );
        assert_ne!(
            answer_scope(&a, &global),
            answer_scope(&other_page, &global)
        );
        let mut other_model = global.clone();
        other_model.embedding_model = "text-embedding-3-small";
        assert_ne!(answer_scope(&a, &global), answer_scope(&a, &other_model));
    }

    #[test]
    fn point_ids_and_cache_keys_name_each_other() {
        let key = keys::query_cache("0123456789ABCDEF0123456789abcdef");
        let id = point_id(&key).unwrap();
        assert_eq!(id, "01234567-89ab-cdef-0123-456789abcdef");
        assert!(uuid_shaped(&id));
        assert_eq!(
            cache_key_of(&id).unwrap(),
            keys::query_cache("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(point_id("chatbot:other:abc"), None);
        assert_eq!(point_id(&keys::query_cache("0123")), None);
        assert_eq!(point_id(&keys::query_cache(&"g".repeat(32))), None);
        assert_eq!(cache_key_of("not-a-uuid"), None);
        assert_eq!(cache_key_of("42"), None);
    }

    fn uuid_shaped(id: &str) -> bool {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        groups == [8, 4, 4, 4, 12]
    }

    #[test]
    fn an_indexed_answer_carries_what_a_search_filters_on() {
        let asked = request("  How do I reset it? ", "s1", Some("/Billing "));
        let key = keys::query_cache(&"a".repeat(32));
        let shape = shape(CacheScope::Session);
        let scope = answer_scope(&asked, &shape);
        let indexed = Indexed::new(
            &asked,
            scope.clone(),
            &key,
            b"7",
            1_000,
            3_600,
            vec![0.5; 3],
        )
        .unwrap();
        let point = indexed.point();
        assert_eq!(point.id, point_id(&key).unwrap());
        assert_eq!(point.payload["scope"], answer_scope(&asked, &shape));
        assert_eq!(point.payload["session"], "s1");
        assert_eq!(point.payload["page"], normalise("/Billing "));
        assert_eq!(point.payload["generation"], "7");
        assert_eq!(point.payload["expires_at"], 4_600);
        assert_eq!(point.payload["question"], "How do I reset it?");
        assert_eq!(point.payload["confirmed"], false, "unless confirmed");
        assert_eq!(
            indexed.clone().confirmed(true).point().payload["confirmed"],
            true
        );
        assert!(Indexed::new(&asked, scope, "chatbot:x", b"7", 0, 1, vec![]).is_none());

        let among = Among {
            scope: &indexed.scope,
            generation: b"7",
            session: "s1",
            confirmed_only: false,
            verified: true,
        };
        let search = search_request(&[0.5; 3], &among, 2_000, 0.9);
        assert_eq!(search["limit"], CANDIDATES);
        let asked_from = search["score_threshold"].as_f64().unwrap();
        assert!(asked_from < 0.9 && asked_from > 0.899_99, "{asked_from}");
        let must = search["filter"]["must"].as_array().unwrap();
        assert_eq!(must.len(), 3);
        assert_eq!(must[0]["match"]["value"], point.payload["scope"]);
        assert_eq!(must[1]["match"]["value"], "7");
        assert_eq!(must[2]["range"]["gt"], 2_000);
        // Session scope: no confirmation asked for (the scope is the session's).
        assert!(search["filter"].get("should").is_none());
        // What a candidate is read from comes back: the question and who asked it.
        assert_eq!(search["with_payload"], json!(["question", "session"]));
    }

    #[test]
    fn a_global_search_finds_only_confirmed_answers_or_the_askers_own() {
        let among = Among {
            scope: "global-scope",
            generation: b"3",
            session: "s2",
            confirmed_only: true,
            verified: true,
        };
        let search = search_request(&[0.5; 3], &among, 10, 0.9);
        assert_eq!(search["filter"]["must"].as_array().unwrap().len(), 3);
        assert_eq!(
            search["filter"]["should"],
            json!([
                {"key": "confirmed", "match": {"value": true}},
                {"key": "session", "match": {"value": "s2"}},
            ])
        );
        assert!(PAYLOAD_INDEXES.contains(&("confirmed", "bool")));
        assert!(PAYLOAD_INDEXES.contains(&("session", "keyword")));
        let key = keys::query_cache(&"c".repeat(32));
        assert_eq!(
            confirm_request(&key).unwrap(),
            json!({"payload": {"confirmed": true}, "points": [point_id(&key).unwrap()]})
        );
        assert_eq!(confirm_request("chatbot:x"), None);
    }

    #[test]
    fn a_match_shows_its_question_only_to_the_session_that_asked_it() {
        let candidate = |session: &str| Candidate {
            cache_key: String::new(),
            question: "How do I reset it?".into(),
            session: session.into(),
            score: 0.95,
        };
        assert_eq!(
            candidate("s1").question_for("s1", true),
            Some("How do I reset it?")
        );
        assert_eq!(
            candidate("s1").question_for("s1", false),
            None,
            "none mode: knowing the session id is not being its owner"
        );
        assert_eq!(candidate("s1").question_for("s2", true), None);
        assert_eq!(
            candidate("").question_for("", true),
            None,
            "a point that does not say"
        );
    }

    #[test]
    fn candidates_come_nearest_first_and_skip_what_is_not_a_cache_key() {
        let id = point_id(&keys::query_cache(&"b".repeat(32))).unwrap();
        let body = json!({"result": [
            {"id": id, "score": 0.97, "payload": {"question": "How do I reset it?", "session": "s1"}},
            {"id": 42, "score": 0.95, "payload": {"question": "numbered"}},
            {"id": id, "score": 0.94, "payload": {}},
        ]});
        let found = parse_candidates(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            found,
            vec![Candidate {
                cache_key: keys::query_cache(&"b".repeat(32)),
                question: "How do I reset it?".into(),
                session: "s1".into(),
                score: 0.97,
            }]
        );
        let near = |score| Candidate {
            cache_key: String::new(),
            question: String::new(),
            session: String::new(),
            score,
        };
        let kept = at_or_above(vec![near(0.95), near(0.9), near(0.899_999_5)], 0.9);
        assert_eq!(
            kept,
            vec![near(0.95), near(0.9)],
            "inclusive, nothing below"
        );
        assert!(parse_candidates(b"{}").is_err());
        assert!(parse_candidates(b"<html>").is_err());
    }

    #[test]
    fn clears_drop_the_points_of_what_they_clear() {
        assert_eq!(clear_request(&ClearScope::All), Some(None));
        assert_eq!(clear_request(&ClearScope::Query), Some(None));
        assert_eq!(clear_request(&ClearScope::Embedding), None);
        let session = clear_request(&ClearScope::Session("s1".into()))
            .unwrap()
            .unwrap();
        assert_eq!(session["filter"]["must"][0]["key"], "session");
        assert_eq!(session["filter"]["must"][0]["match"]["value"], "s1");
        let page = clear_request(&ClearScope::PageContext(" /Billing".into()))
            .unwrap()
            .unwrap();
        assert_eq!(
            page["filter"]["must"][0]["match"]["value"],
            normalise(" /Billing")
        );
        assert_eq!(expired_request(9)["filter"]["must"][0]["range"]["lte"], 9);
    }

    #[test]
    fn the_match_header_names_the_kind_and_the_score() {
        assert_eq!(match_header(None), "exact");
        assert_eq!(match_header(Some(0.93456)), "semantic; score=0.9346");
    }
}
