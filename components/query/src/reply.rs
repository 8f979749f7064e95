//! The response being made: JSON at the end, or server-sent events as the
//! model writes them (`meta`, `delta`s, `done`, or `error`).

use crate::answer::Exchange;
use crate::scope::Scope;
use chatbot_core::chat::query::{self, Citation};
use chatbot_core::chat::stream::{self, Delta, Done, Meta, UsageReport};
use chatbot_core::http::api::ApiError;
use chatbot_spin::pipeline::{Answer, MatchedQuestion, Pending, Progress};
use chatbot_spin::respond::{self, json, Body, Out, SetHeader};
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
    pub(crate) conversation: Option<i64>,
    /// The rate-limit headers, copied in when a stream starts mid-pipeline.
    pub(crate) limit_headers: Vec<(&'static str, String)>,
    /// The client of a finished stream had left before its end.
    left: bool,
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
            left: false,
        }
    }

    /// Sends the head of the event stream and the `meta` event (`answer`:
    /// the cached answer served, else a miss's).
    pub(crate) async fn start_stream(&mut self, answer: Option<&Answer>, citations: &[Citation]) {
        let cached = answer.is_some_and(|a| a.cached);
        let matched = answer.and_then(|a| a.matched.as_ref());
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
        if cached {
            headers.push(("x-cache-match".into(), match_header(matched).into_bytes()));
        }
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
                        matched_question: matched.map(|m| m.question.as_str()),
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
    pub(crate) fn client_gone(&self) -> bool {
        self.body.as_ref().is_some_and(Body::client_gone) || self.left
    }

    async fn write(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.body {
            body.write(bytes).await;
        }
    }

    /// The whole answer: a JSON body, or the stream's last events.
    pub(crate) async fn answer(&mut self, scope: &Scope, exchange: &Exchange) {
        let answer = &exchange.answer;
        if !self.streamed {
            let body = query::QueryResponse {
                answer: answer.value.answer.clone(),
                citations: answer.value.citations.clone(),
                session_id: exchange.request.session_id.to_string(),
                conversation_id: exchange.conversation.map(|c| c.id),
                cached: answer.cached,
                matched_question: answer.matched.as_ref().map(|m| m.question.clone()),
            };
            let mut response = scope.respond(Ok(json(200, &body)));
            response.set_header("x-cache", if answer.cached { "HIT" } else { "MISS" });
            if answer.cached {
                response.set_header("x-cache-match", match_header(answer.matched.as_ref()));
            }
            if let Some(out) = self.out.take() {
                routing::send(out, response).await;
            }
            return;
        }
        if self.body.is_none() {
            // A hit, or a waiter on another's miss: the stored answer at once, in one delta.
            self.start_stream(Some(answer), &answer.value.citations)
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
                matched_question: answer.matched.as_ref().map(|m| m.question.as_str()),
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
    pub(crate) async fn fail(&mut self, scope: &Scope, error: ApiError) {
        if let Some(out) = self.out.take() {
            return routing::send(out, scope.respond(Err(error))).await;
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
            if self.body.is_none() {
                self.start_stream(None, citations).await;
            }
            self.write(&stream::event(stream::DELTA, &Delta { text }))
                .await;
        })
    }
}
