//! The product on the host its users run: `spin up` (Spin 4.0.x) with the
//! shipped `spin.toml`, real Redis and Postgres, the OpenAI stand-in and the
//! real Qdrant where one is installed. Every test says SKIPPED and passes
//! when no Spin 4.0.x is found (`SPIN_BIN`, `PATH`); `.ci/run` always has one.
//!
//! Clients here are what users have: keep-alive connections whose ACKs are
//! delayed, reading each response as it arrives.

use std::time::Duration;

use chatbot_core::config::names;
use chatbot_harness::relay::Relay;
use chatbot_harness::spin::{SpinApp, SpinAppBuilder};
use chatbot_harness::stubs::SilentServer;
use chatbot_harness::wire::{WireClient, WireResponse};
use chatbot_harness::TEST_ADMIN_TOKEN;
use serde_json::{json, Value};

const QUERY: &str = "/api/v1/chat/query";

async fn ask(client: &mut WireClient, body: Value) -> WireResponse {
    client
        .post_json(QUERY, &body, &[])
        .await
        .expect("an answer")
}

async fn ingest(app: &SpinApp, text: &str) {
    let response = app
        .ingest(json!([{"id": "ai-book", "source": "ai.pdf", "text": text}]))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// The seed's flow (the README's "Try it"), as curl would run it but on one
/// keep-alive connection: ingest, a miss, a hit, a follow-up naming its
/// conversation, a stream, the metrics, the history and the analytics.
#[tokio::test]
async fn the_seed_flow_on_spin() {
    let Some(app) = SpinApp::builder()
        .spawn_or_skip("the_seed_flow_on_spin")
        .await
    else {
        return;
    };
    ingest(
        &app,
        "Artificial intelligence is the study of intelligent agents.",
    )
    .await;
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let question =
        json!({"question": "What is AI?", "session_id": "sess1", "page_context": "AI textbook"});

    let miss = ask(&mut client, question.clone()).await;
    assert_eq!(miss.status, 200, "{}", miss.text());
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    let answer = miss.json();
    assert_eq!(answer["cached"], false);
    assert_eq!(answer["citations"][0]["source"], "ai.pdf");
    let conversation = answer["conversation_id"]
        .as_str()
        .expect("a conversation id")
        .to_string();
    assert!(conversation.starts_with("conv_"), "{conversation}");

    let hit = ask(&mut client, question.clone()).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("x-cache-match"), Some("exact"));
    assert_eq!(hit.json()["cached"], true);
    assert_eq!(hit.json()["answer"], answer["answer"]);
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-request-id",
    ] {
        assert!(hit.header(name).is_some(), "no {name}: {:?}", hit.headers);
    }

    let follow_up = ask(
        &mut client,
        json!({"question": "Who studies them?", "session_id": "sess1", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(follow_up.status, 200, "{}", follow_up.text());
    assert_eq!(follow_up.json()["conversation_id"], conversation);
    let answered_with = app.openai.chat_requests().last().cloned().unwrap();
    assert!(
        answered_with.to_string().contains("What is AI?"),
        "the follow-up was answered with the earlier turn: {answered_with}"
    );

    let streamed = client
        .send(
            "POST",
            QUERY,
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            &serde_json::to_vec(&json!({"question": "Who studies agents?", "session_id": "sess1"}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    let text = streamed.text();
    let meta = text.find("event: meta").expect("a meta event");
    let delta = text.find("event: delta").expect("a delta event");
    let done = text.find("event: done").expect("a done event");
    assert!(meta < delta && delta < done, "{text}");

    let metrics = app.get("/metrics").await.unwrap().text();
    assert_eq!(
        chatbot_harness::metric_value(&metrics, "chatbot_cache_hits_total{cache_type=\"query\"}"),
        Some(1.0),
        "{metrics}"
    );
    // Every exchange is in the history the moment its answer has arrived.
    let history = app.history("sess1", 1).await;
    assert_eq!(history.status, 200, "{}", history.text());
    assert_eq!(history.json()["total"], 8, "{}", history.text());
    assert_eq!(app.messages_stored("sess1").await, 8);
    let analytics = app.admin_get("/health/cache/analytics").await.unwrap();
    assert_eq!(analytics.status, 200, "{}", analytics.text());
    assert!(
        analytics.text().contains("what is ai?"),
        "{}",
        analytics.text()
    );
    assert_eq!(app.get("/health/readiness").await.unwrap().status, 200);
}

/// The shape that keeps a keep-alive client from waiting 40 ms on every
/// answer: each JSON answer declares its length and arrives in one segment.
/// The hit's and the miss's latencies on one such connection are printed.
#[tokio::test]
async fn every_json_answer_leaves_whole_on_a_keep_alive_connection_under_spin() {
    let Some(app) = SpinApp::builder()
        .alone()
        .spawn_or_skip("every_json_answer_leaves_whole_on_a_keep_alive_connection_under_spin")
        .await
    else {
        return;
    };
    let table = chatbot_harness::wire::check_whole_json_answers(app.addr, TEST_ADMIN_TOKEN)
        .await
        .unwrap();
    println!("{table}");

    let mut client = WireClient::connect(app.addr).await.unwrap();
    let (mut hits, mut misses, mut host_races) = (Vec::new(), Vec::new(), 0);
    for i in 0..40 {
        let miss = ask(
            &mut client,
            json!({"question": format!("Miss number {i}?"), "session_id": "keep-alive"}),
        )
        .await;
        assert_eq!(miss.header("x-cache"), Some("MISS"));
        assert_eq!(miss.left_whole(), Ok(()));
        host_races += usize::from(miss.head_came_alone());
        misses.push(miss.elapsed);
        let hit = ask(
            &mut client,
            json!({"question": "Miss number 0?", "session_id": "keep-alive"}),
        )
        .await;
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(hit.left_whole(), Ok(()));
        host_races += usize::from(hit.head_came_alone());
        hits.push(hit.elapsed);
    }
    println!(
        "one keep-alive connection under Spin: hit p50 {:.2} ms, miss p50 {:.2} ms (chat stand-in answering at once); the host sent the head alone first {host_races} times in 80",
        median_ms(hits),
        median_ms(misses)
    );
}

/// A streamed miss: events in order, as the model writes them; what the
/// client sees between them and after `done` on a connection that delays its
/// ACKs is printed. A streamed hit leaves whole, like a JSON answer.
#[tokio::test]
async fn a_stream_on_a_keep_alive_connection_under_spin() {
    let Some(app) = SpinApp::builder()
        .spawn_or_skip("a_stream_on_a_keep_alive_connection_under_spin")
        .await
    else {
        return;
    };
    app.openai
        .set_stream_timing(Duration::from_millis(100), Duration::from_millis(20));
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let body = serde_json::to_vec(
        &json!({"question": "Stream it?", "session_id": "stream", "stream": true}),
    )
    .unwrap();
    let mut done_to_end = Vec::new();
    for _ in 0..5 {
        // The same question: a miss the first time, then hits.
        let streamed = client
            .send(
                "POST",
                QUERY,
                &[("content-type", "application/json")],
                &body,
            )
            .await
            .unwrap();
        assert_eq!(streamed.status, 200, "{}", streamed.text());
        let text = streamed.text();
        assert!(text.starts_with("event: meta"), "{text}");
        assert!(
            text.trim_end().ends_with('}') && text.contains("event: done"),
            "{text}"
        );
        if streamed.header("x-cache") == Some("HIT") {
            assert_eq!(streamed.content_length(), Some(streamed.body.len()));
            assert_eq!(streamed.left_whole(), Ok(()), "a streamed hit leaves whole");
            continue;
        }
        assert!(streamed.is_chunked());
        let arrivals: Vec<String> = streamed
            .reads
            .iter()
            .map(|(at, bytes)| {
                let events = String::from_utf8_lossy(bytes).matches("event: ").count();
                format!("{:.1} ms: {events} events", at.as_secs_f64() * 1000.0)
            })
            .collect();
        let done_at = streamed
            .reads
            .iter()
            .find(|(_, bytes)| String::from_utf8_lossy(bytes).contains("event: done"))
            .map(|(at, _)| *at)
            .unwrap();
        done_to_end.push(streamed.elapsed - done_at);
        println!(
            "a streamed miss under Spin ({} data segments): {}; the end {:.1} ms after `done`",
            streamed.data_segments,
            arrivals.join(", "),
            (streamed.elapsed - done_at).as_secs_f64() * 1000.0
        );
    }
    assert_eq!(done_to_end.len(), 1, "one miss, then hits");
}

/// A session's bucket empties: 429 with `Retry-After` and the rate-limit
/// headers, whole; another session is still served.
#[tokio::test]
async fn limits_and_429s_under_spin() {
    let Some(app) = SpinApp::builder()
        .variable(names::RATE_LIMIT_REQUESTS, "3")
        .spawn_or_skip("limits_and_429s_under_spin")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    for i in 0..3 {
        let admitted = ask(
            &mut client,
            json!({"question": format!("Limit {i}?"), "session_id": "limited"}),
        )
        .await;
        assert_eq!(admitted.status, 200, "{}", admitted.text());
        assert_eq!(
            admitted.header("x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let refused = ask(
        &mut client,
        json!({"question": "Limit 4?", "session_id": "limited"}),
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["status"], "rate_limited");
    assert_eq!(
        refused.json()["detail"],
        "Rate limit exceeded. Too many requests."
    );
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(refused.left_whole(), Ok(()));
    let other = ask(
        &mut client,
        json!({"question": "Limit 4?", "session_id": "another"}),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(
        app.messages_stored("limited").await,
        6,
        "the refusal stored nothing"
    );
}

/// Whether `/health/services` says the collection exists.
async fn qdrant_collection_exists(app: &SpinApp) -> Option<bool> {
    let services = app.admin_get("/health/services").await.unwrap().json();
    services["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "qdrant")?["collection"]["exists"]
        .as_bool()
}

/// A fresh deployment: Qdrant has no collection yet, so questions are
/// answered without passages (and the services report says why); the first
/// ingestion creates it.
#[tokio::test]
async fn a_fresh_deployment_under_spin() {
    let Some(app) = SpinApp::builder()
        .spawn_or_skip("a_fresh_deployment_under_spin")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let before = ask(
        &mut client,
        json!({"question": "Anything yet?", "session_id": "fresh"}),
    )
    .await;
    assert_eq!(before.status, 200, "{}", before.text());
    assert_eq!(before.json()["citations"], json!([]));
    assert_eq!(qdrant_collection_exists(&app).await, Some(false));
    ingest(&app, "Fresh deployments answer once documents are in.").await;
    let after = ask(
        &mut client,
        json!({"question": "When do fresh deployments answer?", "session_id": "fresh"}),
    )
    .await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.json()["citations"][0]["source"],
        "ai.pdf",
        "{}",
        after.text()
    );
    // The services report is kept 5 s: wait it out.
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(qdrant_collection_exists(&app).await, Some(true));
}

/// Instances recycled every two requests: every exchange is in Postgres by
/// the time its answer has arrived (nothing runs after a response to lose).
#[tokio::test]
async fn nothing_is_lost_however_often_spin_recycles_instances() {
    let Some(app) = SpinApp::builder()
        .spin_arg("--max-instance-reuse-count")
        .spin_arg("2")
        .spawn_or_skip("nothing_is_lost_however_often_spin_recycles_instances")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    for i in 0..12 {
        let question =
            json!({"question": format!("Recycled {}?", i / 2), "session_id": "recycled"});
        let answer = ask(&mut client, question).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(app.messages_stored("recycled").await, 2 * (i + 1));
    }
    assert_eq!(
        app.metric("chatbot_cache_hits_total{cache_type=\"query\"}")
            .await,
        6.0,
        "and every request was counted"
    );
}

/// Follow-ups and new conversations, and the semantic cache when it is on
/// (with the real Qdrant where installed: its payload indexes and filters).
#[tokio::test]
async fn follow_ups_and_the_semantic_cache_under_spin() {
    let Some(app) = SpinApp::builder()
        .variable(names::SEMANTIC_CACHE_THRESHOLD, "0.9")
        .spawn_or_skip("follow_ups_and_the_semantic_cache_under_spin")
        .await
    else {
        return;
    };
    ingest(
        &app,
        "Reset your password on the website under Account, then Security.",
    )
    .await;
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let first = ask(
        &mut client,
        json!({"question": "How do I reset my password on the website", "session_id": "sem"}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let reworded = ask(
        &mut client,
        json!({"question": "how do I reset my password on the website please", "session_id": "sem"}),
    )
    .await;
    assert_eq!(
        reworded.header("x-cache"),
        Some("HIT"),
        "{}",
        reworded.text()
    );
    let matched = reworded.header("x-cache-match").unwrap();
    assert!(matched.starts_with("semantic; score=0.9"), "{matched}");
    assert_eq!(reworded.json()["answer"], first.json()["answer"]);

    let conversation = first.json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let follow_up = ask(
        &mut client,
        json!({"question": "And on the app?", "session_id": "sem", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(follow_up.status, 200, "{}", follow_up.text());
    assert_eq!(follow_up.header("x-cache"), Some("MISS"));
    let fresh = ask(
        &mut client,
        json!({"question": "A new topic?", "session_id": "sem", "new_conversation": true}),
    )
    .await;
    assert_ne!(
        fresh.json()["conversation_id"]
            .as_str()
            .unwrap()
            .to_string(),
        conversation
    );
    // The same handle with its last digit changed: well formed, never issued.
    let last = if conversation.ends_with('0') {
        "1"
    } else {
        "0"
    };
    let guessed = format!("{}{last}", &conversation[..conversation.len() - 1]);
    let unknown = ask(
        &mut client,
        json!({"question": "Guess?", "session_id": "sem", "conversation_id": guessed}),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
}

/// Issue #38 (4), with the real Qdrant where installed (its set payload,
/// `should` filter, `with_payload` fields and bool payload index): in
/// `global` scope one session's answer serves another semantically only
/// once a second session was served it exactly, and never names the first
/// session's question to another.
#[tokio::test]
async fn the_global_semantic_cache_shares_only_confirmed_answers_under_spin() {
    let Some(app) = SpinApp::builder()
        .variable(names::SEMANTIC_CACHE_THRESHOLD, "0.9")
        .variable(names::QUERY_CACHE_SCOPE, "global")
        .spawn_or_skip("the_global_semantic_cache_shares_only_confirmed_answers_under_spin")
        .await
    else {
        return;
    };
    ingest(
        &app,
        "Reset your password on the website under Account, then Security.",
    )
    .await;
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let asked = "How do I reset my password on the website";
    let mut ask_as = async |question: &str, session: &str| {
        let response = ask(
            &mut client,
            json!({"question": question, "session_id": session}),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.text());
        response
    };
    let first = ask_as(asked, "g1").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    // Its own session is served it (in `none` mode, never shown a question).
    let own = ask_as("how do I reset my password on the website please", "g1").await;
    assert_eq!(own.header("x-cache"), Some("HIT"), "{}", own.text());
    assert!(own.json().get("matched_question").is_none());
    // Unconfirmed: another session is answered afresh.
    let other = ask_as("please how do I reset my password on the website", "g2").await;
    assert_eq!(other.header("x-cache"), Some("MISS"), "{}", other.text());
    // A second session served it exactly confirms it.
    let exact = ask_as(asked, "g3").await;
    assert_eq!(exact.header("x-cache-match"), Some("exact"));
    let shared = ask_as("on the website how do I reset my password please", "g4").await;
    assert_eq!(shared.header("x-cache"), Some("HIT"), "{}", shared.text());
    assert!(shared
        .header("x-cache-match")
        .is_some_and(|m| m.starts_with("semantic; score=")));
    assert_eq!(shared.json()["answer"], first.json()["answer"]);
    assert!(shared.json().get("matched_question").is_none());
}

/// Redis dies (every connection reset, the port refusing) and comes back:
/// questions are answered throughout (the cache bypassed, readiness 503),
/// and once it is back the instance's connections are opened again and the
/// cache serves.
#[tokio::test]
async fn redis_dies_and_comes_back_under_spin() {
    let redis_url = chatbot_harness::services::services()
        .fresh_redis()
        .await
        .unwrap();
    let (mut relay, relayed) = Relay::in_front_of(&redis_url).await.unwrap();
    let Some(app) = SpinApp::builder()
        .address(names::REDIS_ADDRESS, relayed)
        .spawn_or_skip("redis_dies_and_comes_back_under_spin")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let question = json!({"question": "Does Redis come back?", "session_id": "redis-back"});
    assert_eq!(
        ask(&mut client, question.clone()).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        ask(&mut client, question.clone()).await.header("x-cache"),
        Some("HIT")
    );

    relay.cut();
    let without = ask(&mut client, question.clone()).await;
    assert_eq!(without.status, 200, "{}", without.text());
    assert_ne!(
        without.header("x-cache"),
        Some("HIT"),
        "no cache without Redis"
    );
    let readiness = app.get("/health/readiness").await.unwrap();
    assert_eq!(readiness.status, 503, "{}", readiness.text());

    relay.restore().await.unwrap();
    let mut back = None;
    for _ in 0..50 {
        let answer = ask(&mut client, question.clone()).await;
        if answer.header("x-cache") == Some("HIT") {
            back = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back.is_some(),
        "the cache serves again once Redis is back:\n{}",
        app.log()
    );
    assert_eq!(app.get("/health/readiness").await.unwrap().status, 200);
    assert_eq!(
        app.messages_stored("redis-back").await,
        2 * 4,
        "every exchange stored, Redis or not"
    );
}

/// Postgres dies and comes back: answers go on, each lost history write is
/// counted, and once it is back (Spin's pool holding only dead connections)
/// exchanges are stored again.
#[tokio::test]
async fn postgres_dies_and_comes_back_under_spin() {
    let services = chatbot_harness::services::services();
    let database = services.fresh_postgres().await.unwrap();
    let postgres_url = database.url.clone();
    let (mut relay, relayed) = Relay::in_front_of(&postgres_url).await.unwrap();
    let Some(app) = SpinApp::builder()
        .address(names::POSTGRES_ADDRESS, relayed)
        .spawn_or_skip("postgres_dies_and_comes_back_under_spin")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    assert_eq!(
        ask(
            &mut client,
            json!({"question": "Stored?", "session_id": "pg-back"})
        )
        .await
        .status,
        200
    );
    // Read through the real server, not the relay.
    let stored = || chatbot_harness::messages_stored(&postgres_url, "pg-back");
    assert_eq!(stored().await, 2);

    relay.cut();
    for i in 0..3 {
        let answer = ask(
            &mut client,
            json!({"question": format!("Lost {i}?"), "session_id": "pg-back"}),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(app.metric("chatbot_history_writes_lost_total").await, 3.0);

    relay.restore().await.unwrap();
    let answer = ask(
        &mut client,
        json!({"question": "Stored again?", "session_id": "pg-back"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(stored().await, 4, "{}", app.log());
}

/// A dependency that accepts and never answers: OpenAI costs the request its
/// deadline (a 504, whole); Redis and Postgres cost a bounded wait, not the
/// answer.
#[tokio::test]
async fn dependencies_that_accept_and_never_answer_under_spin() {
    let silent = SilentServer::start().await.unwrap();
    let silent_url = |scheme: &str| format!("{scheme}://{}", silent.addr);

    let Some(app) = SpinApp::builder()
        .address(names::OPENAI_BASE_URL, format!("{}/v1", silent_url("http")))
        .variable(names::REQUEST_TIMEOUT_MS, "1500")
        .spawn_or_skip("dependencies_that_accept_and_never_answer_under_spin")
        .await
    else {
        return;
    };
    let mut client = WireClient::connect(app.addr).await.unwrap();
    let timed_out = ask(
        &mut client,
        json!({"question": "Silent OpenAI?", "session_id": "silent"}),
    )
    .await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_eq!(
        timed_out.json()["detail"],
        "OpenAI did not answer in time",
        "{}",
        timed_out.text()
    );
    assert_eq!(timed_out.left_whole(), Ok(()));
    println!(
        "silent OpenAI under Spin: 504 after {:.0} ms",
        timed_out.elapsed.as_secs_f64() * 1000.0
    );
    drop(app);

    for (variable, name) in [
        (names::REDIS_ADDRESS, "redis"),
        (names::POSTGRES_ADDRESS, "postgres"),
    ] {
        let address = if name == "redis" {
            silent_url("redis")
        } else {
            format!("{}/chatbot", silent_url("postgres"))
        };
        let app = SpinAppBuilder::default()
            .address(variable, address)
            .spawn(&chatbot_harness::spin::spin_binary().unwrap())
            .await
            .unwrap();
        let mut client = WireClient::connect(app.addr).await.unwrap();
        let answered = ask(
            &mut client,
            json!({"question": format!("Silent {name}?"), "session_id": "silent"}),
        )
        .await;
        assert_eq!(answered.status, 200, "silent {name}: {}", answered.text());
        println!(
            "silent {name} under Spin: answered after {:.0} ms",
            answered.elapsed.as_secs_f64() * 1000.0
        );
    }
}
