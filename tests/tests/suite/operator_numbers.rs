//! What an operator reads off `/metrics` and the caches must be true: one
//! count per request, every outcome timed, nothing missing before the first
//! event, answers that follow ingestion, failures shared rather than repeated.

use std::time::Duration;

use chatbot_core::redis::keys;
use chatbot_harness::stubs::openai::CHAT;
use chatbot_harness::stubs::qdrant::{SEARCH, UPSERT};
use chatbot_harness::stubs::Fault;
use chatbot_harness::{BufferedResponse, TestApp, DEFAULT_COLLECTION};
use serde_json::{json, Value};

fn value_of(text: &str, series: &str) -> f64 {
    chatbot_harness::metric_value(text, series)
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await.unwrap();
    assert_eq!(response.status, 200);
    response.text()
}

/// Three identical questions at once (one session: answers are cached per session by default).
async fn three_at_once(app: &TestApp, question: &'static str) -> Vec<BufferedResponse> {
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let mut client = app.client();
            tokio::spawn(async move {
                client
                    .post_json(
                        "/api/v1/chat/query",
                        &json!({"question": question, "session_id": "crowd"}),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.unwrap());
    }
    responses
}

#[tokio::test]
async fn a_request_that_waits_on_an_identical_miss_counts_one_hit_and_no_miss() {
    let app = TestApp::spawn().await.unwrap();
    app.openai
        .controls()
        .set_latency(CHAT, Duration::from_millis(400));
    let responses = three_at_once(&app, "Same question?").await;
    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_cache_misses_total{cache_type=\"query\"}"),
        1.0
    );
    assert_eq!(
        value_of(&text, "chatbot_cache_hits_total{cache_type=\"query\"}"),
        2.0
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn waiters_answer_their_holders_failure_at_once_with_its_retry_after() {
    let app = TestApp::spawn().await.unwrap();
    app.openai
        .controls()
        .set_latency(CHAT, Duration::from_millis(400));
    app.openai.controls().fail_next(
        CHAT,
        1,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let responses = three_at_once(&app, "Will it fail?").await;
    for response in &responses {
        assert_eq!(response.status, 503, "{}", response.text());
        assert_eq!(response.header("retry-after"), Some("7"));
    }
    // One call to the model: the waiters neither took the lock after the
    // holder failed nor waited it out (either would have called the model again).
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    let text = scrape(&app).await;
    // The dependency failed once: counted once.
    assert_eq!(
        value_of(&text, "chatbot_openai_rate_limit_errors_total"),
        1.0
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_queries_total{endpoint=\"query\",status=\"unavailable\",cached=\"false\"}"
        ),
        3.0
    );
    // A later request tries again itself.
    assert_eq!(app.ask("Will it fail?", "crowd").await.status, 200);
}

#[tokio::test]
async fn refusals_and_failures_are_timed_and_counted() {
    let app = TestApp::builder()
        .variable("rate_limit_requests", "1")
        .spawn()
        .await
        .unwrap();
    assert_eq!(app.ask("First?", "limited").await.status, 200);
    let limited = app.ask("Second?", "limited").await;
    assert_eq!(limited.status, 429);
    app.openai.controls().fail_next(CHAT, 1, Fault::Status(500));
    assert_eq!(app.ask("Broken?", "other").await.status, 503);
    let invalid = app
        .post_json("/api/v1/chat/query", &json!({"question": ""}))
        .await
        .unwrap();
    assert_eq!(invalid.status, 400);
    let bad_cleanup = app
        .admin("POST", "/admin/cleanup", &json!({"batch_size": 0}))
        .await
        .unwrap();
    assert_eq!(bad_cleanup.status, 400);

    let text = scrape(&app).await;
    let latency = |status: &str| {
        value_of(
            &text,
            &format!("chatbot_query_latency_seconds_count{{cache_status=\"{status}\"}}"),
        )
    };
    // The answer and the 503 were misses; the 429 and the 400 never reached the cache.
    assert_eq!(latency("miss"), 2.0);
    assert_eq!(latency("bypass"), 2.0);
    for (status, n) in [
        ("rate_limited", 1.0),
        ("unavailable", 1.0),
        ("invalid", 1.0),
    ] {
        assert_eq!(
            value_of(
                &text,
                &format!(
                    "chatbot_queries_total{{endpoint=\"query\",status=\"{status}\",cached=\"false\"}}"
                )
            ),
            n,
            "{status}"
        );
    }
    // The 400 of the query and the 400 of an admin route.
    assert_eq!(
        value_of(&text, "chatbot_errors_total{error_type=\"validation\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_configuration_error_is_counted() {
    let app = TestApp::builder()
        .variable("rate_limit_requests", "many")
        .spawn()
        .await
        .unwrap();
    let response = app.ask("Configured?", "c1").await;
    assert_eq!(response.status, 500, "{}", response.text());
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_errors_total{error_type=\"config\"}"),
        1.0
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_queries_total{endpoint=\"query\",status=\"error\",cached=\"false\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_fresh_deployment_exports_every_series_at_zero() {
    let app = TestApp::spawn().await.unwrap();
    let text = scrape(&app).await;
    for series in [
        "chatbot_errors_total{error_type=\"postgres\"}",
        "chatbot_errors_total{error_type=\"validation\"}",
        "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}",
        "chatbot_queries_total{endpoint=\"query\",status=\"rate_limited\",cached=\"false\"}",
        "chatbot_cache_hits_total{cache_type=\"query\"}",
        "chatbot_openai_tokens_total{operation=\"chat\",kind=\"completion\"}",
        "chatbot_database_query_latency_seconds_count{operation=\"store_exchange\"}",
        "chatbot_query_latency_seconds_count{cache_status=\"hit\"}",
        "chatbot_rate_limiter_decisions_total{outcome=\"failed_open\"}",
    ] {
        assert_eq!(value_of(&text, series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn a_scrape_reads_no_gauge_hash() {
    let app = TestApp::spawn().await.unwrap();
    let before = app.counts().redis_commands;
    scrape(&app).await;
    // Counters, histograms, the active-session count: nothing else.
    assert_eq!(app.counts().redis_commands - before, 3);
}

#[tokio::test]
async fn history_reads_and_cleanups_are_timed() {
    let app = TestApp::spawn().await.unwrap();
    assert_eq!(app.ask("Timed?", "h1").await.status, 200);
    let history = app.history("h1", 1).await;
    assert_eq!(history.status, 200, "{}", history.text());
    let cleanup = app
        .admin("POST", "/admin/cleanup", &json!({}))
        .await
        .unwrap();
    assert_eq!(cleanup.status, 200, "{}", cleanup.text());
    let text = scrape(&app).await;
    for operation in ["read_history", "cleanup"] {
        assert_eq!(
            value_of(
                &text,
                &format!(
                    "chatbot_database_query_latency_seconds_count{{operation=\"{operation}\"}}"
                )
            ),
            1.0,
            "{operation}"
        );
    }
    assert_eq!(
        value_of(
            &text,
            "chatbot_queries_total{endpoint=\"history\",status=\"success\",cached=\"false\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn warm_up_records_its_openai_calls_and_tokens() {
    let app = TestApp::builder()
        .variable("query_cache_scope", "global")
        .spawn()
        .await
        .unwrap();
    assert_eq!(app.ask("Warm me?", "w1").await.status, 200);
    let cleared = app
        .admin(
            "POST",
            "/health/cache/clear",
            &json!({"cache_type": "query"}),
        )
        .await
        .unwrap();
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    let before = value_of(
        &scrape(&app).await,
        "chatbot_openai_api_calls_total{operation=\"chat\"}",
    );
    let warmed = app
        .admin("POST", "/admin/cache/warmup", &json!({"limit": 5}))
        .await
        .unwrap();
    assert_eq!(warmed.status, 200, "{}", warmed.text());
    assert_eq!(warmed.json()["warmed"], 1);
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_openai_api_calls_total{operation=\"chat\"}"),
        before + 1.0
    );
    assert!(
        value_of(
            &text,
            "chatbot_openai_tokens_total{operation=\"chat\",kind=\"completion\"}"
        ) > 0.0
    );
}

#[tokio::test]
async fn ingesting_a_document_retires_the_collections_cached_answers() {
    let app = TestApp::spawn().await.unwrap();
    let first = app.ask("What is a vole?", "v1").await;
    assert_eq!(first.json()["cached"], false);
    assert_eq!(
        app.ask("What is a vole?", "v1").await.json()["cached"],
        true
    );
    let ingested = app
        .ingest(json!([{"id": "voles", "source": "voles.md", "text": "A vole is a small rodent."}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    // The document may change the answer: it is asked again, and cited.
    let after = app.ask("What is a vole?", "v1").await;
    assert_eq!(after.json()["cached"], false, "{}", after.text());
    assert_eq!(after.json()["citations"][0]["source"], "voles.md");
    assert_eq!(
        app.ask("What is a vole?", "v1").await.json()["cached"],
        true
    );
}

fn otters(paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|i| format!("Paragraph {i} about otters. {}", "Otters swim. ".repeat(70)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn document(paragraphs: usize) -> Value {
    json!([{"id": "otters", "source": "otters.md", "text": otters(paragraphs)}])
}

fn chunks_of(paragraphs: usize) -> usize {
    use chatbot_core::chat::ingest::{chunk, CHUNK_CHARS, CHUNK_OVERLAP_CHARS};
    chunk(&otters(paragraphs), CHUNK_CHARS, CHUNK_OVERLAP_CHARS).len()
}

#[tokio::test]
async fn a_failed_re_ingestion_leaves_the_old_text_and_a_shorter_one_drops_its_tail() {
    let app = TestApp::spawn().await.unwrap();
    assert_eq!(app.ingest(document(4)).await.unwrap().status, 200);
    let old_points = app.qdrant.point_count(DEFAULT_COLLECTION);
    assert_eq!(old_points, chunks_of(4));
    assert!(chunks_of(1) < old_points && old_points < chunks_of(6));
    // The upsert of the new text fails: the old text is still there, whole.
    app.qdrant
        .controls()
        .fail_next(UPSERT, 1, Fault::Status(500));
    let failed = app.ingest(document(6)).await.unwrap();
    assert_eq!(failed.status, 503, "{}", failed.text());
    assert_eq!(app.qdrant.point_count(DEFAULT_COLLECTION), old_points);
    // A shorter text replaces the document: no chunk of the longer one is left.
    assert_eq!(app.ingest(document(1)).await.unwrap().status, 200);
    assert_eq!(app.qdrant.point_count(DEFAULT_COLLECTION), chunks_of(1));
    let answer = app.ask("Tell me about otters", "o1").await;
    let kept: Vec<String> = (0..chunks_of(1))
        .map(|i| chatbot_core::chat::ingest::point_id("otters", i))
        .collect();
    for citation in answer.json()["citations"].as_array().unwrap() {
        let id = citation["chunk_id"].as_str().unwrap().to_string();
        assert!(kept.contains(&id), "{id} is a chunk of the old text");
    }
}

/// The Qdrant entry of a readiness report.
/// Drops the kept `/health/services` report, as its few seconds passing would.
async fn forget_health_report(app: &TestApp) {
    let mut redis = app.redis().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys::HEALTH_REPORT)
        .query_async(&mut redis)
        .await
        .unwrap();
}

fn qdrant_check(readiness: &Value) -> Value {
    readiness["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "qdrant")
        .cloned()
        .unwrap_or_else(|| panic!("no qdrant in {readiness}"))
}

/// A fresh deployment (Qdrant without the collection): questions are answered
/// without passages, counted and logged, the admin's report says why, and the first
/// ingestion creates the collection and makes the next answer use it.
#[tokio::test]
async fn a_fresh_deployment_answers_without_passages_until_something_is_ingested() {
    let app = TestApp::builder().capture_stderr().spawn().await.unwrap();
    let ready = app.get("/health/readiness").await.unwrap();
    assert_eq!(
        ready.status,
        200,
        "routable, to be ingested into: {}",
        ready.text()
    );
    assert_eq!(ready.json()["status"], "ready");
    // The admin's report says why answers have no passages.
    let body = app.admin_get("/health/services").await.unwrap().json();
    let qdrant = qdrant_check(&body);
    assert_eq!(qdrant["status"], "up", "{body}");
    assert_eq!(
        qdrant["collection"],
        json!({"name": DEFAULT_COLLECTION, "exists": false})
    );
    let warning = body["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("does not exist"), "{body}");

    for _ in 0..2 {
        let response = app.ask("Anyone there?", "fresh").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["citations"], json!([]));
        assert!(!response.json()["answer"].as_str().unwrap().is_empty());
    }
    // The repeat was the cache's: one search, one chat call.
    assert_eq!(app.qdrant.controls().calls(SEARCH), 1);
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_qdrant_collection_missing_total"),
        1.0
    );
    assert_eq!(
        value_of(&text, "chatbot_errors_total{error_type=\"qdrant\"}"),
        0.0,
        "nothing ingested yet is not a Qdrant failure"
    );
    let stderr = app.app.stderr.as_ref().expect("stderr is captured").text();
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"qdrant_collection_missing\""))
        .collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    assert!(logged[0].contains(DEFAULT_COLLECTION), "{}", logged[0]);

    // The first ingestion creates the collection; the cached answer without
    // passages is not served again (the generation moved).
    let ingested = app
        .ingest(json!([{"id": "hello", "source": "hello.md", "text": "Someone is there: the library."}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    let answered = app.ask("Anyone there?", "fresh").await;
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(answered.json()["cached"], false);
    assert_eq!(answered.json()["citations"][0]["source"], "hello.md");
    // The report made before the ingestion is kept a few seconds; the next one sees the collection.
    forget_health_report(&app).await;
    let ready = app.admin_get("/health/services").await.unwrap().json();
    assert_eq!(
        qdrant_check(&ready)["collection"]["exists"],
        true,
        "{ready}"
    );
    assert!(ready.get("warnings").is_none(), "{ready}");
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_qdrant_collection_missing_total"),
        1.0
    );
}

/// Only Qdrant's own "collection doesn't exist" is "nothing ingested": a 404
/// of another shape (a proxy's page, a wrong base path) is an error, shared
/// with nobody's cache, and Qdrant is down for readiness.
#[tokio::test]
async fn a_404_that_is_not_qdrants_missing_collection_is_an_error_and_nothing_is_cached() {
    let app = TestApp::spawn().await.unwrap();
    app.qdrant
        .controls()
        .fail_always(SEARCH, Fault::Status(404));
    for _ in 0..2 {
        let response = app.ask("Anyone there?", "q404").await;
        assert_eq!(response.status, 502, "{}", response.text());
    }
    assert_eq!(
        app.qdrant.controls().calls(SEARCH),
        2,
        "never answered from a cache"
    );
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    let mut redis = app.redis().await.unwrap();
    let cached: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys::QUERY_PREFIX))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(cached.is_empty(), "{cached:?}");
    let text = scrape(&app).await;
    assert_eq!(
        value_of(&text, "chatbot_errors_total{error_type=\"qdrant\"}"),
        2.0
    );
    assert_eq!(
        value_of(&text, "chatbot_qdrant_collection_missing_total"),
        0.0
    );

    app.qdrant.controls().fail_always(
        chatbot_harness::stubs::qdrant::COLLECTIONS,
        Fault::Status(404),
    );
    let report = app.admin_get("/health/services").await.unwrap();
    assert_eq!(report.status, 200, "{}", report.text());
    let qdrant = qdrant_check(&report.json());
    assert_eq!(qdrant["status"], "down", "{qdrant}");
    assert!(qdrant.get("collection").is_none(), "{qdrant}");
}

#[test]
fn every_variable_that_can_carry_a_credential_is_secret() {
    let manifest = chatbot_harness::manifest::Manifest::load(
        &chatbot_harness::project_root().join("spin.toml"),
    )
    .unwrap();
    // Connection URLs carry passwords in production (redis://:pw@host, postgres://user:pw@host).
    for name in [
        "redis_address",
        "postgres_address",
        "openai_api_key",
        "qdrant_api_key",
        "admin_token",
        "jwt_hs256_secret",
    ] {
        assert!(
            manifest.variables[name].secret,
            "{name} is not marked secret"
        );
    }
}

/// The decaying ranking (top questions, rate-limited sessions) against a real
/// Redis, with a small cap and a one-second half-life: a newcomer to a full
/// ranking gets in, and an old favourite fades behind what is asked now.
#[tokio::test]
async fn a_full_ranking_admits_newcomers_and_forgets_old_favourites() {
    use chatbot_core::cache::ranking::{Bump, Top};
    let app = TestApp::spawn().await.unwrap();
    let shared = app.redis().await.unwrap();
    let mut redis = shared.clone();
    let ranking = "test:{r}:ranking";
    let bump = |member: &'static str| {
        let mut redis = shared.clone();
        async move {
            let bump = Bump {
                ranking,
                member,
                half_life_seconds: 1,
                cap: 3,
            };
            chatbot_harness::scripts::run(&mut redis, &bump)
                .await
                .unwrap();
        }
    };
    for member in ["a", "a", "a", "b", "b", "c", "c"] {
        bump(member).await;
    }
    // Full (3 members): the newcomer takes the lowest's place instead of being evicted at once.
    bump("d").await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(ranking)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.contains(&"d".to_string()), "{members:?}");
    // Three half-lives later, one new ask outweighs the old favourite's three.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    bump("e").await;
    let top = Top {
        ranking,
        count: 1,
        half_life_seconds: 1,
    };
    let top = chatbot_harness::scripts::run(&mut redis, &top)
        .await
        .unwrap();
    assert_eq!(top[0].0, "e", "{top:?}");
    // One ask now, plus the place it took (Space-Saving's overestimate, decayed).
    assert!((1.0..1.5).contains(&top[0].1), "{top:?}");
}

/// The stand-ins answer a body without `Content-Length` with 411, as some
/// OpenAI-compatible servers and proxies do: every call the app makes
/// (embedding, search, chat, collection, upsert, delete) must carry it.
#[tokio::test]
async fn outbound_bodies_carry_their_length() {
    // A fresh Qdrant: the ingestion creates the collection too.
    let app = TestApp::spawn().await.unwrap();
    let ingested = app
        .ingest(json!([{"id": "len", "source": "len.md", "text": "Lengths are known."}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    let answered = app.ask("Are lengths known?", "len").await;
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(answered.json()["citations"][0]["source"], "len.md");
}

#[tokio::test]
async fn every_route_answers_with_its_request_id_and_response_time() {
    let app = TestApp::spawn().await.unwrap();
    for route in chatbot_core::http::routes::all() {
        let path = route.path.replace(":session_id", "some-session");
        let response = app
            .admin(route.method.as_str(), &path, &json!({}))
            .await
            .unwrap();
        assert!(
            response
                .header("x-response-time")
                .is_some_and(|t| t.ends_with("ms")),
            "{} {path}: no X-Response-Time",
            route.method
        );
        assert!(
            response
                .header("x-request-id")
                .is_some_and(|id| id.len() == 32),
            "{} {path}: no X-Request-Id",
            route.method
        );
    }
}
