//! The semantic answer cache (issue #20): on an exact miss, a first
//! question's embedding is searched among earlier questions of its scope and
//! generation; at or above `semantic_cache_threshold` their answer is served.
//! The stand-in's embeddings are bags of hashed words, so how near two
//! questions are is known exactly (`stubs::openai::embed`); the precision of
//! a real model is measured by `deploy/bench/semantic`, not here.
//! (Stand-in vectors are 64-d bags of words: only how near two texts are
//! matters to the mechanics.)

use chatbot_harness::stubs::openai::{embed, CHAT};
use chatbot_harness::{BufferedResponse, TestApp, DEFAULT_COLLECTION, TEST_EMBEDDING_DIMENSIONS};
use serde_json::{json, Value};

const ASKED: &str = "What is the refund policy for annual plans";
/// Eight of its nine words are the question's: near enough at 0.9.
const PARAPHRASE: &str = "what is the refund policy for annual plans exactly";
/// The question's eight words in another order: near enough at 0.9.
const REWORDED: &str = "the refund policy for annual plans is what";
/// One word in eight differs: below 0.9.
const NEAR_MISS: &str = "What is the refund policy for monthly plans";
const THRESHOLD: &str = "0.9";

fn index() -> String {
    chatbot_core::cache::semantic::collection_name(DEFAULT_COLLECTION)
}

/// The cosine similarity the stand-in's embeddings give two questions (as
/// the handler embeds them: normalised).
fn similarity(a: &str, b: &str) -> f64 {
    let normalised = chatbot_core::redis::keys::normalise;
    let (a, b) = (
        embed(&normalised(a), TEST_EMBEDDING_DIMENSIONS),
        embed(&normalised(b), TEST_EMBEDDING_DIMENSIONS),
    );
    a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum()
}

async fn app_with(variables: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder();
    for (name, value) in variables {
        builder = builder.variable(name, *value);
    }
    let app = builder.spawn().await.unwrap();
    ingest(
        &app,
        "refunds",
        "Annual plans are refunded pro rata within 30 days.",
    )
    .await;
    app
}

async fn ingest(app: &TestApp, id: &str, text: &str) {
    let ingested = app
        .ingest(json!([{"id": id, "source": format!("{id}.md"), "text": text}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
}

/// Asks, and waits until what the handler does after the response is done.
async fn ask(app: &TestApp, question: &str, session: &str) -> BufferedResponse {
    let response = app.ask(question, session).await;
    assert_eq!(response.status, 200, "{}", response.text());
    app.app.settled().await;
    response
}

/// A semantic hit on `matched`'s answer, for `question`: told by its
/// score (the two questions' similarity), as a `none`-mode response never
/// shows the earlier question (anyone who knows a session id may ask in it).
fn served_semantically(response: &BufferedResponse, question: &str, matched: &str) -> Value {
    assert_eq!(
        response.header("x-cache"),
        Some("HIT"),
        "{}",
        response.text()
    );
    assert_eq!(
        response.header("x-cache-match").unwrap(),
        format!("semantic; score={:.4}", similarity(matched, question)),
        "the answer of {matched:?}"
    );
    let body = response.json();
    assert_eq!(body["cached"], true);
    assert!(body.get("matched_question").is_none(), "{body}");
    body
}

fn missed(response: &BufferedResponse) {
    assert_eq!(
        response.header("x-cache"),
        Some("MISS"),
        "{}",
        response.text()
    );
    assert_eq!(response.header("x-cache-match"), None);
    assert!(response.json().get("matched_question").is_none());
}

/// `POST /health/cache/clear`, which must clear the index too.
async fn clear(app: &TestApp, body: Value) {
    let cleared = app
        .admin("POST", "/health/cache/clear", &body)
        .await
        .unwrap();
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert_eq!(cleared.json()["semantic_index"], "cleared");
}

#[test]
fn the_test_questions_are_as_near_as_the_tests_say() {
    let threshold: f64 = THRESHOLD.parse().unwrap();
    assert!(similarity(ASKED, PARAPHRASE) >= threshold);
    assert!(similarity(ASKED, REWORDED) >= threshold);
    assert!(
        similarity(
            NEAR_MISS,
            "what is the refund policy for monthly plans exactly"
        ) >= threshold
    );
    assert!(similarity(ASKED, NEAR_MISS) < threshold);
}

#[tokio::test]
async fn a_paraphrase_is_served_the_earlier_answer_and_a_near_miss_is_not() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    let first = ask(&app, ASKED, "s1").await;
    missed(&first);
    assert_eq!(app.qdrant.point_count(&index()), 1, "the answer is indexed");
    // The fields searches and deletes filter on are indexed in Qdrant.
    let indexes = app.qdrant.payload_indexes(&index());
    let expected: Vec<(&str, &str)> = chatbot_core::cache::semantic::PAYLOAD_INDEXES.to_vec();
    assert_eq!(
        indexes
            .iter()
            .map(|(f, k)| (f.as_str(), k.as_str()))
            .collect::<std::collections::BTreeSet<_>>(),
        expected.into_iter().collect(),
    );

    let paraphrase = ask(&app, PARAPHRASE, "s1").await;
    let body = served_semantically(&paraphrase, PARAPHRASE, ASKED);
    assert_eq!(body["answer"], first.json()["answer"]);
    assert_eq!(body["citations"], first.json()["citations"]);
    assert_eq!(
        paraphrase.header("x-cache-match").unwrap(),
        format!("semantic; score={:.4}", similarity(ASKED, PARAPHRASE))
    );
    assert_eq!(
        app.openai.controls().calls(CHAT),
        1,
        "no chat call for a match"
    );
    // Served from the cache, it is not indexed again.
    assert_eq!(app.qdrant.point_count(&index()), 1);

    missed(&ask(&app, NEAR_MISS, "s1").await);
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    assert_eq!(app.qdrant.point_count(&index()), 2);

    // An exact repeat is an exact hit, named so.
    let repeat = ask(&app, ASKED, "s1").await;
    assert_eq!(repeat.header("x-cache-match"), Some("exact"));
    assert!(repeat.json().get("matched_question").is_none());

    let hits = r#"chatbot_cache_hits_total{cache_type="semantic"}"#;
    let misses = r#"chatbot_cache_misses_total{cache_type="semantic"}"#;
    assert_eq!(app.metric(hits).await, 1.0);
    assert_eq!(
        app.metric(misses).await,
        2.0,
        "the first question and the near miss"
    );
    assert_eq!(
        app.metric(r#"chatbot_cache_hits_total{cache_type="query"}"#)
            .await,
        1.0,
        "only the exact repeat"
    );
    // A semantic hit is a served answer: its history is stored as any other.
    assert_eq!(app.messages_stored("s1").await, 8);
}

#[tokio::test]
async fn the_threshold_decides() {
    let app = app_with(&[("semantic_cache_threshold", "0.8")]).await;
    ask(&app, ASKED, "s1").await;
    // At 0.8 the near miss is near enough: a threshold too low serves a wrong answer.
    served_semantically(&ask(&app, NEAR_MISS, "s1").await, NEAR_MISS, ASKED);
    let strict = app_with(&[("semantic_cache_threshold", "1")]).await;
    ask(&strict, ASKED, "s1").await;
    missed(&ask(&strict, PARAPHRASE, "s1").await);
}

#[tokio::test]
async fn it_is_off_unless_set_for_the_embedding_model_in_use() {
    // The harness's embedding model is the default, text-embedding-3-small.
    let off: [&[(&str, &str)]; 3] = [
        &[],
        &[("semantic_cache_threshold", "off")],
        &[("semantic_cache_threshold", "all-minilm-l6-v2=0.9")],
    ];
    for variables in off {
        let app = app_with(variables).await;
        ask(&app, ASKED, "s1").await;
        missed(&ask(&app, PARAPHRASE, "s1").await);
        assert_eq!(app.qdrant.point_count(&index()), 0, "nothing indexed");
        let misses = r#"chatbot_cache_misses_total{cache_type="semantic"}"#;
        assert_eq!(app.metric(misses).await, 0.0, "no semantic lookups");
    }
    let per_model = app_with(&[(
        "semantic_cache_threshold",
        "all-minilm-l6-v2=0.99,text-embedding-3-small=0.9",
    )])
    .await;
    ask(&per_model, ASKED, "s1").await;
    served_semantically(&ask(&per_model, PARAPHRASE, "s1").await, PARAPHRASE, ASKED);
}

#[tokio::test]
async fn a_setting_that_does_not_parse_is_a_configuration_error() {
    let app = TestApp::builder()
        .variable("semantic_cache_threshold", "1.5")
        .spawn()
        .await
        .unwrap();
    let response = app.ask(ASKED, "s1").await;
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response.text().contains("semantic_cache_threshold"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn in_session_scope_answers_never_cross_sessions_and_in_global_scope_confirmed_ones_do() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    ask(&app, ASKED, "s1").await;
    missed(&ask(&app, PARAPHRASE, "s2").await);
    // s2's own answer is now indexed; s1's paraphrase still finds s1's.
    served_semantically(&ask(&app, REWORDED, "s1").await, REWORDED, ASKED);

    // Globally, a session's answer serves other sessions once a second
    // session was served it exactly, and never names its question to them.
    let global = global_app().await;
    ask(&global, ASKED, "s1").await;
    missed(&ask(&global, PARAPHRASE, "s2").await);
    served_elsewhere(&ask(&global, ASKED, "s3").await, "exact");
    served_anonymously(&ask(&global, REWORDED, "s4").await);
}

async fn global_app() -> TestApp {
    app_with(&[
        ("semantic_cache_threshold", THRESHOLD),
        ("query_cache_scope", "global"),
    ])
    .await
}

/// A hit of another session's answer: `match_kind` is `exact` or `semantic`.
fn served_elsewhere(response: &BufferedResponse, match_kind: &str) {
    assert_eq!(
        response.header("x-cache"),
        Some("HIT"),
        "{}",
        response.text()
    );
    let matched = response.header("x-cache-match").unwrap();
    assert!(matched.starts_with(match_kind), "{matched}");
    assert!(response.json().get("matched_question").is_none());
}

/// Served another session's answer semantically: its question is nowhere but
/// in the answer itself (the stand-in's answers quote their question).
fn served_anonymously(response: &BufferedResponse) {
    served_elsewhere(response, "semantic; score=");
    let mut body = response.json();
    body.as_object_mut().unwrap().remove("answer");
    let rest = body.to_string().to_lowercase();
    assert!(!rest.contains(&ASKED.to_lowercase()), "{rest}");
    for (name, value) in &response.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).to_lowercase();
        assert!(!value.contains(&ASKED.to_lowercase()), "{name}: {value}");
    }
}

/// Issue #38 (4): in `global` scope a semantic hit never shows another
/// session's question, and one session's answer is not served to others
/// until a second session has been served it exactly.
#[tokio::test]
async fn in_global_scope_an_answer_serves_others_only_once_a_second_session_had_it() {
    let app = global_app().await;
    let first = ask(&app, ASKED, "s1").await;
    missed(&first);
    let confirmed = |app: &TestApp| {
        app.qdrant
            .payloads(&index())
            .iter()
            .filter(|p| p["confirmed"] == true)
            .count()
    };
    assert_eq!(app.qdrant.point_count(&index()), 1);
    assert_eq!(confirmed(&app), 0, "indexed unconfirmed");
    // Its own session is served it, naming its own question.
    served_semantically(&ask(&app, PARAPHRASE, "s1").await, PARAPHRASE, ASKED);
    // Not confirmed: another session asking near it is answered afresh.
    missed(&ask(&app, REWORDED, "s2").await);
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    // s1 asking again exactly confirms nothing; s3 (another session) does.
    ask(&app, ASKED, "s1").await;
    assert_eq!(
        confirmed(&app),
        0,
        "the session that stored it confirms nothing"
    );
    let exact = ask(&app, ASKED, "s3").await;
    served_elsewhere(&exact, "exact");
    assert_eq!(exact.json()["answer"], first.json()["answer"]);
    assert_eq!(confirmed(&app), 1);
    // Now it serves a fourth session, whom its question is never shown.
    let fourth = ask(&app, PARAPHRASE, "s4").await;
    served_anonymously(&fourth);
    assert_eq!(fourth.json()["answer"], first.json()["answer"]);
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    // Streamed, the events do not name it either.
    let mut streamed = app
        .raw_client()
        .stream(
            "POST",
            "/api/v1/chat/query",
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            serde_json::to_vec(&json!({"question": "exactly what is the refund policy for annual plans", "session_id": "s5"})).unwrap(),
        )
        .await
        .unwrap();
    assert!(streamed
        .header("x-cache-match")
        .is_some_and(|m| m.starts_with("semantic; score=")));
    let mut text = Vec::new();
    while let Some(chunk) = streamed.next_chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).unwrap();
    assert!(!text.contains("matched_question"), "{text}");
    app.app.settled().await;
    let errors = app
        .metric(r#"chatbot_errors_total{error_type="qdrant"}"#)
        .await;
    assert_eq!(errors, 0.0);
}

/// Issue #38 (4): a stranger cannot plant the answer to a near miss for
/// every later asker: its answer serves another session semantically only
/// once a second session was served it exactly.
#[tokio::test]
async fn in_global_scope_a_planted_answer_serves_no_one_else() {
    let app = global_app().await;
    let planted = ask(&app, NEAR_MISS, "attacker").await;
    missed(&planted);
    // Asking it again, or near it, from the same session confirms nothing.
    served_elsewhere(&ask(&app, NEAR_MISS, "attacker").await, "exact");
    let near = "what is the refund policy for monthly plans exactly";
    served_semantically(&ask(&app, near, "attacker").await, near, NEAR_MISS);
    // Others asking near it are answered afresh (the stand-in answers
    // quote their question: the planted answer quotes NEAR_MISS).
    for (victim, question) in [
        ("v1", near),
        ("v2", "exactly what is the refund policy for monthly plans"),
    ] {
        let asked = ask(&app, question, victim).await;
        missed(&asked);
        assert_ne!(asked.json()["answer"], planted.json()["answer"]);
    }
    assert_eq!(app.openai.controls().calls(CHAT), 3);
    // A second, independent session is served it exactly: from then on it
    // is shared, as exact answers are, and still names no question.
    served_elsewhere(&ask(&app, NEAR_MISS, "v3").await, "exact");
    let shared = ask(&app, "the refund policy for monthly plans is what", "v4").await;
    served_elsewhere(&shared, "semantic; score=");
    assert_eq!(shared.json()["answer"], planted.json()["answer"]);
}

#[tokio::test]
async fn a_page_context_scopes_the_match() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    app.answer(ASKED, "s1", Some("/pricing")).await;
    app.app.settled().await;
    missed(&app.ask_on_page(PARAPHRASE, "s1", Some("/docs")).await);
    app.app.settled().await;
    missed(&app.ask_on_page(PARAPHRASE, "s1", None).await);
    app.app.settled().await;
    let same_page = app.ask_on_page(PARAPHRASE, "s1", Some("/pricing")).await;
    served_semantically(&same_page, PARAPHRASE, ASKED);
}

#[tokio::test]
async fn ingestion_and_cache_clears_drop_what_the_semantic_cache_serves() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    ask(&app, ASKED, "s1").await;
    // A new document: answers of the old generation are not served.
    ingest(&app, "refunds-2", "Monthly plans are not refunded.").await;
    missed(&ask(&app, PARAPHRASE, "s1").await);
    // The paraphrase's answer is of the new generation: served to a third wording.
    let third = "the refund policy for annual plans is what";
    served_semantically(&ask(&app, third, "s1").await, third, PARAPHRASE);

    // A session's clear drops its points and its answers.
    let other = ask(&app, ASKED, "s2").await;
    missed(&other);
    let points = app.qdrant.point_count(&index());
    clear(&app, json!({"session_id": "s1"})).await;
    assert!(app.qdrant.point_count(&index()) < points);
    missed(&ask(&app, third, "s1").await);
    served_semantically(&ask(&app, PARAPHRASE, "s2").await, PARAPHRASE, ASKED);

    // Clearing the query cache drops the whole index.
    clear(&app, json!({"cache_type": "query"})).await;
    assert_eq!(app.qdrant.point_count(&index()), 0);
    missed(
        &ask(
            &app,
            "exactly what is the refund policy for annual plans",
            "s2",
        )
        .await,
    );
}

#[tokio::test]
async fn an_answer_removed_from_redis_is_never_served_from_its_point() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    ask(&app, ASKED, "s1").await;
    // The answer expires (or is evicted) from Redis; its point is still there.
    let mut redis = app.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chatbot:query:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(app.qdrant.point_count(&index()), 1);
    missed(&ask(&app, PARAPHRASE, "s1").await);
}

#[tokio::test]
async fn retention_cleanup_prunes_the_points_of_expired_answers() {
    // Two replicas of one deployment but for the answers' TTL: one second
    // for the first answer, an hour for the second.
    let short = app_with(&[
        ("semantic_cache_threshold", THRESHOLD),
        ("query_cache_ttl_seconds", "1"),
    ])
    .await;
    let long = TestApp::builder()
        .sharing_services_of(&short)
        .variable("semantic_cache_threshold", THRESHOLD)
        .spawn()
        .await
        .unwrap();
    ask(&short, ASKED, "s1").await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    // Its answer has expired: a miss, answered and indexed for an hour.
    missed(&ask(&long, PARAPHRASE, "s1").await);
    assert_eq!(long.qdrant.point_count(&index()), 2);
    let cleanup = long
        .admin("POST", "/admin/cleanup", &json!({}))
        .await
        .unwrap();
    assert_eq!(cleanup.status, 200, "{}", cleanup.text());
    assert_eq!(cleanup.json()["semantic_index"], "pruned");
    // The expired answer's point went; the unexpired one stays, and serves.
    assert_eq!(long.qdrant.point_count(&index()), 1);
    served_semantically(&ask(&long, ASKED, "s1").await, ASKED, PARAPHRASE);
}

#[tokio::test]
async fn an_index_qdrant_refuses_leaves_questions_answered_as_misses() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    // An index made for another embedding model: Qdrant refuses its searches and writes.
    app.qdrant.create_collection(&index(), 8);
    missed(&ask(&app, ASKED, "s1").await);
    missed(&ask(&app, PARAPHRASE, "s1").await);
    assert_eq!(app.qdrant.point_count(&index()), 0);
    assert_eq!(app.openai.controls().calls(CHAT), 2, "both answered");
    let errors = app
        .metric(r#"chatbot_errors_total{error_type="qdrant"}"#)
        .await;
    // Each question: its search refused (answered as a miss), then its
    // answer's write refused (the collection exists, so it is not made
    // anew); nothing else of the scenario calls Qdrant's index.
    assert_eq!(
        errors, 4.0,
        "two failed searches and two failed writes, one each per question"
    );
    // Clearing the query cache drops the index; the next answer makes it anew.
    clear(&app, json!({"cache_type": "query"})).await;
    missed(&ask(&app, ASKED, "s1").await);
    served_semantically(&ask(&app, PARAPHRASE, "s1").await, PARAPHRASE, ASKED);
}

#[tokio::test]
async fn failures_and_cut_answers_are_never_indexed() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    app.openai
        .controls()
        .fail_next(CHAT, 1, chatbot_harness::stubs::Fault::Status(500));
    let failed = app.ask(ASKED, "s1").await;
    assert!(failed.status >= 500, "{}", failed.text());
    app.app.settled().await;
    app.openai.finish_next_answer_with("length");
    let cut = ask(&app, ASKED, "s1").await;
    missed(&cut);
    assert_eq!(app.qdrant.point_count(&index()), 0);
    missed(&ask(&app, PARAPHRASE, "s1").await);
    assert_eq!(app.qdrant.point_count(&index()), 1);
}

#[tokio::test]
async fn a_streamed_semantic_hit_names_its_match_in_its_events() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    ask(&app, ASKED, "s1").await;
    let mut response = app
        .raw_client()
        .stream(
            "POST",
            "/api/v1/chat/query",
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            serde_json::to_vec(&json!({"question": PARAPHRASE, "session_id": "s1"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.header("x-cache"), Some("HIT"));
    assert!(response
        .header("x-cache-match")
        .is_some_and(|m| m.starts_with("semantic; score=")));
    let mut text = Vec::new();
    while let Some(chunk) = response.next_chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).unwrap();
    let data: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let (meta, done) = (&data[0], data.last().unwrap());
    assert_eq!(meta["cached"], true);
    // In `none` mode the earlier question is never shown (see served_semantically).
    assert!(meta.get("matched_question").is_none(), "{meta}");
    assert!(done.get("matched_question").is_none(), "{done}");
    assert_eq!(app.openai.controls().calls(CHAT), 1);
}

/// Issue #38 (8): an index whose first indexing was cut short after the
/// collection was made (here: made without them, then a refused index
/// creation) gets its payload indexes from a later answer, once they all exist.
#[tokio::test]
async fn payload_indexes_missing_after_a_cut_short_indexing_are_made_later() {
    let app = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    app.qdrant
        .create_collection(&index(), TEST_EMBEDDING_DIMENSIONS);
    let indexed_fields = |app: &TestApp| {
        app.qdrant
            .payload_indexes(&index())
            .into_keys()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let expected: std::collections::BTreeSet<String> =
        chatbot_core::cache::semantic::PAYLOAD_INDEXES
            .iter()
            .map(|(field, _)| field.to_string())
            .collect();
    app.qdrant.controls().fail_next(
        chatbot_harness::stubs::qdrant::COLLECTIONS,
        1,
        chatbot_harness::stubs::Fault::Status(500),
    );
    missed(&ask(&app, ASKED, "s1").await);
    assert_eq!(app.qdrant.point_count(&index()), 1, "the point is stored");
    assert!(
        indexed_fields(&app).len() < expected.len(),
        "the first creation failed"
    );
    missed(&ask(&app, NEAR_MISS, "s1").await);
    assert_eq!(indexed_fields(&app), expected);
}

/// Issue #38 (4): an admin's warm-up answers are indexed confirmed, so they
/// serve any session at once (still naming no question).
#[tokio::test]
async fn in_global_scope_warmed_answers_are_confirmed() {
    let app = global_app().await;
    ask(&app, ASKED, "s1").await;
    // The query cache (and the index) cleared: warm-up asks the top question again.
    clear(&app, json!({"cache_type": "query"})).await;
    let warmed = app
        .admin("POST", "/admin/cache/warmup", &json!({"limit": 1}))
        .await
        .unwrap();
    assert_eq!(warmed.status, 200, "{}", warmed.text());
    assert_eq!(warmed.json()["warmed"], 1, "{}", warmed.text());
    let payloads = app.qdrant.payloads(&index());
    assert_eq!(payloads.len(), 1);
    assert_eq!(payloads[0]["confirmed"], true);
    served_anonymously(&ask(&app, PARAPHRASE, "s2").await);
}

/// Issue #38 (privacy): a semantic hit shows the earlier question only to
/// the session's verified owner (`jwt` mode); in `none` mode, where anyone
/// who knows a session id may ask in it, never, so a stranger cannot fish
/// for a session's questions with paraphrases.
#[tokio::test]
async fn a_semantic_hit_shows_the_earlier_question_only_to_its_verified_owner() {
    use chatbot_core::config::names;
    use chatbot_harness::stubs::issuer::{token, SigningKey, AUDIENCE, HS256_SECRET, ISSUER};
    let app = app_with(&[
        ("semantic_cache_threshold", THRESHOLD),
        (names::AUTH_MODE, "jwt"),
        (names::JWT_HS256_SECRET, HS256_SECRET),
        (names::JWT_ISSUER, ISSUER),
        (names::JWT_AUDIENCE, AUDIENCE),
    ])
    .await;
    let alice = token(SigningKey::Hs256, "alice");
    let asked = |question: &str| json!({"question": question, "session_id": "alices"});
    let first = app.ask_as(Some(&alice), asked(ASKED)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    app.app.settled().await;
    let own = app.ask_as(Some(&alice), asked(PARAPHRASE)).await;
    assert_eq!(own.header("x-cache"), Some("HIT"), "{}", own.text());
    assert_eq!(own.json()["matched_question"], ASKED);
    // Bob cannot ask in Alice's session at all.
    let bob = token(SigningKey::Hs256, "bob");
    let refused = app.ask_as(Some(&bob), asked(REWORDED)).await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert!(!refused.text().contains(ASKED));

    // In `none` mode the session's own paraphrase is served, unnamed.
    let open = app_with(&[("semantic_cache_threshold", THRESHOLD)]).await;
    ask(&open, ASKED, "s1").await;
    let stranger = ask(&open, PARAPHRASE, "s1").await;
    served_semantically(&stranger, PARAPHRASE, ASKED);
}
