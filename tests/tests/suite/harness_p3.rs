//! The harness hosts WASIp3 (spin-sdk 6) components as Spin 4.0 does, shown
//! through a probe guest: instances reused by Spin's rules, several requests
//! at once in one instance, async host calls a guest can bound with its own
//! timer, and a request that lasts until its response body ends.

use std::time::{Duration, Instant};

use chatbot_core::config::names;
use chatbot_harness::stubs::SilentServer;
use chatbot_harness::{project_root, InstanceReuse, TestApp, TestAppBuilder};
use futures_util::future::join_all;

async fn probe3(configure: impl FnOnce(TestAppBuilder) -> TestAppBuilder) -> TestApp {
    let builder =
        TestApp::builder().manifest(project_root().join("tests/guests/probe-p3/spin.toml"));
    configure(builder)
        .spawn()
        .await
        .expect("spawning the WASIp3 probe app")
}

async fn redis_counter(app: &TestApp, key: &str) -> i64 {
    let mut redis = app.redis().await.unwrap();
    let value: Option<i64> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap();
    value.unwrap_or(0)
}

#[tokio::test]
async fn a_wasip3_instance_serves_many_requests_on_one_kept_redis_connection() {
    let app = probe3(|b| b).await;
    let mut instances = std::collections::BTreeSet::new();
    for expected in 1..=200 {
        let response = app.get("/probe3/kept-redis?key=kept").await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!(body["value"], expected);
        instances.insert(body["instance"].as_str().unwrap().to_string());
    }
    let counts = app.counts();
    // Spin's default: an instance serves 128 requests, so 200 take two.
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert_eq!(counts.instances, 2);
    assert_eq!(counts.redis_opens, 2, "one connection per instance, kept");
    assert_eq!(counts.redis_commands, 200);
    assert_eq!(redis_counter(&app, "kept").await, 200);
}

#[tokio::test]
async fn one_request_per_instance_when_reuse_is_switched_off() {
    let app = probe3(|b| b.instance_reuse(InstanceReuse::ONE_REQUEST_PER_INSTANCE)).await;
    for _ in 0..5 {
        let response = app.get("/probe3/kept-redis?key=fresh").await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let counts = app.counts();
    assert_eq!(counts.instances, 5);
    assert_eq!(counts.redis_opens, 5);
}

#[tokio::test]
async fn an_instance_serves_requests_at_once_and_each_gets_its_own_answer() {
    let app = probe3(|b| b).await;
    // Staggered, as real traffic is: each arrives while the others wait on a
    // timer, when Spin's handler hands it to the busy instance.
    let answers = join_all((0..8).map(|i| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            let response = app
                .get(&format!("/probe3/concurrent?tag=t{i}&ms=600"))
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            (i, response.json())
        }
    }))
    .await;
    for (i, body) in &answers {
        assert_eq!(body["tag"], format!("t{i}"), "a request saw another's data");
    }
    let most = answers
        .iter()
        .map(|(_, body)| body["most_in_flight"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        most >= 4,
        "one instance ran at most {most} requests at once"
    );
    assert!(app.counts().instances < 8, "{:?}", app.counts());
}

#[tokio::test]
async fn a_guest_bounds_a_silent_redis_with_its_own_timer_and_others_do_not_queue() {
    let silent = SilentServer::start().await.unwrap();
    let app = probe3(|b| b.address(names::REDIS_ADDRESS, format!("redis://{}", silent.addr))).await;
    let started = Instant::now();
    let answers =
        join_all((0..4).map(|_| async { app.get("/probe3/redis-within?ms=300").await.unwrap() }))
            .await;
    let took = started.elapsed();
    for response in &answers {
        assert_eq!(response.status, 504, "{}", response.text());
        let waited = response.json()["waited_ms"].as_u64().unwrap();
        assert!((300..1_500).contains(&waited), "waited {waited} ms");
    }
    // Four at once, each cut at its own deadline: not one after another.
    assert!(took < Duration::from_millis(1_200), "{took:?}");
}

#[tokio::test]
async fn a_guest_bounds_a_silent_postgres_with_its_own_timer() {
    let silent = SilentServer::start().await.unwrap();
    let app = probe3(|b| {
        b.address(
            names::POSTGRES_ADDRESS,
            format!("postgres://postgres@{}/postgres", silent.addr),
        )
    })
    .await;
    let response = app.get("/probe3/postgres-within?ms=300").await.unwrap();
    assert_eq!(response.status, 504, "{}", response.text());
    let waited = response.json()["waited_ms"].as_u64().unwrap();
    assert!((300..1_500).contains(&waited), "waited {waited} ms");
    // The same call against the real server answers.
    let app = probe3(|b| b).await;
    let response = app.get("/probe3/postgres-within?ms=5000").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The async `query` answers a statement that yields no rows at once (the
/// spin#3671 hang is in the synchronous `query`, which the harness still
/// traps), and the harness counts it: every `query` the product sends
/// promises one row (`OneRowQuery`), so a count above zero is a broken
/// promise (`tests/empty_reads.rs` checks it).
#[tokio::test]
async fn an_async_query_that_yields_no_rows_answers_at_once_and_is_counted() {
    let app = probe3(|b| b).await;
    let response = app.get("/probe3/postgres").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["columns"], serde_json::json!(["greeting"]));
    assert_eq!(body["greeting"], "hello");
    assert_eq!(body["rows"], 1);
    assert_eq!(body["empty_rows"], 0);
    assert_eq!(
        app.counts().postgres_zero_row_queries,
        1,
        "the empty one, not the one that yielded a row"
    );
}

/// Work done before the response body ends is part of the request: however
/// often instances are recycled, none of it is lost. Work after the body
/// ends is not: the instance that would run it is dropped. Nor is work after
/// the last byte of a body with a declared `Content-Length`: the server has
/// sent the whole response then, and the request is over.
#[tokio::test]
async fn work_before_the_body_ends_survives_recycling_and_work_after_it_is_lost() {
    let recycled_often = InstanceReuse {
        max_requests: 4,
        ..InstanceReuse::SPIN_DEFAULTS
    };
    let app = probe3(|b| b.instance_reuse(recycled_often)).await;
    let answers = join_all((0..40).map(|_| {
        let mut client = app.raw_client();
        async move {
            client
                .get("/probe3/after?key=before-end&ms=100")
                .await
                .unwrap()
        }
    }))
    .await;
    for response in &answers {
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "sent\n");
    }
    app.app.settled().await;
    assert_eq!(redis_counter(&app, "before-end").await, 40);
    assert!(app.counts().instances >= 10, "{:?}", app.counts());

    let app = probe3(|b| b.instance_reuse(InstanceReuse::ONE_REQUEST_PER_INSTANCE)).await;
    for _ in 0..5 {
        let response = app
            .get("/probe3/after-end?key=after-end&ms=100")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    for _ in 0..5 {
        let response = app
            .get("/probe3/after?key=after-last-byte&ms=100&declare_length=1")
            .await
            .unwrap();
        assert_eq!(response.text(), "sent\n");
    }
    app.app.settled().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis_counter(&app, "after-end").await, 0);
    assert_eq!(redis_counter(&app, "after-last-byte").await, 0);
}

/// Spin composes a WASIp3 component with its `[dependencies]` as it does a
/// WASIp2 one; the dependency's async exports are awaited across the
/// boundary, with a connection the caller lends (a `borrow` of the
/// `spin:redis@3.0.0` resource) or one the dependency keeps for its instance,
/// which lives as long as the composed instance.
#[tokio::test]
async fn a_composed_dependency_is_awaited_on_a_lent_or_on_its_own_kept_connection() {
    let app = probe3(|b| b).await;
    let mut dependency_instances = std::collections::BTreeSet::new();
    for expected in 1..=10 {
        let response = app.get("/probe3/dependency-lent?key=lent").await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!(body["value"], expected);
        dependency_instances.insert(body["dependency_instance"].as_str().unwrap().to_string());
    }
    let lent = app.counts();
    assert_eq!(lent.instances, 1);
    assert_eq!(
        dependency_instances.len(),
        1,
        "one dependency instance per composed instance"
    );
    assert_eq!(
        lent.redis_opens, 10,
        "each request opened the connection it lent"
    );
    assert_eq!(redis_counter(&app, "lent").await, 10);

    for expected in 1..=10 {
        let response = app
            .get("/probe3/dependency-kept?key=kept-by-dependency")
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["value"], expected);
    }
    let kept = app.counts();
    assert_eq!(
        kept.redis_opens - lent.redis_opens,
        1,
        "the dependency kept one connection"
    );
    assert_eq!(kept.redis_commands - lent.redis_commands, 10);
}
