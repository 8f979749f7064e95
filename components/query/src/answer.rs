//! `POST /api/v1/chat/query`: checks, then the answer (JSON, or server-sent
//! events as the model writes it); once the answer is decided, what the
//! request must keep (the budget's charge, the exchange's Postgres write, its
//! turn, the metrics), and only then the response (JSON, whole) or the
//! stream's last event: nothing runs after the response, so nothing is lost
//! when the host recycles the instance (see `chatbot_spin::respond`).

use crate::budget::{reserve, settle};
use crate::conversation::{add_turn, conversation_of, remember_conversation};
use crate::gate::{authenticate, gate};
use crate::limits::{limit, limit_address};
use crate::reply::Reply;
use crate::scope::{count_alone, Scope};
use chatbot_core::cache::answers;
use chatbot_core::chat::conversation;
use chatbot_core::chat::query::{self, QueryRequest};
use chatbot_core::chat::stream::{self};
use chatbot_core::http::api::{ApiError, ErrorCode};
use chatbot_core::limits::identity::IdentitySettings;
use chatbot_core::limits::sessions::{OwnerCheck, Spent};
use chatbot_core::storage::history::RememberedConversation;
use chatbot_core::telemetry::metrics::recording::Observation;
use chatbot_core::telemetry::metrics::{Endpoint, ErrorType};
use chatbot_spin::answer_cache::{self, Asked};
use chatbot_spin::identity::{self};
use chatbot_spin::incoming::{Request, RequestExt};
use chatbot_spin::pipeline::Answer;
use chatbot_spin::respond::{self, Out};
use chatbot_spin::routing::{self};
use chatbot_spin::settings::{self, PipelineSettings};

/// Whether the client had the whole answer (a stream's client may leave before its end).
#[derive(PartialEq)]
enum Delivered {
    Whole,
    ClientLeft,
}

/// An answered question, to keep and then to answer with.
pub(crate) struct Exchange {
    pub request: QueryRequest,
    pub answer: Answer,
    pub conversation: Option<RememberedConversation>,
    /// Whether Redis keeps all the conversation's turns (see `conversation::add_turn`).
    pub turns_kept: bool,
}

pub async fn chat_query(req: Request, out: Out) {
    let configured = match identity::settings().await {
        Ok(identity) => settings::pipeline()
            .await
            .map(|pipeline| (identity, pipeline))
            .map_err(ApiError::from),
        Err(e) => Err(ApiError::from(e)),
    };
    let (identity_settings, settings) = match configured {
        Ok(both) => both,
        Err(e) => {
            // No settings, no Scope: counted on the recorder's own connection.
            count_alone(
                Endpoint::Query,
                &Err(e.clone()),
                vec![Observation::Error(ErrorType::Config)],
            )
            .await;
            return routing::send(out, respond::error(&e));
        }
    };
    let address = identity::client_address(&req, &identity_settings);
    let mut scope = Scope::open(&settings, address).await;
    let mut reply = Reply::new(out);
    let outcome = ask(&mut scope, &settings, &identity_settings, &req, &mut reply).await;
    let owner = identity_settings.mode.owner_check();
    // The answer is decided (streamed, its deltas are out): what the request
    // must keep is done first, with its own allowance, then the response.
    chatbot_spin::context::answer_decided();
    match outcome {
        Ok(exchange) => {
            let delivered = if reply.client_gone() {
                Delivered::ClientLeft
            } else {
                Delivered::Whole
            };
            keep(&mut scope, &settings, &exchange, owner, delivered).await;
            scope.observe_latency();
            scope.record().await;
            reply.answer(&scope, &exchange).await;
        }
        Err(e) => {
            // Every path that reserved settles: a refusal after the
            // reservation (an unknown session) gives it all back, a failed
            // miss keeps what it may have spent, and a request cut at its
            // deadline keeps it all once the model was asked (it bills a
            // cut stream), else what calls before it reported.
            let at_the_deadline = Spent::at_the_deadline(
                scope.telemetry.chat_called,
                scope.telemetry.chat_tokens_reported,
            );
            let spent = scope.spent_on_failure.take().unwrap_or(at_the_deadline);
            settle(&mut scope, spent).await;
            // Refusals and failures are counted, and timed, like answers.
            scope.refused(&e);
            scope.observe_latency();
            scope.record().await;
            reply.fail(&scope, e).await;
        }
    }
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
    let owner = identity_settings.mode.owner_check();
    let content_type = req.header("content-type");
    // In jwt mode a question without a session starts one: 128 random bits.
    let new_session = owner
        .enforced()
        .then(|| format!("s-{}", chatbot_spin::random_token()));
    let mut request = query::parse_query(content_type, req.body(), new_session)?;
    reply.streamed = stream::wants_stream(req.header("accept"), request.stream);
    if let Some(user) = user {
        if request
            .user_id
            .as_ref()
            .is_some_and(|claimed| *claimed != user)
        {
            return Err(ApiError::new(
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
            let limits = settings::session_limits().await?;
            gate(scope, settings, &limits, user, &request.session_id, owner).await?;
            Some(limits)
        }
        None => None,
    };
    let mut first = Asked::new(&request, settings, &[]);
    first.verified = owner.enforced();
    let found = answer_cache::lookup(
        scope.conn.as_ref(),
        settings,
        &first,
        true,
        &mut scope.telemetry,
    )
    .await;
    // A follow-up (naming its conversation) is answered with the
    // conversation's turns: from Redis, else from Postgres, before its cache
    // key and worst case can be known. Found there, a named conversation is
    // an existing one (only refreshed); an unknown one is refused, writing nothing.
    let continues = request.conversation.continues();
    let read_from_postgres = continues && found.conversation.is_none();
    let (mut conversation, turns, mut turns_kept) = match found.conversation {
        Some(known) => (Some(known), found.turns, continues),
        None if continues => {
            let found = conversation_of(scope, settings, &request, owner).await?;
            let known = found.conversation.is_some();
            (found.conversation, found.turns, known)
        }
        None => (None, Vec::new(), false),
    };
    let turns = conversation::unexpired(turns, chatbot_spin::now_epoch_seconds());
    let turns = conversation::recent(&turns, &settings.conversation);
    // A question with no turns keeps its first-question key (computed once).
    let asked = if turns.is_empty() {
        first
    } else {
        Asked::new(&request, settings, &turns)
    };
    // A first question's answer came with the lookup (and, `global` scope,
    // may have confirmed another session's answer); a follow-up's is keyed by its turns.
    let confirmed = turns.is_empty() && found.confirmed;
    let cached = if turns.is_empty() {
        found.answer
    } else {
        answer_cache::read_follow_up(
            scope.conn.as_ref(),
            settings,
            &asked.cache_key,
            &mut scope.telemetry,
        )
        .await
    };
    scope.cache_status = answers::cache_status(cached.is_some(), scope.conn.is_some());
    // A miss reserves its worst case before it spends (or writes anything);
    // a hit spends nothing.
    if cached.is_none() {
        let user_budget = request.user_id.as_deref().zip(limits.as_deref());
        reserve(scope, settings, user_budget, &request, &turns).await?;
    }
    // Admitted: a follow-up whose conversation Postgres read makes Redis
    // remember it, with all its last turns, only now, so a refused one
    // wrote nothing.
    if let (true, Some(read)) = (read_from_postgres, conversation) {
        remember_conversation(scope, settings, &request.session_id, read, Some(&turns)).await;
    }
    // Counted as active only once admitted: refused requests (a flood of
    // made-up session ids included) grow no Redis set.
    scope.session = Some(request.session_id.to_string());
    // A question asked alone, in a conversation Redis does not know (a
    // session's first, a new one, or Redis lost it): found or made now, so
    // the answer can name it.
    let mut made = false;
    if conversation.is_none() && !continues {
        let found = conversation_of(scope, settings, &request, owner).await?;
        conversation = found.conversation;
        made = found.made;
        turns_kept = false;
    }
    reply.conversation = conversation::handle_shown(&request.conversation, conversation, made);
    reply.session = request.session_id.to_string();
    let answered = answer_cache::answer(
        scope.conn.as_ref(),
        settings,
        &asked,
        cached,
        reply,
        &mut scope.telemetry,
    )
    .await;
    let mut answer = match answered {
        Ok(answer) => answer,
        Err(e) => {
            let spent = Spent::on_failure(
                &e,
                scope.telemetry.chat_called,
                scope.telemetry.chat_tokens_reported,
            );
            scope.spent_on_failure = Some(spent);
            let dependency = chatbot_spin::log::Dependency::of_service(e.service());
            return Err(e.api_error().caused_by("query_failed", dependency, &e));
        }
    };
    if confirmed && answer.cached {
        answer.confirms = Some(asked.cache_key.clone());
    }
    scope.cache_status = answers::cache_status(answer.cached, scope.conn.is_some());
    scope.answered(answer.cached);
    Ok(Exchange {
        request,
        answer,
        conversation,
        turns_kept,
    })
}

/// What an answer leaves behind, before it goes out: the budget charge, the
/// exchange in Postgres (a failed write is counted and logged; not written
/// when the client left a stream before its end, as it never saw the
/// answer), its turn in Redis, for the questions after it (see
/// `conversation::add_turn`), then the answer's point in the semantic
/// cache's index (a miss's answer indexed, or a hit's confirmation).
async fn keep(
    scope: &mut Scope,
    settings: &PipelineSettings,
    exchange: &Exchange,
    owner: OwnerCheck,
    delivered: Delivered,
) {
    let Exchange {
        request,
        answer,
        conversation,
        turns_kept,
    } = exchange;
    let (conversation, turns_kept) = (*conversation, *turns_kept);
    settle(scope, Spent::on_answer(answer.cached, answer.value.tokens)).await;
    if delivered == Delivered::ClientLeft {
        chatbot_spin::log::info(
            "exchange_not_stored",
            chatbot_spin::log::Dependency::Client,
            "the client left before the answer's end",
        );
    } else {
        let stored = chatbot_spin::history::store_history(
            settings,
            request,
            answer,
            owner,
            conversation,
            &mut scope.telemetry,
        )
        .await;
        if let Some((now, question_id)) = stored {
            add_turn(
                scope,
                settings,
                request,
                conversation,
                turns_kept,
                (now, question_id),
                &answer.value.answer,
            )
            .await;
        }
    }
    // Last (the exchange comes first), and bounded: a whole answer just
    // cached (the model's stream ended, whether or not its client stayed)
    // is indexed, so the semantic cache may serve it from now on.
    if let Some(indexed) = &answer.index {
        chatbot_spin::semantic::remember(settings, indexed, &mut scope.telemetry).await;
    }
    // An exact hit on another session's answer (`global` scope) confirms
    // it: it may serve any session semantically from now on.
    if let Some(cache_key) = &answer.confirms {
        chatbot_spin::semantic::confirm(settings, cache_key, &mut scope.telemetry).await;
    }
}
