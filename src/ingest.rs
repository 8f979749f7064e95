//! Document ingestion: validation, overlapping chunks, deterministic point ids.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::query::{md5_of_parts, validate_id, Rejection};

pub const MAX_DOCUMENTS: usize = 100;
pub const MAX_DOCUMENT_CHARS: usize = 1_000_000;
pub const CHUNK_CHARS: usize = 1000;
pub const CHUNK_OVERLAP_CHARS: usize = 200;
/// OpenAI takes up to 2,048 inputs per embeddings call; smaller batches keep calls short.
pub const EMBEDDING_BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub source: String,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestBody {
    documents: Vec<Document>,
}

pub fn parse_documents(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<Document>, Rejection> {
    if !crate::query::is_json_content_type(content_type) {
        return Err(Rejection::new(
            415,
            "unsupported_media_type",
            "send documents as Content-Type: application/json",
        ));
    }
    if body.len() > MAX_DOCUMENTS * MAX_DOCUMENT_CHARS / 10 {
        return Err(Rejection::new(
            413,
            "payload_too_large",
            "the body is too large; send fewer documents per request",
        ));
    }
    let parsed: IngestBody = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            400,
            "invalid_request",
            format!("expected {{\"documents\": [{{id, text, source, metadata}}]}}: {e}"),
        )
    })?;
    if parsed.documents.is_empty() || parsed.documents.len() > MAX_DOCUMENTS {
        return Err(Rejection::new(
            400,
            "invalid_request",
            format!("send 1 to {MAX_DOCUMENTS} documents"),
        ));
    }
    for doc in &parsed.documents {
        validate_id("id", &doc.id)?;
        if doc.text.trim().is_empty() {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("document `{}` has no text", doc.id),
            ));
        }
        if doc.text.chars().count() > MAX_DOCUMENT_CHARS {
            return Err(Rejection::new(
                413,
                "payload_too_large",
                format!(
                    "document `{}` is over {MAX_DOCUMENT_CHARS} characters",
                    doc.id
                ),
            ));
        }
        if doc.source.trim().is_empty() || doc.source.len() > 512 {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("document `{}` needs a source of 1 to 512 bytes", doc.id),
            ));
        }
        if doc.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(Rejection::new(
                400,
                "invalid_request",
                format!("metadata of `{}` must be an object", doc.id),
            ));
        }
    }
    Ok(parsed.documents)
}

/// Splits text into chunks of about `size` characters that overlap by
/// `overlap`, preferring to break at whitespace.
pub fn chunk(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut end = (start + size).min(chars.len());
        if end < chars.len() {
            // Back up to a space in the last fifth of the chunk, if there is one.
            if let Some(space) = (start + size * 4 / 5..end)
                .rev()
                .find(|&i| chars[i].is_whitespace())
            {
                end = space;
            }
        }
        let piece: String = chars[start..end].iter().collect();
        let piece = piece.trim().to_string();
        if !piece.is_empty() {
            chunks.push(piece);
        }
        if end >= chars.len() {
            break;
        }
        start = end.saturating_sub(overlap).max(start + 1);
    }
    chunks
}

/// A UUID derived from the document id and chunk number: re-ingesting the
/// same document yields the same ids (Qdrant accepts only integers or UUIDs).
pub fn point_id(document_id: &str, chunk_index: usize) -> String {
    let h = md5_of_parts(&[document_id, &chunk_index.to_string()]);
    // Shape as a version-3 (name-based, MD5) UUID.
    let mut bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    bytes[6] = (bytes[6] & 0x0f) | 0x30;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = crate::ratelimit::hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn payload(doc: &Document, chunk_index: usize, text: &str) -> Value {
    json!({
        "document_id": doc.id,
        "source": doc.source,
        "chunk_index": chunk_index,
        "text": text,
        "metadata": doc.metadata.clone().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let text = (0..500)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk(&text, 200, 50);
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.chars().count() <= 200));
        assert!(chunks[0].starts_with("w0 "));
        assert!(chunks.last().unwrap().ends_with("w499"));
        // Consecutive chunks share words.
        let last_word_of_first = chunks[0].split_whitespace().last().unwrap();
        assert!(chunks[1].contains(last_word_of_first));
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunk("hello world", 1000, 200), vec!["hello world"]);
        assert!(chunk("   ", 1000, 200).is_empty());
    }

    #[test]
    fn point_ids_are_deterministic_uuids() {
        let id = point_id("doc-1", 0);
        assert_eq!(id, point_id("doc-1", 0));
        assert_ne!(id, point_id("doc-1", 1));
        assert_ne!(id, point_id("doc-2", 0));
        assert_eq!(id.len(), 36);
        assert_eq!(id.chars().nth(14), Some('3'));
    }

    #[test]
    fn documents_are_validated() {
        let ok =
            br#"{"documents":[{"id":"d1","text":"t","source":"s.pdf","metadata":{"page":1}}]}"#;
        assert_eq!(
            parse_documents(Some("application/json"), ok).unwrap().len(),
            1
        );
        for bad in [
            &br#"{"documents":[]}"#[..],
            br#"{"documents":[{"id":"bad id","text":"t","source":"s"}]}"#,
            br#"{"documents":[{"id":"d","text":" ","source":"s"}]}"#,
            br#"{"documents":[{"id":"d","text":"t","source":""}]}"#,
            br#"{"documents":[{"id":"d","text":"t","source":"s","metadata":[1]}]}"#,
            br#"{"docs":[]}"#,
        ] {
            assert_eq!(
                parse_documents(Some("application/json"), bad)
                    .unwrap_err()
                    .status,
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_documents(Some("text/plain"), ok).unwrap_err().status,
            415
        );
    }
}
