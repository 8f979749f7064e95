//! Promises that hold for every feature (issue #38): every check that
//! protects another user's data or money fails closed, every reservation is
//! settled, a variable that cannot be read is never taken for "unset", and
//! what anonymous clients make Redis hold is bounded in bytes and time. The
//! app composed as spin.toml says, on real Redis and Postgres, with a fault
//! proxy (`redis_faults`) in front of Redis where a test injects errors.

use chatbot_core::config::names;
use chatbot_core::http::api::{SessionId, UserId};
use chatbot_core::redis::keys;
use chatbot_harness::stubs::issuer::{token, SigningKey, AUDIENCE, HS256_SECRET, ISSUER};
use chatbot_harness::stubs::openai::CHAT;
use chatbot_harness::stubs::qdrant::SEARCH;
use chatbot_harness::stubs::Fault;
use chatbot_harness::{BufferedResponse, TestApp};
use serde_json::{json, Value};

const QUERY: &str = "/api/v1/chat/query";

async fn ask_as(app: &TestApp, bearer: Option<&str>, body: Value) -> BufferedResponse {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    app.client()
        .request("POST", QUERY, &headers, serde_json::to_vec(&body).unwrap())
        .await
        .unwrap()
}

fn jwt_builder() -> chatbot_harness::TestAppBuilder {
    TestApp::builder()
        .variable(names::AUTH_MODE, "jwt")
        .variable(names::JWT_HS256_SECRET, HS256_SECRET)
        .variable(names::JWT_ISSUER, ISSUER)
        .variable(names::JWT_AUDIENCE, AUDIENCE)
}

async fn count(app: &TestApp, table: &str) -> i64 {
    app.postgres()
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The tokens charged to `user` on every day Redis still keeps.
async fn tokens_spent(app: &TestApp, user: &str) -> i64 {
    let mut redis = app.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!(
            "{}{}:*",
            keys::USER_TOKENS_PREFIX,
            chatbot_core::redis::digest::md5_of_parts(&[user])
        ))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut total = 0i64;
    for key in keys {
        total += redis::cmd("GET")
            .arg(key)
            .query_async::<i64>(&mut redis)
            .await
            .unwrap();
    }
    total
}

fn reservation_for(question: &str, top_k: u32, max_tokens: u32) -> u64 {
    let request = chatbot_core::chat::query::QueryRequest {
        question: question.into(),
        session_id: SessionId::parse("any").unwrap(),
        page_context: None,
        user_id: Some(UserId::parse("any").unwrap()),
        stream: false,
        conversation: Default::default(),
    };
    chatbot_core::chat::query::worst_case_tokens(&request, top_k, max_tokens)
}

/// Point 3: one provider error on an instance's first request used to be
/// cached as "unset" for the instance's life, turning `jwt` mode into `none`.
#[tokio::test]
async fn a_variable_the_provider_cannot_read_is_a_503_and_is_read_again_next_time() {
    let app = jwt_builder().spawn().await.unwrap();
    let question = json!({"question": "What is AI?", "session_id": "s1"});
    app.app
        .counters
        .failing_variable_reads
        .store(u64::MAX / 2, std::sync::atomic::Ordering::Relaxed);
    let failed = ask_as(&app, None, question.clone()).await;
    assert_eq!(failed.status, 503, "{}", failed.text());
    assert_eq!(failed.json()["status"], "unavailable", "{}", failed.text());
    assert_eq!(failed.header("retry-after"), Some("1"));
    assert_eq!(app.openai.controls().calls(CHAT), 0);

    app.app
        .counters
        .failing_variable_reads
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let unauthenticated = ask_as(&app, None, question.clone()).await;
    assert_eq!(
        unauthenticated.status,
        401,
        "jwt mode holds once the provider answers: {}",
        unauthenticated.text()
    );
    let alice = token(SigningKey::Hs256, "alice");
    let answered = ask_as(&app, Some(&alice), question).await;
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    assert_eq!(count(&app, "messages").await, 2);
}

/// Point 6: a follow-up naming a conversation its session does not have is
/// refused after the budget reserved: the reservation is given back whole.
#[tokio::test]
async fn a_reservation_is_given_back_when_the_conversation_named_is_unknown() {
    let app = TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, "1000000")
        .spawn()
        .await
        .unwrap();
    let unknown = json!({
        "question": "And then?", "session_id": "s1", "user_id": "u1", "conversation_id": 424242
    });
    let refused = ask_as(&app, None, unknown).await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    app.app.settled().await;
    assert_eq!(tokens_spent(&app, "u1").await, 0, "nothing was spent");
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    assert_eq!(count(&app, "messages").await, 0);
}

/// Point 6: a request cut at its deadline settles too: given back whole when
/// the model was never asked (here the passages' search outlived the
/// deadline), kept whole when it was (OpenAI bills a cut stream).
#[tokio::test]
async fn a_reservation_is_settled_at_the_deadline() {
    const TOP_K: u32 = 2;
    const MAX_TOKENS: u32 = 50;
    let app = TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, "1000000")
        .variable(names::TOP_K, TOP_K.to_string())
        .variable(names::CHAT_MAX_TOKENS, MAX_TOKENS.to_string())
        .variable(names::REQUEST_TIMEOUT_MS, "1000")
        .variable(names::QDRANT_TIMEOUT_MS, "10000")
        .variable(names::OPENAI_TIMEOUT_MS, "10000")
        .with_empty_collection()
        .spawn()
        .await
        .unwrap();
    app.qdrant
        .controls()
        .fail_next(SEARCH, 1, Fault::Hang(std::time::Duration::from_secs(5)));
    let body = |question: &str| json!({"question": question, "session_id": "s1", "user_id": "u1"});
    let cut = ask_as(&app, None, body("Before the model?")).await;
    assert_eq!(cut.status, 504, "{}", cut.text());
    app.app.settled().await;
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    assert_eq!(tokens_spent(&app, "u1").await, 0, "given back");

    app.openai
        .controls()
        .fail_next(CHAT, 1, Fault::Hang(std::time::Duration::from_secs(5)));
    let question = "While the model answers?";
    let cut = ask_as(&app, None, body(question)).await;
    assert_eq!(cut.status, 504, "{}", cut.text());
    app.app.settled().await;
    assert_eq!(
        tokens_spent(&app, "u1").await,
        reservation_for(question, TOP_K, MAX_TOKENS) as i64,
        "kept whole: the model may have billed it"
    );
}

/// Point 1: what a session's conversation keeps in Redis lives no longer
/// than a session idles, and a question asked alone (a new session's first)
/// keeps no turns in Redis at all: Postgres holds them.
#[tokio::test]
async fn conversation_state_in_redis_lives_as_long_as_a_session_idles() {
    let app = TestApp::builder()
        .variable(names::SESSION_IDLE_SECONDS, "600")
        .variable(names::RETENTION_DAYS, "30")
        .spawn()
        .await
        .unwrap();
    let mut redis = app.redis().await.unwrap();
    let ttl = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let first = ask_as(
        &app,
        None,
        json!({"question": "What is AI?", "session_id": "s1"}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    app.app.settled().await;
    assert_eq!(
        ttl(keys::turns("s1")).await,
        -2,
        "a first question keeps no turns"
    );
    let pointer = ttl(keys::conversation("s1")).await;
    assert!((1..=600).contains(&pointer), "the pointer's TTL: {pointer}");

    let conversation = first.json()["conversation_id"].clone();
    let follow_up = ask_as(
        &app,
        None,
        json!({"question": "And then?", "session_id": "s1", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(follow_up.status, 200, "{}", follow_up.text());
    app.app.settled().await;
    let turns = ttl(keys::turns("s1")).await;
    assert!((1..=600).contains(&turns), "the turns' TTL: {turns}");
    let kept: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(keys::turns("s1"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let bytes: usize = kept.iter().map(Vec::len).sum();
    assert!(bytes > 0, "a continued conversation keeps its turns");
    // Postgres keeps the exchange for the retention period.
    assert_eq!(count(&app, "messages").await, 4);
}
