//! Every read path with nothing to read (issue #10).
//!
//! Under Spin 4.0.x a synchronous Postgres `query` that yields no rows never
//! returns (spinframework/spin#3671); the async one the components use
//! answers, but every statement they send with `query` is declared to yield
//! exactly one row (`chatbot_core::storage::sql::OneRowQuery`), so a read
//! with nothing to find must still get its one row. The harness counts every
//! `query` that yielded none, on either path (and traps the synchronous one,
//! see `host::postgres::ZeroRowQueries`); each test checks that Postgres was
//! read where it should be and that no read came back empty.

use chatbot_harness::{BufferedResponse, TestApp};
use serde_json::{json, Value};

/// No `query` yielded zero rows where its statement promises one.
fn assert_no_zero_row_query(app: &TestApp) {
    assert_eq!(
        app.counts().postgres_zero_row_queries,
        0,
        "a Postgres `query` yielded no rows, breaking its one-row promise"
    );
}

/// As [`assert_no_zero_row_query`], after reads that did reach Postgres.
fn assert_postgres_read_and_no_zero_row_query(app: &TestApp) {
    assert!(
        app.counts().postgres_statements > 0,
        "the reads reached Postgres"
    );
    assert_no_zero_row_query(app);
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let response = app.admin_get(path).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

async fn admin_ok(app: &TestApp, method: &str, path: &str, body: Value) -> Value {
    let response: BufferedResponse = app.admin(method, path, &body).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

#[tokio::test]
async fn the_history_of_a_session_that_never_existed_is_an_empty_page() {
    let app = TestApp::spawn().await.unwrap();
    for path in [
        "/api/v1/chat/history/never-existed",
        "/api/v1/chat/history/never-existed?page=3",
    ] {
        let page = get_ok(&app, path).await;
        assert_eq!(page["session_id"], "never-existed");
        assert_eq!(page["total"], 0, "{page}");
        assert_eq!(page["total_pages"], 0);
        assert_eq!(page["messages"], json!([]));
    }
    assert_postgres_read_and_no_zero_row_query(&app);
}

#[tokio::test]
async fn a_page_past_the_end_is_empty_and_keeps_the_total() {
    let app = TestApp::spawn().await.unwrap();
    app.answer("What is a page?", "pager", None).await;
    let first = get_ok(&app, "/api/v1/chat/history/pager").await;
    assert_eq!(first["total"], 2, "{first}");
    assert_eq!(first["messages"].as_array().unwrap().len(), 2);
    assert_eq!(first["messages"][0]["role"], "user");
    assert_eq!(first["messages"][0]["content"], "What is a page?");
    assert_eq!(first["messages"][0]["page_context"], Value::Null);
    assert_eq!(first["messages"][1]["role"], "assistant");
    for path in [
        "/api/v1/chat/history/pager?page=2",
        "/api/v1/chat/history/pager?page=100000",
    ] {
        let past = get_ok(&app, path).await;
        assert_eq!(past["messages"], json!([]), "{path}: {past}");
        assert_eq!(past["total"], 2);
        assert_eq!(past["total_pages"], 1);
    }
    assert_postgres_read_and_no_zero_row_query(&app);
}

#[tokio::test]
async fn an_empty_audit_log_is_an_empty_page() {
    let app = TestApp::builder().only(&["ops"]).spawn().await.unwrap();
    for path in ["/admin/audit", "/admin/audit?page=7"] {
        let page = admin_ok(&app, "GET", path, Value::Null).await;
        assert_eq!(page["total"], 0, "{page}");
        assert_eq!(page["entries"], json!([]));
    }
    assert_eq!(
        app.counts().postgres_statements,
        0,
        "the audit logs are Redis's: Postgres is not read"
    );
}

#[tokio::test]
async fn cleanup_with_nothing_expired_deletes_nothing() {
    let app = TestApp::builder().only(&["ops"]).spawn().await.unwrap();
    // An empty database, then one that holds only live rows.
    let empty = admin_ok(&app, "POST", "/admin/cleanup", json!({})).await;
    assert_eq!(
        empty["deleted"],
        json!({"messages": 0, "conversations": 0, "user_sessions": 0}),
        "{empty}"
    );
    assert_eq!(empty["more"], false);
    let pg = app.postgres().await.unwrap();
    pg.batch_execute(
        "INSERT INTO user_sessions (id, session_id, expires_at) VALUES (1, 'alive', now() + interval '1 day');
         INSERT INTO conversations (id, user_session_id, expires_at) VALUES (1, 1, now() + interval '1 day');
         INSERT INTO messages (conversation_id, role, content, expires_at) VALUES (1, 'user', 'q', now() + interval '1 day');",
    )
    .await
    .unwrap();
    let live = admin_ok(&app, "POST", "/admin/cleanup", json!({})).await;
    assert_eq!(
        live["deleted"],
        json!({"messages": 0, "conversations": 0, "user_sessions": 0})
    );
    let left: i64 = pg
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    assert_postgres_read_and_no_zero_row_query(&app);
}

#[tokio::test]
async fn health_summaries_and_analytics_answer_on_an_empty_deployment() {
    let app = TestApp::spawn().await.unwrap();
    let readiness = get_ok(&app, "/health/readiness").await;
    assert_eq!(readiness["status"], "ready", "{readiness}");
    let services = get_ok(&app, "/health/services").await;
    assert!(
        services.to_string().contains("postgres"),
        "the services report names Postgres: {services}"
    );
    let summary = get_ok(&app, "/health/metrics").await;
    assert_eq!(summary["queries_total"], 0.0, "{summary}");
    assert_eq!(summary["active_sessions"], 0);
    let analytics = get_ok(&app, "/health/cache/analytics").await;
    assert_eq!(analytics["caches"]["query"]["entries"], 0, "{analytics}");
    assert_eq!(analytics["caches"]["embedding"]["entries"], 0);
    assert_eq!(analytics["top_questions"], json!([]));
    assert_eq!(analytics["top_rate_limited_sessions"], json!([]));
    let scrape = app.get("/metrics").await.unwrap();
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert_postgres_read_and_no_zero_row_query(&app);
}

/// Under Spin 4.0.x each history read of an unknown session used to hang with
/// its pooled connection; some eighty of them stopped every history write.
#[tokio::test]
async fn a_hundred_requests_for_unknown_sessions_leave_history_writes_working() {
    let app = TestApp::spawn().await.unwrap();
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut client = app.client();
        reads.spawn(async move {
            let auth = chatbot_harness::admin_authorization();
            client
                .request(
                    "GET",
                    &format!("/api/v1/chat/history/unknown-{i}"),
                    &[("authorization", &auth)],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap()
        });
    }
    let responses = reads.join_all().await;
    assert_eq!(responses.len(), 100);
    for response in &responses {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["total"], 0);
    }
    assert_postgres_read_and_no_zero_row_query(&app);

    app.answer("Is the history still written?", "after-the-storm", None)
        .await;
    let page = get_ok(&app, "/api/v1/chat/history/after-the-storm").await;
    assert_eq!(page["total"], 2, "{page}");
    let stored = app.messages_stored("after-the-storm").await;
    assert_eq!(stored, 2);
    assert_postgres_read_and_no_zero_row_query(&app);
}
