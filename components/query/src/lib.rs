//! The query handler. Its instance keeps one Redis connection for all the
//! requests it serves (Spin 4 reuses a WASIp3 instance; the rate limiter and
//! the metrics recorder it imports keep theirs), and every call is bounded by
//! what is left of the request's deadline (`request_timeout_ms`).
//!
//! Hit path: limiter (1 Redis round trip for every bucket), the user's gate
//! when there is a user (1), cache lookup and the session's conversation id
//! (1), the exchange's one Postgres statement and the recorder (1); then the
//! response goes out whole, with nothing left to run after it (so nothing to
//! lose when the instance is then recycled).
//!
//! `Accept: text/event-stream` (or `"stream": true`) answers with server-sent
//! events: `meta`, the answer's `delta`s as the model writes them, `done`.

mod answer;
mod bindings;
mod budget;
mod conversation;
mod documents;
mod gate;
mod history;
mod limits;
mod reply;
mod scope;

use chatbot_core::http::api::ApiError;
use chatbot_core::http::routes;
use chatbot_spin::incoming::RequestExt;
use chatbot_spin::respond::{self, Outgoing};
use chatbot_spin::routing::{self, Handler};
use spin_sdk::http_service;

fn handler(route: &routes::Route) -> Handler {
    match *route {
        // Served before routing (it writes its own response); the router keeps it for 405s.
        routes::CHAT_QUERY => |req, _| {
            let path = req.path().to_string();
            Box::pin(async move { Err(ApiError::not_found(&path)) })
        },
        routes::CHAT_HISTORY => |req, p| Box::pin(history::history(req, p)),
        routes::DOCUMENTS => |req, p| Box::pin(documents::ingest(req, p)),
        other => unreachable!("{other:?} is not a query route"),
    }
}

#[http_service]
async fn handle(incoming: spin_sdk::http::Request) -> Outgoing {
    respond::entry("query", incoming, serve).await
}

async fn serve(incoming: spin_sdk::http::Request, out: respond::Out) {
    let req = match routing::read(routes::QUERY_ROUTES, incoming).await {
        Ok(req) => req,
        Err(refused) => return routing::send(out, refused),
    };
    if req.method() == spin_sdk::http::Method::POST && routes::CHAT_QUERY.matches(req.path()) {
        return answer::chat_query(req, out).await;
    }
    let response = routing::serve(routes::QUERY_ROUTES, handler, req).await;
    routing::send(out, response);
}
