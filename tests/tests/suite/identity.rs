//! Identity, limits a client cannot dodge, and privacy (issue #10 of round 2):
//! the app composed as spin.toml says, real Redis and Postgres, the OpenAI and
//! Qdrant stand-ins and a local identity provider (`stubs::issuer`).

use chatbot_core::config::names;
use chatbot_harness::stubs::issuer::{
    self, claims, sign, token, IssuerStub, SigningKey, AUDIENCE, HS256_SECRET, ISSUER,
};
use chatbot_harness::stubs::openai::{CHAT, EMBEDDINGS};
use chatbot_harness::stubs::qdrant::SEARCH;
use chatbot_harness::stubs::Fault;
use chatbot_harness::{BufferedResponse, TestApp, TEST_QDRANT_KEY};
use serde_json::{json, Value};

const QUERY: &str = "/api/v1/chat/query";

/// An app in `jwt` mode that accepts HS256 and, from `issuer`'s JWKS, RS256 and ES256.
fn jwt_builder(issuer: &IssuerStub) -> chatbot_harness::TestAppBuilder {
    TestApp::builder()
        .variable(names::AUTH_MODE, "jwt")
        .variable(names::JWT_HS256_SECRET, HS256_SECRET)
        .address(names::JWT_JWKS_URL, issuer.jwks_url())
        .variable(names::JWT_ISSUER, ISSUER)
        .variable(names::JWT_AUDIENCE, AUDIENCE)
}

async fn jwt_app(issuer: &IssuerStub) -> TestApp {
    jwt_builder(issuer).spawn().await.unwrap()
}

/// An RS256 token signed with the fixture key but naming a key id the issuer never published.
fn made_up_kid_token(kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims("mallory"),
        &jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../../fixtures/jwt/rsa-a.pem"))
            .unwrap(),
    )
    .unwrap()
}

async fn history_as(app: &TestApp, bearer: &str, session: &str) -> BufferedResponse {
    let auth = format!("Bearer {bearer}");
    app.client()
        .request(
            "GET",
            &format!("/api/v1/chat/history/{session}"),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap()
}

fn assert_unauthorized(response: &BufferedResponse, token: &str, why: &str) {
    assert_eq!(response.status, 401, "{why}: {}", response.text());
    assert_eq!(response.header("www-authenticate"), Some("Bearer"), "{why}");
    let body = response.json();
    assert_eq!(body["status"], "unauthorized", "{why}");
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.is_empty(), "{why}");
    if token.len() > 8 {
        assert!(
            !response.text().contains(token),
            "{why}: the token was echoed"
        );
    }
}

#[tokio::test]
async fn without_a_valid_token_nothing_reaches_the_pipeline_or_the_history() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA, SigningKey::EcA])
        .await
        .unwrap();
    let app = jwt_app(&issuer).await;
    let question = json!({"question": "What is AI?", "session_id": "s1"});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("alice");
        f(&mut c);
        c
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims("alice").to_string())
    );
    // An HS256 token "signed" with the RSA public key's modulus: the classic confusion.
    let rsa_public = SigningKey::RsaA.public_jwk();
    let confused = {
        let n = match &rsa_public.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) => rsa.n.clone(),
            _ => unreachable!(),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("rsa-a".into());
        jsonwebtoken::encode(
            &header,
            &claims("alice"),
            &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
        )
        .unwrap()
    };
    let forged = {
        // Alice's claims with Bob's good signature.
        let good = token(SigningKey::RsaA, "bob");
        let alice = token(SigningKey::RsaA, "alice");
        let mut parts: Vec<&str> = alice.split('.').collect();
        parts[2] = good.split('.').nth(2).unwrap();
        parts.join(".")
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".into())),
        (
            "expired",
            Some(sign(
                SigningKey::Hs256,
                &with(&|c| c["exp"] = json!(issuer::now() - 600)),
            )),
        ),
        (
            "not yet valid",
            Some(sign(
                SigningKey::RsaA,
                &with(&|c| c["nbf"] = json!(issuer::now() + 600)),
            )),
        ),
        ("wrong signature", Some(forged)),
        (
            "wrong issuer",
            Some(sign(
                SigningKey::EcA,
                &with(&|c| c["iss"] = json!("https://evil.test")),
            )),
        ),
        (
            "wrong audience",
            Some(sign(
                SigningKey::Hs256,
                &with(&|c| c["aud"] = json!("another-app")),
            )),
        ),
        (
            "no subject",
            Some(sign(
                SigningKey::Hs256,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            )),
        ),
        ("alg none", Some(alg_none)),
        ("HS256 keyed with the RSA public key", Some(confused)),
        (
            "HS256 with another secret",
            Some(
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims("alice"),
                    &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
                )
                .unwrap(),
            ),
        ),
    ];
    for (why, bad) in &cases {
        let response = app.ask_as(bad.as_deref(), question.clone()).await;
        assert_unauthorized(&response, bad.as_deref().unwrap_or(""), why);
        let bearer = bad.clone().unwrap_or_default();
        let history = history_as(&app, &bearer, "s1").await;
        assert_unauthorized(&history, &bearer, why);
    }
    assert_eq!(
        app.openai.controls().total_calls(),
        0,
        "nothing reached OpenAI"
    );
    assert_eq!(app.qdrant.controls().calls(SEARCH), 0);
    assert_eq!(app.count_rows("messages").await, 0);
    assert_eq!(app.count_rows("user_sessions").await, 0);

    // The same request with a good token of each kind is answered.
    for key in [SigningKey::Hs256, SigningKey::RsaA, SigningKey::EcA] {
        let response = app
            .ask_as(Some(&token(key, "alice")), question.clone())
            .await;
        assert_eq!(response.status, 200, "{key:?}: {}", response.text());
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_made_up_key_ids_do_not_hammer_the_issuer() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_app(&issuer).await;
    let ask = |key: SigningKey| {
        let t = token(key, "alice");
        let app = &app;
        async move {
            app.ask_as(Some(&t), json!({"question": "q", "session_id": "rot"}))
                .await
        }
    };
    assert_eq!(ask(SigningKey::RsaA).await.status, 200);
    assert_eq!(ask(SigningKey::RsaA).await.status, 200);
    assert_eq!(issuer.fetches(), 1, "the key set is cached in Redis");

    // The issuer rotates to a new key: its first token refetches the set.
    issuer.publish(&[SigningKey::RsaB]);
    assert_eq!(ask(SigningKey::RsaB).await.status, 200);
    assert_eq!(issuer.fetches(), 2);
    assert_eq!(ask(SigningKey::RsaB).await.status, 200);
    assert_eq!(issuer.fetches(), 2);

    // Tokens naming unknown key ids are refused without a fetch each.
    for kid in ["made-up-1", "made-up-2", "made-up-3"] {
        let t = made_up_kid_token(kid);
        let r = app
            .ask_as(Some(&t), json!({"question": "q", "session_id": "m"}))
            .await;
        assert_unauthorized(&r, &t, kid);
    }
    assert!(issuer.fetches() <= 3, "fetched {} times", issuer.fetches());
}

/// One instance kept alive for the whole test: what it holds is then seen by
/// every request (the harness otherwise drops an instance idle for 1 s).
const ONE_LONG_INSTANCE: chatbot_harness::InstanceReuse = chatbot_harness::InstanceReuse {
    idle_timeout: std::time::Duration::from_secs(120),
    ..chatbot_harness::InstanceReuse::SPIN_DEFAULTS
};

/// RS256 questions by alice, each answered, then made-up key ids, each refused.
async fn rs256_questions_then_made_up_key_ids(app: &TestApp) {
    let alice = token(SigningKey::RsaA, "alice");
    for i in 0..5 {
        let r = app
            .ask_as(
                Some(&alice),
                json!({"question": format!("q{i}"), "session_id": "kept"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for kid in ["made-up-1", "made-up-2", "made-up-3"] {
        let t = made_up_kid_token(kid);
        let r = app
            .ask_as(Some(&t), json!({"question": "q", "session_id": "m"}))
            .await;
        assert_unauthorized(&r, &t, kid);
    }
}

/// Issue #38: with Redis down, the instance keeps the key set it fetched
/// (for `jwt_jwks_cache_seconds`, as Redis would) instead of fetching it for
/// every RS256 token, and an unknown key id refetches it at most once per 30 s.
#[tokio::test]
async fn with_redis_down_an_instance_keeps_its_key_set_and_fetches_it_once() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let port = chatbot_harness::unused_port();
    let app = jwt_builder(&issuer)
        .address(names::REDIS_ADDRESS, format!("redis://127.0.0.1:{port}"))
        .instance_reuse(ONE_LONG_INSTANCE)
        .spawn()
        .await
        .unwrap();
    rs256_questions_then_made_up_key_ids(&app).await;
    assert_eq!(
        issuer.fetches(),
        2,
        "one fetch for the five tokens, one refetch for the three unknown key ids"
    );
}

/// The same when Redis is up but fails on the key set's key: the instance's
/// copy stands in for the one Redis cannot give.
#[tokio::test]
async fn with_redis_failing_on_the_key_set_an_instance_keeps_its_own_copy() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_builder(&issuer)
        .redis_faults()
        .instance_reuse(ONE_LONG_INSTANCE)
        .spawn()
        .await
        .unwrap();
    app.redis_faults().fail(
        chatbot_core::redis::keys::JWKS_PREFIX,
        chatbot_harness::redis_faults::FaultKind::WrongType,
    );
    rs256_questions_then_made_up_key_ids(&app).await;
    assert!(
        app.redis_faults().failed() > 0,
        "Redis was asked and failed"
    );
    assert_eq!(issuer.fetches(), 2);
}

async fn delete_keys(app: &TestApp, pattern: &str) {
    let mut redis = app.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis)
        .await
        .unwrap();
    for key in keys {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

/// Ages the stored key set so that the next request finds it expired
/// (`jwt_jwks_cache_seconds` is at least 10 s: a test does not wait it out).
async fn expire_stored_key_set(app: &TestApp, issuer: &IssuerStub) {
    let key = chatbot_core::redis::keys::jwks(&issuer.jwks_url());
    let mut redis = app.redis().await.unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (fetched_at, keys) = chatbot_core::limits::identity::decode_stored_key_set(&stored)
        .expect("the key set is stored with its fetch time");
    let aged = chatbot_core::limits::identity::encode_stored_key_set(
        fetched_at - 3600,
        &serde_json::to_vec(&keys).unwrap(),
    );
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(aged)
        .arg("KEEPTTL")
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_expired_key_set_is_refreshed_by_one_request_and_an_issuer_outage_serves_the_last_good_copy(
) {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_app(&issuer).await;
    let alice = token(SigningKey::RsaA, "alice");
    let ask = || app.ask_as(Some(&alice), json!({"question": "q", "session_id": "lg"}));
    assert_eq!(ask().await.status, 200);
    assert_eq!(issuer.fetches(), 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(chatbot_core::redis::keys::jwks(&issuer.jwks_url()))
        .query_async(&mut app.redis().await.unwrap())
        .await
        .unwrap();
    assert!(
        ttl > 86_400,
        "the last good copy outlives its freshness: TTL {ttl}"
    );

    // Expired while the issuer is up: eight requests at once, one refresh.
    expire_stored_key_set(&app, &issuer).await;
    let answers = futures_util::future::join_all((0..8).map(|_| ask())).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(issuer.fetches(), 2, "one request refreshed the expired set");

    // Expired while the issuer is down: every token still verifies with the
    // last good copy, and the issuer is not asked again for each of them.
    delete_keys(&app, "chatbot:jwks-refresh:*").await;
    expire_stored_key_set(&app, &issuer).await;
    issuer.set_down(true);
    for _ in 0..5 {
        let r = ask().await;
        assert_eq!(
            r.status,
            200,
            "served from the last good copy: {}",
            r.text()
        );
    }
    assert_eq!(issuer.fetches(), 3, "one refresh was tried");

    // Without any copy, an outage is a 503: nothing to verify with.
    delete_keys(&app, "chatbot:jwks*").await;
    let r = ask().await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test]
async fn a_flood_of_tokens_from_one_address_is_cut_by_its_bucket_before_any_is_verified() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_builder(&issuer)
        .variable(names::RATE_LIMIT_PER_ADDRESS_REQUESTS, "3")
        .variable(names::RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS, "3600")
        .spawn()
        .await
        .unwrap();
    // RS256 tokens with made-up key ids: each would cost a verification and
    // could ask the issuer for its keys.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let t = made_up_kid_token(&format!("made-up-{i}"));
        let r = app
            .ask_as(Some(&t), json!({"question": "q", "session_id": "m"}))
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429, 429]);
    let fetches = issuer.fetches();
    assert!(fetches <= 2, "fetched {fetches} times");

    // A good token from the same address waits its turn like the rest.
    let good = app
        .ask_as(
            Some(&token(SigningKey::RsaA, "alice")),
            json!({"question": "q", "session_id": "a"}),
        )
        .await;
    assert_eq!(good.status, 429, "{}", good.text());
    assert!(good.json()["detail"].as_str().unwrap().contains("address"));
    assert_eq!(issuer.fetches(), fetches, "no fetch for a refused request");

    // History reads verify tokens too, and share the address's bucket.
    let read = history_as(&app, &token(SigningKey::RsaA, "alice"), "a").await;
    assert_eq!(read.status, 429, "{}", read.text());
    assert!(read.header("retry-after").is_some());
    assert_eq!(issuer.fetches(), fetches);
}

#[tokio::test]
async fn a_session_stored_without_an_owner_in_none_mode_is_nobodys_in_jwt_mode() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_app(&issuer).await;
    // What `none` mode stores for a question without `user_id`.
    let pg = app.postgres().await.unwrap();
    pg.batch_execute(
        "WITH s AS (INSERT INTO user_sessions (session_id, expires_at) \
             VALUES ('anon-1', now() + interval '30 days') RETURNING id), \
         c AS (INSERT INTO conversations (user_session_id, expires_at) \
             SELECT id, now() + interval '30 days' FROM s RETURNING id) \
         INSERT INTO messages (conversation_id, role, content, expires_at) \
             SELECT id, 'user', 'an anonymous question', now() + interval '30 days' FROM c",
    )
    .await
    .unwrap();
    let alice = token(SigningKey::Hs256, "alice");
    for attempt in ["first", "second"] {
        let asked = app
            .ask_as(
                Some(&alice),
                json!({"question": "What did they ask?", "session_id": "anon-1"}),
            )
            .await;
        assert_eq!(asked.status, 404, "{attempt}: {}", asked.text());
        let read = history_as(&app, &alice, "anon-1").await;
        assert_eq!(read.status, 404, "{attempt}: {}", read.text());
    }
    app.app.settled().await;
    let owner: Option<String> = pg
        .query_one(
            "SELECT user_id FROM user_sessions WHERE session_id = 'anon-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, None, "nobody adopted it");
    assert_eq!(
        app.count_rows("messages").await,
        1,
        "nothing was added to it"
    );
    assert_eq!(app.openai.controls().calls(CHAT), 0);
}

#[tokio::test]
async fn sessions_belong_to_the_user_who_created_them() {
    let issuer = IssuerStub::start(&[SigningKey::RsaA]).await.unwrap();
    let app = jwt_app(&issuer).await;
    let alice = token(SigningKey::Hs256, "alice");
    let bob = token(SigningKey::RsaA, "bob");

    // A question without a session starts one for its user.
    let first = app
        .ask_as(Some(&alice), json!({"question": "What is AI?"}))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let session = first.json()["session_id"].as_str().unwrap().to_string();
    assert!(session.len() >= 32, "{session}");
    let again = app
        .ask_as(Some(&alice), json!({"question": "What is AI?"}))
        .await;
    assert_ne!(again.json()["session_id"], first.json()["session_id"]);

    // Bob can neither ask in it nor read it, and learns nothing from trying.
    let in_alices = app
        .ask_as(Some(&bob), json!({"question": "Hi", "session_id": session}))
        .await;
    assert_eq!(in_alices.status, 404, "{}", in_alices.text());
    let unknown = app
        .ask_as(
            Some(&bob),
            json!({"question": "Hi", "session_id": "nobody-has-it"}),
        )
        .await;
    assert_eq!(
        unknown.status, 200,
        "an unused session id is Bob's to start"
    );
    let read = history_as(&app, &bob, &session).await;
    assert_eq!(read.status, 404);
    let read_unknown = history_as(&app, &bob, "never-existed").await;
    assert_eq!(read_unknown.status, 404);
    assert_eq!(
        read.json()["detail"]
            .as_str()
            .unwrap()
            .replace(&session, "X"),
        read_unknown.json()["detail"]
            .as_str()
            .unwrap()
            .replace("never-existed", "X"),
        "not owned and not there read alike"
    );

    // The owner and the admin read it; Bob's attempt stored nothing in it.
    let mine = history_as(&app, &alice, &session).await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(mine.json()["total"], 2);
    let admin = app.history(&session, 1).await;
    assert_eq!(admin.json()["total"], 2);

    // The body may not speak for someone else.
    let spoof = app
        .ask_as(
            Some(&bob),
            json!({"question": "Hi", "session_id": "bobs", "user_id": "alice"}),
        )
        .await;
    assert_eq!(spoof.status, 403, "{}", spoof.text());
    let same = app
        .ask_as(
            Some(&bob),
            json!({"question": "Hi", "session_id": "bobs", "user_id": "bob"}),
        )
        .await;
    assert_eq!(same.status, 200);

    // Redis forgetting an owner does not hand the session over: Postgres has the last word.
    let mut redis = app.redis().await.unwrap();
    let owner_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!(
            "{}*",
            chatbot_core::redis::keys::SESSION_OWNER_PREFIX
        ))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!owner_keys.is_empty());
    redis::cmd("DEL")
        .arg(&owner_keys)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let takeover = app
        .ask_as(
            Some(&bob),
            json!({"question": "Mine now?", "session_id": session}),
        )
        .await;
    assert_eq!(takeover.status, 404, "{}", takeover.text());
    // The owner Postgres named is back in Redis, expiring with the session's
    // retention (30 days) as the gate's own claims do: never a key for ever.
    let ttl: i64 = redis::cmd("TTL")
        .arg(chatbot_core::redis::keys::session_owner(&session))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((30 * 86_400 - 60..=30 * 86_400).contains(&ttl), "{ttl}");
    assert_eq!(
        app.ask_as(
            Some(&alice),
            json!({"question": "Still mine?", "session_id": session})
        )
        .await
        .status,
        200
    );

    let pg = app.postgres().await.unwrap();
    let owner: Option<String> = pg
        .query_one(
            "SELECT user_id FROM user_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some("alice"));
    let messages = app.messages_stored(&session).await;
    assert_eq!(messages, 4, "only Alice's two exchanges");
}

#[tokio::test]
async fn in_none_mode_a_session_is_never_taken_over_and_history_needs_the_admin_token() {
    let app = TestApp::spawn().await.unwrap();
    for user in ["alice", "mallory"] {
        let r = app
            .post_json(
                QUERY,
                &json!({"question": "q", "session_id": "shared", "user_id": user}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let owner: Option<String> = app
        .postgres()
        .await
        .unwrap()
        .query_one(
            "SELECT user_id FROM user_sessions WHERE session_id = 'shared'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some("alice"));
    let anonymous = app.get("/api/v1/chat/history/shared").await.unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(app.history("shared", 1).await.json()["total"], 4);
    for path in ["/health/cache/analytics", "/health/metrics"] {
        assert_eq!(app.get(path).await.unwrap().status, 401, "{path}");
        assert_eq!(app.admin_get(path).await.unwrap().status, 200, "{path}");
    }
    for path in ["/health", "/health/readiness"] {
        assert_eq!(
            app.get(path).await.unwrap().status,
            200,
            "{path} stays public"
        );
    }
}

async fn ask_from(
    app: &TestApp,
    forwarded_for: &str,
    session: &str,
    user: &str,
) -> BufferedResponse {
    app.client()
        .request(
            "POST",
            QUERY,
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", forwarded_for),
            ],
            serde_json::to_vec(&json!({"question": "q", "session_id": session, "user_id": user}))
                .unwrap(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn one_address_rotating_session_and_user_ids_gets_only_its_limit() {
    let app = TestApp::builder()
        .variable(names::RATE_LIMIT_PER_ADDRESS_REQUESTS, "5")
        .variable(names::RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS, "3600")
        .spawn()
        .await
        .unwrap();
    let mut admitted = 0;
    let mut denial = None;
    for i in 0..12 {
        // X-Forwarded-For is the client's to write: with no trusted proxy it changes nothing.
        let r = ask_from(
            &app,
            &format!("10.0.0.{i}"),
            &format!("fresh-{i}"),
            &format!("user-{i}"),
        )
        .await;
        match r.status {
            200 => admitted += 1,
            429 => denial = denial.or(Some(r)),
            other => panic!("{other}: {}", r.text()),
        }
    }
    assert_eq!(admitted, 5);
    let denial = denial.unwrap();
    assert_eq!(denial.json()["status"], "rate_limited");
    assert!(denial.json()["detail"]
        .as_str()
        .unwrap()
        .contains("address"));
    assert_eq!(denial.header("x-ratelimit-limit"), Some("5"));
    assert!(
        denial
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        app.count_rows("user_sessions").await,
        5,
        "refused requests stored nothing"
    );
    app.app.settled().await;
    let scrape = app.get("/metrics").await.unwrap().text();
    let active = scrape
        .lines()
        .find_map(|line| line.strip_prefix("chatbot_active_sessions "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert_eq!(active, Some(5.0), "only admitted sessions are active");
    let mut redis = app.redis().await.unwrap();
    let recorded: i64 = redis::cmd("ZCARD")
        .arg(chatbot_core::redis::keys::metrics::SESSIONS)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(recorded, 5, "refused sessions are not in the active set");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_bucket() {
    let app = TestApp::builder()
        .variable(names::RATE_LIMIT_PER_ADDRESS_REQUESTS, "2")
        .variable(names::RATE_LIMIT_PER_ADDRESS_WINDOW_SECONDS, "3600")
        .variable(names::TRUSTED_PROXY_HOPS, "1")
        .spawn()
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for (i, client) in [
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.2",
    ]
    .iter()
    .enumerate()
    {
        // The client prepends a lie; the proxy appends the address it saw.
        let xff = format!("198.51.100.{i}, {client}");
        statuses.push(ask_from(&app, &xff, &format!("px-{i}"), "u").await.status);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200]);
}

/// Passages per question and the answer's cap in the budget tests: what a miss reserves follows from them.
const BUDGET_TOP_K: u32 = 2;
const BUDGET_MAX_TOKENS: u32 = 50;

/// What a miss asking `question` reserves from its user's budget.
fn reservation_for(question: &str) -> i64 {
    chatbot_harness::worst_case_reservation(question, BUDGET_TOP_K, BUDGET_MAX_TOKENS) as i64
}

fn budget_builder(budget: i64) -> chatbot_harness::TestAppBuilder {
    TestApp::builder()
        .variable(names::USER_TOKEN_BUDGET_PER_DAY, budget.to_string())
        .variable(names::TOP_K, BUDGET_TOP_K.to_string())
        .variable(names::CHAT_MAX_TOKENS, BUDGET_MAX_TOKENS.to_string())
}

#[tokio::test]
async fn an_ipv6_site_gets_one_bucket_per_48_in_front_of_each_64s_own() {
    let app = TestApp::builder()
        .variable(names::TRUSTED_PROXY_HOPS, "1")
        .variable(names::RATE_LIMIT_PER_ADDRESS_REQUESTS, "3")
        .variable(names::RATE_LIMIT_PER_NETWORK_REQUESTS, "5")
        .spawn()
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    // Two /64s of one /48 (each request a new session and user, as a flood would send),
    // then a /64 of another /48.
    for (i, client) in [
        "2001:db8:1:a::1",
        "2001:db8:1:a::2",
        "2001:db8:1:a::3",
        "2001:db8:1:a::4",
        "2001:db8:1:b::1",
        "2001:db8:1:b::2",
        "2001:db8:1:b::3",
        "2001:db8:2:a::1",
    ]
    .iter()
    .enumerate()
    {
        let response = ask_from(&app, client, &format!("v6-{i}"), &format!("v6-user-{i}")).await;
        let detail = response.json()["detail"].as_str().unwrap_or("").to_string();
        outcomes.push((response.status, detail));
    }
    let statuses: Vec<u16> = outcomes.iter().map(|(status, _)| *status).collect();
    // The first /64 stops at its own 3; the refusal takes nothing, so the /48
    // has 3 of its 5 spent; the second /64 gets the 2 left; another /48 is untouched.
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 200, 200, 429, 200],
        "{outcomes:?}"
    );
    assert!(outcomes[3].1.contains("from this address"), "{outcomes:?}");
    assert!(outcomes[6].1.contains("from this network"), "{outcomes:?}");
}

#[tokio::test]
async fn the_budget_is_charged_on_misses_only_and_enforced_until_the_day_rolls() {
    // Room for one miss's worst case: after it settles to what it used, what
    // is left cannot cover another.
    let app = budget_builder(reservation_for("What is AI?") + 1)
        .variable(names::QUERY_CACHE_SCOPE, "global")
        .spawn()
        .await
        .unwrap();
    let ask = |user: &str, question: &str| {
        let body =
            json!({"question": question, "session_id": format!("{user}-s"), "user_id": user});
        let app = &app;
        async move { app.post_json(QUERY, &body).await.unwrap() }
    };
    let spent = |user: &'static str| app.tokens_spent(user);
    let miss = ask("alice", "What is AI?").await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    let alice_tokens = spent("alice").await;
    assert!(alice_tokens > 0);

    // Carol's hit costs her nothing.
    let hit = ask("carol", "What is AI?").await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(spent("carol").await, 0);

    // Alice is over budget: refused with her own status until midnight UTC.
    let refused = ask("alice", "Another question?").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["status"], "budget_exceeded");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let midnight = 86_400 - issuer::now() % 86_400;
    assert!(retry.abs_diff(midnight) <= 2, "{retry} vs {midnight}");
    let chats = app.openai.controls().calls(CHAT);

    // Carol's own miss is charged, then she is over too.
    assert_eq!(ask("carol", "Why Redis?").await.status, 200);
    let carol_tokens = spent("carol").await;
    assert!(carol_tokens > 0);
    assert_eq!(ask("carol", "And Postgres?").await.status, 429);
    assert_eq!(
        app.openai.controls().calls(CHAT),
        chats + 1,
        "refusals cost nothing upstream"
    );

    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains(&format!(
            "chatbot_user_tokens_charged_total {}\n",
            alice_tokens + carol_tokens
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatbot_user_budget_denials_total 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_misses_each_reserve_their_worst_case_so_together_they_cannot_overspend() {
    let questions: Vec<String> = (0..10)
        .map(|i| format!("Concurrent question number {i:02}?"))
        .collect();
    let worst = reservation_for(&questions[0]);
    // Room for three worst cases and a half: three misses at most.
    let app = budget_builder(worst * 3 + worst / 2).spawn().await.unwrap();
    // Slow answers keep every miss in flight while the others reserve.
    app.openai.set_stream_timing(
        std::time::Duration::from_millis(3000),
        std::time::Duration::ZERO,
    );
    let responses = futures_util::future::join_all(questions.iter().map(|question| {
        let body = json!({"question": question, "session_id": "dave-s", "user_id": "dave"});
        let app = &app;
        async move { app.post_json(QUERY, &body).await.unwrap() }
    }))
    .await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    for refused in responses.iter().filter(|r| r.status != 200) {
        assert_eq!(refused.status, 429, "{}", refused.text());
        assert_eq!(refused.json()["status"], "budget_exceeded");
    }
    assert_eq!(
        app.openai.controls().calls(CHAT),
        3,
        "refused misses never reach the model"
    );
    // Each admitted miss settled its reservation to the usage it reported.
    let reported: i64 = responses
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            let stub_words = |text: &str| {
                text.split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .count()
            };
            stub_words(r.json()["answer"].as_str().unwrap()) as i64
        })
        .sum();
    let used = app.tokens_spent("dave").await;
    assert!(
        used > reported && used < worst * 3,
        "{used} (answers alone: {reported}, worst cases: {})",
        worst * 3
    );
}

#[tokio::test]
async fn anonymous_misses_share_the_deployments_ceiling_and_hits_are_served_past_it() {
    let questions: Vec<String> = (0..6)
        .map(|i| format!("Anonymous question number {i:02}?"))
        .collect();
    let worst = reservation_for(&questions[0]);
    let app = budget_builder(0)
        .variable(
            names::DEPLOYMENT_TOKEN_BUDGET_PER_DAY,
            (worst * 2 + worst / 2).to_string(),
        )
        .variable(names::QUERY_CACHE_SCOPE, "global")
        .spawn()
        .await
        .unwrap();
    app.openai.set_stream_timing(
        std::time::Duration::from_millis(3000),
        std::time::Duration::ZERO,
    );
    // No user: only the ceiling stands between these misses and OpenAI.
    let responses =
        futures_util::future::join_all(questions.iter().enumerate().map(|(i, question)| {
            let body = json!({"question": question, "session_id": format!("anon-{i}")});
            let app = &app;
            async move { app.post_json(QUERY, &body).await.unwrap() }
        }))
        .await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    for refused in responses.iter().filter(|r| r.status != 200) {
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert_eq!(refused.json()["status"], "unavailable");
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 0 && retry <= 86_400);
    }
    assert_eq!(app.openai.controls().calls(CHAT), 2);
    // A refused question wrote nothing: only the two answered sessions are stored.
    let stored: i64 = app
        .postgres()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM user_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2);
    // Spent what the two answers used; a cached answer is served whatever is left.
    app.openai
        .set_stream_timing(std::time::Duration::ZERO, std::time::Duration::ZERO);
    let answered = statuses.iter().position(|s| *s == 200).unwrap();
    let again = app
        .post_json(
            QUERY,
            &json!({"question": questions[answered], "session_id": "anon-later"}),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-cache"), Some("HIT"));
    let metrics = app.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("chatbot_deployment_budget_denials_total 4\n"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("chatbot_user_tokens_charged_total ") && !l.ends_with(" 0")),
        "no user was charged: {metrics}"
    );
}

/// The `data` of a stream's `done` event.
fn done_event(sse: &str) -> Value {
    let data = sse
        .split("\n\n")
        .find(|event| event.starts_with("event: done"))
        .and_then(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .unwrap_or_else(|| panic!("no done event in {sse}"));
    serde_json::from_str(data).unwrap()
}

#[tokio::test]
async fn a_cut_stream_is_charged_its_whole_reservation_and_a_whole_answer_what_it_used() {
    let app = budget_builder(1_000_000).spawn().await.unwrap();
    let question = "What does a cut stream cost?";
    let body =
        json!({"question": question, "session_id": "erin-s", "user_id": "erin", "stream": true});
    app.openai.cut_next_stream_after(2);
    let cut = app.post_json(QUERY, &body).await.unwrap();
    assert_eq!(cut.status, 200);
    assert!(cut.text().contains("event: error"), "{}", cut.text());
    assert_eq!(
        app.tokens_spent("erin").await,
        reservation_for(question),
        "OpenAI bills a cut stream; its usage is unknown, so the reservation stays"
    );

    // Not cached, so asked again: whole this time, and settled to its usage.
    let whole = app.post_json(QUERY, &body).await.unwrap();
    let usage = done_event(&whole.text())["usage"]["total_tokens"]
        .as_i64()
        .unwrap();
    assert!(usage > 0);
    assert_eq!(
        app.tokens_spent("erin").await,
        reservation_for(question) + usage
    );
    // Every chat call carried the answer's cap the reservation counted on.
    let requests = app.openai.chat_requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(request["max_tokens"], BUDGET_MAX_TOKENS, "{request}");
    }
}

#[tokio::test]
async fn an_answer_longer_than_chat_max_tokens_is_cut_there_and_not_cached() {
    let app = TestApp::builder()
        .variable(names::CHAT_MAX_TOKENS, "3")
        .spawn()
        .await
        .unwrap();
    let body = json!({"question": "What is AI?", "session_id": "frank-s"});
    let first = app.post_json(QUERY, &body).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.json()["answer"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        3
    );
    // The model stopped at the cap (finish_reason `length`): shown, never cached.
    let again = app.post_json(QUERY, &body).await.unwrap();
    assert_eq!(again.json()["cached"], false);
    assert_eq!(app.openai.controls().calls(CHAT), 2);
}

#[tokio::test]
async fn twenty_thousand_anonymous_refusals_do_not_push_out_an_admin_entry() {
    let _machine = chatbot_harness::machine::busy().await;
    let app = TestApp::builder()
        .variable(names::AUTH_MODE, "jwt")
        .variable(names::JWT_HS256_SECRET, HS256_SECRET)
        .variable(names::TRUSTED_PROXY_HOPS, "1")
        .spawn()
        .await
        .unwrap();
    for scope in [json!({}), json!({"cache_type": "embedding"})] {
        let r = app
            .admin("POST", "/health/cache/clear", &scope)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = app.client();
        tasks.spawn(async move {
            let mut refused = 0;
            for i in 0..1_250 {
                // A hundred addresses, as a small botnet would have.
                let xff = format!("192.0.2.{}", (worker * 1_250 + i) % 100);
                let (path, auth) = if i % 5 == 0 {
                    ("/admin/audit", "Bearer guessed-admin-token")
                } else {
                    (QUERY, "Bearer not-a-token")
                };
                let r = client
                    .request(
                        if i % 5 == 0 { "GET" } else { "POST" },
                        path,
                        &[
                            ("content-type", "application/json"),
                            ("authorization", auth),
                            ("x-forwarded-for", &xff),
                        ],
                        r#"{"question":"q","session_id":"s"}"#,
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, 401);
                refused += 1;
            }
            refused
        });
    }
    let refused: u32 = tasks.join_all().await.iter().sum();
    assert_eq!(refused, 20_000);
    let admin_log = app.admin_get("/admin/audit").await.unwrap().json();
    assert_eq!(admin_log["total"], 2, "{admin_log}");
    assert!(admin_log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] == "cache_cleared"));
    let security = app
        .admin_get("/admin/audit?log=security")
        .await
        .unwrap()
        .json();
    let total = security["total"].as_i64().unwrap();
    // Sampled per address and kind: a handful per address per ten seconds.
    assert!((200..=2_000).contains(&total), "{total}");
    let entry = &security["entries"][0];
    assert!(
        entry["address"].as_str().unwrap().starts_with("192.0.2."),
        "{entry}"
    );
    assert!(["token_rejected", "unauthorized"].contains(&entry["action"].as_str().unwrap()));
}

#[tokio::test]
async fn no_upstream_message_reaches_a_response_body() {
    let app = TestApp::builder()
        .variable(names::OPENAI_API_KEY, "sk-proj-wrongkey-1234567890")
        .spawn()
        .await
        .unwrap();
    let r = app
        .post_json(QUERY, &json!({"question": "q", "session_id": "s"}))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let text = r.text();
    for leak in ["Incorrect", "sk-pr", "platform.openai.com", "7890"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert!(r.json()["detail"].as_str().unwrap().contains("OpenAI"));
    assert_eq!(r.json()["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(app.openai.controls().calls(EMBEDDINGS), 1);

    let app = TestApp::spawn().await.unwrap();
    app.qdrant
        .controls()
        .fail_always(SEARCH, Fault::Status(500));
    let r = app
        .post_json(QUERY, &json!({"question": "q", "session_id": "s"}))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(!r.text().contains("injected"), "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("Qdrant"));
}

#[tokio::test]
async fn nul_and_control_characters_are_refused_in_every_text_field() {
    let app = TestApp::spawn().await.unwrap();
    for bad in ["\u{0}", "\u{7}", "\u{1b}[2J", "\u{7f}"] {
        for body in [
            json!({"question": format!("a{bad}b"), "session_id": "s"}),
            json!({"question": "q", "session_id": "s", "page_context": format!("p{bad}")}),
            json!({"question": "q", "session_id": format!("s{bad}")}),
            json!({"question": "q", "session_id": "s", "user_id": format!("u{bad}")}),
        ] {
            let r = app.post_json(QUERY, &body).await.unwrap();
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            assert_eq!(r.json()["status"], "invalid_request");
        }
    }
    for document in [
        json!({"id": "d", "source": "s.pdf", "text": "a\u{0}b"}),
        json!({"id": "d", "source": "s\u{0}.pdf", "text": "t"}),
        json!({"id": "d", "source": "s.pdf", "text": "t", "metadata": {"k": "\u{0}"}}),
    ] {
        let r = app.ingest(json!([document])).await.unwrap();
        assert_eq!(r.status, 400, "{document}: {}", r.text());
        assert!(r.json()["detail"].as_str().unwrap().contains("NUL"));
    }
    assert_eq!(app.count_rows("messages").await, 0);
    assert_eq!(app.openai.controls().total_calls(), 0);
}

#[tokio::test]
async fn a_passage_holding_nul_does_not_stop_history_writes() {
    let app = TestApp::spawn().await.unwrap();
    let r = app
        .ingest(json!([{"id": "clean", "source": "clean.pdf", "text": "Clean text about caches."}]))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // A chunk written by an older version or another tool, NUL and all.
    let qdrant = reqwest_put(
        &format!(
            "{}/collections/documents/points?wait=true",
            app.qdrant.url()
        ),
        json!({"points": [{
            "id": "5d886380-f107-3721-aad6-5d6c27f5d0a5",
            "vector": vec![0.125f32; chatbot_harness::TEST_EMBEDDING_DIMENSIONS],
            "payload": {"source": "legacy\u{0}.pdf", "text": "legacy\u{0}text about caches"}
        }]}),
    )
    .await;
    assert_eq!(qdrant, 200);
    let r = app
        .post_json(
            QUERY,
            &json!({"question": "What about caches?", "session_id": "nul"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let page = app.history("nul", 1).await.json();
    assert_eq!(page["total"], 2, "the exchange was stored: {page}");
    let lost = app.get("/metrics").await.unwrap().text();
    assert!(
        lost.contains("chatbot_history_writes_lost_total 0\n")
            || !lost.contains("chatbot_history_writes_lost_total")
    );
}

/// A PUT with the Qdrant stand-in's key, through the harness's own HTTP client.
async fn reqwest_put(url: &str, body: Value) -> u16 {
    let parsed = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap());
    let mut client = chatbot_harness::client::Client::new(addr.parse().unwrap());
    let path = format!("{}?{}", parsed.path(), parsed.query().unwrap_or(""));
    client
        .request(
            "PUT",
            &path,
            &[
                ("content-type", "application/json"),
                ("api-key", TEST_QDRANT_KEY),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap()
        .status
}
