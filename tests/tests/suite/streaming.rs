//! Streamed answers (server-sent events), the exchange written after the
//! response, body limits enforced before reading, and deadlines: the app
//! composed as spin.toml says, real Redis and Postgres, the stand-ins.

use std::time::{Duration, Instant};

use chatbot_core::config::names;
use chatbot_harness::client::StreamedResponse;
use chatbot_harness::stubs::openai::{stream_pieces, CHAT};
use chatbot_harness::stubs::{Fault, SilentServer};
use chatbot_harness::{admin_authorization, TestApp};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUERY: &str = "/api/v1/chat/query";

async fn app_with_book(builder: chatbot_harness::TestAppBuilder) -> TestApp {
    let app = builder.spawn().await.unwrap();
    let response = app
        .ingest(json!([
            {"id": "ai-book", "source": "ai-textbook.pdf", "text": "Artificial intelligence is the study of intelligent agents that perceive and act."}
        ]))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    app
}

/// One server-sent event: its name and its data, parsed.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    data: Value,
}

/// Splits SSE text into events; every event must have a name and JSON data.
fn parse_events(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap_or_else(|e| {
                        panic!("event data is not JSON ({e}): {v}");
                    }));
                } else {
                    panic!("unexpected line in an event: {line:?}");
                }
            }
            Event {
                name: name.expect("every event is named"),
                data: data.expect("every event has data"),
            }
        })
        .collect()
}

async fn read_all(response: &mut StreamedResponse) -> String {
    let mut text = Vec::new();
    while let Some(chunk) = response.next_chunk().await.unwrap() {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).unwrap()
}

async fn ask_streamed(app: &TestApp, body: Value) -> StreamedResponse {
    app.raw_client()
        .stream(
            "POST",
            QUERY,
            &[
                ("content-type", "application/json"),
                ("accept", "text/event-stream"),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap()
}

/// The events of a whole streamed answer, once the handler has settled.
async fn streamed_events(app: &TestApp, body: Value) -> (StreamedResponse, Vec<Event>) {
    let mut response = ask_streamed(app, body).await;
    let text = read_all(&mut response).await;
    app.app.settled().await;
    (response, parse_events(&text))
}

fn deltas(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.name == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect()
}

fn names_of(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

async fn history(app: &TestApp, session: &str) -> Value {
    let response = app.history(session, 1).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test]
async fn the_first_event_arrives_while_the_model_is_still_writing() {
    let app = app_with_book(TestApp::builder()).await;
    let (first_token, between) = (Duration::from_millis(300), Duration::from_millis(100));
    app.openai.set_stream_timing(first_token, between);
    let started = Instant::now();
    let mut response = ask_streamed(
        &app,
        json!({"question": "What is artificial intelligence?", "session_id": "stream-1"}),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("x-cache"), Some("MISS"));
    assert!(response.header("x-ratelimit-limit").is_some());
    assert!(response.header("x-request-id").is_some());
    // Read until the first delta is in; the rest of the answer is still being written.
    let mut text = String::new();
    while !text.contains("event: delta") {
        let chunk = response.next_chunk().await.unwrap().expect("a delta");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let first_delta = started.elapsed();
    text.push_str(&read_all(&mut response).await);
    let whole = started.elapsed();
    let events = parse_events(&text);
    let answer = events.last().unwrap().data["answer"]
        .as_str()
        .unwrap()
        .to_string();
    let pieces = stream_pieces(&answer).len() as u32;
    assert!(pieces >= 8, "a long enough answer to measure: {answer}");
    // The stand-in spends (pieces - 1) x 100 ms after the first token: the
    // first delta must come well before that is over (half of it, generously).
    let writing = between * (pieces - 1);
    assert!(
        first_delta + writing / 2 < whole,
        "first delta at {first_delta:?}, whole answer at {whole:?}, the model wrote for {writing:?}"
    );

    assert_eq!(names_of(&events)[0], "meta");
    assert_eq!(*names_of(&events).last().unwrap(), "done");
    assert_eq!(
        names_of(&events).iter().filter(|n| **n == "delta").count() as u32,
        pieces
    );
    let meta = &events[0].data;
    assert_eq!(meta["session_id"], "stream-1");
    assert!(
        meta["conversation_id"]
            .as_str()
            .is_some_and(|handle| handle.starts_with("conv_")),
        "{meta}"
    );
    assert_eq!(meta["citations"][0]["source"], "ai-textbook.pdf");
    assert_eq!(meta["cached"], false);
    let done = &events.last().unwrap().data;
    assert_eq!(deltas(&events), answer);
    assert_eq!(done["cached"], false);
    assert_eq!(done["conversation_id"], meta["conversation_id"]);
    assert_eq!(done["citations"], meta["citations"]);
    let usage = &done["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    // OpenAI was asked to stream, with the usage.
    let asked = app.openai.chat_requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["stream"], true);
    assert_eq!(asked[0]["stream_options"]["include_usage"], true);

    // The exchange is stored after the response: read it back.
    app.app.settled().await;
    let page = history(&app, "stream-1").await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["messages"][1]["content"], answer.as_str());
}

#[tokio::test]
async fn streamed_and_json_answers_share_the_cache_both_ways() {
    let app = app_with_book(TestApp::builder()).await;
    let body = json!({"question": "What do intelligent agents do?", "session_id": "both-ways"});
    let (_, streamed) = streamed_events(&app, body.clone()).await;
    let streamed_answer = deltas(&streamed);
    let json_hit = app.post_json(QUERY, &body).await.unwrap();
    assert_eq!(json_hit.status, 200);
    assert_eq!(json_hit.header("content-type"), Some("application/json"));
    assert_eq!(json_hit.json()["cached"], true);
    assert_eq!(json_hit.json()["answer"], streamed_answer.as_str());

    // A JSON miss, then the same question streamed (by the body's flag alone): a hit.
    let other = json!({"question": "Who perceives and acts?", "session_id": "both-ways"});
    let json_miss = app.post_json(QUERY, &other).await.unwrap();
    assert_eq!(json_miss.json()["cached"], false);
    let mut flagged = other.clone();
    flagged["stream"] = json!(true);
    let response = app
        .raw_client()
        .stream(
            "POST",
            QUERY,
            &[("content-type", "application/json")],
            serde_json::to_vec(&flagged).unwrap(),
        )
        .await
        .unwrap();
    let mut response = response;
    assert_eq!(response.header("x-cache"), Some("HIT"));
    let events = parse_events(&read_all(&mut response).await);
    app.app.settled().await;
    assert_eq!(names_of(&events), ["meta", "delta", "done"]);
    assert_eq!(
        deltas(&events),
        json_miss.json()["answer"].as_str().unwrap()
    );
    assert_eq!(events[2].data["cached"], true);
    assert_eq!(events[2].data["usage"], Value::Null);
    assert_eq!(
        events[0].data["conversation_id"],
        json_miss.json()["conversation_id"]
    );
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    // Every exchange, the hits too, is in the history.
    assert_eq!(history(&app, "both-ways").await["total"], 8);
}

#[tokio::test]
async fn an_answer_the_model_cut_short_is_shown_and_stored_but_never_cached() {
    let app = app_with_book(TestApp::builder()).await;
    for (reason, streamed) in [
        ("length", true),
        ("content_filter", false),
        ("length", false),
    ] {
        let session = format!("short-{reason}-{streamed}");
        let body = json!({"question": "What do intelligent agents do?", "session_id": session});
        app.openai.finish_next_answer_with(reason);
        let shown = if streamed {
            let (_, events) = streamed_events(&app, body.clone()).await;
            let names = names_of(&events);
            assert_eq!(names.first(), Some(&"meta"), "{reason}");
            assert_eq!(names.last(), Some(&"done"), "{reason}");
            deltas(&events)
        } else {
            let response = app.post_json(QUERY, &body).await.unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            app.app.settled().await;
            response.json()["answer"].as_str().unwrap().to_string()
        };
        assert!(
            !shown.is_empty(),
            "{reason}: the text the model wrote is shown"
        );
        assert_eq!(
            history(&app, &session).await["total"],
            2,
            "{reason}: stored"
        );
        let calls = app.openai.controls().calls(CHAT);
        let again = app.post_json(QUERY, &body).await.unwrap();
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json()["cached"], false, "{reason}: never cached");
        assert_eq!(app.openai.controls().calls(CHAT), calls + 1);
        // The whole answer asked for again is cached as usual.
        app.app.settled().await;
        let third = app.post_json(QUERY, &body).await.unwrap();
        assert_eq!(third.json()["cached"], true, "{reason}");
    }
}

#[tokio::test]
async fn a_failure_before_the_first_delta_is_the_json_error() {
    let app = app_with_book(TestApp::builder()).await;
    app.openai.controls().fail_next(CHAT, 1, Fault::Status(500));
    let mut response = ask_streamed(
        &app,
        json!({"question": "What is AI?", "session_id": "fails-early"}),
    )
    .await;
    let text = read_all(&mut response).await;
    assert_eq!(response.status, 503, "{text}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn a_failure_after_the_first_delta_ends_the_stream_and_keeps_nothing() {
    let app = app_with_book(TestApp::builder()).await;
    app.openai.cut_next_stream_after(3);
    let body = json!({"question": "What is artificial intelligence?", "session_id": "cut"});
    let (response, events) = streamed_events(&app, body.clone()).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        names_of(&events),
        ["meta", "delta", "delta", "delta", "error"]
    );
    let error = &events[4].data;
    assert_eq!(error["status"], "upstream_unavailable", "{error}");
    assert!(error["request_id"].is_string());
    assert_eq!(
        response.header("x-request-id"),
        error["request_id"].as_str()
    );

    // Not cached: the next ask calls the model again, and gets the whole answer.
    let again = app.post_json(QUERY, &body).await.unwrap();
    assert_eq!(again.json()["cached"], false);
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    // Not stored: the history holds the complete exchange only.
    let page = history(&app, "cut").await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["messages"][1]["content"], again.json()["answer"]);
}

#[tokio::test]
async fn identical_streamed_misses_cost_one_completion() {
    let app = app_with_book(TestApp::builder()).await;
    app.openai
        .set_stream_timing(Duration::from_millis(300), Duration::from_millis(20));
    let body = json!({"question": "What is artificial intelligence?", "session_id": "burst"});
    let asks = (0..3).map(|_| streamed_events(&app, body.clone()));
    let results = futures_util::future::join_all(asks).await;
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    let answers: Vec<String> = results.iter().map(|(_, events)| deltas(events)).collect();
    assert!(!answers[0].is_empty());
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    for (_, events) in &results {
        assert_eq!(events.last().unwrap().name, "done");
    }
}

/// Sends a request head (and `body`) on a raw connection and returns the
/// status line of the answer, which must come without the rest of the body.
async fn status_without_sending_everything(app: &TestApp, head: String, body: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(app.server.addr)
        .await
        .unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("the server answers without waiting for the rest of the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]).to_string();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_body_that_never_finishes_arriving_is_a_408_at_the_deadline() {
    let app = TestApp::builder()
        .variable(names::REQUEST_TIMEOUT_MS, "1500")
        .spawn()
        .await
        .unwrap();
    // Half of a declared body, and then nothing: a client that trickles, or stalls.
    let head = format!(
        "POST {QUERY} HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n"
    );
    let status = status_without_sending_everything(&app, head, br#"{"question": "Half a"#).await;
    assert!(status.contains(" 408 "), "{status}");
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("chatbot_errors_total{error_type=\"validation\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_unread() {
    let app = TestApp::spawn().await.unwrap();
    let ten_mib = 10 * 1024 * 1024;
    let auth = admin_authorization();
    for (path, auth) in [(QUERY, None), ("/api/v1/documents", Some(auth.as_str()))] {
        let auth = auth
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        // A declared length over the limit: refused before a byte of the body is sent.
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\n{auth}content-length: {ten_mib}\r\n\r\n"
        );
        let status = status_without_sending_everything(&app, head, b"").await;
        assert!(status.contains(" 413 "), "{path}: {status}");
        // Chunked, no length, and never ended (no last chunk): refused once the limit is
        // passed. A server that read to the end would wait for ever (the read times out).
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\n{auth}transfer-encoding: chunked\r\n\r\n"
        );
        let limit = if path == QUERY { 64 * 1024 } else { 10_000_000 };
        let mut body = Vec::new();
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent <= limit {
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(&piece);
            body.extend_from_slice(b"\r\n");
            sent += piece.len();
        }
        let status = status_without_sending_everything(&app, head, &body).await;
        assert!(status.contains(" 413 "), "{path} chunked: {status}");
    }
    // An admin route refuses a missing token before reading a body under the limit.
    let head = format!(
        "POST /api/v1/documents HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        5_000_000
    );
    let status = status_without_sending_everything(&app, head, b"").await;
    assert!(status.contains(" 401 "), "{status}");
    // The JSON error names the limit.
    let response = app
        .client()
        .request(
            "POST",
            QUERY,
            &[("content-type", "application/json")],
            vec![b' '; 64 * 1024 + 1],
        )
        .await
        .unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["status"], "payload_too_large");
    assert!(response.json()["detail"]
        .as_str()
        .unwrap()
        .contains("65536"));
}

/// A body is read only for the route that serves the method: a 9 MB body
/// sent to the documents path with another method is a 405 (or, without the
/// admin token, a 401) answered before the body arrives, and an unknown path
/// a 404. Each of these requests declares a body it never sends: a server
/// that read it would wait for ever (the read times out).
#[tokio::test]
async fn a_body_for_a_method_or_path_no_route_serves_is_never_read() {
    let app = TestApp::spawn().await.unwrap();
    let auth = format!("authorization: {}\r\n", admin_authorization());
    let nine_mb = 9_000_000;
    for (method, path, auth, expected) in [
        ("PUT", "/api/v1/documents", auth.as_str(), " 405 "),
        ("GET", "/api/v1/documents", auth.as_str(), " 405 "),
        ("PUT", "/api/v1/documents", "", " 401 "),
        ("DELETE", "/health/cache/clear", "", " 401 "),
        ("PUT", "/api/v1/chat/query", "", " 405 "),
        ("POST", "/api/v1/nowhere", "", " 404 "),
    ] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: app\r\ncontent-type: application/json\r\n{auth}content-length: {nine_mb}\r\n\r\n"
        );
        let status = status_without_sending_everything(&app, head, b"{").await;
        assert!(status.contains(expected), "{method} {path}: {status}");
    }
}

#[tokio::test]
async fn the_request_deadline_bounds_a_slow_model() {
    let app = app_with_book(
        TestApp::builder()
            .variable(names::REQUEST_TIMEOUT_MS, "1500")
            .variable(names::OPENAI_TIMEOUT_MS, "20000"),
    )
    .await;
    app.openai
        .controls()
        .fail_next(CHAT, 1, Fault::Hang(Duration::from_secs(10)));
    let started = Instant::now();
    let response = app
        .post_json(
            QUERY,
            &json!({"question": "What is AI?", "session_id": "slow"}),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_deadline_is_cut() {
    let app = app_with_book(TestApp::builder().variable(names::REQUEST_TIMEOUT_MS, "1500")).await;
    app.openai
        .set_stream_timing(Duration::from_millis(100), Duration::from_secs(5));
    let started = Instant::now();
    let (response, events) = streamed_events(
        &app,
        json!({"question": "What is artificial intelligence?", "session_id": "stall"}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(names_of(&events), ["meta", "delta", "error"]);
    assert_eq!(events[2].data["detail"], "OpenAI did not answer in time");
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert_eq!(history(&app, "stall").await["total"], 0);
}

/// The app with the book, its Postgres a server that never answers.
async fn app_on_silent_postgres(silent: &SilentServer, watchdog: Duration) -> TestApp {
    app_with_book(
        TestApp::builder()
            .address(
                names::POSTGRES_ADDRESS,
                format!("postgres://chatbot@{}/chatbot", silent.addr),
            )
            .host_call_watchdog(watchdog),
    )
    .await
}

/// Today (UTC, days since the epoch), as Redis remembers a conversation's refresh day.
fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

/// Asks on a client that does not wait for the handler's work after the response.
async fn ask_raw(app: &TestApp, session: &str) -> chatbot_harness::BufferedResponse {
    app.raw_client()
        .post_json(
            QUERY,
            &json!({"question": "What is AI?", "session_id": session}),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_silent_postgres_costs_a_question_its_history_not_its_answer() {
    let silent = SilentServer::start().await.unwrap();
    // The harness would trap a host call still waiting after 20 s; the
    // guest's own bound (2 s a call) comes first.
    let app = app_on_silent_postgres(&silent, Duration::from_secs(20)).await;
    // Redis knows the session's conversation (it asked before).
    let mut redis = app.redis().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(chatbot_core::redis::keys::conversation("known"))
        .arg(format!(
            "41:{}:conv_00000000000000000000000000000041",
            today()
        ))
        .query_async(&mut redis)
        .await
        .unwrap();
    let started = Instant::now();
    let response = ask_raw(&app, "known").await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Asked alone in a conversation it did not make: its handle is not told.
    assert_eq!(response.json()["conversation_id"], serde_json::Value::Null);
    // The body ends once the exchange's write has given up (a call's 2 s).
    assert!(started.elapsed() < Duration::from_secs(15));

    // A session's first question cannot create its conversation: it is
    // answered without one, and no host call was left waiting.
    let response = ask_raw(&app, "new").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["conversation_id"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_silent_redis_is_bounded_by_the_guest_before_any_host_watchdog() {
    let silent = SilentServer::start().await.unwrap();
    let app = TestApp::builder()
        .address(names::REDIS_ADDRESS, format!("redis://{}", silent.addr))
        .host_call_watchdog(Duration::from_secs(20))
        .spawn()
        .await
        .unwrap();
    let started = Instant::now();
    let response = ask_raw(&app, "s").await;
    // Not the watchdog's trap (500 after 20 s): the guest gave up on each
    // Redis call itself and answered without the cache.
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Issue #38 (Low): a client that stops reading a streamed answer fills its
/// body's buffer; the handler's writes then wait at most what is left of
/// the request's deadline, and the client is taken for gone: its request
/// ends and its exchange is not stored (it never had the whole answer).
/// Before, the write waited for ever, and with it the request.
#[tokio::test]
async fn a_client_that_stops_reading_a_stream_ends_its_request_at_the_deadline() {
    let app = app_with_book(
        TestApp::builder()
            .variable(names::REQUEST_TIMEOUT_MS, "3000")
            .variable(names::CHAT_MAX_TOKENS, "100000")
            .capture_stderr(),
    )
    .await;
    // An answer of some 50,000 deltas (about 2 MB of events): far more than
    // the body's buffers hold once the client reads no more.
    app.openai.pad_next_answer_with(50_000);
    app.openai
        .set_stream_timing(Duration::from_millis(10), Duration::ZERO);
    app.app
        .counters
        .stall_response_bodies_after_frames
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let response = ask_streamed(
        &app,
        json!({"question": "What is AI?", "session_id": "stalled"}),
    )
    .await;
    assert_eq!(response.status, 200);
    let stderr = app.app.stderr.clone().expect("stderr is captured");
    let gave_up = tokio::time::timeout(Duration::from_secs(60), async {
        while !stderr.text().contains("stopped reading") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        gave_up.is_ok(),
        "the handler still waits on a client that stopped reading:\n{}",
        stderr.text()
    );
    drop(response);
    app.app.settled().await;
    assert_eq!(app.messages_stored("stalled").await, 0);
}
