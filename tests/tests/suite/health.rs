//! `/health` and `/health/services` of the ops component, against real Redis and Postgres.

use chatbot_harness::TestApp;

async fn ops_app() -> TestApp {
    TestApp::builder()
        .only(&["ops"])
        .spawn()
        .await
        .expect("spawning the app")
}

#[tokio::test]
async fn health_answers_200_json_without_touching_dependencies() {
    let app = ops_app().await;
    let before = app.counts();
    let response = app.get("/health").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "rag-chatbot");
    let used = app.counts() - before;
    assert_eq!((used.redis_opens, used.postgres_opens), (0, 0));
}

#[tokio::test]
async fn services_reports_redis_and_postgres_up_with_latency() {
    let app = ops_app().await;
    let before = app.counts();
    let response = app.admin_get("/health/services").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["cached"], false);
    let services = body["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["redis", "postgres", "qdrant", "openai"]);
    for service in services {
        assert_eq!(service["status"], "up", "{service}");
        let latency = service["latency_ms"].as_f64().unwrap();
        assert!(latency > 0.0 && latency < 10_000.0, "{service}");
    }
    // It really went through the host's Redis and Postgres: the instance's
    // one Redis connection read and kept the report (GET, SET) and answered
    // the probe's PING.
    let used = app.counts() - before;
    assert_eq!(used.redis_opens, 1);
    assert_eq!(used.redis_commands, 3);
    assert_eq!(used.postgres_opens, 1);
    // And the HTTP dependencies through outbound wasi:http.
    // Qdrant's check reads the configured collection (reachable, key accepted, collection there).
    assert_eq!(
        app.qdrant
            .controls()
            .calls(chatbot_harness::stubs::qdrant::COLLECTIONS),
        1
    );
    assert_eq!(
        services[2]["collection"],
        serde_json::json!({"name": chatbot_harness::DEFAULT_COLLECTION, "exists": false}),
        "a fresh Qdrant has no collection"
    );
    assert_eq!(
        app.openai
            .controls()
            .calls(chatbot_harness::stubs::openai::MODELS),
        1
    );
}

/// The report calls OpenAI with the organisation's key and every other
/// dependency: it needs the admin token, and polling it within
/// `health::REPORT_SECONDS` is served the report already made.
#[tokio::test]
async fn the_services_report_is_the_admins_and_is_kept_a_few_seconds() {
    use chatbot_harness::stubs::{openai::MODELS, qdrant::COLLECTIONS};
    let app = ops_app().await;
    let anonymous = app.get("/health/services").await.unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(app.openai.controls().calls(MODELS), 0);
    let first = app.admin_get("/health/services").await.unwrap().json();
    assert_eq!(first["cached"], false);
    for _ in 0..5 {
        let again = app.admin_get("/health/services").await.unwrap().json();
        assert_eq!(again["cached"], true, "{again}");
        assert_eq!(again["checked_at"], first["checked_at"]);
        assert_eq!(again["services"], first["services"]);
    }
    assert_eq!(app.openai.controls().calls(MODELS), 1);
    assert_eq!(app.qdrant.controls().calls(COLLECTIONS), 1);
    // Once it expires, the next read calls the dependencies again.
    let mut redis = app.redis().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(chatbot_core::redis::keys::HEALTH_REPORT)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (1..=chatbot_core::telemetry::health::REPORT_SECONDS as i64).contains(&ttl),
        "{ttl}"
    );
    let _: () = redis::cmd("DEL")
        .arg(chatbot_core::redis::keys::HEALTH_REPORT)
        .query_async(&mut redis)
        .await
        .unwrap();
    let fresh = app.admin_get("/health/services").await.unwrap().json();
    assert_eq!(fresh["cached"], false);
    assert_eq!(app.openai.controls().calls(MODELS), 2);
}

#[tokio::test]
async fn services_reports_a_dead_redis_as_down() {
    // A port nothing listens on, but allowed, so the failure is the connection's.
    let port = chatbot_harness::unused_port();
    let app = TestApp::builder()
        .only(&["ops"])
        .address("redis_address", format!("redis://127.0.0.1:{port}"))
        .spawn()
        .await
        .unwrap();
    let response = app.admin_get("/health/services").await.unwrap();
    // Informational: always 200, with the state in the body (readiness is the one that fails).
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["services"][0]["name"], "redis");
    assert_eq!(body["services"][0]["status"], "down");
    assert!(body["services"][0]["error"]
        .as_str()
        .unwrap()
        .contains("open"));
    assert_eq!(body["services"][1]["status"], "up");
}

#[tokio::test]
async fn services_reports_a_dead_postgres_without_leaking_credentials() {
    let port = chatbot_harness::unused_port();
    let app = TestApp::builder()
        .only(&["ops"])
        .address(
            "postgres_address",
            format!("postgres://app:hunter2@127.0.0.1:{port}/chatbot"),
        )
        .spawn()
        .await
        .unwrap();
    let response = app.admin_get("/health/services").await.unwrap();
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(response.json()["services"][1]["status"], "down");
}

#[tokio::test]
async fn wrong_method_and_unknown_path_are_json_errors() {
    let app = ops_app().await;
    let mut client = app.client();
    let response = client.request("POST", "/health", &[], "").await.unwrap();
    assert_eq!(response.status, 405);
    assert_eq!(response.json()["status"], "method_not_allowed");
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
    let response = client.get("/health/nope").await.unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.json()["status"], "not_found");
    // No route at all: the host's 404, as Spin answers.
    let response = client.get("/nothing-here").await.unwrap();
    assert_eq!(response.status, 404);
}
