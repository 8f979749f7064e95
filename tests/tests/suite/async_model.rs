//! The components on Spin 4's async model (WASIp3): an instance serves many
//! requests, up to 16 at once, on connections it keeps; every Redis and
//! Postgres call is bounded, so a silent one costs latency, not answers; and
//! the work after an answer runs before its response body ends, so recycling
//! instances loses nothing.

use std::time::Duration;

use chatbot_core::config::names;
use chatbot_harness::stubs::SilentServer;
use chatbot_harness::{InstanceReuse, TestApp};
use futures_util::future::join_all;
use serde_json::json;

#[tokio::test]
async fn an_instance_keeps_one_redis_connection_per_component_for_all_its_requests() {
    let app = TestApp::spawn().await.unwrap();
    let ask = json!({"question": "What is kept?", "session_id": "kept-1"});
    assert_eq!(
        app.post_json("/api/v1/chat/query", &ask)
            .await
            .unwrap()
            .status,
        200
    );
    let before = app.counts();
    for _ in 0..30 {
        let hit = app.post_json("/api/v1/chat/query", &ask).await.unwrap();
        assert_eq!(hit.status, 200, "{}", hit.text());
        assert_eq!(hit.header("x-cache"), Some("HIT"));
    }
    let counts = app.counts() - before;
    assert_eq!(
        counts.instances, 0,
        "the first request's instance served them all"
    );
    assert_eq!(
        counts.redis_opens, 0,
        "the query handler, the limiter and the recorder each kept the connection they opened"
    );
    // A hit's three round trips: the buckets, the lookup, the metrics batch.
    assert_eq!(counts.redis_commands, 30 * 3);
}

#[tokio::test]
async fn requests_served_at_once_by_one_instance_each_get_only_their_own_answer() {
    let app = TestApp::spawn().await.unwrap();
    let warm = json!({"question": "Warm?", "session_id": "alone-warm"});
    assert_eq!(
        app.post_json("/api/v1/chat/query", &warm)
            .await
            .unwrap()
            .status,
        200
    );
    let before = app.counts();
    // Slow enough that all sixteen are in the instance together; staggered,
    // as real traffic arrives.
    app.openai.controls().set_latency(
        chatbot_harness::stubs::openai::CHAT,
        Duration::from_millis(800),
    );
    let app = &app;
    let answers = join_all((0..16u64).map(|i| async move {
        tokio::time::sleep(Duration::from_millis(20 * i)).await;
        let ask = json!({"question": format!("Question number {i}?"), "session_id": format!("alone-{i}")});
        (i, app.post_json("/api/v1/chat/query", &ask).await.unwrap())
    }))
    .await;
    let mut request_ids = std::collections::BTreeSet::new();
    for (i, response) in &answers {
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!(body["session_id"], format!("alone-{i}"));
        let answer = body["answer"].as_str().unwrap();
        assert!(
            answer.contains(&format!("Question number {i}?")),
            "request {i} got {answer:?}"
        );
        request_ids.insert(response.header("x-request-id").unwrap().to_string());
    }
    assert_eq!(request_ids.len(), 16, "every request has its own id");
    assert_eq!(
        (app.counts() - before).instances,
        0,
        "the warm instance served all sixteen"
    );
    app.app.settled().await;
    for i in 0..16 {
        assert_eq!(app.messages_stored(&format!("alone-{i}")).await, 2);
    }
}

#[tokio::test]
async fn a_silent_redis_costs_latency_not_the_answer_and_is_logged() {
    let silent = SilentServer::start().await.unwrap();
    let app = TestApp::builder()
        .address(names::REDIS_ADDRESS, format!("redis://{}", silent.addr))
        .capture_stderr()
        .spawn()
        .await
        .unwrap();
    let app = &app;
    let answers = join_all((0..3).map(|i| async move {
        let ask = json!({"question": "Is Redis there?", "session_id": format!("silent-r{i}")});
        tokio::time::timeout(
            Duration::from_secs(60),
            app.post_json("/api/v1/chat/query", &ask),
        )
        .await
        .expect("answered, not hung")
        .unwrap()
    }))
    .await;
    for response in &answers {
        // Answered without the cache, the limiter failing open.
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["cached"], false);
    }
    let stderr = app.app.stderr.as_ref().unwrap().text();
    assert!(
        stderr.contains("\"event\":\"redis_unavailable\""),
        "{stderr}"
    );
    assert!(stderr.contains("no answer in time"), "{stderr}");
}

#[tokio::test]
async fn a_silent_postgres_costs_the_history_write_counted_not_the_answer() {
    let silent = SilentServer::start().await.unwrap();
    let app = TestApp::builder()
        .address(
            names::POSTGRES_ADDRESS,
            format!("postgres://postgres@{}/chatbot", silent.addr),
        )
        .spawn()
        .await
        .unwrap();
    let ask = json!({"question": "Is Postgres there?", "session_id": "silent-pg"});
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        app.post_json("/api/v1/chat/query", &ask),
    )
    .await
    .expect("answered, not hung")
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    // No conversation could be created, so none is named.
    assert_eq!(response.json()["conversation_id"], serde_json::Value::Null);
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("chatbot_history_writes_lost_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_exchange_is_stored_by_the_time_its_response_ends_however_often_instances_are_recycled(
) {
    let recycled = InstanceReuse {
        max_requests: 2,
        ..InstanceReuse::SPIN_DEFAULTS
    };
    let app = TestApp::builder()
        .instance_reuse(recycled)
        .spawn()
        .await
        .unwrap();
    // A raw client: each response returns as soon as its body has ended.
    let mut client = app.raw_client();
    for i in 0..12 {
        let question = format!("Recycled question {}?", i % 3);
        let ask = json!({"question": question, "session_id": "recycled"});
        let response = client.post_json("/api/v1/chat/query", &ask).await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        // No waiting: the exchange was written before the body ended.
        assert_eq!(app.messages_stored("recycled").await, 2 * (i + 1));
    }
    assert!(app.counts().instances >= 6, "{:?}", app.counts());
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains(
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"false\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"} 9"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_history_lists_exchanges_in_the_order_they_were_asked_not_stored() {
    let app = TestApp::spawn().await.unwrap();
    let ask = |question: &str| json!({"question": question, "session_id": "order"});
    // Asked once, so that asking it again is a quick hit.
    let first = app
        .post_json("/api/v1/chat/query", &ask("Quick?"))
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    app.openai.controls().set_latency(
        chatbot_harness::stubs::openai::CHAT,
        Duration::from_millis(1500),
    );
    let app = &app;
    let slow = async {
        app.post_json("/api/v1/chat/query", &ask("Slow?"))
            .await
            .unwrap()
    };
    let quick = async {
        // Asked after the slow one, answered and stored long before it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.post_json("/api/v1/chat/query", &ask("Quick?"))
            .await
            .unwrap()
    };
    let (slow, quick) = futures_util::future::join(slow, quick).await;
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(quick.header("x-cache"), Some("HIT"));
    let history = app.history("order", 1).await.json();
    let questions: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(questions, ["Quick?", "Slow?", "Quick?"], "{history}");
}

/// Every JSON answer leaves in one piece, with its `Content-Length`: on a
/// keep-alive connection whose client delays its ACKs (as any does), the
/// whole of it arrives in one segment, before the client has ACKed anything,
/// so Nagle's algorithm (on, as in Spin) has nothing to hold back.
#[tokio::test]
async fn every_json_answer_leaves_whole_on_a_keep_alive_connection() {
    let app = TestApp::spawn().await.unwrap();
    let table = chatbot_harness::wire::check_whole_json_answers(
        app.server.addr,
        chatbot_harness::TEST_ADMIN_TOKEN,
    )
    .await
    .unwrap();
    println!("{table}");
}
