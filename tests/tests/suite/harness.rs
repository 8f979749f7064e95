//! The harness's own behaviour, through a probe guest: it must host
//! components the way Spin does, or the other tests prove nothing.

use chatbot_harness::{project_root, TestApp};

async fn probe_app(
    configure: impl FnOnce(chatbot_harness::TestAppBuilder) -> chatbot_harness::TestAppBuilder,
) -> TestApp {
    let builder = TestApp::builder().manifest(project_root().join("tests/guests/probe/spin.toml"));
    configure(builder)
        .spawn()
        .await
        .expect("spawning the probe app")
}

fn encode(url: &str) -> String {
    url.replace('/', "%2F").replace(':', "%3A")
}

#[tokio::test]
async fn a_guest_reaches_the_real_redis_through_the_host() {
    let app = probe_app(|b| b).await;
    let response = app.get("/probe/redis").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["value"], "probe-value");
    assert_eq!(body["counter"], 1);
    // MGET of one present and one missing key flattens to two results (Spin's flattening).
    assert_eq!(body["mget_results"], 2);
    // The write is in the real server, in this test's own database.
    let mut redis = app.redis().await.unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg("probe:key")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("probe-value"));
}

#[tokio::test]
async fn a_guest_reaches_the_real_postgres_through_the_host() {
    let app = probe_app(|b| b).await;
    let response = app.get("/probe/postgres").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(
        body["columns"],
        serde_json::json!(["greeting", "next", "at", "nothing"])
    );
    assert_eq!(body["greeting"], "DbValue::Str(\"hello\")");
    assert_eq!(body["next"], "DbValue::Int64(42)");
    assert_eq!(body["at_is_datetime"], true);
    assert_eq!(body["nothing_is_null"], true);
    assert_eq!(app.counts().postgres_opens, 1);
}

/// Spin 4.0.x never returns from a `query` that yields no rows
/// (spinframework/spin#3671): the harness fails such a request at once, so a
/// product path that would hang under Spin fails its tests instead of passing.
#[tokio::test]
async fn a_query_that_yields_no_rows_fails_the_request_as_it_would_hang_spin() {
    let app = probe_app(|b| b).await;
    let response = app.get("/probe/postgres-empty").await.unwrap();
    assert_eq!(response.status, 500, "{}", response.text());
    assert_eq!(app.counts().postgres_zero_row_queries, 1);
    // The trap released the pooled connection: the next statement runs.
    let response = app.get("/probe/postgres").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The switch for this rule alone: answer an empty row set, as Spin 3.x did.
#[tokio::test]
async fn the_zero_row_rule_can_be_switched_off_to_show_it() {
    let app = probe_app(|b| b.answer_zero_row_queries()).await;
    let response = app.get("/probe/postgres-empty").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["rows"], 0);
    assert_eq!(app.counts().postgres_zero_row_queries, 1);
}

#[tokio::test]
async fn each_open_is_a_new_redis_connection_as_in_spin() {
    // A server of this test's own: the count of accepted connections is then ours alone.
    let server = chatbot_harness::services::PrivateRedis::start().unwrap();
    let app = probe_app(|b| b.address("redis_address", server.url.clone())).await;
    let mut redis = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clients = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut redis)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(app.get("/probe/redis").await.unwrap().status, 200);
    }
    let after: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut redis)
        .await
        .unwrap();
    // The server counts every connection it accepted: three requests, three opens.
    assert_eq!(clients(after) - clients(before), 3);
    assert_eq!(app.counts().redis_opens, 3);
}

#[tokio::test]
async fn redis_outside_allowed_outbound_hosts_is_denied() {
    let app = probe_app(|b| b).await;
    // A real server, but on a port the allow-list does not name.
    let other = app.redis_url.replace("127.0.0.1", "localhost");
    let response = app
        .get(&format!("/probe/redis?address={}", encode(&other)))
        .await
        .unwrap();
    assert_eq!(response.status, 502);
    assert!(
        response.json()["error"]
            .as_str()
            .unwrap()
            .contains("InvalidAddress"),
        "{}",
        response.text()
    );
    assert_eq!(app.counts().denied, 1);
    assert_eq!(app.counts().redis_opens, 0);
}

#[tokio::test]
async fn postgres_outside_allowed_outbound_hosts_is_denied() {
    let app = probe_app(|b| b).await;
    let other = app.postgres_url().replace("127.0.0.1", "localhost");
    let response = app
        .get(&format!("/probe/postgres?address={}", encode(&other)))
        .await
        .unwrap();
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("not permitted"),
        "{}",
        response.text()
    );
    assert_eq!(app.counts().postgres_opens, 0);
}

#[tokio::test]
async fn outbound_http_is_allowed_only_to_listed_hosts() {
    let app = probe_app(|b| b).await;
    let allowed = app.openai.server.origin();
    let app_allowed = probe_app(|b| b.variable("allowed_http_origin", allowed.clone())).await;
    let url = format!("{allowed}/v1/embeddings");

    let denied = app
        .get(&format!("/probe/http?url={}", encode(&url)))
        .await
        .unwrap();
    assert_eq!(denied.status, 502);
    assert!(
        denied.text().contains("HttpRequestDenied"),
        "{}",
        denied.text()
    );
    assert_eq!(app.openai.controls().total_calls(), 0);

    let reached = app_allowed
        .get(&format!("/probe/http?url={}", encode(&url)))
        .await
        .unwrap();
    assert_eq!(reached.status, 200, "{}", reached.text());
    // The stub answers GET on a POST route with 405: the request really arrived.
    assert_eq!(reached.json()["status"], 405);
}

#[tokio::test]
async fn instance_state_does_not_survive_between_requests() {
    let app = probe_app(|b| b).await;
    let mut client = app.client();
    for _ in 0..5 {
        let response = client.get("/probe/memory").await.unwrap();
        assert_eq!(
            response.json()["requests_seen"],
            1,
            "an instance was reused"
        );
    }
}

#[tokio::test]
async fn variables_resolve_from_defaults_overrides_and_templates() {
    let app = probe_app(|b| b.variable("secret_token", "s3cret")).await;
    let get = |name: &'static str| {
        let app = &app;
        async move {
            app.get(&format!("/probe/variable?name={name}"))
                .await
                .unwrap()
        }
    };
    // Default through a component template.
    assert_eq!(
        get("greeting").await.json()["value"],
        "says: hello from the manifest"
    );
    // Override (what SPIN_VARIABLE_SECRET_TOKEN would set).
    assert_eq!(get("secret_token").await.json()["value"], "s3cret");
    // Declared by the app but not given to the component: undefined, as in Spin.
    let hidden = get("undeclared_for_component").await;
    assert_eq!(hidden.status, 404);
    assert!(hidden.text().contains("Undefined"), "{}", hidden.text());
    // Not a valid variable name at all.
    let invalid = get("Not-Valid").await;
    assert!(invalid.text().contains("InvalidName"), "{}", invalid.text());
}

#[tokio::test]
async fn variable_overrides_change_what_the_guest_sees() {
    let app = probe_app(|b| b.variable("greeting", "overridden")).await;
    let response = app.get("/probe/variable?name=greeting").await.unwrap();
    assert_eq!(response.json()["value"], "says: overridden");
}

#[tokio::test]
async fn an_override_for_an_undeclared_variable_is_refused_at_load() {
    let result = TestApp::builder()
        .manifest(project_root().join("tests/guests/probe/spin.toml"))
        .variable("no_such_variable", "x")
        .spawn()
        .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn tests_are_isolated_in_redis_and_postgres() {
    let first = probe_app(|b| b).await;
    let second = probe_app(|b| b).await;
    assert_ne!(first.redis_url, second.redis_url);
    assert_ne!(first.postgres_url(), second.postgres_url());
    assert_eq!(
        first.get("/probe/redis").await.unwrap().json()["counter"],
        1
    );
    assert_eq!(
        second.get("/probe/redis").await.unwrap().json()["counter"],
        1
    );
    // Each Postgres database has the migrations applied.
    let pg = second.postgres().await.unwrap();
    let row = pg
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) >= 1);
}

#[tokio::test]
async fn the_benchmarks_full_exchange_floor_runs_the_products_statement() {
    // `/probe/hit-floor` runs STORE_EXCHANGE_SQL as the query handler does:
    // a change to its parameters must not leave the benchmark's floor broken.
    let app = probe_app(|b| b).await;
    let response = app.get("/probe/hit-floor").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let stored: i64 = app
        .postgres()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2, "the question and its answer");
}
