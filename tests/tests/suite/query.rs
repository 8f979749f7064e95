//! The query handler end to end: the app composed as spin.toml says, real
//! Redis and Postgres, the OpenAI and Qdrant stand-ins.

use std::time::Duration;

use chatbot_harness::stubs::openai::{CHAT, EMBEDDINGS};
use chatbot_harness::stubs::qdrant::SEARCH;
use chatbot_harness::stubs::Fault;
use chatbot_harness::{BufferedResponse, TestApp, TEST_ADMIN_TOKEN};
use serde_json::{json, Value};

async fn ingest(app: &TestApp, documents: Value) -> BufferedResponse {
    app.ingest(documents).await.unwrap()
}

async fn app_with_book() -> TestApp {
    let app = TestApp::spawn().await.unwrap();
    let response = ingest(
        &app,
        json!([
            {"id": "ai-book", "source": "ai-textbook.pdf", "text": "Artificial intelligence is the study of intelligent agents that perceive and act.", "metadata": {"chapter": 1}},
            {"id": "cooking", "source": "recipes.pdf", "text": "Bake the bread at two hundred degrees for forty minutes."}
        ]),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    app
}

async fn redis_keys(app: &TestApp, pattern: &str) -> Vec<String> {
    let mut conn = app.redis().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn upstream_calls(app: &TestApp) -> (u64, u64, u64) {
    (
        app.openai.controls().calls(EMBEDDINGS),
        app.qdrant.controls().calls(SEARCH),
        app.openai.controls().calls(CHAT),
    )
}

#[tokio::test]
async fn a_miss_then_a_hit_that_calls_nothing_upstream() {
    let app = app_with_book().await;
    let first = app
        .ask_on_page("What is AI?", "sess1", Some("AI textbook"))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let body = first.json();
    assert_eq!(body["cached"], false);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert!(first.header("x-response-time").unwrap().ends_with("ms"));
    assert_eq!(
        upstream_calls(&app),
        (2, 1, 1),
        "ingest embedded once, the question once"
    );

    let second = app
        .ask_on_page("What is AI?", "sess1", Some("AI textbook"))
        .await;
    assert_eq!(second.status, 200);
    let cached = second.json();
    assert_eq!(cached["cached"], true);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(cached["answer"], body["answer"]);
    assert_eq!(cached["citations"], body["citations"]);
    assert_eq!(
        upstream_calls(&app),
        (2, 1, 1),
        "a hit calls nothing upstream"
    );

    let keys = redis_keys(&app, "chatbot:query:*").await;
    assert_eq!(keys.len(), 1);
    let mut conn = app.redis().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn page_context_and_session_scope_are_separate_entries() {
    let app = app_with_book().await;
    assert_eq!(
        app.ask_on_page("What is AI?", "s1", Some("chapter 1"))
            .await
            .json()["cached"],
        false
    );
    assert_eq!(
        app.ask_on_page("What is AI?", "s1", Some("chapter 2"))
            .await
            .json()["cached"],
        false
    );
    assert_eq!(
        app.ask_on_page("What is AI?", "s2", Some("chapter 1"))
            .await
            .json()["cached"],
        false
    );
    assert_eq!(
        app.ask_on_page("what   is ai?", "s1", Some("Chapter 1"))
            .await
            .json()["cached"],
        true
    );
    assert_eq!(redis_keys(&app, "chatbot:query:*").await.len(), 3);
}

#[tokio::test]
async fn length_prefixed_keys_do_not_collide() {
    let app = app_with_book().await;
    assert_eq!(
        app.ask_on_page("ab", "s", Some("c")).await.json()["cached"],
        false
    );
    // Concatenated, "a" + "bc" is the same string; encoded, it is another entry.
    assert_eq!(
        app.ask_on_page("a", "s", Some("bc")).await.json()["cached"],
        false
    );
    assert_eq!(redis_keys(&app, "chatbot:query:*").await.len(), 2);
}

#[tokio::test]
async fn the_embedding_is_reused_across_sessions() {
    let app = app_with_book().await;
    let (embeddings_before, _, _) = upstream_calls(&app);
    app.ask_on_page("How hot is the oven?", "s1", None).await;
    app.ask_on_page("How hot is the oven?", "s2", None).await;
    let (embeddings, searches, chats) = upstream_calls(&app);
    assert_eq!(
        embeddings - embeddings_before,
        1,
        "the second session reused the embedding"
    );
    assert_eq!(
        (searches, chats),
        (2, 2),
        "but it is a query-cache miss (session scope)"
    );
    // Stored compactly: 8 bytes of header and 4 per dimension.
    let keys = redis_keys(&app, "chatbot:embedding:*").await;
    let mut conn = app.redis().await.unwrap();
    for key in keys {
        let len: usize = redis::cmd("STRLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 8 + 4 * chatbot_harness::TEST_EMBEDDING_DIMENSIONS);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");
    }
}

#[tokio::test]
async fn answers_cite_the_ingested_document() {
    let app = app_with_book().await;
    let body = app
        .ask_on_page("What do intelligent agents perceive?", "s", None)
        .await
        .json();
    let citations = body["citations"].as_array().unwrap();
    assert!(!citations.is_empty());
    assert_eq!(citations[0]["source"], "ai-textbook.pdf", "{body}");
    assert!(citations[0]["snippet"]
        .as_str()
        .unwrap()
        .contains("intelligent agents"));
    let chunk_id = citations[0]["chunk_id"].as_str().unwrap();
    assert_eq!(chunk_id.len(), 36, "a UUID point id");
    assert!(citations[0]["score"].as_f64().unwrap() > citations[1]["score"].as_f64().unwrap());
    // The prompt sent to the model carried the retrieved passage.
    let requests = app.openai.state.requests.lock().unwrap().clone();
    let (_, chat) = requests.iter().rev().find(|(e, _)| *e == CHAT).unwrap();
    assert!(chat["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains("[1] (ai-textbook.pdf)"));
}

#[tokio::test]
async fn reingesting_a_document_replaces_its_chunks() {
    let app = app_with_book().await;
    let before = app.qdrant.point_count("documents");
    let long_text = "word ".repeat(600);
    assert_eq!(
        ingest(
            &app,
            json!([{"id": "ai-book", "source": "v2.pdf", "text": long_text}])
        )
        .await
        .status,
        200
    );
    let after_long = app.qdrant.point_count("documents");
    assert!(after_long > before, "the longer version has more chunks");
    assert_eq!(
        ingest(
            &app,
            json!([{"id": "ai-book", "source": "v3.pdf", "text": "short again"}])
        )
        .await
        .status,
        200
    );
    assert_eq!(
        app.qdrant.point_count("documents"),
        before,
        "old chunks were replaced, not added to"
    );
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_chat_completion() {
    let app = app_with_book().await;
    app.openai
        .controls()
        .set_latency(CHAT, Duration::from_millis(400));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let mut client = app.client();
            tokio::spawn(async move {
                client
                    .post_json(
                        "/api/v1/chat/query",
                        &json!({"question": "Same question?", "session_id": "crowd"}),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut cached = 0;
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        cached += usize::from(response.json()["cached"] == true);
    }
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    assert_eq!(cached, 5);
}

/// A request waiting on an identical miss backs off (25 ms doubling to
/// 250 ms): over a 2 s answer a waiter looks a dozen times, not eighty.
#[tokio::test]
async fn a_waiter_on_a_slow_identical_miss_backs_off() {
    let app = app_with_book().await;
    app.openai
        .controls()
        .set_latency(CHAT, Duration::from_millis(2000));
    let alone = app.counts();
    let first = app.ask_on_page("Slow alone?", "alone", None).await;
    assert_eq!(first.status, 200);
    let one_miss = (app.counts() - alone).redis_commands;

    let before = app.counts();
    let holder = {
        let mut client = app.client();
        tokio::spawn(async move {
            client
                .post_json(
                    "/api/v1/chat/query",
                    &json!({"question": "Slow together?", "session_id": "pair"}),
                )
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = std::time::Instant::now();
    let waiter = app.ask_on_page("Slow together?", "pair", None).await;
    let waited = waiting.elapsed().as_secs_f64();
    assert_eq!(waiter.json()["cached"], true, "{}", waiter.text());
    assert_eq!(holder.await.unwrap().status, 200);
    let waiter_commands = (app.counts() - before).redis_commands - one_miss;
    // Its own request takes a handful; backing off to 250 ms, its looks add
    // about four a second of waiting (fixed 25 ms steps: forty a second).
    let allowed = 10.0 + 6.0 * waited;
    assert!(
        (waiter_commands as f64) <= allowed,
        "the waiter sent {waiter_commands} Redis commands in {waited:.2} s (at most {allowed:.0}; {one_miss} for a miss alone)"
    );
    assert_eq!(app.openai.controls().calls(CHAT), 2);
}

/// A dependency's answer is taken whole within its call's timeout and at
/// most 16 MiB: an answer that trickles a byte before each between-bytes
/// timeout fails at the timeout, and an oversized one fails instead of
/// filling the instance's memory. Neither is cached.
#[tokio::test]
async fn an_answer_too_large_or_too_slow_as_a_whole_fails_instead_of_being_buffered() {
    let app = TestApp::builder()
        .variable("qdrant_timeout_ms", "1000")
        .spawn()
        .await
        .unwrap();
    app.qdrant
        .controls()
        .fail_next(SEARCH, 1, Fault::Oversized(20 << 20));
    let oversized = app.ask_on_page("A huge answer?", "bounds", None).await;
    assert_eq!(oversized.status, 503, "{}", oversized.text());

    app.qdrant
        .controls()
        .fail_next(SEARCH, 1, Fault::Trickle(Duration::from_millis(100)));
    let started = std::time::Instant::now();
    let trickled = app.ask_on_page("A trickling answer?", "bounds", None).await;
    assert_eq!(trickled.status, 504, "{}", trickled.text());
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(app.openai.controls().calls(CHAT), 0);

    let healed = app.ask_on_page("A huge answer?", "bounds", None).await;
    assert_eq!(healed.status, 200, "{}", healed.text());
    assert_eq!(healed.json()["cached"], false);
}

async fn assert_not_cached_then_recovers(app: &TestApp, session: &str) {
    app.openai.controls().heal();
    app.qdrant.controls().heal();
    let retry = app.ask_on_page("Is it cached?", session, None).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["cached"], false, "errors are never cached");
}

#[tokio::test]
async fn an_openai_rate_limit_is_a_503_with_retry_after_and_not_cached() {
    let app = app_with_book().await;
    app.openai.controls().fail_always(
        CHAT,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let response = app.ask_on_page("Is it cached?", "s", None).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("retry-after"), Some("7"));
    assert_eq!(response.json()["status"], "upstream_unavailable");
    assert!(response.json()["detail"]
        .as_str()
        .unwrap()
        .contains("OpenAI"));
    assert_eq!(
        response.json()["request_id"].as_str(),
        response.header("x-request-id"),
        "the body names the request, for the log"
    );
    assert!(response.header("x-ratelimit-limit").is_some());
    assert_not_cached_then_recovers(&app, "s").await;
}

#[tokio::test]
async fn an_openai_server_error_is_a_503() {
    let app = app_with_book().await;
    app.openai
        .controls()
        .fail_always(EMBEDDINGS, Fault::Status(500));
    let response = app.ask_on_page("Is it cached?", "s", None).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert_not_cached_then_recovers(&app, "s").await;
}

#[tokio::test]
async fn a_hanging_openai_is_a_504_after_the_timeout() {
    let app = TestApp::builder()
        .variable("openai_timeout_ms", "300")
        .spawn()
        .await
        .unwrap();
    app.openai
        .controls()
        .fail_always(EMBEDDINGS, Fault::Hang(Duration::from_secs(3)));
    let started = std::time::Instant::now();
    let response = app.ask_on_page("Is it cached?", "s", None).await;
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up at the timeout"
    );
    assert!(redis_keys(&app, "chatbot:query:*").await.is_empty());
}

#[tokio::test]
async fn a_qdrant_failure_is_reported_and_not_cached() {
    let app = app_with_book().await;
    app.qdrant
        .controls()
        .fail_always(SEARCH, Fault::Status(500));
    let response = app.ask_on_page("Is it cached?", "s", None).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.json()["detail"]
        .as_str()
        .unwrap()
        .contains("Qdrant"));
    assert_not_cached_then_recovers(&app, "s").await;
}

#[tokio::test]
async fn without_redis_questions_are_still_answered() {
    let port = chatbot_harness::unused_port();
    let app = TestApp::builder()
        .address("redis_address", format!("redis://127.0.0.1:{port}"))
        .spawn()
        .await
        .unwrap();
    ingest(
        &app,
        json!([{"id": "d", "source": "s.pdf", "text": "Some text about caches."}]),
    )
    .await;
    for _ in 0..2 {
        let response = app.ask_on_page("What about caches?", "s", None).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["cached"], false, "no cache without Redis");
    }
    // Fail-open: the limiter let it through and said so in the headers.
    assert_eq!(app.openai.controls().calls(CHAT), 2);
}

#[tokio::test]
async fn without_postgres_the_answer_is_returned_and_the_loss_counted() {
    let port = chatbot_harness::unused_port();
    let app = TestApp::builder()
        .address(
            "postgres_address",
            format!("postgres://postgres@127.0.0.1:{port}/chatbot"),
        )
        .spawn()
        .await
        .unwrap();
    ingest(
        &app,
        json!([{"id": "d", "source": "s.pdf", "text": "Some text."}]),
    )
    .await;
    let response = app.ask_on_page("Anything?", "s", None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["conversation_id"], Value::Null);
    let mut conn = app.redis().await.unwrap();
    let lost: Option<String> = redis::cmd("HGET")
        .arg("chatbot:metrics:{m}:counters")
        .arg("chatbot_history_writes_lost_total")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.as_deref(), Some("1"));
}

#[tokio::test]
async fn every_exchange_is_stored_and_history_pages_by_fifty() {
    let app = app_with_book().await;
    for i in 0..51 {
        // Repeats hit the cache; cached exchanges are stored too.
        let response = app
            .ask_on_page(&format!("Question {}", i % 3), "hist", Some("p"))
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let pg = app.postgres().await.unwrap();
    let row = pg
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE cached) FROM messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 102);
    assert_eq!(
        row.get::<_, i64>(1),
        96,
        "48 cached exchanges, two messages each"
    );
    let citations: i64 = pg
        .query_one("SELECT count(*) FROM citations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(citations, 51 * 2, "two passages cited per answer");

    let page1 = app.history("hist", 1).await.json();
    assert_eq!(page1["total"], 102);
    assert_eq!(page1["total_pages"], 3);
    assert_eq!(page1["messages"].as_array().unwrap().len(), 50);
    assert_eq!(page1["messages"][0]["role"], "user");
    assert_eq!(page1["messages"][0]["content"], "Question 0");
    assert_eq!(page1["messages"][1]["role"], "assistant");
    assert_eq!(
        page1["messages"][1]["citations"].as_array().unwrap().len(),
        2
    );
    let page2 = app.history("hist", 2).await.json();
    assert_eq!(page2["messages"].as_array().unwrap().len(), 50);
    assert!(page2["messages"][0]["id"].as_i64() > page1["messages"][49]["id"].as_i64());
    let page3 = app.history("hist", 3).await.json();
    assert_eq!(page3["messages"].as_array().unwrap().len(), 2);
    let page4 = app.history("hist", 4).await.json();
    assert_eq!(page4["messages"].as_array().unwrap().len(), 0);
    assert_eq!(page4["total"], 102);
    let other = app.history("nobody", 1).await.json();
    assert_eq!(other["total"], 0);
    assert_eq!(app.history("hist", 0).await.status, 400);
    assert_eq!(app.history("bad%20id", 1).await.status, 400);
}

/// The session's expiry (epoch seconds), its conversation (id and handle)
/// and its message count.
async fn stored_session(app: &TestApp, session: &str) -> (f64, (i64, String), i64) {
    let row = app
        .postgres()
        .await
        .unwrap()
        .query_one(
            "SELECT extract(epoch FROM s.expires_at)::float8, c.id, c.handle, \
                    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) \
             FROM user_sessions s JOIN conversations c ON c.user_session_id = s.id \
             WHERE s.session_id = $1",
            &[&session],
        )
        .await
        .unwrap();
    (row.get(0), (row.get(1), row.get(2)), row.get(3))
}

/// What Redis remembers of a conversation refreshed on `day`.
fn remembered_as((id, handle): &(i64, String), day: u64) -> String {
    format!("{id}:{day}:{handle}")
}

async fn remembered(app: &TestApp, session: &str) -> Option<String> {
    let mut redis = app.redis().await.unwrap();
    redis::cmd("GET")
        .arg(chatbot_core::redis::keys::conversation(session))
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// Today (UTC, days since the epoch), once at least a minute of it is left:
/// a test that compares days needs one day throughout.
async fn a_whole_day_ahead() -> u64 {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let into_day = now() % 86_400;
    if into_day > 86_400 - 60 {
        tokio::time::sleep(Duration::from_secs(86_400 - into_day + 1)).await;
    }
    now() / 86_400
}

#[tokio::test]
async fn a_days_later_exchanges_append_and_a_deleted_conversation_is_recreated() {
    let app = app_with_book().await;
    let today = a_whole_day_ahead().await;
    let first = app.ask_on_page("What is AI?", "daily", None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let (expiry, conversation, messages) = stored_session(&app, "daily").await;
    assert_eq!(first.json()["conversation_id"], conversation.1);
    assert_eq!(messages, 2);
    assert_eq!(
        remembered(&app, "daily").await,
        Some(remembered_as(&conversation, today))
    );

    // Later the same day: appended, the session row is not rewritten, and the
    // messages expire before the rows their deletion cascades from.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for question in ["What is AI?", "Who perceives and acts?"] {
        let again = app.ask_on_page(question, "daily", None).await;
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(
            again.json()["conversation_id"],
            Value::Null,
            "not made or named"
        );
    }
    assert_eq!(
        stored_session(&app, "daily").await,
        (expiry, conversation.clone(), 6)
    );
    let outlived: i64 = app
        .postgres()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             JOIN user_sessions s ON s.id = c.user_session_id \
             WHERE m.expires_at > c.expires_at OR m.expires_at > s.expires_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outlived, 0);
    let page = app.history("daily", 1).await.json();
    assert_eq!(page["total"], 6);
    assert_eq!(page["messages"][5]["role"], "assistant");
    assert_eq!(
        page["messages"][5]["citations"].as_array().unwrap().len(),
        2
    );

    // Cleanup removed the session since Redis learnt its conversation: the
    // exchange is stored in a new one, which Redis then remembers.
    app.postgres()
        .await
        .unwrap()
        .execute("DELETE FROM user_sessions WHERE session_id = 'daily'", &[])
        .await
        .unwrap();
    let after_cleanup = app.ask_on_page("What is AI?", "daily", None).await;
    assert_eq!(after_cleanup.status, 200, "{}", after_cleanup.text());
    let (_, recreated, messages) = stored_session(&app, "daily").await;
    assert_ne!(recreated, conversation);
    assert_eq!(messages, 2);
    assert_eq!(
        remembered(&app, "daily").await,
        Some(remembered_as(&recreated, today))
    );

    // An id remembered without its day or handle (by an earlier release) is
    // read from Postgres again, and refreshed.
    let mut redis = app.redis().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(chatbot_core::redis::keys::conversation("daily"))
        .arg(recreated.0)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (expiry, _, _) = stored_session(&app, "daily").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refreshed = app.ask_on_page("What is AI?", "daily", None).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let (later_expiry, same, messages) = stored_session(&app, "daily").await;
    assert!(later_expiry > expiry, "{later_expiry} > {expiry}");
    assert_eq!((&same, messages), (&recreated, 4));
    assert_eq!(
        remembered(&app, "daily").await,
        Some(remembered_as(&recreated, today))
    );
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("chatbot_history_writes_lost_total 0"),
        "{metrics}"
    );
}

/// After a Postgres restore or rebuild, conversation ids repeat: the id Redis
/// remembers for a session may by then be another session's conversation.
/// An exchange is appended only to a conversation of its own session; any
/// other goes through the full statement, which finds or creates the
/// session's own, and Redis then remembers that one.
#[tokio::test]
async fn an_id_redis_remembers_for_another_sessions_conversation_is_never_appended_to() {
    let app = app_with_book().await;
    let today = a_whole_day_ahead().await;
    let theirs = app.ask_on_page("What is AI?", "theirs", None).await;
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    let (_, their_conversation, their_messages) = stored_session(&app, "theirs").await;
    assert_eq!(their_messages, 2);

    // Redis remembers their conversation, refreshed today, as "mine".
    let mut redis = app.redis().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(chatbot_core::redis::keys::conversation("mine"))
        .arg(remembered_as(&their_conversation, today))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mine = app
        .ask_on_page("Who perceives and acts?", "mine", None)
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());

    let (_, my_conversation, my_messages) = stored_session(&app, "mine").await;
    assert_ne!(my_conversation, their_conversation);
    assert_eq!(my_messages, 2);
    assert_eq!(
        stored_session(&app, "theirs").await.2,
        2,
        "their history grew"
    );
    assert_eq!(
        remembered(&app, "mine").await,
        Some(remembered_as(&my_conversation, today))
    );
    let page = app.history("theirs", 1).await.json();
    assert_eq!(page["total"], 2);
    assert_eq!(page["messages"][0]["content"], "What is AI?");
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("chatbot_history_writes_lost_total 0"),
        "{metrics}"
    );
}

/// Method, path, headers, body, expected status, expected `status` code.
type BadInput<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let long = "x".repeat(4001);
    let json_ct = ("content-type", "application/json");
    let cases: Vec<BadInput> = vec![
        (
            "POST",
            "/api/v1/chat/query",
            vec![("content-type", "text/plain")],
            br#"{"question":"q","session_id":"s"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![],
            br#"{"question":"q","session_id":"s"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            vec![0xff, 0xfe, 0x00],
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            b"".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            b"[1,2]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"session_id":"s"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"","session_id":"s"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"   \n ","session_id":"s"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":42,"session_id":"s"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            format!(r#"{{"question":"{long}","session_id":"s"}}"#).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q","session_id":"has space"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q","session_id":"s*{}\r\n"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            format!(r#"{{"question":"q","session_id":"{}"}}"#, "s".repeat(129)).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q","session_id":"s","page_context":7}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            format!(r#"{{"question":"q","session_id":"s","page_context":"{long}"}}"#).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q","session_id":"s","sesion":"typo"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q\u0007","session_id":"s"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/v1/chat/query",
            vec![json_ct],
            format!(
                r#"{{"question":"{}","session_id":"s"}}"#,
                "y".repeat(70_000)
            )
            .into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "GET",
            "/api/v1/chat/query",
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/api/v1/chat/query",
            vec![json_ct],
            br#"{"question":"q","session_id":"s"}"#.to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/chat/nothing",
            vec![],
            vec![],
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/documents",
            vec![json_ct],
            br#"{"documents":[]}"#.to_vec(),
            401,
            "unauthorized",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut client = app.client();
    for (method, path, headers, body, status, code) in cases {
        let response = client
            .request(method, path, &headers, body.clone())
            .await
            .unwrap();
        assert_eq!(
            response.status,
            status,
            "{method} {path} {}: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            response.text()
        );
        let json = response.json();
        assert_eq!(json["status"], code, "{json}");
        assert!(!json["detail"].as_str().unwrap().is_empty());
        assert_eq!(response.header("content-type"), Some("application/json"));
    }
    // Nothing was cached, charged or stored.
    assert_eq!(upstream_calls(&app), (0, 0, 0));
    assert!(redis_keys(&app, "chatbot:query:*").await.is_empty());
    assert!(
        redis_keys(&app, "chatbot:ratelimit:*").await.is_empty(),
        "no tokens were taken"
    );
    let pg = app.postgres().await.unwrap();
    let messages: i64 = pg
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(messages, 0);
}

#[tokio::test]
async fn ingestion_needs_the_admin_token() {
    let app = TestApp::spawn().await.unwrap();
    let body = serde_json::to_vec(&json!({"documents": [{"id": "d", "source": "s", "text": "t"}]}))
        .unwrap();
    let mut client = app.client();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some(TEST_ADMIN_TOKEN),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let response = client
            .request("POST", "/api/v1/documents", &headers, body.clone())
            .await
            .unwrap();
        assert_eq!(response.status, 401, "{auth:?}");
    }
    assert_eq!(app.openai.controls().total_calls(), 0);
    assert_eq!(app.qdrant.point_count("documents"), 0);
}

/// A session's (and a page's) index of cached answers keeps pace with the
/// answers that are alive: storing an answer drops the members whose answers
/// expired, so an index asked about for days does not grow without end.
#[tokio::test]
async fn an_index_sheds_the_answers_that_expired() {
    let app = app_with_book().await;
    let mut redis = app.redis().await.unwrap();
    let counter = redis.clone();
    let card = |key: String| {
        let mut redis = counter.clone();
        async move {
            redis::cmd("SCARD")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let session_index = chatbot_core::redis::keys::session_index("shed");
    let page_index = chatbot_core::redis::keys::page_index("ch 1");
    for i in 0..5 {
        let r = app
            .ask_on_page(&format!("Old question {i}?"), "shed", Some("ch 1"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(card(session_index.clone()).await, 5);
    // The five answers expire (their TTL passing, as far as Redis can tell).
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&session_index)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&members)
        .query_async(&mut redis)
        .await
        .unwrap();
    let r = app
        .ask_on_page("A new question?", "shed", Some("ch 1"))
        .await;
    assert_eq!(r.json()["cached"], false);
    assert_eq!(card(session_index).await, 1, "only the live answer is left");
    assert_eq!(card(page_index).await, 1);
}
