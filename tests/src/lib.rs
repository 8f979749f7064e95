//! A wasmtime host that runs the chatbot's Spin components as Spin does, over
//! real Redis and Postgres servers and local OpenAI- and Qdrant-compatible
//! servers.
//!
//! - [`runtime`] loads `spin.toml` and serves requests (fresh instance per request);
//! - [`host`] provides Spin's interfaces, one module per interface;
//! - [`services`] starts real `redis-server` and PostgreSQL for the test run;
//! - [`stubs`] are the OpenAI and Qdrant stand-ins;
//! - [`TestApp`] puts it all together for one test, with isolated state.

pub mod allowed_hosts;
pub mod bindings;
pub mod client;
pub mod compose;
pub mod cpu;
pub mod host;
pub mod limiter;
pub mod machine;
pub mod manifest;
pub mod promtool;
pub mod real_qdrant;
pub mod recorder;
pub mod redis_faults;
pub mod relay;
pub mod routes;
pub mod runtime;
pub mod scripts;
pub mod server;
pub mod services;
pub mod spin;
pub mod stubs;
pub mod wire;

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

pub use client::Client;
pub use host::chatbot::ChatbotImports;
pub use runtime::{App, AppOptions, BufferedResponse, InstanceReuse};

/// A loopback port nothing listens on (for "dependency down" tests).
pub fn unused_port() -> u16 {
    services::free_port().expect("binding a free port")
}

/// The `allowed_outbound_hosts` entry (`scheme://host:port`) for an address.
pub fn origin_of(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("valid URL");
    format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str().expect("host"),
        parsed.port_or_known_default().expect("port")
    )
}

/// Each dependency's address variable and the `allowed_outbound_hosts`
/// variable that must name its `scheme://host:port` (see spin.toml).
pub const ALLOW_LIST_VARIABLES: [(&str, &str); 5] = [
    (names::REDIS_ADDRESS, names::REDIS_ALLOWED_HOST),
    (names::POSTGRES_ADDRESS, names::POSTGRES_ALLOWED_HOST),
    (names::QDRANT_URL, names::QDRANT_ALLOWED_HOST),
    (names::OPENAI_BASE_URL, names::OPENAI_ALLOWED_HOST),
    (names::JWT_JWKS_URL, names::JWT_JWKS_ALLOWED_HOST),
];

/// The allow-list variable that goes with an address variable.
pub fn allow_list_variable(address_variable: &str) -> Option<&'static str> {
    ALLOW_LIST_VARIABLES
        .iter()
        .find(|(address, _)| *address == address_variable)
        .map(|(_, allowed)| *allowed)
}

/// The repository root (where `spin.toml` is).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub const TEST_OPENAI_KEY: &str = "sk-test-harness";
pub const TEST_QDRANT_KEY: &str = "qdrant-test-key";
pub const TEST_ADMIN_TOKEN: &str = "admin-test-token";
/// The embedding size the OpenAI stand-in answers with, unless a test says otherwise.
pub const TEST_EMBEDDING_DIMENSIONS: usize = 64;

/// How to spawn a [`TestApp`].
#[derive(Default)]
pub struct TestAppBuilder {
    variables: BTreeMap<String, String>,
    chatbot_imports: Option<Arc<ChatbotImports>>,
    only: Option<Vec<String>>,
    manifest: Option<PathBuf>,
    zero_row_queries: host::postgres::ZeroRowQueries,
    host_call_watchdog: Option<std::time::Duration>,
    with_empty_collection: bool,
    capture_stderr: bool,
    redis_faults: bool,
    instance_reuse: runtime::InstanceReuse,
    shared: Option<SharedServices>,
}

/// Another app's Redis and Postgres databases and stand-ins, for a second
/// replica of the same deployment.
struct SharedServices {
    redis_url: String,
    database: Arc<services::TestDatabase>,
    openai: Arc<stubs::openai::OpenAiStub>,
    qdrant: Arc<stubs::qdrant::QdrantStub>,
}

/// The Qdrant collection the app uses unless told otherwise (`qdrant_collection`).
pub const DEFAULT_COLLECTION: &str = "documents";

impl TestAppBuilder {
    /// The default collection exists, empty, before the app starts (as an
    /// operator might create it). Without this, Qdrant starts as in a fresh
    /// deployment, with no collection until the first ingestion creates it.
    pub fn with_empty_collection(mut self) -> Self {
        self.with_empty_collection = true;
        self
    }

    /// Traps a Redis or Postgres open after `limit` instead of the default
    /// minute (Spin itself would wait forever on a server that never answers).
    pub fn host_call_watchdog(mut self, limit: std::time::Duration) -> Self {
        self.host_call_watchdog = Some(limit);
        self
    }

    /// Collects the components' stderr in `app.stderr` (to check their log lines).
    pub fn capture_stderr(mut self) -> Self {
        self.capture_stderr = true;
        self
    }

    /// Puts a [`redis_faults::RedisFaults`] proxy between the app and its
    /// Redis (the test's own connections, `app.redis()`, reach Redis directly).
    pub fn redis_faults(mut self) -> Self {
        self.redis_faults = true;
        self
    }

    /// Loads another manifest than the project's `spin.toml` (e.g. the harness's probe app).
    pub fn manifest(mut self, path: impl Into<PathBuf>) -> Self {
        self.manifest = Some(path.into());
        self
    }

    /// Overrides a variable (as `SPIN_VARIABLE_<NAME>` would).
    pub fn variable(mut self, name: &str, value: impl Into<String>) -> Self {
        self.variables.insert(name.to_string(), value.into());
        self
    }

    /// Points a dependency elsewhere (`redis_address`, `postgres_address`,
    /// `qdrant_url`, `openai_base_url`) and allows it in `allowed_outbound_hosts`.
    pub fn address(mut self, variable: &str, url: impl Into<String>) -> Self {
        self.variables
            .extend(address_variables(variable, url.into()));
        self
    }

    /// Serves the limiter and recorder from the host instead of composing the components.
    pub fn chatbot_imports(mut self, imports: Arc<ChatbotImports>) -> Self {
        self.chatbot_imports = Some(imports);
        self
    }

    /// Answers a Postgres `query` that yields no rows with an empty row set, as
    /// Spin 3.x did, instead of failing the request (Spin 4.0.x hangs on it:
    /// spinframework/spin#3671). Only for a test that shows that rule itself.
    /// How WASIp3 components' instances are reused (Spin's defaults unless set).
    pub fn instance_reuse(mut self, reuse: runtime::InstanceReuse) -> Self {
        self.instance_reuse = reuse;
        self
    }

    pub fn answer_zero_row_queries(mut self) -> Self {
        self.zero_row_queries = host::postgres::ZeroRowQueries::Answer;
        self
    }

    /// A second replica: the app uses `other`'s Redis and Postgres databases
    /// and its OpenAI and Qdrant stand-ins (as replicas of one SpinApp share
    /// theirs) instead of fresh ones. `address` still points one elsewhere.
    pub fn sharing_services_of(mut self, other: &TestApp) -> Self {
        self.shared = Some(SharedServices {
            redis_url: other.redis_url.clone(),
            database: other.database.clone(),
            openai: other.openai.clone(),
            qdrant: other.qdrant.clone(),
        });
        self
    }

    /// Loads only these components.
    pub fn only(mut self, components: &[&str]) -> Self {
        self.only = Some(components.iter().map(|c| c.to_string()).collect());
        self
    }

    pub async fn spawn(self) -> Result<TestApp> {
        let (redis_url, database, openai, qdrant) = match self.shared {
            Some(shared) => (
                shared.redis_url,
                shared.database,
                shared.openai,
                shared.qdrant,
            ),
            None => {
                let services = services::services();
                (
                    services.fresh_redis().await?,
                    services.fresh_postgres().await?,
                    Arc::new(
                        stubs::openai::OpenAiStub::start(
                            TEST_OPENAI_KEY,
                            TEST_EMBEDDING_DIMENSIONS,
                        )
                        .await?,
                    ),
                    Arc::new(stubs::qdrant::QdrantStub::start(Some(TEST_QDRANT_KEY)).await?),
                )
            }
        };
        // Like a fresh deployment, Qdrant has no collection unless a test asks
        // for one: the first ingestion creates it.
        if self.with_empty_collection {
            qdrant.create_collection(DEFAULT_COLLECTION, TEST_EMBEDDING_DIMENSIONS);
        }

        let mut variables =
            standard_variables(&redis_url, &database.url, &openai.base_url(), &qdrant.url());
        let manifest = self
            .manifest
            .unwrap_or_else(|| project_root().join("spin.toml"));
        // The standard wiring applies to the variables this manifest declares.
        let declared = manifest::Manifest::load(&manifest)?.variables;
        variables.retain(|name, _| declared.contains_key(name));
        variables.extend(self.variables);
        let redis_faults = if self.redis_faults {
            let (faults, url) = redis_faults::RedisFaults::in_front_of(&redis_url).await?;
            variables.extend(address_variables("redis_address", url));
            Some(faults)
        } else {
            None
        };

        let app = App::load(AppOptions {
            manifest,
            variables,
            chatbot_imports: self.chatbot_imports.clone(),
            only: self.only,
            zero_row_queries: self.zero_row_queries,
            host_call_watchdog: self
                .host_call_watchdog
                .unwrap_or(host::DEFAULT_HOST_CALL_WATCHDOG),
            capture_stderr: self.capture_stderr,
            instance_reuse: self.instance_reuse,
        })?;
        let app = Arc::new(app);
        let server = server::start(app.clone(), ([127, 0, 0, 1], 0).into()).await?;
        Ok(TestApp {
            deployment: Deployment {
                addr: server.addr,
                redis_url,
                database,
                settle: Some(app.clone()),
            },
            app,
            server,
            openai,
            qdrant,
            chatbot_imports: self.chatbot_imports,
            redis_faults,
        })
    }
}

/// A dependency's address variable (`redis_address`, `postgres_address`,
/// `qdrant_url`, `openai_base_url`, `jwt_jwks_url`) set to `url`, with the
/// `allowed_outbound_hosts` variable that must name its origin.
pub fn address_variables(variable: &str, url: String) -> [(String, String); 2] {
    let allowed = allow_list_variable(variable)
        .unwrap_or_else(|| panic!("{variable} is not a dependency address variable"));
    [
        (allowed.to_string(), origin_of(&url)),
        (variable.to_string(), url),
    ]
}

/// The variables that wire an app to a test's Redis and Postgres databases
/// and its OpenAI and Qdrant servers, with the test keys and admin token, and
/// each dependency's `allowed_outbound_hosts` entry in step with its address.
pub fn standard_variables(
    redis_url: &str,
    postgres_url: &str,
    openai_base_url: &str,
    qdrant_url: &str,
) -> BTreeMap<String, String> {
    let mut variables = BTreeMap::from([
        (names::REDIS_ADDRESS.to_string(), redis_url.to_string()),
        (
            names::POSTGRES_ADDRESS.to_string(),
            postgres_url.to_string(),
        ),
        (
            names::OPENAI_BASE_URL.to_string(),
            openai_base_url.to_string(),
        ),
        (
            names::OPENAI_API_KEY.to_string(),
            TEST_OPENAI_KEY.to_string(),
        ),
        (names::QDRANT_URL.to_string(), qdrant_url.to_string()),
        (
            names::QDRANT_API_KEY.to_string(),
            TEST_QDRANT_KEY.to_string(),
        ),
        (names::ADMIN_TOKEN.to_string(), TEST_ADMIN_TOKEN.to_string()),
        // Every test client is 127.0.0.1: only the tests of the per-address
        // bucket set a limit of their own.
        (
            names::RATE_LIMIT_PER_ADDRESS_REQUESTS.to_string(),
            "10000000".to_string(),
        ),
    ]);
    for (address, allowed) in ALLOW_LIST_VARIABLES {
        if let Some(url) = variables.get(address) {
            let origin = origin_of(url);
            variables.insert(allowed.to_string(), origin);
        }
    }
    variables
}

/// The value of one series (`name{labels}`, exactly as rendered) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `Authorization` header value that carries the test admin token.
pub fn admin_authorization() -> String {
    format!("Bearer {TEST_ADMIN_TOKEN}")
}

/// What a test talks to, whichever host serves it: where it listens, and
/// its Redis and Postgres databases. [`TestApp`] (the harness's host) and
/// [`spin::SpinApp`] (a real `spin up`) both dereference to one.
pub struct Deployment {
    pub addr: std::net::SocketAddr,
    pub redis_url: String,
    /// The test's Postgres database, kept until the last app using it is gone.
    database: Arc<services::TestDatabase>,
    /// The harness's app, to wait on what its handlers do after a response;
    /// `None` under a real Spin, which tells nobody.
    settle: Option<Arc<App>>,
}

/// One test's application: its own Redis database, Postgres database and stubs.
pub struct TestApp {
    pub app: Arc<App>,
    pub server: server::RunningServer,
    pub deployment: Deployment,
    /// Shared with the apps spawned [`TestAppBuilder::sharing_services_of`] this one.
    pub openai: Arc<stubs::openai::OpenAiStub>,
    pub qdrant: Arc<stubs::qdrant::QdrantStub>,
    pub chatbot_imports: Option<Arc<ChatbotImports>>,
    redis_faults: Option<redis_faults::RedisFaults>,
}

impl std::ops::Deref for TestApp {
    type Target = Deployment;

    fn deref(&self) -> &Deployment {
        &self.deployment
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// The fault proxy in front of Redis ([`TestAppBuilder::redis_faults`]).
    pub fn redis_faults(&self) -> &redis_faults::RedisFaults {
        self.redis_faults
            .as_ref()
            .expect("the app was built without TestAppBuilder::redis_faults")
    }

    /// The whole app, composed as `spin.toml` says.
    pub async fn spawn() -> Result<Self> {
        Self::builder().spawn().await
    }

    pub fn counts(&self) -> host::Counts {
        self.app.counters.snapshot()
    }
}

impl Deployment {
    /// The test's Postgres database: `postgres://USER@127.0.0.1:PORT/NAME`.
    pub fn postgres_url(&self) -> &str {
        &self.database.url
    }

    /// A client on a new keep-alive connection to the app; under the
    /// harness, each response returns once the request's work after it is
    /// done too (see [`App::settled`]).
    pub fn client(&self) -> Client {
        match &self.settle {
            Some(app) => Client::settling(self.addr, app.clone()),
            None => Client::new(self.addr),
        }
    }

    /// A client that returns each response as soon as it is complete, with
    /// the handler possibly still at work (what a real client sees).
    pub fn raw_client(&self) -> Client {
        Client::new(self.addr)
    }

    pub async fn get(&self, path: &str) -> Result<BufferedResponse> {
        self.client().get(path).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<BufferedResponse> {
        self.client().post_json(path, body).await
    }

    /// `POST /api/v1/chat/query`: `question` in `session`.
    pub async fn ask(&self, question: &str, session: &str) -> BufferedResponse {
        self.ask_on_page(question, session, None).await
    }

    /// `POST /api/v1/chat/query`: `question` in `session`, with a page context.
    pub async fn ask_on_page(
        &self,
        question: &str,
        session: &str,
        page: Option<&str>,
    ) -> BufferedResponse {
        let mut body = serde_json::json!({"question": question, "session_id": session});
        if let Some(page) = page {
            body["page_context"] = serde_json::json!(page);
        }
        self.post_json("/api/v1/chat/query", &body)
            .await
            .expect("the query handler answers")
    }

    /// The answer's JSON body, which must be a 200.
    pub async fn answer(
        &self,
        question: &str,
        session: &str,
        page: Option<&str>,
    ) -> serde_json::Value {
        let response = self.ask_on_page(question, session, page).await;
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// `GET /api/v1/chat/history/{session}` (page `page`), with the admin token.
    pub async fn history(&self, session: &str, page: u32) -> BufferedResponse {
        self.admin_get(&format!("/api/v1/chat/history/{session}?page={page}"))
            .await
            .expect("the query handler answers")
    }

    /// A request with the admin token and a JSON body (`null` for none to speak of).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<BufferedResponse> {
        let auth = admin_authorization();
        self.client()
            .request(
                method,
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                ],
                serde_json::to_vec(body)?,
            )
            .await
    }

    /// A `GET` with the admin token.
    pub async fn admin_get(&self, path: &str) -> Result<BufferedResponse> {
        let auth = admin_authorization();
        self.client()
            .request(
                "GET",
                path,
                &[("authorization", &auth)],
                bytes::Bytes::new(),
            )
            .await
    }

    /// `POST /api/v1/documents` with the admin token: `documents` is the JSON array.
    pub async fn ingest(&self, documents: serde_json::Value) -> Result<BufferedResponse> {
        self.admin(
            "POST",
            "/api/v1/documents",
            &serde_json::json!({ "documents": documents }),
        )
        .await
    }

    /// A Redis connection to this test's database, for assertions.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// A Postgres client on this test's database, for assertions.
    pub async fn postgres(&self) -> Result<tokio_postgres::Client> {
        services::connect(self.postgres_url()).await
    }

    /// One series' value in `GET /metrics` (which must carry it).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.expect("GET /metrics").text();
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    /// How many messages Postgres holds for `session` (questions and answers).
    pub async fn messages_stored(&self, session: &str) -> i64 {
        messages_stored(self.postgres_url(), session).await
    }

    /// `POST /api/v1/chat/query` with `body`, as the holder of `bearer` (a JWT) or anonymously.
    pub async fn ask_as(&self, bearer: Option<&str>, body: serde_json::Value) -> BufferedResponse {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        self.client()
            .request(
                "POST",
                "/api/v1/chat/query",
                &headers,
                serde_json::to_vec(&body).expect("JSON serialises"),
            )
            .await
            .expect("the app answers")
    }

    /// The rows Postgres holds in `table` (a name the test writes, never input).
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.postgres()
            .await
            .expect("Postgres")
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("a count")
            .get(0)
    }

    /// The handle of the conversation `session`'s latest question went to
    /// (as Postgres holds it): where a question that names no conversation
    /// was stored, now that its response does not say.
    pub async fn conversation_asked_in_last(&self, session: &str) -> Option<String> {
        self.postgres()
            .await
            .expect("Postgres")
            .query_opt(
                "SELECT c.handle FROM messages m \
                 JOIN conversations c ON c.id = m.conversation_id \
                 JOIN user_sessions s ON s.id = c.user_session_id \
                 WHERE s.session_id = $1 AND m.role = 'user' \
                 ORDER BY m.\"timestamp\" DESC, m.id DESC LIMIT 1",
                &[&session],
            )
            .await
            .expect("a conversation's handle")
            .map(|row| row.get(0))
    }

    /// The tokens charged to `user` on every day Redis still keeps.
    pub async fn tokens_spent(&self, user: &str) -> i64 {
        let mut redis = self.redis().await.expect("Redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!(
                "{}{}:*",
                chatbot_core::redis::keys::USER_TOKENS_PREFIX,
                chatbot_core::redis::digest::md5_of_parts(&[user])
            ))
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        let mut total = 0i64;
        for key in keys {
            total += redis::cmd("GET")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
                .expect("GET");
        }
        total
    }
}

/// What a miss asking `question` (no page context, no turns) reserves from
/// its user's budget with `top_k` passages and answers of `max_tokens`.
pub fn worst_case_reservation(question: &str, top_k: u32, max_tokens: u32) -> u64 {
    let request = chatbot_core::chat::query::QueryRequest {
        question: question.into(),
        session_id: chatbot_core::http::api::SessionId::parse("any").expect("an id"),
        page_context: None,
        user_id: Some(chatbot_core::http::api::UserId::parse("any").expect("an id")),
        stream: false,
        conversation: Default::default(),
    };
    chatbot_core::chat::query::worst_case_tokens(&request, top_k, max_tokens)
}

/// How many messages the Postgres database at `postgres_url` holds for
/// `session` (questions and answers).
pub async fn messages_stored(postgres_url: &str, session: &str) -> i64 {
    services::connect(postgres_url)
        .await
        .expect("Postgres answers")
        .query_one(
            "SELECT count(*) FROM messages m
               JOIN conversations c ON c.id = m.conversation_id
               JOIN user_sessions s ON s.id = c.user_session_id
              WHERE s.session_id = $1",
            &[&session],
        )
        .await
        .expect("the count reads")
        .get(0)
}
