//! The components' log lines: one JSON object per line, each in a single
//! write, with the request id and event, short, and without secrets.

use chatbot_harness::{TestApp, TEST_ADMIN_TOKEN, TEST_OPENAI_KEY, TEST_QDRANT_KEY};
use serde_json::{json, Value};

/// A password that must never reach a log line.
const POSTGRES_PASSWORD: &str = "pg-log-s3cret";
const CONCURRENT_REQUESTS: usize = 12;
/// Far above a capped line (a 300-character message), far below a host error with a trace.
const MAX_LINE_BYTES: usize = 1000;

/// An app whose Postgres is down (every question logs), its stderr captured.
async fn app_with_postgres_down() -> TestApp {
    let port = chatbot_harness::unused_port();
    TestApp::builder()
        .address(
            "postgres_address",
            format!("postgres://chatbot:{POSTGRES_PASSWORD}@127.0.0.1:{port}/chatbot"),
        )
        .capture_stderr()
        .spawn()
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_failures_log_one_short_json_line_per_write_without_secrets() {
    // Postgres down: every request logs the conversation it could not create
    // and the exchange it could not store.
    let app = app_with_postgres_down().await;
    let response = app
        .ingest(json!([{"id": "d", "source": "s.pdf", "text": "Some text about logs."}]))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let tasks: Vec<_> = (0..CONCURRENT_REQUESTS)
        .map(|i| {
            let mut client = app.client();
            tokio::spawn(async move {
                let body = json!({"question": format!("Question {i} about logs?"), "session_id": format!("log-{i}")});
                client.post_json("/api/v1/chat/query", &body).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }

    let stderr = app.app.stderr.as_ref().expect("stderr is captured");
    let writes = stderr.writes();
    let mut lost_writes = std::collections::BTreeSet::new();
    for write in &writes {
        let text = std::str::from_utf8(write).expect("UTF-8");
        // One write, one whole line: nothing of another request can come in between.
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "a write that is not exactly one line: {text:?}\n\nall of stderr:\n{}",
            stderr.text()
        );
        assert!(text.len() < MAX_LINE_BYTES, "{} bytes: {text}", text.len());
        for secret in [
            POSTGRES_PASSWORD,
            TEST_OPENAI_KEY,
            TEST_QDRANT_KEY,
            TEST_ADMIN_TOKEN,
        ] {
            assert!(!text.contains(secret), "{secret:?} logged: {text}");
        }
        let line: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {text:?}"));
        for field in ["level", "component", "request_id", "event", "message"] {
            assert!(
                line[field].as_str().is_some_and(|v| !v.is_empty()),
                "no {field}: {text}"
            );
        }
        if line["event"] == "history_write_lost" {
            assert_eq!(line["dependency"], "postgres", "{text}");
            assert_eq!(line["component"], "query", "{text}");
            lost_writes.insert(line["request_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        lost_writes.len(),
        CONCURRENT_REQUESTS,
        "one lost write logged per request, each with its own request id:\n{}",
        stderr.text()
    );
}

/// Issue #38 (Low): a host whose stderr is back-pressured (a full pipe
/// nobody reads) must not stall the instance's requests: each log line
/// waits a bounded time for room, else it is dropped, and the next line
/// that leaves counts the dropped ones. Before, a `blocking-write-and-flush`
/// held every request of the instance until stderr took the line.
#[tokio::test]
async fn a_back_pressured_stderr_drops_log_lines_instead_of_stalling_requests() {
    let app = app_with_postgres_down().await;
    let stderr = app.app.stderr.clone().expect("stderr is captured");
    stderr.stall(true);
    // Postgres is down: the question logs at least two lines, and must still
    // be answered (a generous bound: a stalled instance never answers).
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        app.ask("What is in the logs?", "stalled-1"),
    )
    .await
    .expect("answered although stderr takes nothing");
    assert_eq!(answered.status, 200, "{}", answered.text());
    app.app.settled().await;
    assert!(
        !stderr.text().contains("stalled-1"),
        "nothing was written while stalled"
    );
    stderr.stall(false);
    let after = app.ask("What is in the logs now?", "stalled-2").await;
    assert_eq!(after.status, 200, "{}", after.text());
    app.app.settled().await;
    let text = stderr.text();
    let note = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["event"] == "log_lines_dropped")
        .unwrap_or_else(|| panic!("no line counts the dropped ones:\n{text}"));
    assert!(
        note["message"]
            .as_str()
            .is_some_and(|m| !m.starts_with("0 ")),
        "{note}"
    );
}
