//! The seed's rate-limit flow through the composed app (query handler +
//! rate-limiter component + metrics component).

use chatbot_harness::TestApp;
use serde_json::json;

/// The seed's flow: 100 requests a minute per session, then 429. The bucket
/// refills continuously (100 tokens per 60 s), so requests sent while the
/// burst runs earn back what the elapsed time refilled: the test sends until
/// the first 429 and checks the count against the clock.
#[tokio::test]
async fn the_101st_request_in_a_minute_is_429_and_other_sessions_are_unaffected() {
    let app = TestApp::spawn().await.unwrap();
    let mut client = app.client();
    let started_clock = std::time::Instant::now();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut admitted = 0u32;
    let denied = loop {
        let r = client
            .post_json("/api/v1/chat/query", &json!({"question": format!("Test {}", admitted % 5), "session_id": "test-sess", "page_context": "Test"}))
            .await
            .unwrap();
        assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        // When the bucket is full again: within a minute of now (not of the
        // start: on a busy machine the burst itself takes seconds).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            reset >= started && reset <= now + 61,
            "epoch seconds: {reset}, now {now}"
        );
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "request {}: {}", admitted + 1, r.text());
        if admitted == 0 {
            assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
        }
        admitted += 1;
        assert!(admitted <= 200, "never limited");
    };
    let refilled = (started_clock.elapsed().as_secs_f64() * 100.0 / 60.0).ceil() as u32;
    assert!(
        admitted >= 100 && admitted <= 100 + refilled,
        "admitted {admitted}, refill allowance {refilled}"
    );
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.json(),
        json!({"detail": "Rate limit exceeded. Too many requests.", "status": "rate_limited"})
    );
    let retry_after: u32 = denied.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "one token comes back in 0.6 s");
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));

    let other = client
        .post_json(
            "/api/v1/chat/query",
            &json!({"question": "Test 1", "session_id": "other-sess"}),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(other.header("x-ratelimit-remaining"), Some("99"));

    // The denial is counted, its session noted for ops, and audited.
    let text = client.get("/metrics").await.unwrap().text();
    assert!(text.contains("chatbot_rate_limit_hits_total 1\n"), "{text}");
    let mut redis = app.redis().await.unwrap();
    let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
        .arg(chatbot_core::redis::keys::RATE_LIMITED_SESSIONS)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(top, vec![("test-sess".to_string(), 1.0)]);
    let audit: Vec<String> = redis::cmd("ZRANGE")
        .arg(chatbot_core::redis::keys::SECURITY_LOG)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.contains("rate_limit_denied") && e.contains("test-sess")),
        "{audit:?}"
    );
    // No history was stored for the refused request.
    let pg = app.postgres().await.unwrap();
    let n: i64 = pg
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(admitted) * 2 + 2);
}

#[tokio::test]
async fn a_user_shares_one_bucket_across_sessions() {
    let app = TestApp::builder()
        .variable("rate_limit_requests", "3")
        .spawn()
        .await
        .unwrap();
    let mut client = app.client();
    for i in 0..3 {
        let r = client
            .post_json(
                "/api/v1/chat/query",
                &json!({"question": "q", "session_id": format!("s{i}"), "user_id": "alice"}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = client
        .post_json(
            "/api/v1/chat/query",
            &json!({"question": "q", "session_id": "s9", "user_id": "alice"}),
        )
        .await
        .unwrap();
    assert_eq!(
        r.status, 429,
        "alice used her three requests across sessions"
    );
    let bob = client
        .post_json(
            "/api/v1/chat/query",
            &json!({"question": "q", "session_id": "s9", "user_id": "bob"}),
        )
        .await
        .unwrap();
    assert_eq!(bob.status, 200);
}

#[tokio::test]
async fn disabling_the_limiter_turns_it_off_cleanly() {
    let app = TestApp::builder()
        .variable("rate_limit_enabled", "false")
        .variable("rate_limit_requests", "1")
        .spawn()
        .await
        .unwrap();
    let mut client = app.client();
    for _ in 0..3 {
        let r = client
            .post_json(
                "/api/v1/chat/query",
                &json!({"question": "q", "session_id": "s"}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}

/// Sets a Redis server's `maxmemory` (0: none) under `noeviction`, as a
/// managed Redis is often configured.
async fn set_maxmemory(url: &str, bytes: u64) {
    let mut redis = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// A full Redis (writes refused past `maxmemory`) is not a Redis that is
/// down: the limiter refuses whatever its failure policy, and so do the
/// user's gate and budget when rate limiting is off, so no question reaches
/// OpenAI uncounted. Once Redis has room, questions are answered again.
#[tokio::test]
async fn a_full_redis_refuses_questions_instead_of_turning_every_limit_off() {
    use chatbot_core::config::names;
    use chatbot_harness::stubs::openai::CHAT;
    let server = chatbot_harness::services::PrivateRedis::start().unwrap();
    for rate_limiting in ["true", "false"] {
        let app = TestApp::builder()
            .address(names::REDIS_ADDRESS, server.url.clone())
            .variable(names::RATE_LIMIT_ENABLED, rate_limiting)
            .variable(names::USER_TOKEN_BUDGET_PER_DAY, "1000000")
            .spawn()
            .await
            .unwrap();
        // Each round its own session and user: the server is shared.
        let session = format!("full-{rate_limiting}");
        let ask = |question: &'static str| {
            let body = json!({"question": question, "session_id": session, "user_id": session});
            let app = &app;
            async move { app.post_json("/api/v1/chat/query", &body).await.unwrap() }
        };
        assert_eq!(ask("Before Redis fills up?").await.status, 200);
        set_maxmemory(&server.url, 1).await;
        let refused = ask("While Redis is full?").await;
        let expected = if rate_limiting == "true" { 429 } else { 503 };
        assert_eq!(refused.status, expected, "{}", refused.text());
        assert_eq!(
            app.openai.controls().calls(CHAT),
            1,
            "nothing reached OpenAI while Redis was full (rate limiting {rate_limiting})"
        );
        set_maxmemory(&server.url, 0).await;
        let after = ask("While Redis is full?").await;
        assert_eq!(after.status, 200, "{}", after.text());
        assert_eq!(app.openai.controls().calls(CHAT), 2);
    }
}
