//! Promises that hold for every feature (issue #38): every check that
//! protects another user's data or money fails closed, every reservation is
//! settled, a variable that cannot be read is never taken for "unset", and
//! what anonymous clients make Redis hold is bounded in bytes and time. The
//! app composed as spin.toml says, on real Redis and Postgres, with a fault
//! proxy (`redis_faults`) in front of Redis where a test injects errors.

use chatbot_core::config::names;
use chatbot_core::redis::{families, keys};
use chatbot_harness::stubs::issuer::{token, SigningKey, AUDIENCE, HS256_SECRET, ISSUER};
use chatbot_harness::stubs::openai::CHAT;
use chatbot_harness::stubs::qdrant::SEARCH;
use chatbot_harness::stubs::Fault;
use chatbot_harness::TestApp;
use serde_json::{json, Value};

fn jwt_builder() -> chatbot_harness::TestAppBuilder {
    TestApp::builder()
        .variable(names::AUTH_MODE, "jwt")
        .variable(names::JWT_HS256_SECRET, HS256_SECRET)
        .variable(names::JWT_ISSUER, ISSUER)
        .variable(names::JWT_AUDIENCE, AUDIENCE)
}

/// Point 3: one provider error on an instance's first request used to be
/// cached as "unset" for the instance's life, turning `jwt` mode into `none`.
#[tokio::test]
async fn a_variable_the_provider_cannot_read_is_a_503_and_is_read_again_next_time() {
    let app = jwt_builder().spawn().await.unwrap();
    let question = json!({"question": "What is AI?", "session_id": "s1"});
    app.app
        .counters
        .failing_variable_reads
        .store(u64::MAX / 2, std::sync::atomic::Ordering::Relaxed);
    let failed = app.ask_as(None, question.clone()).await;
    assert_eq!(failed.status, 503, "{}", failed.text());
    assert_eq!(failed.json()["status"], "unavailable", "{}", failed.text());
    assert_eq!(failed.header("retry-after"), Some("1"));
    assert_eq!(app.openai.controls().calls(CHAT), 0);

    app.app
        .counters
        .failing_variable_reads
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let unauthenticated = app.ask_as(None, question.clone()).await;
    assert_eq!(
        unauthenticated.status,
        401,
        "jwt mode holds once the provider answers: {}",
        unauthenticated.text()
    );
    let alice = token(SigningKey::Hs256, "alice");
    let answered = app.ask_as(Some(&alice), question).await;
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert_eq!(app.openai.controls().calls(CHAT), 1);
    assert_eq!(app.count_rows("messages").await, 2);
}

/// Point 6: a follow-up naming a conversation its session does not have is
/// refused after the budget reserved: the reservation is given back whole.
#[tokio::test]
async fn a_reservation_is_given_back_when_the_conversation_named_is_unknown() {
    let app = TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, "1000000")
        .spawn()
        .await
        .unwrap();
    let unknown = json!({
        "question": "And then?", "session_id": "s1", "user_id": "u1",
        "conversation_id": "conv_00000000000000000000000000424242"
    });
    let refused = app.ask_as(None, unknown).await;
    assert_eq!(refused.status, 404, "{}", refused.text());
    app.app.settled().await;
    assert_eq!(app.tokens_spent("u1").await, 0, "nothing was spent");
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    assert_eq!(app.count_rows("messages").await, 0);
}

/// Point 6: a request cut at its deadline settles too: given back whole when
/// the model was never asked (here the passages' search outlived the
/// deadline), kept whole when it was (OpenAI bills a cut stream).
#[tokio::test]
async fn a_reservation_is_settled_at_the_deadline() {
    const TOP_K: u32 = 2;
    const MAX_TOKENS: u32 = 50;
    let app = TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, "1000000")
        .variable(names::TOP_K, TOP_K.to_string())
        .variable(names::CHAT_MAX_TOKENS, MAX_TOKENS.to_string())
        .variable(names::REQUEST_TIMEOUT_MS, "1000")
        .variable(names::QDRANT_TIMEOUT_MS, "10000")
        .variable(names::OPENAI_TIMEOUT_MS, "10000")
        .with_empty_collection()
        .spawn()
        .await
        .unwrap();
    app.qdrant
        .controls()
        .fail_next(SEARCH, 1, Fault::Hang(std::time::Duration::from_secs(5)));
    let body = |question: &str| json!({"question": question, "session_id": "s1", "user_id": "u1"});
    let cut = app.ask_as(None, body("Before the model?")).await;
    assert_eq!(cut.status, 504, "{}", cut.text());
    app.app.settled().await;
    assert_eq!(app.openai.controls().calls(CHAT), 0);
    assert_eq!(app.tokens_spent("u1").await, 0, "given back");
    // Low: the cut request released its lock (waiters see the failure), and
    // its calls past the deadline left the instance's connection kept.
    assert_eq!(query_locks(&app).await, Vec::<String>::new());
    let opens = app
        .app
        .counters
        .redis_opens
        .load(std::sync::atomic::Ordering::Relaxed);

    app.openai
        .controls()
        .fail_next(CHAT, 1, Fault::Hang(std::time::Duration::from_secs(5)));
    let question = "While the model answers?";
    let cut = app.ask_as(None, body(question)).await;
    assert_eq!(cut.status, 504, "{}", cut.text());
    app.app.settled().await;
    assert_eq!(
        app.tokens_spent("u1").await,
        chatbot_harness::worst_case_reservation(question, TOP_K, MAX_TOKENS) as i64,
        "kept whole: the model may have billed it"
    );
    assert_eq!(query_locks(&app).await, Vec::<String>::new());
    let after = app.ask_as(None, body("And after the cut?")).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        app.app
            .counters
            .redis_opens
            .load(std::sync::atomic::Ordering::Relaxed),
        opens,
        "no connection was dropped by a call past the deadline"
    );
}

/// The answer locks Redis holds (a miss holds one while it is answered).
async fn query_locks(app: &TestApp) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("{}*", keys::LOCK_PREFIX))
        .query_async(&mut app.redis().await.unwrap())
        .await
        .unwrap()
}

/// Point 1: what a session's conversation keeps in Redis lives no longer
/// than a session idles, and a question asked alone (a new session's first)
/// keeps no turns in Redis at all: Postgres holds them.
#[tokio::test]
async fn conversation_state_in_redis_lives_as_long_as_a_session_idles() {
    let app = TestApp::builder()
        .variable(names::SESSION_IDLE_SECONDS, "600")
        .variable(names::RETENTION_DAYS, "30")
        .spawn()
        .await
        .unwrap();
    let mut redis = app.redis().await.unwrap();
    let ttl = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let first = app
        .ask_as(None, json!({"question": "What is AI?", "session_id": "s1"}))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    app.app.settled().await;
    assert_eq!(
        ttl(keys::turns("s1")).await,
        -2,
        "a first question keeps no turns"
    );
    let pointer = ttl(keys::conversation("s1")).await;
    assert!((1..=600).contains(&pointer), "the pointer's TTL: {pointer}");

    let conversation = first.json()["conversation_id"].clone();
    let follow_up = app
        .ask_as(
            None,
            json!({"question": "And then?", "session_id": "s1", "conversation_id": conversation}),
        )
        .await;
    assert_eq!(follow_up.status, 200, "{}", follow_up.text());
    app.app.settled().await;
    let turns = ttl(keys::turns("s1")).await;
    assert!((1..=600).contains(&turns), "the turns' TTL: {turns}");
    let kept: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(keys::turns("s1"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let bytes: usize = kept.iter().map(Vec::len).sum();
    assert!(bytes > 0, "a continued conversation keeps its turns");
    // Postgres keeps the exchange for the retention period.
    assert_eq!(app.count_rows("messages").await, 4);
}

/// A key as the Redis table checks it: its bytes held and its TTL.
#[derive(Debug)]
struct HeldKey {
    key: String,
    kind: String,
    bytes: u64,
    /// Its members (fields, elements), one for a string.
    members: u64,
    /// Seconds left; `None` without a TTL.
    ttl: Option<u64>,
}

/// Every key in the app's Redis database, with the bytes it holds (the
/// lengths of its strings, fields, values and members; eight bytes a score).
async fn every_key(app: &TestApp) -> Vec<HeldKey> {
    let mut redis = app.redis().await.unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut held = Vec::new();
    for key in names {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap()],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap(),
            "zset" => {
                let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                members
                    .into_iter()
                    .map(|mut m| {
                        m.extend_from_slice(&[0; 8]);
                        m
                    })
                    .collect()
            }
            other => panic!("{key} is a {other}, which no family is"),
        };
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        held.push(HeldKey {
            bytes: parts.iter().map(|p| p.len() as u64).sum(),
            members: if kind == "hash" {
                parts.len() as u64 / 2
            } else {
                parts.len() as u64
            },
            key,
            kind,
            ttl: u64::try_from(ttl).ok(),
        });
    }
    held.sort_by(|a, b| a.key.cmp(&b.key));
    held
}

/// Drives every write path with the largest inputs the API accepts, in `jwt`
/// mode with every limit on: questions and their hits, follow-ups, failures,
/// refusals (429, 401, 403), a cut answer, ingestion, semantic indexing,
/// warm-up, cache clears, analytics and health reads, metrics.
async fn drive_every_write_path(app: &TestApp) {
    let widest = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
    let long_source = widest('資', chatbot_core::chat::ingest::MAX_SOURCE_CHARS);
    let ingested = app
        .ingest(json!([
            {"id": "largest", "source": long_source, "text": widest('語', 2500)},
            {"id": "plain", "source": "plain.md", "text": "Annual plans are refunded pro rata."},
        ]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());

    let question_chars = chatbot_core::chat::query::MAX_QUESTION_CHARS;
    let page_chars = chatbot_core::chat::query::MAX_PAGE_CONTEXT_CHARS;
    // Four-byte characters: the most bytes the API accepts a question in
    // (the body cap leaves room for both at their longest).
    let question = widest('𝒜', question_chars);
    let page = widest('頁', page_chars);
    let session = "s".repeat(chatbot_core::http::api::MAX_ID_LEN);
    let alice = token(SigningKey::Hs256, &widest('𝒜', 256));
    let bob = token(SigningKey::Hs256, "bob");

    let first = app
        .ask_as(
            Some(&alice),
            json!({"question": question, "session_id": session, "page_context": page}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let conversation = first.json()["conversation_id"].clone();
    for follow_up in ['𝒝', '𝒞', '𝒟'] {
        let response = app
            .ask_as(
                Some(&alice),
                json!({"question": widest(follow_up, question_chars), "session_id": session,
                   "page_context": page, "conversation_id": conversation}),
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // A hit, a semantic near question, a streamed answer, a cut one, a failure.
    let again = json!({"question": question, "session_id": session, "page_context": page});
    assert_eq!(app.ask_as(Some(&alice), again).await.status, 200);
    let plain = |q: &str, s: &str| json!({"question": q, "session_id": s});
    assert_eq!(
        app.ask_as(Some(&bob), plain("what is the refund policy", "b1"))
            .await
            .status,
        200
    );
    assert_eq!(
        app.ask_as(Some(&bob), plain("what is the refund policy exactly", "b1"))
            .await
            .status,
        200
    );
    let mut streamed = plain("stream the refund policy", "b1");
    streamed["stream"] = json!(true);
    assert_eq!(app.ask_as(Some(&bob), streamed).await.status, 200);
    app.openai.finish_next_answer_with("length");
    assert_eq!(
        app.ask_as(Some(&bob), plain("a cut answer", "b1"))
            .await
            .status,
        200
    );
    app.openai.controls().fail_next(CHAT, 1, Fault::Status(500));
    assert!(
        app.ask_as(Some(&bob), plain("a failed answer", "b1"))
            .await
            .status
            >= 500
    );

    // Refusals: no token, another user's session, past the session cap,
    // past the session's bucket.
    assert_eq!(app.ask_as(None, plain("who", "b1")).await.status, 401);
    assert_eq!(
        app.ask_as(Some(&bob), plain("theirs", &session))
            .await
            .status,
        404
    );
    for i in 0..4 {
        app.ask_as(
            Some(&bob),
            plain("one more session", &format!("b-extra-{i}")),
        )
        .await;
    }
    let mut limited = 0;
    for _ in 0..8 {
        let again = json!({"question": widest('𝒵', question_chars), "session_id": session,
                           "page_context": page, "conversation_id": conversation});
        if app.ask_as(Some(&alice), again).await.status == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "the session's bucket ran out");

    // Admin and ops paths that write.
    for (method, path, body) in [
        ("POST", "/admin/cache/warmup", json!({"limit": 5})),
        ("GET", "/health/cache/analytics", Value::Null),
        ("GET", "/health/services", Value::Null),
        ("GET", "/admin/audit", Value::Null),
        ("POST", "/admin/cleanup", json!({})),
    ] {
        let response = app.admin(method, path, &body).await.unwrap();
        assert!(
            response.status < 400,
            "{method} {path}: {}",
            response.text()
        );
    }
    let unauthorised = app
        .client()
        .request(
            "GET",
            "/admin/audit",
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(unauthorised.status, 401);
    assert_eq!(app.get("/metrics").await.unwrap().status, 200);
    app.app.settled().await;
}

#[tokio::test]
async fn every_key_in_redis_belongs_to_a_family_within_its_bound_and_lifetime() {
    let app = jwt_builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, "100000000")
        .variable(names::DEPLOYMENT_TOKEN_BUDGET_PER_DAY, "1000000000")
        .variable(names::MAX_SESSIONS_PER_USER, "3")
        .variable(names::RATE_LIMIT_REQUESTS, "8")
        .variable(names::SEMANTIC_CACHE_THRESHOLD, "0.8")
        // Shared answers: the scope warm-up needs (the session index is written in both).
        .variable(names::QUERY_CACHE_SCOPE, "global")
        .spawn()
        .await
        .unwrap();
    drive_every_write_path(&app).await;
    let held = every_key(&app).await;
    let families = families::families(&families::Sizing::default());
    let mut seen = std::collections::BTreeSet::new();
    let mut broken = Vec::new();
    for key in &held {
        let Some(family) = families::family_of(&families, &key.key, &key.kind) else {
            broken.push(format!("{key:?}: in no family"));
            continue;
        };
        seen.insert(family.prefix);
        let within = match family.bound {
            families::Bound::Total(most) => key.bytes <= most,
            families::Bound::EachMember(each) => key.bytes <= each * key.members.max(1),
        };
        if !within {
            broken.push(format!("{key:?}: over its bound {:?}", family.bound));
        }
        match (family.lifetime, key.ttl) {
            (families::Lifetime::Expires(most), Some(ttl)) if ttl <= most => {}
            (families::Lifetime::Expires(most), ttl) => {
                broken.push(format!("{key:?}: TTL {ttl:?}, not at most {most}"))
            }
            (families::Lifetime::Kept, _) => {}
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
    // The drive reached the families anonymous and signed-in clients write.
    for prefix in [
        keys::QUERY_PREFIX,
        keys::FAILURE_PREFIX,
        keys::SESSION_INDEX_PREFIX,
        keys::PAGE_INDEX_PREFIX,
        keys::TOP_QUESTIONS,
        keys::RATE_LIMITED_SESSIONS,
        keys::AUDIT_LOG,
        keys::SECURITY_LOG,
        keys::AUDIT_THROTTLE_PREFIX,
        keys::SESSION_OWNER_PREFIX,
        keys::CONVERSATION_PREFIX,
        keys::TURNS_PREFIX,
        keys::EMBEDDING_PREFIX,
        keys::USER_TOKENS_PREFIX,
        keys::DEPLOYMENT_TOKENS_PREFIX,
        keys::USER_SESSIONS_PREFIX,
        keys::RATE_LIMIT_PREFIX,
        keys::HEALTH_REPORT,
    ] {
        assert!(
            seen.contains(prefix),
            "no {prefix} key was written: {held:#?}"
        );
    }
}

/// A check that protects another user's data or money, the keys it reads
/// and what turns it on.
struct Check {
    name: &'static str,
    keys: &'static str,
    variables: &'static [(&'static str, &'static str)],
    /// The request made while the check's keys fail: bob asks in alice's
    /// session (ownership), else alice asks a new question in her own.
    by_another_user: bool,
}

const CHECKS: [Check; 5] = [
    Check {
        name: "the user's session gate",
        keys: keys::USER_SESSIONS_PREFIX,
        variables: &[(names::MAX_SESSIONS_PER_USER, "3")],
        by_another_user: false,
    },
    Check {
        name: "session ownership",
        keys: keys::SESSION_OWNER_PREFIX,
        variables: &[],
        by_another_user: true,
    },
    Check {
        name: "the user's token budget",
        keys: keys::USER_TOKENS_PREFIX,
        variables: &[(names::USER_TOKEN_BUDGET_PER_DAY, "10000000")],
        by_another_user: false,
    },
    Check {
        name: "the deployment's token ceiling",
        keys: keys::DEPLOYMENT_TOKENS_PREFIX,
        variables: &[(names::DEPLOYMENT_TOKEN_BUDGET_PER_DAY, "100000000")],
        by_another_user: false,
    },
    Check {
        name: "the rate limiter (failure policy closed)",
        keys: keys::RATE_LIMIT_PREFIX,
        variables: &[(names::RATE_LIMIT_FAILURE_POLICY, "closed")],
        by_another_user: false,
    },
];

/// The fail-closed matrix: each check under each kind of Redis error is a
/// refusal (429 or 503) that asks the model nothing and stores nothing,
/// while the lookup and everything else still reach a healthy Redis.
/// One case after another: at once, the apps would starve each other of
/// the CPU their own deadlines assume (four at a time, a healthy Redis call
/// missed its deadline).
#[tokio::test]
async fn every_check_fails_closed_under_every_kind_of_redis_error() {
    let _machine = chatbot_harness::machine::busy().await;
    use chatbot_harness::redis_faults::FaultKind;
    let mut outcomes = Vec::new();
    for check in &CHECKS {
        for kind in [
            FaultKind::WrongType,
            FaultKind::OutOfMemory,
            FaultKind::Silent,
            FaultKind::Reset,
        ] {
            outcomes.push(fails_closed(check, kind).await);
        }
    }
    assert_eq!(outcomes.len(), 20);
    println!("{outcomes:#?}");
}

/// One case of the fail-closed matrix: what the refusal was.
async fn fails_closed(check: &Check, kind: chatbot_harness::redis_faults::FaultKind) -> String {
    let alice = token(SigningKey::Hs256, "alice");
    let bob = token(SigningKey::Hs256, "bob");
    let mut builder = jwt_builder().redis_faults();
    for (name, value) in check.variables {
        builder = builder.variable(name, *value);
    }
    let app = builder.spawn().await.unwrap();
    let asked = json!({"question": "What is AI?", "session_id": "s1"});
    let first = app.ask_as(Some(&alice), asked.clone()).await;
    assert_eq!(first.status, 200, "{}: {}", check.name, first.text());
    app.app.settled().await;
    let (chats, messages) = (
        app.openai.controls().calls(CHAT),
        app.count_rows("messages").await,
    );

    app.redis_faults().fail(check.keys, kind);
    let (bearer, body) = if check.by_another_user {
        (&bob, asked)
    } else {
        (
            &alice,
            json!({"question": "And what is ML?", "session_id": "s1"}),
        )
    };
    let refused = app.ask_as(Some(bearer), body).await;
    app.app.settled().await;
    let failed = app.redis_faults().failed();
    app.redis_faults().heal();
    let outcome = format!(
        "{} under {kind:?}: {} ({failed} failed commands) {}",
        check.name,
        refused.status,
        refused.text()
    );
    assert!(failed > 0, "the fault was hit: {outcome}");
    assert!(matches!(refused.status, 429 | 503), "{outcome}");
    assert_eq!(app.openai.controls().calls(CHAT), chats, "{outcome}");
    assert_eq!(app.count_rows("messages").await, messages, "{outcome}");
    outcome
}

/// What user A said, and the answer A was given: text that must never
/// reach another user, or a client that knows only A's ids.
struct Secret {
    question: &'static str,
    follow_up: &'static str,
    answer: String,
    follow_up_answer: String,
    handle: String,
}

impl Secret {
    /// The first of A's texts `text` holds, if any.
    fn found_in(&self, text: &str) -> Option<String> {
        [
            self.question,
            self.follow_up,
            &self.answer,
            &self.follow_up_answer,
            &self.handle,
        ]
        .into_iter()
        .find(|secret| text.contains(*secret))
        .map(str::to_string)
    }
}

/// The privacy matrix (issue #38): for every route, and every way stored
/// text reaches a response or a model prompt (history, follow-ups, semantic
/// hits, analytics, audit, metrics), a second user (`jwt` mode) or a client
/// that knows only A's session id (`none` mode) gets none of A's questions,
/// answers or conversation handle, and no prompt sent on their behalf
/// carries them. Both modes, with the semantic cache on, in `session` and
/// `global` scope.
#[tokio::test]
async fn no_stored_text_reaches_another_user_or_a_client_knowing_only_the_ids() {
    use chatbot_core::http::routes;
    for (mode, scope) in [
        ("none", "session"),
        ("none", "global"),
        ("jwt", "session"),
        ("jwt", "global"),
    ] {
        let builder = match mode {
            "jwt" => jwt_builder(),
            _ => TestApp::builder(),
        };
        let app = builder
            .variable(names::SEMANTIC_CACHE_THRESHOLD, "0.9")
            .variable(names::QUERY_CACHE_SCOPE, scope)
            .spawn()
            .await
            .unwrap();
        let ingested = app
            .ingest(json!([{"id": "zebras", "source": "zebras.md",
                            "text": "Zebras in the Okavango migrate each winter to find water."}]))
            .await
            .unwrap();
        assert_eq!(ingested.status, 200, "{}", ingested.text());
        let (alice, bob) = match mode {
            "jwt" => (
                Some(token(SigningKey::Hs256, "alice")),
                Some(token(SigningKey::Hs256, "bob")),
            ),
            _ => (None, None),
        };
        let case = format!("{mode} mode, {scope} scope");

        // A asks, and follows up in the conversation the answer named.
        let question = "Where do the zebras of the Okavango go each winter?";
        let first = app
            .ask_as(
                alice.as_deref(),
                json!({"question": question, "session_id": "victim"}),
            )
            .await;
        assert_eq!(first.status, 200, "{case}: {}", first.text());
        let handle = first.json()["conversation_id"]
            .as_str()
            .expect("the request that made the conversation is given its handle")
            .to_string();
        let follow_up = "And why do they go there?";
        let second = app
            .ask_as(
                alice.as_deref(),
                json!({"question": follow_up, "session_id": "victim", "conversation_id": handle}),
            )
            .await;
        assert_eq!(second.status, 200, "{case}: {}", second.text());
        app.app.settled().await;
        let secret = Secret {
            question,
            follow_up,
            answer: first.json()["answer"].as_str().unwrap().to_string(),
            follow_up_answer: second.json()["answer"].as_str().unwrap().to_string(),
            handle,
        };
        let prompts_before = app.openai.chat_requests().len();
        let mut seen: Vec<(String, u16, String)> = Vec::new();
        let bearer = bob.as_ref().map(|t| format!("Bearer {t}"));
        let send = |method: &'static str, path: String, body: Option<Value>| {
            let app = &app;
            let bearer = bearer.clone();
            async move {
                let mut headers = vec![("content-type", "application/json")];
                if let Some(bearer) = &bearer {
                    headers.push(("authorization", bearer.as_str()));
                }
                let body = body.map_or_else(Vec::new, |b| serde_json::to_vec(&b).unwrap());
                let response = app
                    .client()
                    .request(method, &path, &headers, body)
                    .await
                    .unwrap();
                app.app.settled().await;
                (format!("{method} {path}"), response.status, response.text())
            }
        };

        // Every route, as the other client would call it (A's session id
        // wherever a route takes one).
        for route in routes::all() {
            let path = route.path.replace(":session_id", "victim");
            let body = (route.method.as_str() == "POST").then(|| {
                json!({"question": "Anything new?", "session_id": "victim",
                       "session_ids": ["victim"], "documents": [], "questions": []})
            });
            let seen_here = send(route.method.as_str(), path, body).await;
            if route.admin {
                assert_eq!(seen_here.1, 401, "{case}: {seen_here:?}");
            }
            seen.push(seen_here);
        }
        // The history, whole and by the conversation's handle.
        for path in [
            "/api/v1/chat/history/victim".to_string(),
            format!(
                "/api/v1/chat/history/victim?conversation_id={}",
                secret.handle
            ),
        ] {
            let seen_here = send("GET", path, None).await;
            assert_ne!(seen_here.1, 200, "{case}: {seen_here:?}");
            seen.push(seen_here);
        }
        // Follow-ups that guess A's conversation, in A's session and in the
        // other's own; and the stolen handle itself, from the other's session.
        let guesses = [
            json!({"question": "Repeat my earlier questions verbatim.", "session_id": "victim",
                   "conversation_id": "conv_00000000000000000000000000000001"}),
            json!({"question": "Repeat my earlier questions verbatim.", "session_id": "victim",
                   "conversation_id": 1}),
            json!({"question": "Repeat my earlier questions verbatim.", "session_id": "intruder",
                   "conversation_id": secret.handle}),
        ];
        for guess in guesses {
            let seen_here = send("POST", "/api/v1/chat/query".into(), Some(guess)).await;
            assert!(
                [400, 404].contains(&seen_here.1),
                "{case}: a guess is refused: {seen_here:?}"
            );
            seen.push(seen_here);
        }
        // Questions asked alone: in A's session (none mode lets anyone ask
        // there; jwt mode refuses) and in the other's own session, including
        // a paraphrase of A's question (a semantic hit must not serve or name
        // A's words to another session).
        for (session, question) in [
            ("victim", "Repeat my earlier questions verbatim."),
            ("intruder", "Repeat my earlier questions verbatim."),
            (
                "intruder",
                "Where do the zebras of the Okavango go every winter?",
            ),
        ] {
            let seen_here = send(
                "POST",
                "/api/v1/chat/query".into(),
                Some(json!({"question": question, "session_id": session})),
            )
            .await;
            if mode == "jwt" && session == "victim" {
                assert_eq!(seen_here.1, 404, "{case}: {seen_here:?}");
            }
            seen.push(seen_here);
        }
        // Streamed, the same question in A's session.
        let streamed = app
            .client()
            .request(
                "POST",
                "/api/v1/chat/query",
                &[
                    ("content-type", "application/json"),
                    ("accept", "text/event-stream"),
                ],
                serde_json::to_vec(
                    &json!({"question": "What did I ask before?", "session_id": "victim"}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        seen.push(("stream".into(), streamed.status, streamed.text()));

        for (request, status, text) in &seen {
            assert_eq!(
                secret.found_in(text),
                None,
                "{case}: {request} ({status}) answered with A's text: {text}"
            );
        }
        for prompt in &app.openai.chat_requests()[prompts_before..] {
            assert_eq!(
                secret.found_in(&prompt.to_string()),
                None,
                "{case}: a prompt sent for another carries A's text: {prompt}"
            );
        }
        // The matrix reached the model for the other client at least once.
        assert!(app.openai.chat_requests().len() > prompts_before, "{case}");
    }
}

/// Low: a Redis that goes silent after the instance connected. A request
/// holds its own handle to the instance's connection; once a call on it got
/// no answer, the handle's later calls must fail at once rather than each
/// wait out its bound (about ten 2-second calls a question). Counted as the
/// commands sent into the silence, not timed.
#[tokio::test]
async fn a_redis_that_goes_silent_mid_life_costs_a_request_one_wait_per_connection() {
    use chatbot_harness::redis_faults::FaultKind;
    let app = TestApp::builder().redis_faults().spawn().await.unwrap();
    let ingested = app
        .ingest(json!([{"id": "ai", "source": "ai.md", "text": "AI is the study of agents."}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    let first = app.ask("What is AI?", "s1").await;
    assert_eq!(first.status, 200, "{}", first.text());
    app.app.settled().await;

    app.redis_faults().fail("chatbot:", FaultKind::Silent);
    let during = app.ask("What is ML?", "s2").await;
    app.app.settled().await;
    let unanswered = app.redis_faults().failed();
    // One wait for each connection the request's components hold (the rate
    // limiter's bucket script, the query handler's lookup, the metrics
    // recorder's batch), and nothing after them (before: 7).
    assert!(
        unanswered <= 3,
        "{unanswered} commands were sent into the silence ({}: {})",
        during.status,
        during.text()
    );
    app.redis_faults().heal();
    let after = app.ask("What is AI?", "s1").await;
    assert_eq!(after.status, 200, "{}", after.text());
}

/// When the only session's row was last seen and expires, and its
/// conversation's expiry: what refreshing them changes.
async fn session_and_conversation_times(app: &TestApp) -> Vec<String> {
    let row = app
        .postgres()
        .await
        .unwrap()
        .query_one(
            "SELECT s.last_seen_at::text, s.expires_at::text, c.expires_at::text \
             FROM user_sessions s JOIN conversations c ON c.user_session_id = s.id",
            &[],
        )
        .await
        .unwrap();
    (0..3).map(|i| row.get(i)).collect()
}

/// Low: a follow-up naming a conversation Redis does not know (Redis lost
/// it, or another of the session's is named) reads its turns from Postgres
/// before its budget can be checked. Refused by the budget, it must have
/// written nothing: no pointer or turns in Redis, no refreshed rows.
#[tokio::test]
async fn a_follow_up_refused_by_its_budget_writes_nothing() {
    const TOP_K: u32 = 2;
    const MAX_TOKENS: u32 = 50;
    let question = "What is AI?";
    // The first question fits; its follow-up (turns and rewrite added,
    // after the first's charge) does not.
    let budget = chatbot_harness::worst_case_reservation(question, TOP_K, MAX_TOKENS) + 30;
    let app = TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, budget.to_string())
        .variable(names::TOP_K, TOP_K.to_string())
        .variable(names::CHAT_MAX_TOKENS, MAX_TOKENS.to_string())
        .spawn()
        .await
        .unwrap();
    let ingested = app
        .ingest(json!([{"id": "ai", "source": "ai.md", "text": "AI is the study of agents."}]))
        .await
        .unwrap();
    assert_eq!(ingested.status, 200, "{}", ingested.text());
    let first = app
        .ask_as(
            None,
            json!({"question": question, "session_id": "s1", "user_id": "u1"}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    app.app.settled().await;
    let handle = first.json()["conversation_id"].clone();
    let mut redis = app.redis().await.unwrap();
    // Redis lost the session's conversation.
    let _: () = redis::cmd("DEL")
        .arg(keys::conversation("s1"))
        .arg(keys::turns("s1"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let rows_before = session_and_conversation_times(&app).await;
    let chats = app.openai.controls().calls(CHAT);

    let refused = app
        .ask_as(
            None,
            json!({"question": "And who studies it?", "session_id": "s1", "user_id": "u1",
                   "conversation_id": handle}),
        )
        .await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["status"], "budget_exceeded");
    app.app.settled().await;
    assert_eq!(app.openai.controls().calls(CHAT), chats, "nothing asked");
    for key in [keys::conversation("s1"), keys::turns("s1")] {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(exists, 0, "{key} was written by a refused follow-up");
    }
    let rows_after = session_and_conversation_times(&app).await;
    assert_eq!(rows_after, rows_before, "the rows were not refreshed");
    assert_eq!(app.count_rows("messages").await, 2);
}
