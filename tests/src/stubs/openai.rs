//! An OpenAI-compatible server: `POST /v1/embeddings` and
//! `POST /v1/chat/completions`, in OpenAI's JSON shapes and error format.
//!
//! Embeddings are deterministic bags of hashed words (normalised), so texts
//! that share words are near each other and retrieval behaves sensibly.
//! Chat answers are deterministic functions of the messages. With
//! `"stream": true` the answer comes as OpenAI streams it: SSE
//! `chat.completion.chunk`s, word by word, a usage chunk when
//! `stream_options.include_usage` asks for one, and `data: [DONE]`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use md5::{Digest, Md5};
use serde_json::{json, Value};

use super::{Controls, Fault, StubServer};

pub const EMBEDDINGS: &str = "embeddings";
pub const CHAT: &str = "chat";
pub const MODELS: &str = "models";

pub struct OpenAiStub {
    pub server: StubServer,
    pub state: Arc<OpenAiState>,
}

pub struct OpenAiState {
    pub controls: Controls,
    pub api_key: String,
    pub dimensions: usize,
    /// Every request body received, by endpoint, in order.
    pub requests: std::sync::Mutex<Vec<(&'static str, Value)>>,
    /// How a streamed answer is paced.
    pub stream_timing: std::sync::Mutex<StreamTiming>,
    /// The next streamed answers break off after this many deltas, with an
    /// error chunk and no `[DONE]`.
    pub stream_cuts: std::sync::Mutex<std::collections::VecDeque<usize>>,
    /// The next answers (streamed or not) end with these `finish_reason`s
    /// instead of `stop`: the whole text, as a model that hit its limit says.
    pub finish_reasons: std::sync::Mutex<std::collections::VecDeque<&'static str>>,
    /// Words the next answers go on with (a long answer, on demand).
    pub paddings: std::sync::Mutex<std::collections::VecDeque<usize>>,
}

/// The pace of an answer: until its first token, and between tokens (an
/// unstreamed answer comes whole once the last token is written).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTiming {
    pub first_token: Duration,
    pub between_tokens: Duration,
}

impl OpenAiStub {
    pub async fn start(api_key: &str, dimensions: usize) -> anyhow::Result<Self> {
        let state = Arc::new(OpenAiState {
            controls: Controls::default(),
            api_key: api_key.to_string(),
            dimensions,
            requests: Default::default(),
            stream_timing: Default::default(),
            stream_cuts: Default::default(),
            finish_reasons: Default::default(),
            paddings: Default::default(),
        });
        let router = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", axum::routing::get(models))
            .with_state(state.clone());
        Ok(Self {
            server: StubServer::serve(router).await?,
            state,
        })
    }

    /// What `openai_base_url` should be: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.origin())
    }

    pub fn controls(&self) -> &Controls {
        &self.state.controls
    }

    /// Paces streamed answers.
    pub fn set_stream_timing(&self, first_token: Duration, between_tokens: Duration) {
        *self.state.stream_timing.lock().unwrap() = StreamTiming {
            first_token,
            between_tokens,
        };
    }

    /// The next streamed answer breaks off after `deltas` deltas.
    pub fn cut_next_stream_after(&self, deltas: usize) {
        self.state.stream_cuts.lock().unwrap().push_back(deltas);
    }

    /// The next answer ends with `finish_reason` (`length`, `content_filter`).
    pub fn finish_next_answer_with(&self, finish_reason: &'static str) {
        self.state
            .finish_reasons
            .lock()
            .unwrap()
            .push_back(finish_reason);
    }

    /// The next answer goes on with `words` more words (`pad0 pad1 ...`).
    pub fn pad_next_answer_with(&self, words: usize) {
        self.state.paddings.lock().unwrap().push_back(words);
    }

    /// The chat requests received, in order.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(endpoint, _)| *endpoint == CHAT)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

/// The answer in the pieces a stream sends: each word with the space before it.
pub fn stream_pieces(answer: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for (i, word) in answer.split(' ').enumerate() {
        pieces.push(if i == 0 {
            word.to_string()
        } else {
            format!(" {word}")
        });
    }
    pieces
}

fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    });
    format!("data: {chunk}\n\n")
}

/// A streamed answer, paced by `timing`, cut after `cut` deltas if asked.
fn streamed(
    model: String,
    content: String,
    usage: Option<Value>,
    timing: StreamTiming,
    cut: Option<usize>,
    finish_reason: &'static str,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let send = |text: String| sender.send(text);
        if send(chunk(
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
        ))
        .await
        .is_err()
        {
            return;
        }
        tokio::time::sleep(timing.first_token).await;
        for (i, piece) in stream_pieces(&content).into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(timing.between_tokens).await;
            }
            if cut == Some(i) {
                let error = json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}});
                let _ = send(format!("data: {error}\n\n")).await;
                return;
            }
            if send(chunk(&model, json!({"content": piece}), None))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = send(chunk(&model, json!({}), Some(finish_reason))).await;
        if let Some(usage) = usage {
            let last = json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage});
            let _ = send(format!("data: {last}\n\n")).await;
        }
        let _ = send("data: [DONE]\n\n".to_string()).await;
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|text| (Ok::<_, std::convert::Infallible>(text), receiver))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(body))
        .expect("a valid response")
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

fn fault_response(fault: Fault) -> Option<Response> {
    match fault {
        Fault::RateLimited { retry_after_secs } => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
            let headers = response.headers_mut();
            headers.insert("retry-after", retry_after_secs.into());
            headers.insert("x-ratelimit-limit-requests", 3500.into());
            headers.insert("x-ratelimit-remaining-requests", 0.into());
            headers.insert(
                "x-ratelimit-reset-requests",
                format!("{retry_after_secs}s").parse().unwrap(),
            );
            Some(response)
        }
        Fault::Status(code) => Some(error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "The server had an error while processing your request.",
            "server_error",
            "server_error",
        )),
        Fault::Hang(_) => None,
        body @ (Fault::Oversized(_) | Fault::Trickle(_)) => body.body_response(),
    }
}

/// Checks the bearer key and injected faults; `Err` is the response to send instead.
async fn admit(
    state: &OpenAiState,
    endpoint: &'static str,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let expected = format!("Bearer {}", state.api_key);
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if let Some(response) = state
        .controls
        .enter(endpoint)
        .await
        .and_then(fault_response)
    {
        return Err(response);
    }
    if !authorised {
        // OpenAI's own words, which quote the presented key, masked.
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let masked = if presented.len() > 8 {
            format!(
                "{}****{}",
                &presented[..5],
                &presented[presented.len() - 4..]
            )
        } else {
            "****".to_string()
        };
        return Err(error(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
            "invalid_api_key",
        ));
    }
    Ok(())
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// A deterministic unit vector: each word adds ±1 at a hashed position.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimensions];
    for word in words(text) {
        let digest = Md5::digest(word.as_bytes());
        let index = u64::from_le_bytes(digest[..8].try_into().unwrap()) as usize % dimensions;
        let sign = if digest[8] & 1 == 0 { 1.0 } else { -1.0 };
        vector[index] += sign;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        vector[0] = 1.0;
    } else {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

async fn embeddings(
    State(state): State<Arc<OpenAiState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(response) = admit(&state, EMBEDDINGS, &headers).await {
        return response;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            "invalid_json",
        );
    };
    state
        .requests
        .lock()
        .unwrap()
        .push((EMBEDDINGS, request.clone()));
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "'input' must be a string or an array of strings",
                "invalid_request_error",
                "invalid_input",
            )
        }
    };
    if inputs.is_empty() || inputs.len() > 2048 {
        return error(
            StatusCode::BAD_REQUEST,
            "'input' must have between 1 and 2048 items",
            "invalid_request_error",
            "invalid_input",
        );
    }
    if inputs.iter().any(String::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "'input' cannot contain an empty string",
            "invalid_request_error",
            "invalid_input",
        );
    }
    let Some(model) = request["model"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            "missing_model",
        );
    };
    let tokens: usize = inputs.iter().map(|i| words(i).count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            json!({"object": "embedding", "index": index, "embedding": embed(input, state.dimensions)})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    }))
    .into_response()
}

async fn models(State(state): State<Arc<OpenAiState>>, headers: HeaderMap) -> Response {
    if let Err(response) = admit(&state, MODELS, &headers).await {
        return response;
    }
    Json(json!({"object": "list", "data": [
        {"id": "text-embedding-3-small", "object": "model", "owned_by": "stub"},
        {"id": "gpt-4o-mini", "object": "model", "owned_by": "stub"}
    ]}))
    .into_response()
}

/// The deterministic answer to a chat request. Asked to make a follow-up
/// standalone (a system prompt asking for a "standalone question"), the
/// stand-in does what a model would: the follow-up, with the earlier
/// questions it may refer to.
pub fn answer_for(messages: &[Value]) -> String {
    let asks_for_rewrite = messages
        .first()
        .and_then(|m| m["content"].as_str())
        .is_some_and(|system| system.contains("standalone question"));
    if asks_for_rewrite {
        let mut users: Vec<&str> = messages
            .iter()
            .filter(|m| m["role"] == "user")
            .filter_map(|m| m["content"].as_str())
            .collect();
        let follow_up = users.pop().unwrap_or("");
        let follow_up = follow_up
            .strip_prefix("Follow-up question: ")
            .unwrap_or(follow_up);
        return format!("{follow_up} (about: {})", users.join("; "));
    }
    let question = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let transcript: String = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let digest = Md5::digest(transcript.as_bytes());
    let short: String = question.chars().take(120).collect();
    format!(
        "Stub answer to \"{short}\" from {} messages ({:02x}{:02x}{:02x}{:02x}).",
        messages.len(),
        digest[0],
        digest[1],
        digest[2],
        digest[3]
    )
}

async fn chat(State(state): State<Arc<OpenAiState>>, headers: HeaderMap, body: String) -> Response {
    if let Err(response) = admit(&state, CHAT, &headers).await {
        return response;
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            "invalid_json",
        );
    };
    state.requests.lock().unwrap().push((CHAT, request.clone()));
    let (Some(model), Some(messages)) = (request["model"].as_str(), request["messages"].as_array())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "'model' and 'messages' are required",
            "invalid_request_error",
            "invalid_request",
        );
    };
    if messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "'messages' must not be empty",
            "invalid_request_error",
            "invalid_request",
        );
    }
    let max_tokens = match &request["max_tokens"] {
        Value::Null => None,
        value => match value.as_u64().filter(|n| *n >= 1) {
            Some(n) => Some(n as usize),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1.",
                    "invalid_request_error",
                    "integer_below_min_value",
                )
            }
        },
    };
    let mut content = answer_for(messages);
    if let Some(words) = state.paddings.lock().unwrap().pop_front() {
        for i in 0..words {
            content.push_str(&format!(" pad{i}"));
        }
    }
    // As a model does, an answer longer than `max_tokens` stops there, cut short.
    let mut cut_at_max = false;
    if let Some(max) = max_tokens {
        if content.split_whitespace().count() > max {
            content = content
                .split_whitespace()
                .take(max)
                .collect::<Vec<_>>()
                .join(" ");
            cut_at_max = true;
        }
    }
    let prompt_tokens: usize = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(|c| words(c).count())
        .sum();
    let completion_tokens = words(&content).count();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    let finish_reason = state
        .finish_reasons
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(if cut_at_max { "length" } else { "stop" });
    if request["stream"] == true {
        let timing = *state.stream_timing.lock().unwrap();
        let cut = state.stream_cuts.lock().unwrap().pop_front();
        let usage = (request["stream_options"]["include_usage"] == true).then_some(usage);
        return streamed(
            model.to_string(),
            content,
            usage,
            timing,
            cut,
            finish_reason,
        );
    }
    // Unstreamed, the same model answers once it has written everything.
    let timing = *state.stream_timing.lock().unwrap();
    let pieces = stream_pieces(&content).len().saturating_sub(1) as u32;
    tokio::time::sleep(timing.first_token + timing.between_tokens * pieces).await;
    Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason
        }],
        "usage": usage
    }))
    .into_response()
}
