//! `POST /api/v1/chat/query`: checks, then the answer (JSON, or server-sent
//! events as the model writes it), and only once the client has the whole
//! answer, the exchange's Postgres write and the metrics, before the body
//! ends (see `chatbot_spin::respond`).

use chatbot_core::api::{ApiError, ErrorCode};
use chatbot_core::audit::AuditAction;
use chatbot_core::history::{day_of, RememberedConversation};
use chatbot_core::identity::{AuthMode, IdentitySettings};
use chatbot_core::keys;
use chatbot_core::metrics::recording::Observation;
use chatbot_core::metrics::{Endpoint, ErrorType};
use chatbot_core::query::{self, Citation, QueryRequest};
use chatbot_core::sessions::Spent;
use chatbot_core::stream::{self, Delta, Done, Meta, UsageReport};
use chatbot_spin::identity;
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::pipeline::{self, Answer, Pending, Progress};
use chatbot_spin::redis_script::{binary, execute};
use chatbot_spin::respond::{self, json, Body, Out, SetHeader};
use chatbot_spin::routing;
use chatbot_spin::settings::{self, PipelineSettings};
use spin_sdk::redis::RedisParameter;

use crate::{
    authenticate, config_failure, gate, limit, limit_address, no_such_session, reserve, settle,
    Scope,
};

/// What is left to do once the client has its answer.
struct Exchange {
    request: QueryRequest,
    answer: Answer,
    conversation: Option<RememberedConversation>,
}

pub async fn chat_query(req: Request, out: Out) {
    let configured = match identity::settings().await.map_err(config_failure) {
        Ok(identity) => settings::pipeline()
            .await
            .map_err(config_failure)
            .map(|pipeline| (identity, pipeline)),
        Err(e) => Err(e),
    };
    let (identity_settings, settings) = match configured {
        Ok(both) => both,
        Err(e) => {
            // No settings, no Scope: counted on the recorder's own connection.
            crate::count_alone(
                Endpoint::Query,
                &Err(e.clone()),
                vec![Observation::Error(ErrorType::Config)],
            )
            .await;
            return routing::send(out, respond::error(&e)).await;
        }
    };
    let address = identity::client_address(&req, &identity_settings);
    let mut scope = Scope::open(&settings, address).await;
    let mut reply = Reply::new(out);
    let outcome = ask(&mut scope, &settings, &identity_settings, &req, &mut reply).await;
    let jwt = identity_settings.mode == AuthMode::Jwt;
    match outcome {
        Ok(exchange) => {
            reply.answer(&scope, &exchange).await;
            scope.observe_latency();
            chatbot_spin::context::after_response();
            // The client has every byte: now what it does not wait for.
            let seen = !reply.client_gone();
            after_response(&mut scope, &settings, exchange, jwt, seen).await;
        }
        Err(e) => {
            // Refusals and failures are counted, and timed, like answers.
            scope.refused(&e);
            reply.fail(&scope, e).await;
            scope.observe_latency();
            chatbot_spin::context::after_response();
        }
    }
    scope.record().await;
}

async fn ask(
    scope: &mut Scope,
    settings: &PipelineSettings,
    identity_settings: &IdentitySettings,
    req: &Request,
    reply: &mut Reply,
) -> Result<Exchange, ApiError> {
    if identity_settings.jwt.is_some() {
        limit_address(scope).await?;
    }
    let user = authenticate(scope, identity_settings, req).await?;
    let jwt = identity_settings.mode == AuthMode::Jwt;
    let content_type = req.header("content-type");
    // In jwt mode a question without a session starts one: 128 random bits.
    let new_session = jwt.then(|| format!("s-{}", chatbot_spin::random_token()));
    let mut request = query::parse_query(content_type, req.body(), new_session)?;
    reply.streamed = stream::wants_stream(req.header("accept"), request.stream);
    if let Some(user) = user {
        if request
            .user_id
            .as_ref()
            .is_some_and(|claimed| *claimed != user)
        {
            return Err(ApiError::new(
                403,
                ErrorCode::Forbidden,
                "`user_id` must be the token's subject (or be left out)",
            ));
        }
        request.user_id = Some(user);
    }
    limit(scope, &request).await?;
    reply.limit_headers = scope.headers();
    // A user's limits are read only when there is a user (a hit without one reads none).
    let limits = match &request.user_id {
        Some(user) => {
            let limits = settings::session_limits().await.map_err(config_failure)?;
            gate(scope, settings, &limits, user, &request.session_id, jwt).await?;
            Some(limits)
        }
        None => None,
    };
    let found = pipeline::lookup(
        scope.conn.as_ref(),
        settings,
        &request,
        true,
        &mut scope.telemetry,
    )
    .await;
    scope.cache_status = query::cache_status(found.answer.is_some(), scope.conn.is_some());
    // A miss reserves its worst case before it spends (or writes anything);
    // a hit spends nothing.
    if found.answer.is_none() {
        let user_budget = request.user_id.as_deref().zip(limits.as_deref());
        reserve(scope, settings, user_budget, &request).await?;
    }
    // Counted as active only once admitted: refused requests (a flood of
    // made-up session ids included) grow no Redis set.
    scope.session = Some(request.session_id.clone());
    let conversation = match found.conversation {
        Some(known) => Some(known),
        None => conversation_of(scope, settings, &request, jwt).await?,
    };
    reply.conversation = conversation.map(|c| c.id);
    reply.session = request.session_id.clone();
    let answered = pipeline::answer(
        scope.conn.as_ref(),
        settings,
        &request,
        found.answer,
        reply,
        &mut scope.telemetry,
    )
    .await;
    let answer = match answered {
        Ok(answer) => answer,
        Err(e) => {
            chatbot_spin::log::error(
                "query_failed",
                chatbot_spin::log::Dependency::of_service(e.service()),
                &e,
            );
            let spent = Spent::on_failure(&e, scope.telemetry.chat_called);
            settle(scope, spent).await;
            return Err(e.api_error());
        }
    };
    scope.cache_status = query::cache_status(answer.cached, scope.conn.is_some());
    scope.answered(answer.cached);
    Ok(Exchange {
        request,
        answer,
        conversation,
    })
}

/// The session's conversation id when Redis does not know it (a session's
/// first question): created now in Postgres, so the answer can name it,
/// and remembered in Redis. A Postgres that fails costs the id, not the answer.
async fn conversation_of(
    scope: &mut Scope,
    settings: &PipelineSettings,
    request: &QueryRequest,
    enforce_owner: bool,
) -> Result<Option<RememberedConversation>, ApiError> {
    match chatbot_spin::history::ensure_conversation(
        &settings.postgres_address,
        settings.retention_days,
        request,
        enforce_owner,
    )
    .await
    {
        Ok(Some(id)) => {
            // Its session and conversation rows were refreshed just now.
            let created =
                RememberedConversation::refreshed_on(id, day_of(chatbot_spin::now_epoch_seconds()));
            remember_conversation(scope, settings, &request.session_id, created).await;
            Ok(Some(created))
        }
        Ok(None) => {
            scope
                .audit(
                    AuditAction::SessionNotOwned,
                    serde_json::json!({"user_id": request.user_id, "session_id": request.session_id}),
                )
                .await;
            Err(no_such_session(&request.session_id))
        }
        Err(e) => {
            chatbot_spin::log::write(
                chatbot_spin::log::Level::Error,
                "conversation_create_failed",
                chatbot_spin::log::Dependency::Postgres,
                &e,
                &[("session_id", &request.session_id)],
            );
            scope.telemetry.add(Observation::Error(
                chatbot_core::metrics::ErrorType::Postgres,
            ));
            Ok(None)
        }
    }
}

async fn remember_conversation(
    scope: &mut Scope,
    settings: &PipelineSettings,
    session: &str,
    conversation: RememberedConversation,
) {
    let Some(conn) = &scope.conn else {
        return;
    };
    let ttl = i64::from(settings.retention_days) * 86_400;
    if let Err(e) = execute(
        conn,
        "SET",
        vec![
            binary(keys::conversation(session)),
            binary(conversation.value()),
            binary("EX"),
            RedisParameter::Int64(ttl),
        ],
    )
    .await
    {
        chatbot_spin::log::write(
            chatbot_spin::log::Level::Warn,
            "conversation_remember_failed",
            chatbot_spin::log::Dependency::Redis,
            &e,
            &[("session_id", session)],
        );
        scope.telemetry.redis_error();
    }
}

/// After the response: the budget charge, the exchange in Postgres (a failed
/// write is counted and logged, as before the move; not written when the
/// client left a stream before its end, as it never saw the answer), and its
/// conversation id in Redis if Postgres gave another (the session was cleaned up meanwhile).
async fn after_response(
    scope: &mut Scope,
    settings: &PipelineSettings,
    exchange: Exchange,
    jwt: bool,
    seen: bool,
) {
    let Exchange {
        request,
        answer,
        conversation,
    } = exchange;
    settle(scope, Spent::on_answer(answer.cached, answer.value.tokens)).await;
    if !seen {
        chatbot_spin::log::info(
            "exchange_not_stored",
            chatbot_spin::log::Dependency::Client,
            "the client left before the answer's end",
        );
        return;
    }
    let changed = pipeline::store_history(
        settings,
        &request,
        &answer,
        jwt,
        conversation,
        &mut scope.telemetry,
    )
    .await;
    if let Some(now) = changed {
        remember_conversation(scope, settings, &request.session_id, now).await;
    }
}

/// The response being made: JSON at the end, or events as they come.
pub(crate) struct Reply {
    out: Option<Out>,
    body: Option<Body>,
    streamed: bool,
    session: String,
    conversation: Option<i64>,
    /// The rate-limit headers, copied in when a stream starts mid-pipeline.
    limit_headers: Vec<(&'static str, String)>,
    /// The client of a finished stream had left before its end.
    left: bool,
}

impl Reply {
    fn new(out: Out) -> Self {
        Self {
            out: Some(out),
            body: None,
            streamed: false,
            session: String::new(),
            conversation: None,
            limit_headers: Vec::new(),
            left: false,
        }
    }

    /// Sends the head of the event stream and the `meta` event.
    async fn start_stream(&mut self, cached: bool, citations: &[Citation]) {
        let Some(out) = self.out.take() else {
            return;
        };
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("content-type".into(), stream::EVENT_STREAM.into()),
            ("cache-control".into(), b"no-cache".to_vec()),
            // Proxies that buffer (nginx) pass events on at once with this.
            ("x-accel-buffering".into(), b"no".to_vec()),
            ("x-cache".into(), if cached { "HIT" } else { "MISS" }.into()),
        ];
        headers.extend(
            self.limit_headers
                .iter()
                .chain(routing::common_headers().iter())
                .map(|(name, value)| (name.to_string(), value.clone().into_bytes())),
        );
        match Body::start(out, 200, headers) {
            Ok(mut body) => {
                body.write(&stream::event(
                    stream::META,
                    &Meta {
                        session_id: &self.session,
                        conversation_id: self.conversation,
                        citations,
                        cached,
                    },
                ))
                .await;
                self.body = Some(body);
            }
            Err(e) => chatbot_spin::log::warn(
                "stream_start_failed",
                chatbot_spin::log::Dependency::Client,
                &e,
            ),
        }
    }

    /// Whether a stream's client went away before its end.
    fn client_gone(&self) -> bool {
        self.body.as_ref().is_some_and(Body::client_gone) || self.left
    }

    async fn write(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            body.write(bytes).await;
        }
    }

    /// The whole answer: a JSON body, or the stream's last events.
    async fn answer(&mut self, scope: &Scope, exchange: &Exchange) {
        let answer = &exchange.answer;
        if !self.streamed {
            let body = query::QueryResponse {
                answer: answer.value.answer.clone(),
                citations: answer.value.citations.clone(),
                session_id: exchange.request.session_id.clone(),
                conversation_id: exchange.conversation.map(|c| c.id),
                cached: answer.cached,
            };
            let mut response = scope.respond(Ok(json(200, &body)));
            response.set_header("x-cache", if answer.cached { "HIT" } else { "MISS" });
            if let Some(out) = self.out.take() {
                routing::send(out, response).await;
            }
            return;
        }
        if self.body.is_none() {
            // A hit, or a waiter on another's miss: the stored answer at once, in one delta.
            self.start_stream(answer.cached, &answer.value.citations)
                .await;
            self.write(&stream::event(
                stream::DELTA,
                &Delta {
                    text: &answer.value.answer,
                },
            ))
            .await;
        }
        self.write(&stream::event(
            stream::DONE,
            &Done {
                answer: &answer.value.answer,
                citations: &answer.value.citations,
                session_id: &exchange.request.session_id,
                conversation_id: exchange.conversation.map(|c| c.id),
                cached: answer.cached,
                usage: answer.usage.as_ref().map(UsageReport::from),
            },
        ))
        .await;
        if let Some(body) = self.body.take() {
            self.left = body.client_gone();
            body.finish();
        }
    }

    /// A failure: the JSON error if nothing was sent yet, else an `error`
    /// event that ends the stream (the partial answer is not kept).
    async fn fail(&mut self, scope: &Scope, error: ApiError) {
        if let Some(out) = self.out.take() {
            return routing::send(out, scope.respond(Err(error))).await;
        }
        let mut body = error.body();
        body.request_id = Some(chatbot_spin::request_id());
        self.write(&stream::event(stream::ERROR, &body)).await;
        if let Some(body) = self.body.take() {
            body.finish();
        }
    }
}

impl Progress for Reply {
    fn streams(&self) -> bool {
        self.streamed
    }

    fn delta<'a>(&'a mut self, citations: &'a [Citation], text: &'a str) -> Pending<'a> {
        Box::pin(async move {
            if self.body.is_none() {
                self.start_stream(false, citations).await;
            }
            self.write(&stream::event(stream::DELTA, &Delta { text }))
                .await;
        })
    }
}
