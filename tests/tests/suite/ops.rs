//! The ops component: readiness, summaries, analytics, cache invalidation,
//! retention cleanup, warm-up, the audit log, admin auth, session limits.

use chatbot_harness::{BufferedResponse, TestApp, TestAppBuilder, TEST_ADMIN_TOKEN};
use serde_json::{json, Value};

async fn admin(app: &TestApp, method: &str, path: &str, body: Value) -> BufferedResponse {
    app.admin(method, path, &body).await.unwrap()
}

async fn keys(app: &TestApp, pattern: &str) -> Vec<String> {
    let mut conn = app.redis().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn readiness_is_200_when_the_configuration_parses_and_redis_answers() {
    let app = TestApp::builder()
        .only(&["ops"])
        .with_empty_collection()
        .spawn()
        .await
        .unwrap();
    let r = app.get("/health/readiness").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.json()["configuration"], "valid");
    assert_eq!(r.json()["services"][0]["name"], "redis");
    assert_eq!(r.json()["services"].as_array().unwrap().len(), 1);
    // A public probe calls none of the shared dependencies.
    let used = app.counts();
    assert_eq!(used.postgres_opens, 0);
    assert_eq!(
        used.outbound_http, 0,
        "neither Qdrant nor OpenAI was called"
    );
}

#[tokio::test]
async fn a_qdrant_that_refuses_the_key_is_reported_but_leaves_the_replica_ready() {
    // Qdrant's `/healthz` takes no key; the collection read does, as searches do.
    let app = TestApp::builder()
        .only(&["ops"])
        .variable("qdrant_api_key", "not-the-key")
        .spawn()
        .await
        .unwrap();
    let report = app.admin_get("/health/services").await.unwrap().json();
    assert_eq!(report["services"][2]["status"], "down", "{report}");
    assert_eq!(report["services"][2]["error"], "answered 401");
    // Every replica shares that Qdrant: none would serve better, so none is taken out.
    assert_eq!(app.get("/health/readiness").await.unwrap().status, 200);
}

#[tokio::test]
async fn readiness_fails_only_for_what_this_replica_needs() {
    let cases = [
        ("redis", "redis_address", "redis://127.0.0.1:{p}", false),
        (
            "postgres",
            "postgres_address",
            "postgres://postgres@127.0.0.1:{p}/x",
            true,
        ),
        ("qdrant", "qdrant_url", "http://127.0.0.1:{p}", true),
        ("openai", "openai_base_url", "http://127.0.0.1:{p}/v1", true),
    ];
    for (down, variable, url, still_ready) in cases {
        let dead = url.replace("{p}", &chatbot_harness::unused_port().to_string());
        let builder: TestAppBuilder = TestApp::builder().only(&["ops"]).address(variable, dead);
        let app = builder.spawn().await.unwrap();
        let r = app.get("/health/readiness").await.unwrap();
        if still_ready {
            assert_eq!(r.status, 200, "{down}: {}", r.text());
        } else {
            assert_eq!(r.status, 503, "{down}: {}", r.text());
            let body = r.json();
            assert_eq!(body["status"], "not_ready");
            assert_eq!(body["down"], json!([down]), "{body}");
            assert!(body["detail"].as_str().unwrap().contains(down));
        }
        // The admin's report names it down either way.
        let report = app.admin_get("/health/services").await.unwrap().json();
        let named: Vec<&str> = report["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "down")
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(named, [down], "{report}");
    }
}

#[tokio::test]
async fn a_replica_whose_configuration_does_not_parse_is_not_ready() {
    let app = TestApp::builder()
        .only(&["ops"])
        .variable("top_k", "zero")
        .spawn()
        .await
        .unwrap();
    let r = app.get("/health/readiness").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["down"], json!(["configuration"]));
    assert!(
        r.json()["configuration"]
            .as_str()
            .unwrap()
            .contains("top_k"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_hanging_dependency_is_reported_within_the_timeout() {
    let app = TestApp::builder()
        .only(&["ops"])
        .variable("health_check_timeout_ms", "300")
        .spawn()
        .await
        .unwrap();
    app.openai.controls().fail_always(
        chatbot_harness::stubs::openai::MODELS,
        chatbot_harness::stubs::Fault::Hang(std::time::Duration::from_secs(5)),
    );
    let started = std::time::Instant::now();
    let report = app.admin_get("/health/services").await.unwrap().json();
    assert_eq!(report["services"][3]["status"], "down", "{report}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(app.get("/health/readiness").await.unwrap().status, 200);
}

#[tokio::test]
async fn the_metrics_summary_and_cache_analytics_report_what_happened() {
    let app = TestApp::spawn().await.unwrap();
    app.answer("What is a cache?", "a1", None).await;
    app.answer("What is a cache?", "a1", None).await;
    app.answer("What is a cache?", "a1", None).await;
    app.answer("Why Redis?", "a2", Some("ch 3")).await;
    let summary = app.admin_get("/health/metrics").await.unwrap().json();
    assert_eq!(summary["queries_total"], 4.0, "{summary}");
    assert_eq!(summary["queries_cached"], 2.0);
    assert_eq!(summary["error_rate"], 0.0);
    assert_eq!(summary["cache"]["query"]["hit_rate"], 0.5);
    assert!(summary["latency_seconds"]["p95"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["active_sessions"], 2);

    let analytics = app
        .admin_get("/health/cache/analytics")
        .await
        .unwrap()
        .json();
    assert_eq!(analytics["caches"]["query"]["entries"], 2, "{analytics}");
    assert_eq!(analytics["caches"]["embedding"]["entries"], 2);
    assert_eq!(analytics["caches"]["query"]["hits"], 2.0);
    assert!(analytics["redis_memory"]["used_bytes"].as_u64().unwrap() > 0);
    assert_eq!(analytics["top_questions"][0]["q"], "what is a cache?");
    assert_eq!(analytics["top_questions"][0]["count"], 3.0);
    assert_eq!(analytics["top_questions"][1]["p"], "ch 3");
    assert_eq!(analytics["top_rate_limited_sessions"], json!([]));
}

#[tokio::test]
async fn clearing_is_scoped_to_what_was_asked() {
    let app = TestApp::spawn().await.unwrap();
    app.answer("Shared question?", "s1", Some("page one")).await;
    app.answer("Shared question?", "s2", Some("page one")).await;
    app.answer("Other question?", "s2", Some("page two")).await;
    assert_eq!(keys(&app, "chatbot:query:*").await.len(), 3);

    let r = admin(
        &app,
        "POST",
        "/health/cache/clear",
        json!({"session_id": "s1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["cleared"], 1);
    assert_eq!(
        keys(&app, "chatbot:query:*").await.len(),
        2,
        "only s1's answer went"
    );
    assert_eq!(
        app.answer("Shared question?", "s2", Some("page one")).await["cached"],
        true
    );
    assert_eq!(
        app.answer("Shared question?", "s1", Some("page one")).await["cached"],
        false
    );

    let r = admin(
        &app,
        "POST",
        "/health/cache/clear",
        json!({"page_context": "page two"}),
    )
    .await;
    assert_eq!(r.json()["cleared"], 1);
    assert_eq!(keys(&app, "chatbot:query:*").await.len(), 2);

    let embeddings = keys(&app, "chatbot:embedding:*").await.len();
    assert_eq!(embeddings, 2);
    let r = admin(
        &app,
        "POST",
        "/health/cache/clear",
        json!({"cache_type": "embedding"}),
    )
    .await;
    assert_eq!(r.json()["cleared"], 2);
    assert_eq!(
        keys(&app, "chatbot:query:*").await.len(),
        2,
        "answers untouched"
    );

    let r = admin(&app, "POST", "/health/cache/clear", json!({})).await;
    assert_eq!(r.json()["cleared"], 2);
    assert!(keys(&app, "chatbot:query*").await.is_empty());
    assert_eq!(
        admin(
            &app,
            "POST",
            "/health/cache/clear",
            json!({"cache_type": "bogus"})
        )
        .await
        .status,
        400
    );
}

#[tokio::test]
async fn cleanup_deletes_exactly_the_expired_rows_and_is_idempotent() {
    let app = TestApp::builder().only(&["ops"]).spawn().await.unwrap();
    let pg = app.postgres().await.unwrap();
    pg.batch_execute(
        "INSERT INTO user_sessions (id, session_id, expires_at) VALUES
             (1, 'gone', now() - interval '1 day'), (2, 'alive', now() + interval '1 day');
         INSERT INTO conversations (id, user_session_id, expires_at) VALUES
             (1, 1, now() - interval '1 day'), (2, 2, now() + interval '1 day');
         INSERT INTO messages (conversation_id, role, content, expires_at) VALUES
             (1, 'user', 'old q', now() - interval '1 day'),
             (1, 'assistant', 'old a', now() - interval '1 day'),
             (2, 'user', 'stale q', now() - interval '1 hour'),
             (2, 'user', 'fresh q', now() + interval '1 day'),
             (2, 'assistant', 'fresh a', now() + interval '1 day');",
    )
    .await
    .unwrap();
    let r = admin(&app, "POST", "/admin/cleanup", json!({"batch_size": 2})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["deleted"],
        json!({"messages": 3, "conversations": 1, "user_sessions": 1}),
        "{body}"
    );
    let left: Vec<String> = pg
        .query("SELECT content FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["fresh q", "fresh a"]);
    let again = admin(&app, "POST", "/admin/cleanup", json!({}))
        .await
        .json();
    assert_eq!(
        again["deleted"],
        json!({"messages": 0, "conversations": 0, "user_sessions": 0})
    );
}

/// Issue #38: a backlog larger than one call can delete within
/// `request_timeout_ms` is not a 503: the call answers 200 with what it
/// deleted and `"more": true`, and repeated calls finish it. (A batch here
/// waits on a row the test holds locked, so the first call's deadline is
/// sure to come before the backlog is gone.)
#[tokio::test]
async fn a_cleanup_backlog_past_the_deadline_is_deleted_over_calls_that_say_more_remains() {
    let app = TestApp::builder()
        .only(&["ops"])
        .variable("request_timeout_ms", "1000")
        .spawn()
        .await
        .unwrap();
    let pg = app.postgres().await.unwrap();
    pg.batch_execute(
        "INSERT INTO user_sessions (id, session_id, expires_at) VALUES
             (1, 'gone', now() - interval '1 day'), (2, 'alive', now() + interval '1 day');
         INSERT INTO conversations (id, user_session_id, expires_at) VALUES
             (1, 1, now() - interval '1 day'), (2, 2, now() + interval '1 day');
         INSERT INTO messages (conversation_id, role, content, expires_at)
             SELECT 1, 'user', 'old ' || n, now() - interval '1 day' FROM generate_series(1, 200) n;
         INSERT INTO messages (conversation_id, role, content, expires_at)
             VALUES (2, 'user', 'fresh', now() + interval '1 day');",
    )
    .await
    .unwrap();
    // Another connection holds the 101st expired message: the batch that
    // reaches it waits until the call's deadline.
    let locker = app.postgres().await.unwrap();
    locker
        .batch_execute("BEGIN; SELECT id FROM messages WHERE content = 'old 101' FOR UPDATE;")
        .await
        .unwrap();
    let first = admin(&app, "POST", "/admin/cleanup", json!({"batch_size": 10})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let body = first.json();
    assert_eq!(body["more"], true, "{body}");
    assert_eq!(body["status"], "partial");
    let deleted = body["deleted"]["messages"].as_u64().unwrap();
    assert!((1..=100).contains(&deleted), "{body}");
    assert_eq!(
        body["deleted"]["user_sessions"], 0,
        "not reached yet: {body}"
    );
    locker.batch_execute("COMMIT").await.unwrap();

    let mut calls = 1;
    loop {
        let next = admin(&app, "POST", "/admin/cleanup", json!({"batch_size": 10})).await;
        assert_eq!(next.status, 200, "{}", next.text());
        calls += 1;
        if next.json()["more"] == false {
            assert_eq!(next.json()["status"], "done");
            break;
        }
        assert!(calls < 20, "the backlog never ended: {}", next.text());
    }
    let left: Vec<String> = pg
        .query("SELECT content FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["fresh"]);
    assert_eq!(app.count_rows("conversations").await, 1);
    assert_eq!(app.count_rows("user_sessions").await, 1);
}

#[tokio::test]
async fn warmup_precomputes_the_most_asked_questions() {
    let app = TestApp::builder()
        .variable("query_cache_scope", "global")
        .spawn()
        .await
        .unwrap();
    app.answer("Popular question?", "w1", None).await;
    app.answer("Popular question?", "w2", None).await;
    app.answer("Less popular?", "w3", Some("ch 9")).await;
    admin(
        &app,
        "POST",
        "/health/cache/clear",
        json!({"cache_type": "query"}),
    )
    .await;
    let chats = app
        .openai
        .controls()
        .calls(chatbot_harness::stubs::openai::CHAT);
    let r = admin(&app, "POST", "/admin/cache/warmup", json!({"limit": 5})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["warmed"], 2);
    assert_eq!(
        app.openai
            .controls()
            .calls(chatbot_harness::stubs::openai::CHAT),
        chats + 2
    );
    // Same keys as the query handler: users now hit.
    assert_eq!(
        app.answer("Popular question?", "someone-new", None).await["cached"],
        true
    );
    assert_eq!(
        app.answer("less popular?", "w9", Some("ch 9")).await["cached"],
        true
    );
    let again = admin(&app, "POST", "/admin/cache/warmup", json!({}))
        .await
        .json();
    assert_eq!(again["already_cached"], 2);
}

/// The deployment's tokens counted for every day Redis still keeps, and the
/// key of today's count.
async fn deployment_tokens(app: &TestApp) -> (i64, Option<String>) {
    let mut redis = app.redis().await.unwrap();
    let keys = keys(
        app,
        &format!("{}*", chatbot_core::redis::keys::DEPLOYMENT_TOKENS_PREFIX),
    )
    .await;
    let mut total = 0;
    for key in &keys {
        total += redis::cmd("GET")
            .arg(key)
            .query_async::<i64>(&mut redis)
            .await
            .unwrap();
    }
    (total, keys.into_iter().max())
}

/// Issue #38: warm-up's misses spend OpenAI tokens as users' do, so they
/// reserve their worst case from `deployment_token_budget_per_day` and settle
/// to what they used; once what is left cannot cover a miss, warm-up stops
/// and asks the model nothing more.
#[tokio::test]
async fn warmup_spends_from_the_deployments_ceiling_and_stops_once_it_is_spent() {
    const TOP_K: u32 = 3;
    const MAX_TOKENS: u32 = 200;
    let questions = [
        "Which question is warmed first?",
        "Which question is warmed next?",
        "Which question is warmed last?",
    ];
    let worst_cases: Vec<i64> = questions
        .iter()
        .map(|q| chatbot_harness::worst_case_reservation(q, TOP_K, MAX_TOKENS) as i64)
        .collect();
    let least = *worst_cases.iter().min().unwrap();
    let ceiling = worst_cases.iter().max().unwrap() * 20;
    let app = TestApp::builder()
        .variable("query_cache_scope", "global")
        .variable("top_k", TOP_K.to_string())
        .variable("chat_max_tokens", MAX_TOKENS.to_string())
        .variable("deployment_token_budget_per_day", ceiling.to_string())
        .spawn()
        .await
        .unwrap();
    for (i, question) in questions.iter().enumerate() {
        app.answer(question, &format!("asker-{i}"), None).await;
    }
    let (by_users, key) = deployment_tokens(&app).await;
    assert!(by_users > 0, "the users' misses were charged");
    let clear_answers = || {
        admin(
            &app,
            "POST",
            "/health/cache/clear",
            json!({"cache_type": "query"}),
        )
    };
    let chat_calls = || {
        app.openai
            .controls()
            .calls(chatbot_harness::stubs::openai::CHAT)
    };
    clear_answers().await;
    let r = admin(&app, "POST", "/admin/cache/warmup", json!({"limit": 10})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["warmed"], 3, "{}", r.text());
    assert_eq!(r.json()["status"], "done");
    // The same three prompts cost warm-up what they cost the users.
    assert_eq!(deployment_tokens(&app).await.0, by_users * 2);

    // Less than the smallest worst case left: warm-up asks nothing and says why.
    let spent = ceiling - least + 1;
    let _: () = redis::cmd("SET")
        .arg(key.unwrap())
        .arg(spent)
        .query_async(&mut app.redis().await.unwrap())
        .await
        .unwrap();
    clear_answers().await;
    let calls = chat_calls();
    let r = admin(&app, "POST", "/admin/cache/warmup", json!({"limit": 10})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "stopped", "{body}");
    assert_eq!(body["warmed"], 0);
    assert_eq!(body["not_asked"], 3);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("deployment_token_budget_per_day"),
        "{body}"
    );
    assert_eq!(chat_calls(), calls, "the model was asked nothing");
    assert_eq!(deployment_tokens(&app).await.0, spent, "nothing reserved");
}

#[tokio::test]
async fn warmup_refuses_per_session_caches() {
    let app = TestApp::spawn().await.unwrap();
    let r = admin(&app, "POST", "/admin/cache/warmup", json!({})).await;
    assert_eq!(r.status, 409);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("query_cache_scope"));
}

#[tokio::test]
async fn the_audit_log_records_admin_actions_and_holds_at_ten_thousand() {
    let app = TestApp::builder().only(&["ops"]).spawn().await.unwrap();
    let mut conn = app.redis().await.unwrap();
    // 10,000 older events already logged...
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("ZADD")
            .arg(chatbot_core::redis::keys::AUDIT_LOG)
            .arg(i)
            .arg(format!("{{\"action\":\"seeded\",\"n\":{i}}}"))
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    // ...and 50 real ones through the product, with 50 refused attempts
    // in between: those go to the security log, not this one.
    let mut client = app.client();
    for i in 0..100 {
        let auth = if i % 2 == 0 {
            "Bearer wrong".to_string()
        } else {
            format!("Bearer {TEST_ADMIN_TOKEN}")
        };
        let body = if i % 4 == 1 {
            "{}"
        } else {
            r#"{"cache_type":"embedding"}"#
        };
        client
            .request(
                "POST",
                "/health/cache/clear",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
            .unwrap();
    }
    let total: i64 = redis::cmd("ZCARD")
        .arg(chatbot_core::redis::keys::AUDIT_LOG)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, 10_000);
    let page = admin(&app, "GET", "/admin/audit", json!(null)).await;
    let body = page.json();
    assert_eq!(body["total"], 10_000);
    assert_eq!(body["log"], "admin");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 50);
    assert!(
        entries
            .iter()
            .all(|e| e["action"] == "cache_cleared" && e["address"] == "127.0.0.1"),
        "{entries:?}"
    );
    // The oldest seeded entries were the ones dropped.
    let oldest: Vec<String> = redis::cmd("ZRANGE")
        .arg(chatbot_core::redis::keys::AUDIT_LOG)
        .arg(0)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(oldest[0].contains("\"n\":50"), "{oldest:?}");
    let page2 = admin(&app, "GET", "/admin/audit?page=2", json!(null))
        .await
        .json();
    assert_eq!(page2["entries"][0]["action"], "seeded");
    // The refusals: one entry for the address, the rest sampled away.
    let security = admin(&app, "GET", "/admin/audit?log=security", json!(null))
        .await
        .json();
    assert_eq!(security["log"], "security");
    assert_eq!(security["total"], 1, "{security}");
    assert_eq!(security["entries"][0]["action"], "unauthorized");
    assert_eq!(security["entries"][0]["address"], "127.0.0.1");
    assert_eq!(
        admin(&app, "GET", "/admin/audit?log=everything", json!(null))
            .await
            .status,
        400
    );
}

/// The security log's entries as stored, oldest first.
async fn security_log(app: &TestApp) -> Vec<String> {
    let mut conn = app.redis().await.unwrap();
    redis::cmd("ZRANGE")
        .arg(chatbot_core::redis::keys::SECURITY_LOG)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Strangers write the security log: a refused history read with a 30 KB
/// path leaves an entry of a bounded size, not one that carries the path.
#[tokio::test]
async fn a_refusal_with_a_huge_path_leaves_a_small_security_entry() {
    let app = TestApp::spawn().await.unwrap();
    let session = "s".repeat(30_000);
    let refused = app
        .get(&format!("/api/v1/chat/history/{session}"))
        .await
        .unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());
    let members = security_log(&app).await;
    assert_eq!(members.len(), 1, "one refusal, one entry");
    assert!(members[0].len() < 2_048, "{} bytes", members[0].len());
    let entry: Value = serde_json::from_str(&members[0]).unwrap();
    assert_eq!(entry["action"], "token_rejected");
    let path = entry["detail"]["path"].as_str().unwrap();
    assert!(path.starts_with("/api/v1/chat/history/sss"), "{path}");
    assert!(path.ends_with('…'), "{path}");
}

#[tokio::test]
async fn every_admin_endpoint_refuses_missing_wrong_and_empty_tokens() {
    let app = TestApp::spawn().await.unwrap();
    let routes = [
        ("POST", "/health/cache/clear"),
        ("POST", "/admin/cleanup"),
        ("POST", "/admin/cache/warmup"),
        ("GET", "/admin/audit"),
        ("POST", "/api/v1/documents"),
        ("GET", "/health/metrics"),
        ("GET", "/health/cache/analytics"),
    ];
    let mut client = app.client();
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong-token"),
            Some("Bearer "),
            Some(TEST_ADMIN_TOKEN),
            Some("Basic YWRtaW46YWRtaW4="),
        ] {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            let r = client.request(method, path, &headers, "{}").await.unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.json()["status"], "unauthorized");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    let mut conn = app.redis().await.unwrap();
    let zcard = |key: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        zcard(chatbot_core::redis::keys::AUDIT_LOG).await,
        0,
        "refusals are not admin actions"
    );
    // Sampled: one entry per address and kind of refusal every few seconds.
    assert_eq!(zcard(chatbot_core::redis::keys::SECURITY_LOG).await, 1);
    let _ = &mut conn;
}

#[tokio::test]
async fn with_no_admin_token_configured_admin_is_closed() {
    let app = TestApp::builder()
        .only(&["ops"])
        .variable("admin_token", "")
        .spawn()
        .await
        .unwrap();
    for auth in ["Bearer ", "Bearer anything"] {
        let r = app
            .client()
            .request("GET", "/admin/audit", &[("authorization", auth)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    }
}

#[tokio::test]
async fn a_user_may_hold_five_sessions_and_the_count_recovers_after_expiry() {
    let app = TestApp::builder()
        .variable("session_idle_seconds", "2")
        .spawn()
        .await
        .unwrap();
    let query = |session: &str| {
        let body = json!({"question": "hi", "session_id": session, "user_id": "alice"});
        let mut client = app.client();
        async move { client.post_json("/api/v1/chat/query", &body).await.unwrap() }
    };
    for i in 1..=5 {
        assert_eq!(query(&format!("s{i}")).await.status, 200);
    }
    let refused = query("s6").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["status"], "session_limit");
    assert!(refused.json()["detail"]
        .as_str()
        .unwrap()
        .contains("5 active sessions"));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        query("s3").await.status,
        200,
        "an active session is still welcome"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        query("s6").await.status,
        200,
        "idle sessions stopped counting"
    );
    let audit = security_log(&app).await;
    assert!(
        audit
            .iter()
            .any(|e| e.contains("session_refused") && e.contains("alice")),
        "{audit:?}"
    );
    // Refused requests stored nothing.
    let pg = app.postgres().await.unwrap();
    let sessions: i64 = pg
        .query_one("SELECT count(*) FROM user_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 6);
}
