//! Conversations that remember (issue #19): a follow-up (a question that
//! names its `conversation_id`) is answered with the conversation's earlier
//! turns and retrieved by a standalone rewrite; its answer is cached by those
//! turns; a question that names none is asked alone, as before; the history
//! lists and pages conversations. The OpenAI stand-in records every request
//! it was sent.

use chatbot_harness::stubs::openai::{answer_for, CHAT, EMBEDDINGS};
use chatbot_harness::{BufferedResponse, TestApp};
use serde_json::{json, Value};

const FIRST: &str = "What is a transformer?";
const FOLLOW_UP: &str = "Who introduced it?";
const REWRITE_PROMPT: &str = chatbot_core::chat::conversation::REWRITE_PROMPT;

async fn app_with(variables: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder();
    for (name, value) in variables {
        builder = builder.variable(name, *value);
    }
    let app = builder.spawn().await.unwrap();
    let ingested = app
        .ingest(json!([
            {"id": "attention", "source": "attention.pdf",
             "text": "The transformer architecture was introduced by Vaswani and colleagues at Google in 2017."},
            {"id": "bread", "source": "bread.pdf",
             "text": "Bake the bread at two hundred degrees for forty minutes."}
        ]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    app
}

async fn ask(app: &TestApp, body: Value) -> BufferedResponse {
    app.post_json("/api/v1/chat/query", &body).await.unwrap()
}

async fn answered(app: &TestApp, body: Value) -> Value {
    let response = ask(app, body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The chat requests' message lists, in order.
fn chat_messages(app: &TestApp) -> Vec<Vec<Value>> {
    app.openai
        .chat_requests()
        .iter()
        .map(|request| request["messages"].as_array().unwrap().clone())
        .collect()
}

fn is_rewrite(messages: &[Value]) -> bool {
    messages[0]["content"] == REWRITE_PROMPT
}

/// The texts embedded for questions (after ingestion's one batch).
fn embedded_questions(app: &TestApp) -> Vec<String> {
    app.openai
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(endpoint, _)| *endpoint == EMBEDDINGS)
        .skip(1)
        .filter_map(|(_, body)| body["input"][0].as_str().map(str::to_string))
        .collect()
}

/// Redis forgets everything this test's app kept.
async fn flush_redis(app: &TestApp) {
    let mut redis = app.redis().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
}

fn contents(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_follow_up_is_answered_with_its_turns_and_retrieved_by_its_rewrite() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let conversation = first["conversation_id"].as_str().unwrap().to_string();
    // A first question costs what it always did: one chat call, no rewrite.
    assert_eq!(app.openai.controls().calls(CHAT), 1);

    let response = ask(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-cache"), Some("MISS"));
    let follow_up = response.json();
    assert_eq!(follow_up["conversation_id"], conversation);
    assert_eq!(follow_up["cached"], false);

    let calls = chat_messages(&app);
    assert_eq!(
        calls.len(),
        3,
        "the answer, the rewrite, the follow-up's answer"
    );
    let (rewrite, answer) = (&calls[1], &calls[2]);
    assert!(is_rewrite(rewrite), "{rewrite:?}");
    assert_eq!(
        contents(&rewrite[1..3]),
        [FIRST, first["answer"].as_str().unwrap()]
    );
    assert!(rewrite[3]["content"].as_str().unwrap().ends_with(FOLLOW_UP));
    // The answer is asked with the earlier turn, then the passages and the question.
    assert_eq!(answer.len(), 4, "{answer:?}");
    assert_eq!(
        answer
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["system", "user", "assistant", "user"]
    );
    assert_eq!(
        contents(&answer[1..3]),
        [FIRST, first["answer"].as_str().unwrap()]
    );
    assert!(answer[3]["content"]
        .as_str()
        .unwrap()
        .ends_with(&format!("Question: {FOLLOW_UP}")));
    assert_eq!(follow_up["answer"], answer_for(answer));

    // Retrieval used the rewrite (what the model gave back), not the bare follow-up.
    let rewritten = answer_for(rewrite).to_lowercase();
    let embedded = embedded_questions(&app);
    assert_eq!(embedded.len(), 2, "{embedded:?}");
    assert_eq!(embedded[1], rewritten);
    assert_ne!(embedded[1], FOLLOW_UP.to_lowercase());

    // Rewrites are counted apart from answers.
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains(r#"chatbot_openai_api_calls_total{operation="rewrite"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_turn_of_another_session_or_conversation_is_ever_sent() {
    let app = app_with(&[]).await;
    let mine = answered(&app, json!({"question": FIRST, "session_id": "mine"})).await;
    let mine_id = mine["conversation_id"].as_str().unwrap().to_string();

    // Another session's follow-up is a first question: no turns, no rewrite.
    let theirs = answered(&app, json!({"question": FOLLOW_UP, "session_id": "theirs"})).await;
    // So is one in the same session that does not name the conversation (as the seeds ask).
    let alone = answered(&app, json!({"question": FOLLOW_UP, "session_id": "mine"})).await;
    assert_eq!(
        app.conversation_asked_in_last("mine").await.as_deref(),
        Some(mine_id.as_str()),
        "stored in the session's conversation"
    );
    assert_eq!(
        alone["conversation_id"],
        Value::Null,
        "a request that neither made nor named it is not told its handle"
    );
    assert_ne!(theirs["conversation_id"], mine["conversation_id"]);
    assert!(theirs["conversation_id"].is_string(), "{theirs}");
    // A new conversation in the same session starts with nothing either.
    let fresh = answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "mine", "new_conversation": true}),
    )
    .await;
    let fresh_id = fresh["conversation_id"].as_str().unwrap().to_string();
    assert_ne!(fresh_id, mine_id);
    // ...and is a first question: the same words asked alone in this session answer it.
    assert_eq!(fresh["cached"], true);
    assert_eq!(fresh["answer"], alone["answer"]);
    let calls = chat_messages(&app);
    assert_eq!(calls.len(), 3);
    for call in &calls[1..] {
        assert_eq!(call.len(), 2, "system and question only: {call:?}");
        assert!(!is_rewrite(call));
        assert!(call
            .iter()
            .all(|m| !m["content"].as_str().unwrap().contains(FIRST)));
    }

    // Naming someone else's conversation is refused and writes nothing.
    let stolen = ask(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "thief", "conversation_id": mine_id}),
    )
    .await;
    assert_eq!(stolen.status, 404, "{}", stolen.text());
    assert!(stolen.json()["detail"]
        .as_str()
        .unwrap()
        .contains("names none of session thief's conversations"));
    let sessions: i64 = app
        .postgres()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM user_sessions WHERE session_id = 'thief'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 0, "a refused request leaves no session behind");
    assert_eq!(app.openai.controls().calls(CHAT), 3);

    // The first conversation, named again, goes on from its own turn only.
    let back = answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "mine", "conversation_id": mine_id}),
    )
    .await;
    assert_eq!(back["conversation_id"], mine_id);
    let calls = chat_messages(&app);
    let answer = calls.last().unwrap();
    assert_eq!(
        contents(&answer[1..5]),
        [
            FIRST,
            mine["answer"].as_str().unwrap(),
            FOLLOW_UP,
            alone["answer"].as_str().unwrap()
        ],
        "its own two turns, and nothing of the other conversation or session"
    );
    assert_eq!(answer.len(), 6, "{answer:?}");
}

#[tokio::test]
async fn a_redis_flush_mid_conversation_still_answers_in_context() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let id = first["conversation_id"].clone();
    let mut redis = app.redis().await.unwrap();
    flush_redis(&app).await;

    let follow_up = answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": id}),
    )
    .await;
    assert_eq!(follow_up["conversation_id"], id);
    let calls = chat_messages(&app);
    let answer = calls.last().unwrap();
    assert_eq!(
        contents(&answer[1..3]),
        [FIRST, first["answer"].as_str().unwrap()],
        "the turn was read back from Postgres"
    );
    assert!(is_rewrite(&calls[1]));
    // And Redis has it again, with the new turn: the next follow-up needs no Postgres read.
    let turns: Vec<String> = redis::cmd("LRANGE")
        .arg(chatbot_core::redis::keys::turns("s1"))
        .arg(1) // after the marker that says they are all there
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert!(turns[0].contains(FIRST) && turns[1].contains(FOLLOW_UP));

    // Flushed again, then a question that names no conversation (asked alone)
    // comes first: Redis learns the turns all the same, and the next
    // follow-up is answered with all three.
    flush_redis(&app).await;
    let alone = answered(
        &app,
        json!({"question": "How long is bread baked?", "session_id": "s1"}),
    )
    .await;
    assert_eq!(alone["conversation_id"], Value::Null);
    assert_eq!(
        app.conversation_asked_in_last("s1").await.as_ref(),
        id.as_str().map(str::to_string).as_ref()
    );
    assert_eq!(chat_messages(&app).last().unwrap().len(), 2, "asked alone");
    answered(
        &app,
        json!({"question": "Since when?", "session_id": "s1", "conversation_id": id}),
    )
    .await;
    let calls = chat_messages(&app);
    let answer = calls.last().unwrap();
    assert_eq!(answer.len(), 8, "three earlier turns: {answer:?}");
    assert_eq!(
        contents(answer)
            .iter()
            .skip(1)
            .step_by(2)
            .copied()
            .collect::<Vec<_>>()[..3],
        [FIRST, FOLLOW_UP, "How long is bread baked?"]
    );
}

#[tokio::test]
async fn a_follow_up_is_cached_by_its_turns_and_a_first_question_as_before() {
    let app = app_with(&[("query_cache_scope", "global")]).await;
    // `continuing`: the conversation the previous answer named.
    let ask_in = |session: &'static str, question: &'static str, continuing: Option<&Value>| {
        let app = &app;
        let mut body = json!({"question": question, "session_id": session});
        if let Some(previous) = continuing {
            body["conversation_id"] = previous["conversation_id"].clone();
        }
        async move {
            let response = ask(app, body).await;
            assert_eq!(response.status, 200, "{}", response.text());
            (
                response.header("x-cache").unwrap().to_string(),
                response.json(),
            )
        }
    };
    let (miss, a1) = ask_in("a", FIRST, None).await;
    assert_eq!(miss, "MISS");
    let (miss, a2) = ask_in("a", FOLLOW_UP, Some(&a1)).await;
    assert_eq!(miss, "MISS");
    // A first question is cached as it always was, across sessions (global scope).
    let (hit, b1) = ask_in("b", FIRST, None).await;
    assert_eq!(hit, "HIT");
    assert_eq!(b1["answer"], a1["answer"]);
    // The same follow-up after the same turns: the same answer, with no rewrite.
    let calls = app.openai.controls().calls(CHAT);
    let (hit, b2) = ask_in("b", FOLLOW_UP, Some(&b1)).await;
    assert_eq!(hit, "HIT");
    assert_eq!(b2["answer"], a2["answer"]);
    assert_eq!(app.openai.controls().calls(CHAT), calls);
    // The follow-up's text alone, or after other turns, never gets that answer.
    let (miss, c1) = ask_in("c", FOLLOW_UP, None).await;
    assert_eq!(miss, "MISS");
    assert_ne!(c1["answer"], a2["answer"]);
    let (_, d1) = ask_in("d", "How long is bread baked?", None).await;
    let (miss, d2) = ask_in("d", FOLLOW_UP, Some(&d1)).await;
    assert_eq!(miss, "MISS");
    assert_ne!(d2["answer"], a2["answer"]);
    // Asked again in a's conversation, after its own turn, it is another follow-up.
    let (miss, _) = ask_in("a", FOLLOW_UP, Some(&a1)).await;
    assert_eq!(miss, "MISS");
}

/// Tokens the stand-in bills a chat call: words of the prompt and of its answer.
fn billed(messages: &[Value]) -> i64 {
    let words = |text: &str| {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .count() as i64
    };
    let prompt: i64 = messages
        .iter()
        .map(|m| words(m["content"].as_str().unwrap()))
        .sum();
    prompt + words(&answer_for(messages))
}

/// The tokens `alice` was charged today.
async fn spent(app: &TestApp) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = chatbot_core::limits::sessions::budget_day(now).0;
    let key = chatbot_core::redis::keys::user_tokens("alice", day);
    let value: Option<i64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut app.redis().await.unwrap())
        .await
        .unwrap();
    value.unwrap_or(0)
}

#[tokio::test]
async fn a_users_budget_is_charged_the_rewrite_too() {
    let app = app_with(&[("user_token_budget_per_day", "1000000")]).await;
    let first = answered(
        &app,
        json!({"question": FIRST, "session_id": "s1", "user_id": "alice"}),
    )
    .await;
    let calls = chat_messages(&app);
    assert_eq!(spent(&app).await, billed(&calls[0]));
    answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "user_id": "alice",
               "conversation_id": first["conversation_id"]}),
    )
    .await;
    let calls = chat_messages(&app);
    assert_eq!(calls.len(), 3);
    assert!(is_rewrite(&calls[1]));
    assert_eq!(
        spent(&app).await,
        billed(&calls[0]) + billed(&calls[1]) + billed(&calls[2]),
        "the rewrite is charged with the answer"
    );
}

#[tokio::test]
async fn a_sessions_conversations_are_listed_and_paged_one_at_a_time() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let first_id = first["conversation_id"].as_str().unwrap().to_string();
    let second = answered(
        &app,
        json!({"question": "How long is bread baked?", "session_id": "s1", "new_conversation": true}),
    )
    .await;
    let second_id = second["conversation_id"].as_str().unwrap().to_string();
    // Without a conversation_id, a question is stored in the one asked in last (answered alone).
    let third = answered(&app, json!({"question": FOLLOW_UP, "session_id": "s1"})).await;
    assert_eq!(third["conversation_id"], Value::Null);
    assert_eq!(
        app.conversation_asked_in_last("s1").await,
        Some(second_id.clone())
    );
    assert_eq!(chat_messages(&app).last().unwrap().len(), 2);
    let back = answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": first_id}),
    )
    .await;
    assert_eq!(back["conversation_id"], first_id);

    let all = app.history("s1", 1).await;
    assert_eq!(all.status, 200, "{}", all.text());
    let all = all.json();
    assert_eq!(all["total"], 8);
    assert_eq!(all["conversation_id"], Value::Null);
    let listed: Vec<(String, i64)> = all["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["conversation_id"].as_str().unwrap().to_string(),
                c["messages"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(second_id.clone(), 4), (first_id.clone(), 4)],
        "newest first"
    );

    let one = app
        .admin_get(&format!(
            "/api/v1/chat/history/s1?conversation_id={first_id}&page=1"
        ))
        .await
        .unwrap();
    assert_eq!(one.status, 200, "{}", one.text());
    let one = one.json();
    assert_eq!(one["conversation_id"], first_id);
    assert_eq!(one["total"], 4);
    let messages = one["messages"].as_array().unwrap();
    assert!(messages.iter().all(|m| m["conversation_id"] == first_id));
    assert_eq!(messages[0]["content"], FIRST);
    assert_eq!(messages[2]["content"], FOLLOW_UP);

    for (query, status) in [
        (
            "conversation_id=conv_00000000000000000000000000000000".to_string(),
            404,
        ),
        ("conversation_id=0".to_string(), 400),
        ("conversation_id=1".to_string(), 400),
        ("conversation_id=first".to_string(), 400),
    ] {
        let response = app
            .admin_get(&format!("/api/v1/chat/history/s1?{query}"))
            .await
            .unwrap();
        assert_eq!(response.status, status, "{query}: {}", response.text());
    }
    // Another session's conversation is not this one's to page.
    answered(&app, json!({"question": FIRST, "session_id": "s2"})).await;
    let foreign = app
        .admin_get(&format!(
            "/api/v1/chat/history/s2?conversation_id={first_id}"
        ))
        .await
        .unwrap();
    assert_eq!(foreign.status, 404, "{}", foreign.text());
}

#[tokio::test]
async fn with_no_turns_kept_even_a_follow_up_is_answered_alone_and_repeats_hit() {
    let app = app_with(&[("conversation_turns", "0")]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let id = first["conversation_id"].clone();
    let follow_up = ask(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": id}),
    )
    .await;
    assert_eq!(follow_up.status, 200);
    let again = ask(
        &app,
        json!({"question": FIRST, "session_id": "s1", "conversation_id": id}),
    )
    .await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    let calls = chat_messages(&app);
    assert_eq!(calls.len(), 2, "no rewrite");
    assert_eq!(calls[1].len(), 2, "no turns: {:?}", calls[1]);
    // The conversation is still named, and the exchanges are stored in it.
    assert_eq!(
        follow_up.json()["conversation_id"],
        again.json()["conversation_id"]
    );
    assert_eq!(app.messages_stored("s1").await, 6);
}

#[tokio::test]
async fn a_streamed_follow_up_names_its_conversation_and_carries_the_turns() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let response = app
        .client()
        .request(
            "POST",
            "/api/v1/chat/query",
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            serde_json::to_vec(&json!({"question": FOLLOW_UP, "session_id": "s1",
                                       "conversation_id": first["conversation_id"]}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    let done = text
        .split("\n\n")
        .find(|event| event.starts_with("event: done"))
        .expect("a done event");
    let data: Value =
        serde_json::from_str(done.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(data["conversation_id"], first["conversation_id"]);
    let calls = chat_messages(&app);
    assert!(is_rewrite(&calls[1]));
    assert_eq!(app.openai.chat_requests()[2]["stream"], true);
    assert_eq!(contents(&calls[2][1..2]), [FIRST]);
}

#[tokio::test]
async fn a_request_that_names_a_conversation_badly_is_refused() {
    let app = app_with(&[]).await;
    for body in [
        json!({"question": FIRST, "session_id": "s1", "conversation_id": "one"}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": 0}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": 1}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": -1}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": 1.5}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": 9_007_199_254_740_993_u64}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": "conv_0123"}),
        json!({"question": FIRST, "session_id": "s1", "conversation_id": "CONV_00000000000000000000000000000000"}),
        json!({"question": FIRST, "session_id": "s1",
               "conversation_id": "conv_00000000000000000000000000000000", "new_conversation": true}),
        json!({"question": FIRST, "session_id": "s1", "new_conversation": "yes"}),
    ] {
        let response = ask(&app, body.clone()).await;
        assert_eq!(response.status, 400, "{body}: {}", response.text());
    }
    // A conversation the session never had: 404, and nothing asked upstream.
    let response = ask(
        &app,
        json!({"question": FIRST, "session_id": "s1",
               "conversation_id": "conv_00000000000000000000000000000000"}),
    )
    .await;
    assert_eq!(response.status, 404, "{}", response.text());
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    assert_eq!(app.messages_stored("s1").await, 0);
}

#[tokio::test]
async fn a_refused_question_starts_no_conversation_and_moves_no_pointer() {
    // A ceiling no miss fits under: every miss is refused (503) before it spends.
    let app = app_with(&[("deployment_token_budget_per_day", "1")]).await;
    for body in [
        json!({"question": FIRST, "session_id": "s1"}),
        json!({"question": FIRST, "session_id": "s1", "new_conversation": true}),
    ] {
        let refused = ask(&app, body.clone()).await;
        assert_eq!(refused.status, 503, "{body}: {}", refused.text());
    }
    let pg = app.postgres().await.unwrap();
    let rows: i64 = pg
        .query_one(
            "SELECT (SELECT count(*) FROM user_sessions) + (SELECT count(*) FROM conversations)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "refused questions write nothing");
    let mut redis = app.redis().await.unwrap();
    let pointer: Option<String> = redis::cmd("GET")
        .arg(chatbot_core::redis::keys::conversation("s1"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pointer, None);
}

#[tokio::test]
async fn a_turn_past_its_retention_is_never_sent() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let id = first["conversation_id"].clone();
    // Its messages are due for deletion (cleanup has not run yet), and Redis lost the turns.
    app.postgres()
        .await
        .unwrap()
        .execute(
            "UPDATE messages SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    flush_redis(&app).await;
    answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": id}),
    )
    .await;
    let calls = chat_messages(&app);
    assert_eq!(calls.len(), 2, "no turns, so no rewrite");
    assert_eq!(calls[1].len(), 2, "{:?}", calls[1]);
}

#[tokio::test]
async fn a_question_asked_alone_goes_where_the_last_one_went_with_or_without_redis() {
    let app = app_with(&[]).await;
    let first = answered(&app, json!({"question": FIRST, "session_id": "s1"})).await;
    let first_id = first["conversation_id"].clone();
    answered(
        &app,
        json!({"question": "How long is bread baked?", "session_id": "s1", "new_conversation": true}),
    )
    .await;
    // Back to the first conversation: it is now the one asked in last.
    answered(
        &app,
        json!({"question": FOLLOW_UP, "session_id": "s1", "conversation_id": first_id}),
    )
    .await;
    let first_id = first_id.as_str().map(str::to_string);
    let with_redis = answered(&app, json!({"question": "Why?", "session_id": "s1"})).await;
    assert_eq!(app.conversation_asked_in_last("s1").await, first_id);
    flush_redis(&app).await;
    let without = answered(&app, json!({"question": "Why not?", "session_id": "s1"})).await;
    assert_eq!(app.conversation_asked_in_last("s1").await, first_id);
    for alone in [with_redis, without] {
        assert_eq!(alone["conversation_id"], Value::Null, "{alone}");
    }
}

/// Issue #38 (Low): a follow-up stored while another follow-up of the same
/// conversation read the turns back from Postgres (its own turn among them)
/// is kept once: `AppendTurn` knows a turn by its question's id.
#[tokio::test]
async fn a_turn_read_back_before_it_was_appended_is_kept_once() {
    use chatbot_core::chat::conversation::{AppendTurn, RememberConversation, Turn};
    use chatbot_core::storage::history::{ConversationHandle, RememberedConversation};
    let app = TestApp::spawn().await.unwrap();
    let mut redis = app.redis().await.unwrap();
    let handle = ConversationHandle::parse("conv_000000000000000000000000000000c1").unwrap();
    let conversation = RememberedConversation::refreshed_on(7, handle, 1);
    let turn = |question: &str, id: i64| Turn {
        question: question.into(),
        answer: format!("answer to {question}"),
        expires_at: 0,
        question_id: Some(id),
    };
    // The later follow-up read both turns back from Postgres...
    let read_back = [turn("first?", 10), turn("second?", 12)];
    chatbot_harness::scripts::run(
        &mut redis,
        &RememberConversation {
            session_id: "s1",
            conversation,
            turns: Some(&read_back),
            ttl_seconds: 600,
        },
    )
    .await
    .unwrap();
    // ...then the earlier one, whose exchange that read included, adds its turn.
    fn append<'a>(turn: &'a Turn, now: RememberedConversation) -> AppendTurn<'a> {
        AppendTurn {
            session_id: "s1",
            asked_in: 7,
            now,
            turn,
            keep: 5,
            ttl_seconds: 600,
        }
    }
    let second = turn("second?", 12);
    chatbot_harness::scripts::run(&mut redis, &append(&second, conversation))
        .await
        .unwrap();
    let third = turn("third?", 14);
    chatbot_harness::scripts::run(&mut redis, &append(&third, conversation))
        .await
        .unwrap();
    let kept: Vec<String> = redis::cmd("LRANGE")
        .arg(chatbot_core::redis::keys::turns("s1"))
        .arg(1)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let questions: Vec<String> = kept
        .iter()
        .map(|t| serde_json::from_str::<Turn>(t).unwrap().question)
        .collect();
    assert_eq!(questions, ["first?", "second?", "third?"]);
}
