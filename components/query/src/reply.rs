//! The response being made: JSON at the end, or server-sent events as the
//! model writes them (`meta`, `delta`s, `done`, or `error`).

use crate::answer::Exchange;
use crate::scope::Scope;
use chatbot_core::chat::query::{self, Citation};
use chatbot_core::chat::stream::{self, Delta, Done, Meta, UsageReport};
use chatbot_core::http::api::ApiError;
use chatbot_spin::pipeline::{Answer, MatchedQuestion, Pending, Progress};
use chatbot_spin::respond::{self, json, Body, Out, Response, SetHeader};
use chatbot_spin::routing::{self};

/// `X-Cache-Match` of an answer from the cache.
fn match_header(matched: Option<&MatchedQuestion>) -> String {
    chatbot_core::cache::semantic::match_header(matched.map(|m| m.score))
}

/// The response being made: JSON at the end, or events as they come.
pub(crate) struct Reply {
    out: Option<Out>,
    body: Option<Body>,
    pub(crate) streamed: bool,
    pub(crate) session: String,
    /// The conversation's handle, when the request may know it
    /// (`conversation::handle_shown`).
    pub(crate) conversation: Option<chatbot_core::http::api::ConversationHandle>,
    /// The rate-limit headers, copied in when a stream starts mid-pipeline.
    pub(crate) limit_headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub(crate) fn new(out: Out) -> Self {
        Self {
            out: Some(out),
            body: None,
            streamed: false,
            session: String::new(),
            conversation: None,
            limit_headers: Vec::new(),
        }
    }

    /// The head of an event stream: its headers, the rate limit's with them
    /// (`answer`: the cached answer served, else a miss's).
    fn stream_head(&self, answer: Option<&Answer>) -> Response {
        let mut head = Response::new(Vec::new());
        head.set_header("content-type", stream::EVENT_STREAM);
        head.set_header("cache-control", "no-cache");
        // Proxies that buffer (nginx) pass events on at once with this.
        head.set_header("x-accel-buffering", "no");
        let cached = answer.is_some_and(|a| a.cached);
        head.set_header("x-cache", if cached { "HIT" } else { "MISS" });
        if cached {
            head.set_header(
                "x-cache-match",
                match_header(answer.and_then(|a| a.matched.as_ref())),
            );
        }
        for (name, value) in &self.limit_headers {
            head.set_header(name, value);
        }
        head
    }

    /// The `meta` event: where the answer will be stored and what it cites.
    fn meta_event(&self, answer: Option<&Answer>, citations: &[Citation]) -> Vec<u8> {
        stream::event(
            stream::META,
            &Meta {
                session_id: &self.session,
                conversation_id: self.conversation,
                citations,
                cached: answer.is_some_and(|a| a.cached),
                matched_question: answer
                    .and_then(|a| a.matched.as_ref())
                    .and_then(|m| m.question.as_deref()),
            },
        )
    }

    /// Sends the head of the event stream and the `meta` event, with `then`
    /// (the events that follow it at once) in the same write.
    async fn start_stream(&mut self, citations: &[Citation], then: &[u8]) {
        let Some(out) = self.out.take() else {
            return;
        };
        let mut head = self.stream_head(None);
        for (name, value) in routing::common_headers() {
            head.set_header(name, value);
        }
        let mut events = self.meta_event(None, citations);
        events.extend_from_slice(then);
        match Body::start(out, head) {
            Ok(mut body) => {
                body.write(&events).await;
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
    pub(crate) fn client_gone(&self) -> bool {
        self.body.as_ref().is_some_and(Body::client_gone)
    }

    async fn write(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            body.write(bytes).await;
        }
    }

    /// The whole answer: a JSON body, or the stream's last events, written
    /// at once, and the stream's end.
    pub(crate) async fn answer(&mut self, scope: &Scope, exchange: &Exchange) {
        let answer = &exchange.answer;
        if !self.streamed {
            let body = query::QueryResponse {
                answer: answer.value.answer.clone(),
                citations: answer.value.citations.clone(),
                session_id: exchange.request.session_id.to_string(),
                conversation_id: self.conversation,
                cached: answer.cached,
                matched_question: answer.matched.as_ref().and_then(|m| m.question.clone()),
            };
            let mut response = scope.respond(Ok(json(200, &body)));
            response.set_header("x-cache", if answer.cached { "HIT" } else { "MISS" });
            if answer.cached {
                response.set_header("x-cache-match", match_header(answer.matched.as_ref()));
            }
            if let Some(out) = self.out.take() {
                routing::send(out, response);
            }
            return;
        }
        let done = stream::event(
            stream::DONE,
            &Done {
                answer: &answer.value.answer,
                citations: &answer.value.citations,
                session_id: &exchange.request.session_id,
                conversation_id: self.conversation,
                cached: answer.cached,
                matched_question: answer.matched.as_ref().and_then(|m| m.question.as_deref()),
                usage: answer.usage.as_ref().map(UsageReport::from),
            },
        );
        if self.body.is_none() {
            // A hit, or a waiter on another's miss: every event is known at
            // once (the stored answer in one delta), so they leave whole,
            // with their length, as a JSON answer does.
            let mut events = self.meta_event(Some(answer), &answer.value.citations);
            events.extend(stream::event(
                stream::DELTA,
                &Delta {
                    text: &answer.value.answer,
                },
            ));
            events.extend(done);
            if let Some(out) = self.out.take() {
                let mut response = self.stream_head(Some(answer));
                *response.body_mut() = events;
                routing::send(out, response);
            }
            return;
        }
        self.write(&done).await;
        if let Some(body) = self.body.take() {
            body.finish();
        }
    }

    /// A failure: the JSON error if nothing was sent yet, else an `error`
    /// event that ends the stream (the partial answer is not kept).
    pub(crate) async fn fail(&mut self, scope: &Scope, error: ApiError) {
        if let Some(out) = self.out.take() {
            return routing::send(out, scope.respond(Err(error)));
        }
        let body = respond::error_body(&error);
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
            let delta = stream::event(stream::DELTA, &Delta { text });
            if self.body.is_none() {
                self.start_stream(citations, &delta).await;
            } else {
                self.write(&delta).await;
            }
        })
    }
}
