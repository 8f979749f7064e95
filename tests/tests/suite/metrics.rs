//! The metrics component: the recorder through its export, and `/metrics`
//! after real requests, checked by promtool.

use std::io::Read;

use chatbot_harness::recorder::{sample, RecorderUnderTest};
use chatbot_harness::services::services;
use chatbot_harness::{project_root, TestApp};
use serde_json::json;

use chatbot_harness::metric_value as value_of;

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    chatbot_harness::promtool::run(args, stdin)
}

#[tokio::test]
async fn fifty_concurrent_recorders_add_up_exactly() {
    let redis = services().fresh_redis().await.unwrap();
    let recorder = std::sync::Arc::new(RecorderUnderTest::load(&redis).unwrap());
    // Warm up: the first batch may load the script (EVALSHA, then EVAL).
    recorder
        .record(
            vec![sample("chatbot_qdrant_searches_total", &[], 1.0)],
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let before = recorder.counts();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                recorder
                    .record(
                        vec![
                            sample(
                                "chatbot_queries_total",
                                &[
                                    ("endpoint", "query"),
                                    ("status", "success"),
                                    ("cached", "true"),
                                ],
                                1.0,
                            ),
                            sample(
                                "chatbot_query_latency_seconds",
                                &[("cache_status", "hit")],
                                if i % 2 == 0 { 0.003 } else { 0.2 },
                            ),
                            sample(
                                "chatbot_openai_tokens_total",
                                &[("operation", "chat"), ("kind", "prompt")],
                                10.0,
                            ),
                        ],
                        Some(&format!("session-{}", i % 10)),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // One round trip per batch.
    assert_eq!(
        (recorder.counts() - before).redis_commands,
        50,
        "one round trip per batch"
    );

    let app = TestApp::builder()
        .only(&["metrics"])
        .variable("redis_address", redis.clone())
        .spawn()
        .await
        .unwrap();
    let text = app.get("/metrics").await.unwrap().text();
    assert_eq!(
        value_of(
            &text,
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}"
        ),
        Some(50.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_openai_tokens_total{operation=\"chat\",kind=\"prompt\"}"
        ),
        Some(500.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_query_latency_seconds_count{cache_status=\"hit\"}"
        ),
        Some(50.0)
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"0.005\"}"
        ),
        Some(25.0)
    );
    assert_eq!(
        value_of(
            &text,
            "chatbot_query_latency_seconds_bucket{cache_status=\"hit\",le=\"0.25\"}"
        ),
        Some(50.0)
    );
    let sum = value_of(
        &text,
        "chatbot_query_latency_seconds_sum{cache_status=\"hit\"}",
    )
    .unwrap();
    assert!((sum - (25.0 * 0.003 + 25.0 * 0.2)).abs() < 1e-9, "{sum}");
    assert_eq!(value_of(&text, "chatbot_active_sessions"), Some(10.0));
}

#[tokio::test]
async fn the_recorder_refuses_unbounded_labels_and_writes_nothing() {
    let redis = services().fresh_redis().await.unwrap();
    let recorder = RecorderUnderTest::load(&redis).unwrap();
    let outcome = recorder
        .record(
            vec![sample(
                "chatbot_rate_limit_hits_total",
                &[("session_id", "abc")],
                1.0,
            )],
            None,
        )
        .await
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    let outcome = recorder
        .record(
            vec![sample(
                "chatbot_cache_hits_total",
                &[("cache_type", "what is ai?")],
                1.0,
            )],
            None,
        )
        .await
        .unwrap();
    assert!(outcome.is_err());
    assert_eq!(recorder.counts().redis_commands, 0);
}

#[tokio::test]
async fn recording_with_redis_down_is_an_error_not_a_crash() {
    let port = chatbot_harness::unused_port();
    let recorder = RecorderUnderTest::load(&format!("redis://127.0.0.1:{port}")).unwrap();
    let outcome = recorder
        .record(
            vec![sample("chatbot_qdrant_searches_total", &[], 1.0)],
            None,
        )
        .await
        .unwrap();
    assert!(outcome.is_err());
}

async fn scripted_app() -> TestApp {
    let app = TestApp::spawn().await.unwrap();
    let ingest = app
        .ingest(json!([{"id": "d", "source": "s.pdf", "text": "Metrics are numbers."}]))
        .await
        .unwrap();
    assert_eq!(ingest.status, 200);
    let ask = json!({"question": "What are metrics?", "session_id": "m1"});
    assert_eq!(
        app.post_json("/api/v1/chat/query", &ask)
            .await
            .unwrap()
            .json()["cached"],
        false
    );
    assert_eq!(
        app.post_json("/api/v1/chat/query", &ask)
            .await
            .unwrap()
            .json()["cached"],
        true
    );
    let other = json!({"question": "Something else?", "session_id": "m2"});
    assert_eq!(
        app.post_json("/api/v1/chat/query", &other)
            .await
            .unwrap()
            .status,
        200
    );
    // Refused input is counted: an invalid request, a validation error, and its latency.
    assert_eq!(
        app.post_json("/api/v1/chat/query", &json!({"question": ""}))
            .await
            .unwrap()
            .status,
        400
    );
    app
}

#[tokio::test]
async fn metrics_show_exactly_what_happened() {
    let app = scripted_app().await;
    let response = app.get("/metrics").await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.text();
    let expect = [
        (
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"false\"}",
            2.0,
        ),
        (
            "chatbot_queries_total{endpoint=\"query\",status=\"success\",cached=\"true\"}",
            1.0,
        ),
        (
            "chatbot_queries_total{endpoint=\"query\",status=\"invalid\",cached=\"false\"}",
            1.0,
        ),
        (
            "chatbot_queries_total{endpoint=\"documents\",status=\"success\",cached=\"false\"}",
            1.0,
        ),
        ("chatbot_errors_total{error_type=\"validation\"}", 1.0),
        ("chatbot_errors_total{error_type=\"config\"}", 0.0),
        ("chatbot_cache_hits_total{cache_type=\"query\"}", 1.0),
        ("chatbot_cache_misses_total{cache_type=\"query\"}", 2.0),
        ("chatbot_cache_misses_total{cache_type=\"embedding\"}", 3.0),
        ("chatbot_openai_api_calls_total{operation=\"chat\"}", 2.0),
        (
            "chatbot_openai_api_calls_total{operation=\"embedding\"}",
            3.0,
        ),
        ("chatbot_qdrant_searches_total", 2.0),
        ("chatbot_qdrant_search_latency_seconds_count", 2.0),
        ("chatbot_rate_limit_hits_total", 0.0),
        (
            "chatbot_rate_limiter_decisions_total{outcome=\"enforced\"}",
            3.0,
        ),
        (
            "chatbot_query_latency_seconds_count{cache_status=\"hit\"}",
            1.0,
        ),
        (
            "chatbot_query_latency_seconds_count{cache_status=\"miss\"}",
            2.0,
        ),
        (
            "chatbot_query_latency_seconds_count{cache_status=\"bypass\"}",
            1.0,
        ),
        (
            "chatbot_database_query_latency_seconds_count{operation=\"store_exchange\"}",
            3.0,
        ),
        ("chatbot_history_writes_lost_total", 0.0),
        ("chatbot_active_sessions", 2.0),
    ];
    for (series, value) in expect {
        assert_eq!(value_of(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(text.contains("# HELP chatbot_queries_total "));
    assert!(text.contains("# TYPE chatbot_query_latency_seconds histogram"));
    assert!(!text.contains("session_id"), "no session label");
    assert!(!text.contains("m1"));
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let app = scripted_app().await;
    let text = app.get("/metrics").await.unwrap().text();
    let (ok, report) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{report}\n{text}");
}

#[tokio::test]
async fn the_alert_rules_pass_promtool() {
    let rules = project_root().join("deploy/prometheus/alerts.yml");
    let (ok, report) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "{report}");
    assert!(report.contains("6 rules found"), "{report}");
    let config = project_root().join("deploy/prometheus/prometheus.yml");
    let (ok, report) = promtool(&["check", "config", config.to_str().unwrap()], None);
    assert!(ok, "{report}");
}

/// `QdrantCollectionMissing` fires while questions keep finding no collection
/// (on two replicas' identical series), and clears once they stop (after the
/// first ingestion, or the fixed `qdrant_collection`).
#[test]
fn the_missing_collection_alert_fires_and_clears() {
    let rules = project_root().join("deploy/prometheus/alerts.yml");
    let annotations = |field: &str| {
        let text = std::fs::read_to_string(&rules).unwrap();
        let rule = text
            .split("- alert: QdrantCollectionMissing")
            .nth(1)
            .unwrap();
        rule.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
            .unwrap()
            .to_string()
    };
    let series = |pod: &str| {
        format!(
            "      - series: 'chatbot_qdrant_collection_missing_total{{job=\"rag-chatbot\", instance=\"{pod}:80\", pod=\"{pod}\"}}'\n        values: '0+1x20 20x60'\n"
        )
    };
    let test = format!(
        "rule_files: [{rules}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{a}{b}    alert_rule_test:\n      - eval_time: 15m\n        alertname: QdrantCollectionMissing\n        exp_alerts:\n          - exp_labels: {{severity: warning}}\n            exp_annotations:\n              summary: {summary}\n              description: {description}\n      - eval_time: 60m\n        alertname: QdrantCollectionMissing\n        exp_alerts: []\n",
        rules = rules.display(),
        a = series("a"),
        b = series("b"),
        summary = annotations("summary"),
        description = annotations("description"),
    );
    promtool_rule_test("missing_collection_test.yml", &test);
}

/// Runs a `promtool test rules` file, `name`, holding `test`.
fn promtool_rule_test(name: &str, test: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, test).unwrap();
    let (ok, report) = promtool(&["test", "rules", file.to_str().unwrap()], None);
    assert!(ok, "{report}");
}

/// `DeploymentTokenCeilingReached` fires as soon as misses are refused for
/// the day's ceiling (a critical: new questions get 503), and clears when
/// the refusals stop (the day rolls, or the ceiling is raised).
#[test]
fn the_token_ceiling_alert_fires_at_the_first_refusals_and_clears() {
    let rules = project_root().join("deploy/prometheus/alerts.yml");
    let series = |pod: &str| {
        format!(
            "      - series: 'chatbot_deployment_budget_denials_total{{job=\"rag-chatbot\", instance=\"{pod}:80\", pod=\"{pod}\"}}'\n        values: '0x10 1+3x10 31x30'\n"
        )
    };
    let test = format!(
        "rule_files: [{rules}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{a}{b}    alert_rule_test:\n      - eval_time: 5m\n        alertname: DeploymentTokenCeilingReached\n        exp_alerts: []\n      - eval_time: 14m\n        alertname: DeploymentTokenCeilingReached\n        exp_alerts:\n          - exp_labels: {{severity: critical}}\n            exp_annotations:\n              summary: \"The deployment's daily OpenAI token ceiling is spent: new questions are refused\"\n              description: \"chatbot_deployment_budget_denials_total grew in the last 5 minutes: misses get 503 until 00:00 UTC.\"\n      - eval_time: 40m\n        alertname: DeploymentTokenCeilingReached\n        exp_alerts: []\n",
        rules = rules.display(),
        a = series("a"),
        b = series("b"),
    );
    promtool_rule_test("token_ceiling_test.yml", &test);
}

#[tokio::test]
async fn metrics_are_gzipped_when_asked() {
    let app = scripted_app().await;
    let mut client = app.client();
    let plain = client.get("/metrics").await.unwrap().text();
    let gz = client
        .request(
            "GET",
            "/metrics",
            &[("accept-encoding", "gzip, deflate")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, plain);
    assert!(gz.body.len() < plain.len() / 2);
    let refused = client
        .request("GET", "/metrics", &[("accept-encoding", "gzip;q=0")], "")
        .await
        .unwrap();
    assert_eq!(refused.header("content-encoding"), None);
}

#[tokio::test]
async fn a_scrape_with_redis_down_is_a_503_not_a_partial_lie() {
    let port = chatbot_harness::unused_port();
    let app = TestApp::builder()
        .only(&["metrics"])
        .address("redis_address", format!("redis://127.0.0.1:{port}"))
        .spawn()
        .await
        .unwrap();
    let response = app.get("/metrics").await.unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["status"], "unavailable");
}
