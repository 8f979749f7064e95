//! The OpenAI (or any OpenAI-compatible) client: embeddings and chat.

use std::time::{Duration, Instant};

use chatbot_core::chat::stream::{chat_stream_request, ChatStream};
use chatbot_core::chat::upstream::{self, ChatReply, UpstreamError, Usage, OPENAI, QDRANT};

use crate::http::{self, HttpError};
use crate::settings::PipelineSettings;

/// POSTs JSON and returns the body of a 2xx answer, or the classified failure.
pub async fn send_json(
    service: &'static str,
    verb: &str,
    url: &str,
    extra_headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), UpstreamError> {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    headers.extend_from_slice(extra_headers);
    let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
    let response = http::request(verb, url, &headers, bytes.as_deref(), timeout)
        .await
        .map_err(|e| classify(service, e))?;
    if (200..300).contains(&response.status) {
        Ok((response.status, response.body))
    } else {
        Err(refused(service, response))
    }
}

fn classify(service: &'static str, error: HttpError) -> UpstreamError {
    match error {
        HttpError::Timeout => UpstreamError::Timeout { service },
        HttpError::Failed(message) => UpstreamError::Unreachable { service, message },
    }
}

fn refused(service: &'static str, response: http::HttpResponse) -> UpstreamError {
    upstream::status_error(
        service,
        response.status,
        response.header("retry-after"),
        &response.body,
    )
}

/// The `Authorization` header OpenAI expects.
pub fn openai_headers(settings: &PipelineSettings) -> Vec<(&'static str, String)> {
    vec![(
        "authorization",
        format!("Bearer {}", settings.openai_api_key.expose()),
    )]
}

pub fn header_refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// POSTs `body` to OpenAI's `path` (under `openai_base_url`) with the key.
async fn post_openai(
    settings: &PipelineSettings,
    path: &str,
    body: &serde_json::Value,
) -> Result<Vec<u8>, UpstreamError> {
    let headers = openai_headers(settings);
    let (_, body) = send_json(
        OPENAI,
        "POST",
        &format!("{}{path}", settings.openai_base_url),
        &header_refs(&headers),
        Some(body),
        crate::bounded(settings.openai_timeout),
    )
    .await?;
    Ok(body)
}

/// Embeds `texts` in one call. Returns the vectors in order, the usage and the call's latency.
pub async fn embed(
    settings: &PipelineSettings,
    texts: &[String],
) -> Result<(Vec<Vec<f32>>, Usage, Duration), UpstreamError> {
    let started = Instant::now();
    let request = upstream::embeddings_request(&settings.embedding_model, texts);
    let body = post_openai(settings, "/embeddings", &request).await?;
    let (vectors, usage) = upstream::parse_embeddings(&body, texts.len())?;
    Ok((vectors, usage, started.elapsed()))
}

/// Asks the chat model for at most `max_tokens`. Returns its reply and the call's latency.
pub async fn chat(
    settings: &PipelineSettings,
    messages: &[chatbot_core::chat::upstream::ChatMessage],
    max_tokens: u32,
) -> Result<(ChatReply, Duration), UpstreamError> {
    let started = Instant::now();
    let request = upstream::chat_request(&settings.chat_model, messages, max_tokens);
    let body = post_openai(settings, "/chat/completions", &request).await?;
    Ok((upstream::parse_chat(&body)?, started.elapsed()))
}

/// Asks the chat model for a streamed answer, handing each text delta to
/// `on_delta` as it arrives. Returns the whole reply and the call's latency;
/// a stream that breaks off is an error, whatever it sent.
pub async fn chat_streamed(
    settings: &PipelineSettings,
    messages: &[chatbot_core::chat::upstream::ChatMessage],
    on_delta: &mut dyn crate::pipeline::Progress,
    citations: &[chatbot_core::chat::query::Citation],
) -> Result<(ChatReply, Duration), UpstreamError> {
    let started = Instant::now();
    let headers = openai_headers(settings);
    let mut headers = header_refs(&headers);
    headers.extend([
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
    ]);
    let body = serde_json::to_vec(&chat_stream_request(
        &settings.chat_model,
        messages,
        settings.chat_max_tokens,
    ))
    .expect("JSON values serialise");
    let mut response = http::send(
        "POST",
        &format!("{}/chat/completions", settings.openai_base_url),
        &headers,
        Some(&body),
        crate::bounded(settings.openai_timeout),
    )
    .await
    .map_err(|e| classify(OPENAI, e))?;
    if !(200..300).contains(&response.status) {
        let response = response
            .read_to_end_within(crate::bounded(settings.openai_timeout))
            .await
            .map_err(|e| classify(OPENAI, e))?;
        return Err(refused(OPENAI, response));
    }
    let mut stream = ChatStream::default();
    // Each read waits at most the between-bytes timeout and what is left of the deadline.
    let left = || crate::bounded(settings.openai_timeout);
    let mut received = 0usize;
    while let Some(bytes) = response
        .next_chunk_within(left())
        .await
        .map_err(|e| classify(OPENAI, e))?
    {
        // max_tokens bounds the answer; this bounds whatever else a stream sends.
        received += bytes.len();
        if received > http::MAX_RESPONSE_BYTES {
            return Err(classify(OPENAI, http::too_large()));
        }
        for delta in stream.feed(&bytes)? {
            on_delta.delta(citations, &delta).await;
        }
    }
    Ok((stream.finish()?, started.elapsed()))
}

/// The `api-key` header Qdrant Cloud expects, when a key is configured.
pub fn qdrant_headers(settings: &PipelineSettings) -> Vec<(&'static str, String)> {
    if settings.qdrant_api_key.is_empty() {
        vec![]
    } else {
        vec![("api-key", settings.qdrant_api_key.expose().to_string())]
    }
}

pub(crate) async fn qdrant_send(
    settings: &PipelineSettings,
    verb: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<u8>), UpstreamError> {
    let headers = qdrant_headers(settings);
    send_json(
        QDRANT,
        verb,
        &format!("{}{path}", settings.qdrant_url),
        &header_refs(&headers),
        body,
        crate::bounded(settings.qdrant_timeout),
    )
    .await
}
