//! Wire formats of OpenAI (embeddings, chat completions) and Qdrant (search,
//! upsert, collections), and how their failures map to our answers.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat::query::Passage;
use crate::http::api::{ApiError, ErrorCode};
use crate::telemetry::metrics::ErrorType;

/// A failed call to OpenAI or Qdrant, classified for the HTTP answer and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{service} is rate limiting us")]
    RateLimited {
        service: &'static str,
        retry_after_seconds: Option<u32>,
    },
    #[error("{service} answered {status}: {message}")]
    Status {
        service: &'static str,
        status: u16,
        message: String,
    },
    #[error("{service} did not answer in time")]
    Timeout { service: &'static str },
    #[error("{service} could not be reached: {message}")]
    Unreachable {
        service: &'static str,
        message: String,
    },
    #[error("{service} answered something unexpected: {message}")]
    BadResponse {
        service: &'static str,
        message: String,
    },
    /// Another request's failure on the same question, which this one waited
    /// for (the stampede lock): answered the same way, counted once, by it.
    #[error("{service} failed for the identical question this request waited on: {detail}")]
    Shared {
        service: &'static str,
        status: u16,
        detail: String,
        retry_after_seconds: Option<u32>,
    },
}

impl UpstreamError {
    /// Whether the call may have been billed without its usage being
    /// known: it timed out, broke off, or answered garbage (a refusal, or a
    /// call that never connected with a status, was not billed).
    pub fn may_have_been_billed(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::BadResponse { .. } | Self::Unreachable { .. }
        )
    }

    pub fn service(&self) -> &'static str {
        match self {
            Self::RateLimited { service, .. }
            | Self::Status { service, .. }
            | Self::Timeout { service }
            | Self::Unreachable { service, .. }
            | Self::BadResponse { service, .. }
            | Self::Shared { service, .. } => service,
        }
    }

    /// How the failure is counted in `chatbot_errors_total`.
    pub fn error_type(&self) -> ErrorType {
        match self {
            Self::Timeout { .. } => ErrorType::Timeout,
            _ if self.service() == QDRANT => ErrorType::Qdrant,
            _ => ErrorType::OpenAi,
        }
    }

    pub fn is_openai_rate_limit(&self) -> bool {
        matches!(self, Self::RateLimited { service, .. } if *service == OPENAI)
    }

    /// What the client is told: which dependency failed and how, never the
    /// dependency's own words (they can carry a masked key or internal names;
    /// the full error goes to the log under the request id).
    pub fn public_detail(&self) -> String {
        let service = match self.service() {
            OPENAI => "OpenAI",
            QDRANT => "Qdrant",
            other => other,
        };
        match self {
            Self::RateLimited { .. } => {
                format!("{service} is rate limiting this service; retry later")
            }
            Self::Status { .. } => format!("{service} answered with an error"),
            Self::Timeout { .. } => format!("{service} did not answer in time"),
            Self::Unreachable { .. } => format!("{service} could not be reached"),
            Self::BadResponse { .. } => format!("{service} answered something unexpected"),
            Self::Shared { detail, .. } => detail.clone(),
        }
    }

    /// The error a handler answers with: the status below, `Retry-After` when
    /// the upstream gave one.
    pub fn api_error(&self) -> ApiError {
        let error = ApiError::new(self.code(), self.public_detail());
        match self.retry_after_seconds() {
            Some(seconds) => error.with_header("retry-after", seconds.to_string()),
            None => error,
        }
    }

    /// The code (and so the status) we answer with: unavailable (503) when
    /// the upstream is limiting or down (try again later), a timeout (504),
    /// a bad response (502) when it answered nonsense or an error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RateLimited { .. } | Self::Unreachable { .. } => ErrorCode::UpstreamUnavailable,
            Self::Status { status, .. } if *status >= 500 => ErrorCode::UpstreamUnavailable,
            Self::Timeout { .. } => ErrorCode::UpstreamTimeout,
            Self::Status { .. } | Self::BadResponse { .. } => ErrorCode::UpstreamBadResponse,
            Self::Shared { status, .. } => ErrorCode::of_upstream_status(*status),
        }
    }

    /// The HTTP status we answer with (from [`Self::code`]).
    pub fn http_status(&self) -> u16 {
        self.code().status()
    }

    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            Self::RateLimited {
                retry_after_seconds,
                ..
            } => Some(retry_after_seconds.unwrap_or(1)),
            Self::Status { status, .. } if *status >= 500 => Some(1),
            Self::Unreachable { .. } => Some(1),
            Self::Shared {
                retry_after_seconds,
                ..
            } => *retry_after_seconds,
            _ => None,
        }
    }
}

/// Classifies a non-2xx answer: 429 with its `Retry-After`, else the error message.
pub fn status_error(
    service: &'static str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> UpstreamError {
    if status == 429 {
        return UpstreamError::RateLimited {
            service,
            retry_after_seconds: retry_after
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|s| s.ceil() as u32),
        };
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // OpenAI: {"error": {"message"}}; Qdrant: {"status": {"error"}}.
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["status"]["error"].as_str())
        })
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    UpstreamError::Status {
        service,
        status,
        message,
    }
}

/// Whether a failed Qdrant call is Qdrant's own 404 for a collection that
/// does not exist (`Not found: Collection `name` doesn't exist!`): nothing has
/// been ingested yet, or `qdrant_collection` names another collection. A 404
/// of any other shape (a proxy's page, a wrong base path) is not this.
pub fn is_missing_collection(error: &UpstreamError) -> bool {
    matches!(
        error,
        UpstreamError::Status { service: QDRANT, status: 404, message }
            if message.starts_with("Not found: Collection")
    )
}

pub const OPENAI: &str = "openai";
pub const QDRANT: &str = "qdrant";

pub fn embeddings_request(model: &str, inputs: &[String]) -> Value {
    json!({"model": model, "input": inputs})
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The embeddings, in input order (by `index`), and the tokens used.
pub fn parse_embeddings(
    body: &[u8],
    expected: usize,
) -> Result<(Vec<Vec<f32>>, Usage), UpstreamError> {
    let bad = |message: String| UpstreamError::BadResponse {
        service: OPENAI,
        message,
    };
    let response: EmbeddingsResponse =
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if response.data.len() != expected {
        return Err(bad(format!(
            "{} embeddings for {expected} inputs",
            response.data.len()
        )));
    }
    let mut out = vec![Vec::new(); expected];
    for item in response.data {
        let slot = out
            .get_mut(item.index)
            .ok_or_else(|| bad(format!("index {} out of range", item.index)))?;
        *slot = item.embedding;
    }
    if out.iter().any(Vec::is_empty) {
        return Err(bad("an embedding is missing or empty".into()));
    }
    Ok((out, response.usage.unwrap_or_default()))
}

/// A chat completion request. `max_tokens` caps the answer, so one question
/// can cost at most what a budget reserved for it (see `sessions`).
pub fn chat_request(model: &str, messages: &[ChatMessage], max_tokens: u32) -> Value {
    json!({"model": model, "messages": messages, "temperature": 0.2, "max_tokens": max_tokens})
}

/// Who speaks a chat message, as OpenAI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a chat completion request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A chat completion: the answer, the tokens it used, and whether the model
/// finished it. A `length` or `content_filter` stop is an answer cut short:
/// it is shown (and stored in the history) but never cached.
#[derive(Debug, Clone)]
pub struct ChatReply {
    pub answer: String,
    pub usage: Usage,
    pub complete: bool,
}

/// Whether an answer is whole: its choice's `finish_reason` says the model
/// finished it (a backend that names none is taken at its word), and it
/// says something.
pub fn is_whole_answer(finish_reason: Option<&str>, answer: &str) -> bool {
    matches!(finish_reason, None | Some("stop")) && !answer.trim().is_empty()
}

/// The answer text, the tokens used, and whether the answer is whole.
pub fn parse_chat(body: &[u8]) -> Result<ChatReply, UpstreamError> {
    let bad = |message: String| UpstreamError::BadResponse {
        service: OPENAI,
        message,
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let choice = &value["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .ok_or_else(|| bad("no choices[0].message.content".into()))?;
    let usage = serde_json::from_value(value["usage"].clone()).unwrap_or_default();
    Ok(ChatReply {
        answer: content.to_string(),
        usage,
        complete: is_whole_answer(choice["finish_reason"].as_str(), content),
    })
}

pub fn search_request(vector: &[f32], limit: u32) -> Value {
    json!({"vector": vector, "limit": limit, "with_payload": true})
}

/// The hits of a `points/search` answer (`result` is a list of them).
pub fn search_hits(body: &[u8]) -> Result<Vec<Value>, UpstreamError> {
    let bad = |message: String| UpstreamError::BadResponse {
        service: QDRANT,
        message,
    };
    let mut value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    match value["result"].take() {
        Value::Array(hits) => Ok(hits),
        _ => Err(bad("no result list".into())),
    }
}

/// Passages from a `points/search` answer.
pub fn parse_search(body: &[u8]) -> Result<Vec<Passage>, UpstreamError> {
    Ok(search_hits(body)?
        .iter()
        .map(|hit| Passage {
            source: hit["payload"]["source"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            chunk_id: match &hit["id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            score: hit["score"].as_f64().unwrap_or(0.0),
            text: hit["payload"]["text"].as_str().unwrap_or("").to_string(),
        })
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: Value,
}

pub fn upsert_request(points: &[Point]) -> Value {
    json!({"points": points})
}

pub fn create_collection_request(size: usize) -> Value {
    json!({"vectors": {"size": size, "distance": "Cosine"}})
}

/// Deletes a document's chunks numbered `first_stale` and above: after a
/// re-ingestion has overwritten chunks `0..first_stale` (same point ids), the
/// ones the new text no longer has. Upsert first, then this: a failed upsert
/// leaves the old text searchable, never nothing.
pub fn delete_stale_chunks_request(document_id: &str, first_stale: usize) -> Value {
    json!({"filter": {"must": [
        {"key": "document_id", "match": {"value": document_id}},
        {"key": "chunk_index", "range": {"gte": first_stale}},
    ]}})
}

/// The vector size of an existing collection (`GET /collections/{name}`).
pub fn parse_collection_size(body: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value["result"]["config"]["params"]["vectors"]["size"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_carry_retry_after() {
        let e = status_error(OPENAI, 429, Some("7"), b"{}");
        assert_eq!(e.http_status(), 503);
        assert_eq!(e.retry_after_seconds(), Some(7));
        let e = status_error(OPENAI, 429, Some("0.5"), b"{}");
        assert_eq!(e.retry_after_seconds(), Some(1));
    }

    #[test]
    fn error_messages_are_extracted_from_both_formats() {
        let e = status_error(
            OPENAI,
            500,
            None,
            br#"{"error":{"message":"boom","type":"server_error"}}"#,
        );
        assert_eq!(e.to_string(), "openai answered 500: boom");
        // The client never sees the upstream's words.
        assert_eq!(e.api_error().detail, "OpenAI answered with an error");
        assert!(!e.api_error().detail.contains("boom"));
        assert_eq!(e.http_status(), 503);
        let e = status_error(
            QDRANT,
            400,
            None,
            br#"{"status":{"error":"Wrong input"},"time":0}"#,
        );
        assert_eq!(e.to_string(), "qdrant answered 400: Wrong input");
        assert_eq!(e.http_status(), 502);
        assert_eq!(
            UpstreamError::Timeout { service: OPENAI }.http_status(),
            504
        );
    }

    #[test]
    fn only_qdrants_own_not_found_is_a_missing_collection() {
        let missing = br#"{"status":{"error":"Not found: Collection `documents` doesn't exist!"},"time":0.0}"#;
        assert!(is_missing_collection(&status_error(
            QDRANT, 404, None, missing
        )));
        // A proxy's 404 page, or Qdrant's 404 for another reason, is an error.
        assert!(!is_missing_collection(&status_error(
            QDRANT,
            404,
            None,
            b"<html>404 Not Found</html>"
        )));
        assert!(!is_missing_collection(&status_error(
            QDRANT,
            404,
            None,
            br#"{"status":{"error":"Not found: No point with id 7 found"}}"#
        )));
        // The same words with another status, or from OpenAI, are not it either.
        assert!(!is_missing_collection(&status_error(
            QDRANT, 400, None, missing
        )));
        assert!(!is_missing_collection(&status_error(
            OPENAI, 404, None, missing
        )));
    }

    #[test]
    fn embeddings_are_put_back_in_input_order() {
        let body = br#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}],"usage":{"prompt_tokens":3}}"#;
        let (vectors, usage) = parse_embeddings(body, 2).unwrap();
        assert_eq!(vectors, vec![vec![1.0], vec![2.0]]);
        assert_eq!(usage.prompt_tokens, 3);
        assert!(parse_embeddings(body, 3).is_err());
    }

    #[test]
    fn search_hits_become_passages() {
        let body = br#"{"result":[{"id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","version":0,"score":0.87,"payload":{"source":"a.pdf","text":"hello"}}],"status":"ok","time":0.001}"#;
        let passages = parse_search(body).unwrap();
        assert_eq!(passages[0].source, "a.pdf");
        assert_eq!(passages[0].chunk_id, "7c9e6679-7425-40de-944b-e07fc1f90ae7");
        assert!((passages[0].score - 0.87).abs() < 1e-9);
    }

    #[test]
    fn chat_answers_parse() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"42"}}],"usage":{"prompt_tokens":10,"completion_tokens":2}}"#;
        let reply = parse_chat(body).unwrap();
        assert!(reply.complete);
        assert_eq!(reply.answer, "42");
        assert_eq!(reply.usage.completion_tokens, 2);
        assert!(parse_chat(b"{}").is_err());
    }

    #[test]
    fn an_answer_cut_short_or_empty_is_not_whole() {
        let with = |reason: &str, content: &str| {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"{content}"}},"finish_reason":{reason}}}]}}"#
            );
            parse_chat(body.as_bytes()).unwrap().complete
        };
        assert!(with(r#""stop""#, "42"));
        assert!(with("null", "42"));
        assert!(!with(r#""length""#, "4"));
        assert!(!with(r#""content_filter""#, ""));
        assert!(!with(r#""stop""#, "  "));
    }
}
