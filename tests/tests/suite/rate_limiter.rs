//! The rate-limiter component alone, called through its export with a lent
//! connection, against the real Redis.

use std::time::Duration;

use chatbot_harness::bindings::rate_limiter::exports::chatbot::ratelimit::limiter::{
    Error, Outcome, Scope,
};
use chatbot_harness::limiter::{bucket, LimiterUnderTest};
use chatbot_harness::services::{services, PrivateRedis};

async fn limiter(settings: &[(&str, &str)]) -> (LimiterUnderTest, String) {
    let redis = services().fresh_redis().await.unwrap();
    (LimiterUnderTest::load(&redis, settings).unwrap(), redis)
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_burst_is_admitted_then_denied_then_refilled_exactly() {
    // 4 tokens, refilled at 1 per second.
    let (limiter, _) = limiter(&[
        ("rate_limit_requests", "4"),
        ("rate_limit_window_seconds", "4"),
    ])
    .await;
    for expected_remaining in [3, 2, 1, 0] {
        let d = limiter.check("session:burst", 1).await.unwrap().unwrap();
        assert!(d.allowed);
        assert_eq!(d.outcome, Outcome::Enforced);
        assert_eq!(d.limit, 4);
        assert_eq!(d.remaining, expected_remaining);
        assert_eq!(d.retry_after_seconds, 0);
    }
    let denied = limiter.check("session:burst", 1).await.unwrap().unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.retry_after_seconds, 1, "one token takes one second");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(denied.reset_at_epoch_seconds >= now + 3 && denied.reset_at_epoch_seconds <= now + 5);

    // 2.5 s later, 2.5 tokens are back: exactly two more pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let admitted = [
        limiter
            .check("session:burst", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed,
        limiter
            .check("session:burst", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed,
        limiter
            .check("session:burst", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed,
    ];
    assert_eq!(admitted, [true, true, false]);
}

#[tokio::test]
async fn concurrent_checks_admit_exactly_the_capacity() {
    let (limiter, _) = limiter(&[
        ("rate_limit_requests", "60"),
        ("rate_limit_window_seconds", "86400"),
    ])
    .await;
    let limiter = std::sync::Arc::new(limiter);
    for round in 0..3 {
        let key = format!("session:crowd-{round}");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let limiter = limiter.clone();
                let key = key.clone();
                tokio::spawn(async move { limiter.check(&key, 1).await.unwrap().unwrap().allowed })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, 60, "round {round}");
    }
}

#[tokio::test]
async fn one_decision_is_one_redis_round_trip() {
    let (limiter, _) = limiter(&[]).await;
    // The first check may load the script (EVALSHA, then EVAL); steady state is what counts.
    limiter.check("session:rt", 1).await.unwrap().unwrap();
    let before = limiter.counts();
    for _ in 0..10 {
        limiter.check("session:rt", 1).await.unwrap().unwrap();
    }
    let counts = limiter.counts() - before;
    assert_eq!(counts.redis_commands, 10);
    // On the connection the limiter's instance opened for its first check.
    assert_eq!(counts.redis_opens, 0);
}

#[tokio::test]
async fn several_buckets_are_one_round_trip_and_a_denial_takes_from_none() {
    // Sessions and users: 3 a day; addresses: 2 a day.
    let (limiter, _) = limiter(&[
        ("rate_limit_requests", "3"),
        ("rate_limit_window_seconds", "86400"),
        ("rate_limit_per_address_requests", "2"),
        ("rate_limit_per_address_window_seconds", "86400"),
    ])
    .await;
    let request = |address: &str, session: &str, user: &str| {
        [
            bucket(Scope::ClientAddress, address),
            bucket(Scope::Session, session),
            bucket(Scope::User, user),
        ]
    };
    limiter
        .check_buckets(&request("a1", "s1", "u1"), 1)
        .await
        .unwrap()
        .unwrap();
    let before = limiter.counts();
    let second = limiter
        .check_buckets(&request("a1", "s1", "u1"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (limiter.counts() - before).redis_commands,
        1,
        "three buckets, one command"
    );
    assert!(second.allowed);
    // The tightest bucket is reported: the address has 0 left, the others 1.
    assert_eq!(
        (second.scope, second.limit, second.remaining),
        (Scope::ClientAddress, 2, 0)
    );

    // The address is spent: denied, and neither the session nor the user pays.
    let denied = limiter
        .check_buckets(&request("a1", "s1", "u1"), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.scope, Scope::ClientAddress);
    assert!(denied.retry_after_seconds >= 1);
    // From another address, session s1 and user u1 still have their last token each.
    let elsewhere = limiter
        .check_buckets(&request("a2", "s1", "u1"), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(elsewhere.allowed, "the denial took nothing from s1 or u1");
    assert_eq!((elsewhere.scope, elsewhere.remaining), (Scope::Session, 0));

    // Now the session is spent: a denial by it leaves a3's address bucket full.
    let by_session = limiter
        .check_buckets(&request("a3", "s1", "u2"), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!by_session.allowed);
    assert_eq!(by_session.scope, Scope::Session);
    let a3 = limiter
        .check_buckets(&[bucket(Scope::ClientAddress, "a3")], 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a3.remaining, 1, "a3 paid only now");
    let u2 = limiter
        .check_buckets(&[bucket(Scope::User, "u2")], 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u2.remaining, 2, "u2 paid only now");

    // No bucket, or too many, is a caller error.
    assert!(matches!(
        limiter.check_buckets(&[], 1).await.unwrap(),
        Err(Error::InvalidKey(_))
    ));
    let nine: Vec<_> = (0..9)
        .map(|i| bucket(Scope::Session, &format!("s{i}")))
        .collect();
    assert!(matches!(
        limiter.check_buckets(&nine, 1).await.unwrap(),
        Err(Error::InvalidKey(_))
    ));
}

#[tokio::test]
async fn a_cost_above_what_is_left_is_denied_without_taking_tokens() {
    let (limiter, _) = limiter(&[
        ("rate_limit_requests", "10"),
        ("rate_limit_window_seconds", "86400"),
    ])
    .await;
    assert_eq!(limiter.check("s", 8).await.unwrap().unwrap().remaining, 2);
    let denied = limiter.check("s", 3).await.unwrap().unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 2, "a denied request takes nothing");
    let admitted = limiter.check("s", 2).await.unwrap().unwrap();
    assert!(admitted.allowed);
    assert_eq!(admitted.remaining, 0);
}

#[tokio::test]
async fn a_cost_above_capacity_or_zero_is_an_error_and_touches_nothing() {
    let (limiter, redis) = limiter(&[("rate_limit_requests", "10")]).await;
    assert_eq!(
        limiter.check("s", 11).await.unwrap(),
        Err(Error::InvalidCost)
    );
    assert_eq!(
        limiter.check("s", 0).await.unwrap(),
        Err(Error::InvalidCost)
    );
    assert!(matches!(
        limiter.check("", 1).await.unwrap(),
        Err(Error::InvalidKey(_))
    ));
    let mut conn = redis_conn(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(limiter.counts().redis_commands, 0);
}

#[tokio::test]
async fn disabled_admits_everything_without_redis() {
    let (limiter, _) = limiter(&[
        ("rate_limit_enabled", "false"),
        ("rate_limit_requests", "1"),
    ])
    .await;
    for _ in 0..5 {
        let d = limiter.check("s", 1).await.unwrap().unwrap();
        assert!(d.allowed);
        assert_eq!(d.outcome, Outcome::Disabled);
    }
    assert_eq!(limiter.counts().redis_commands, 0);
}

#[tokio::test]
async fn sessions_do_not_share_a_bucket() {
    let (limiter, _) = limiter(&[
        ("rate_limit_requests", "2"),
        ("rate_limit_window_seconds", "86400"),
    ])
    .await;
    for _ in 0..2 {
        assert!(
            limiter
                .check("session:a", 1)
                .await
                .unwrap()
                .unwrap()
                .allowed
        );
    }
    assert!(
        !limiter
            .check("session:a", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed
    );
    assert!(
        limiter
            .check("session:b", 1)
            .await
            .unwrap()
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn buckets_are_hashed_keys_that_expire_when_idle() {
    let (limiter, redis) = limiter(&[
        ("rate_limit_requests", "10"),
        ("rate_limit_window_seconds", "60"),
    ])
    .await;
    limiter
        .check("session:x} FLUSHALL {", 1)
        .await
        .unwrap()
        .unwrap();
    let mut conn = redis_conn(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].starts_with("chatbot:ratelimit:{") && !keys[0].contains("FLUSHALL"),
        "{keys:?}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    // One token short: full again in 6 s, plus a second of grace.
    assert!(ttl > 5_000 && ttl <= 7_000, "ttl {ttl}");
}

#[tokio::test]
async fn a_flushed_script_cache_falls_back_to_eval() {
    let (limiter, redis) = limiter(&[
        ("rate_limit_requests", "3"),
        ("rate_limit_window_seconds", "86400"),
    ])
    .await;
    assert!(limiter.check("s", 1).await.unwrap().unwrap().allowed);
    let mut conn = redis_conn(&redis).await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let d = limiter.check("s", 1).await.unwrap().unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "the bucket survived the script flush");
}

#[tokio::test]
async fn redis_down_fails_open_by_default_and_closed_when_configured() {
    let dead = {
        let port = chatbot_harness::unused_port();
        format!("redis://127.0.0.1:{port}")
    };
    let open = LimiterUnderTest::load(&dead, &[]).unwrap();
    let d = open.check("s", 1).await.unwrap().unwrap();
    assert!(d.allowed);
    assert_eq!(d.outcome, Outcome::FailedOpen);

    let closed = LimiterUnderTest::load(&dead, &[("rate_limit_failure_policy", "closed")]).unwrap();
    let d = closed.check("s", 1).await.unwrap().unwrap();
    assert!(!d.allowed);
    assert_eq!(d.outcome, Outcome::FailedClosed);
    assert!(d.retry_after_seconds >= 1);
}

#[tokio::test]
async fn a_kept_connection_whose_server_died_follows_the_policy_and_is_reopened() {
    let mut server = PrivateRedis::start().unwrap();
    let limiter =
        LimiterUnderTest::load(&server.url, &[("rate_limit_failure_policy", "closed")]).unwrap();
    assert!(limiter.check("s", 1).await.unwrap().unwrap().allowed);
    let opened = limiter.counts().redis_opens;
    // The server dies under the connection the limiter's instance keeps.
    server.stop();
    let d = limiter.check("s", 1).await.unwrap().unwrap();
    assert_eq!(d.outcome, Outcome::FailedClosed);
    assert!(!d.allowed);
    assert_eq!(
        limiter.counts().redis_opens,
        opened,
        "the kept connection failed"
    );
    // It was dropped: the next check opens a new one (which fails too).
    let d = limiter.check("s", 1).await.unwrap().unwrap();
    assert_eq!(d.outcome, Outcome::FailedClosed);
    assert_eq!(limiter.counts().redis_opens, opened + 1);
}

#[tokio::test]
async fn a_bad_failure_policy_is_a_configuration_error() {
    let (limiter, _) = limiter(&[("rate_limit_failure_policy", "sometimes")]).await;
    assert!(matches!(
        limiter.check("s", 1).await.unwrap(),
        Err(Error::Configuration(_))
    ));
}
