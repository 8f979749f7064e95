//! Streamed answers: the server-sent events the query handler writes, and the
//! decoding of OpenAI's streamed chat completion (SSE chunks of
//! `chat.completion.chunk` objects ending in `data: [DONE]`).
//!
//! The SSE decoder is a few lines over the WHATWG framing rules; the crates
//! that exist for it (`eventsource-stream`, `sse-stream`) wrap an async
//! `Stream` and its executor, which the guest's blocking reads do not use.

use serde::Serialize;
use serde_json::Value;

use crate::chat::query::Citation;
use crate::chat::upstream::{is_whole_answer, ChatReply, UpstreamError, Usage, OPENAI};

/// The media type of a streamed answer.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Event names, in the order a stream sends them: one `meta`, deltas, then
/// `done` (or `error`, with the JSON error body and its `request_id`, when
/// the answer broke off after its first delta).
pub const META: &str = "meta";
pub const DELTA: &str = "delta";
pub const DONE: &str = "done";
pub const ERROR: &str = "error";

/// Whether the client asked for a stream: `Accept: text/event-stream` (as an
/// `EventSource` sends) or `"stream": true` in the body.
pub fn wants_stream(accept: Option<&str>, body_asks: bool) -> bool {
    body_asks
        || accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|media| media.trim().eq_ignore_ascii_case(EVENT_STREAM))
            })
        })
}

/// One server-sent event. `data` is compact JSON, which never holds a raw
/// newline, so one `data:` line carries it.
pub fn event(name: &str, data: &impl Serialize) -> Vec<u8> {
    let json = serde_json::to_string(data).expect("events serialise");
    format!("event: {name}\ndata: {json}\n\n").into_bytes()
}

/// The first event: where the answer will be stored and what it cites.
#[derive(Debug, Serialize)]
pub struct Meta<'a> {
    pub session_id: &'a str,
    pub conversation_id: Option<crate::http::api::ConversationHandle>,
    pub citations: &'a [Citation],
    pub cached: bool,
    /// Served by the semantic cache: the earlier question whose answer this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_question: Option<&'a str>,
}

/// A piece of the answer's text, in order.
#[derive(Debug, Serialize)]
pub struct Delta<'a> {
    pub text: &'a str,
}

/// The last event of a complete answer (the JSON response's fields, and usage).
#[derive(Debug, Serialize)]
pub struct Done<'a> {
    pub answer: &'a str,
    pub citations: &'a [Citation],
    pub session_id: &'a str,
    pub conversation_id: Option<crate::http::api::ConversationHandle>,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_question: Option<&'a str>,
    /// The tokens the answer cost (its chat completion and, for a follow-up,
    /// the rewrite); `null` for an answer from the cache.
    pub usage: Option<UsageReport>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UsageReport {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<&Usage> for UsageReport {
    fn from(usage: &Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

/// The chat completion request, streamed, with the usage in a last chunk.
pub fn chat_stream_request(
    model: &str,
    messages: &[crate::chat::upstream::ChatMessage],
    max_tokens: u32,
) -> Value {
    let mut request = crate::chat::upstream::chat_request(model, messages, max_tokens);
    request["stream"] = Value::Bool(true);
    request["stream_options"] = serde_json::json!({"include_usage": true});
    request
}

/// Splits an SSE byte stream into the `data` of its events, across reads.
#[derive(Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
            // `event:`, `id:`, `retry:` and `:` comments say nothing OpenAI uses.
        }
        events
    }
}

/// OpenAI's streamed chat completion, decoded as it arrives.
#[derive(Debug, Default)]
pub struct ChatStream {
    decoder: SseDecoder,
    answer: String,
    usage: Usage,
    finished: bool,
    finish_reason: Option<String>,
}

fn bad(message: impl Into<String>) -> UpstreamError {
    UpstreamError::BadResponse {
        service: OPENAI,
        message: message.into(),
    }
}

impl ChatStream {
    /// Feeds the next bytes of the body; returns the text deltas they hold.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, UpstreamError> {
        let mut deltas = Vec::new();
        for data in self.decoder.feed(bytes) {
            if data.trim() == "[DONE]" {
                self.finished = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(&data)
                .map_err(|e| bad(format!("a stream chunk is not JSON: {e}")))?;
            if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
                return Err(bad(format!(
                    "the stream broke off: {}",
                    error["message"].as_str().unwrap_or("an error chunk")
                )));
            }
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                self.usage = serde_json::from_value(usage.clone())
                    .map_err(|e| bad(format!("usage: {e}")))?;
            }
            if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_string());
            }
            let text = chunk["choices"][0]["delta"]["content"].as_str();
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                self.answer.push_str(text);
                deltas.push(text.to_string());
            }
        }
        Ok(deltas)
    }

    /// The whole answer and its usage, once the body has ended: an error if
    /// it ended before `[DONE]` (a cut connection is not an answer).
    pub fn finish(mut self) -> Result<ChatReply, UpstreamError> {
        // A body may end without the blank line after its last event.
        self.feed(b"\n\n")?;
        if !self.finished {
            return Err(bad("the stream ended before [DONE]"));
        }
        if self.answer.is_empty() {
            return Err(bad("the stream held no answer"));
        }
        Ok(ChatReply {
            complete: is_whole_answer(self.finish_reason.as_deref(), &self.answer),
            answer: self.answer,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_header_or_the_body_asks_for_a_stream() {
        assert!(wants_stream(Some("text/event-stream"), false));
        assert!(wants_stream(
            Some("application/json;q=0.5, Text/Event-Stream;q=1"),
            false
        ));
        assert!(wants_stream(None, true));
        assert!(!wants_stream(Some("application/json"), false));
        assert!(!wants_stream(Some("text/event-streams"), false));
        assert!(!wants_stream(None, false));
    }

    #[test]
    fn an_event_is_one_name_and_one_data_line() {
        let bytes = event(DELTA, &Delta { text: "two\nlines" });
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "event: delta\ndata: {\"text\":\"two\\nlines\"}\n\n"
        );
    }

    #[test]
    fn events_decode_across_reads_and_line_endings() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"data: {\"a\"").is_empty());
        assert_eq!(decoder.feed(b":1}\r\n\r\n: comment\n\n"), vec!["{\"a\":1}"]);
        assert_eq!(
            decoder.feed(b"event: x\ndata:one\ndata: two\n\ndata: [DONE]\n\n"),
            vec!["one\ntwo", "[DONE]"]
        );
    }

    fn chunk(content: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        )
    }

    #[test]
    fn a_stream_yields_its_deltas_then_the_answer_and_usage() {
        let mut stream = ChatStream::default();
        let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert!(stream.feed(role.as_bytes()).unwrap().is_empty());
        let body = format!("{}{}", chunk("Hel"), chunk("lo"));
        let (first, rest) = body.split_at(10);
        let mut deltas = stream.feed(first.as_bytes()).unwrap();
        deltas.extend(stream.feed(rest.as_bytes()).unwrap());
        assert_eq!(deltas, vec!["Hel", "lo"]);
        let tail = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\ndata: [DONE]\n\n";
        assert!(stream.feed(tail.as_bytes()).unwrap().is_empty());
        let reply = stream.finish().unwrap();
        assert_eq!(reply.answer, "Hello");
        assert!(reply.complete);
        let usage = reply.usage;
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 2));
    }

    #[test]
    fn a_stream_the_model_stopped_short_is_an_answer_but_not_whole() {
        let mut stream = ChatStream::default();
        stream.feed(chunk("Hel").as_bytes()).unwrap();
        let stop = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
        stream.feed(stop.as_bytes()).unwrap();
        let reply = stream.finish().unwrap();
        assert_eq!(reply.answer, "Hel");
        assert!(!reply.complete);
    }

    #[test]
    fn a_stream_cut_short_or_with_an_error_chunk_is_no_answer() {
        let mut cut = ChatStream::default();
        cut.feed(chunk("partial").as_bytes()).unwrap();
        assert!(cut.finish().is_err());

        let mut failed = ChatStream::default();
        failed.feed(chunk("partial").as_bytes()).unwrap();
        let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let e = failed.feed(error.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("overloaded"), "{e}");

        let mut garbage = ChatStream::default();
        assert!(garbage.feed(b"data: {not json\n\n").is_err());

        let mut no_error = ChatStream::default();
        let chunk_with_null_error =
            "data: {\"error\":null,\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\n";
        assert_eq!(
            no_error.feed(chunk_with_null_error.as_bytes()).unwrap(),
            ["ok"]
        );
        // `[DONE]` without the blank line after it still ends the answer.
        no_error.feed(b"data: [DONE]\n").unwrap();
        assert_eq!(no_error.finish().unwrap().answer, "ok");
    }

    #[test]
    fn the_streamed_request_asks_for_usage() {
        let message =
            crate::chat::upstream::ChatMessage::new(crate::chat::upstream::Role::User, "q");
        let request = chat_stream_request("m", &[message], 64);
        assert_eq!(request["messages"][0]["role"], "user");
        assert_eq!(request["messages"][0]["content"], "q");
        assert_eq!(request["stream"], true);
        assert_eq!(request["max_tokens"], 64, "a streamed answer is capped too");
        assert_eq!(request["stream_options"]["include_usage"], true);
        assert_eq!(request["model"], "m");
    }
}
