//! Document ingestion: validation, overlapping chunks, deterministic point ids.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::upstream::Point;
use crate::http::api::{self, validate_id, ApiError};
use crate::redis::digest::md5_of_parts_bytes;

pub const MAX_DOCUMENTS: usize = 100;
pub const MAX_DOCUMENT_CHARS: usize = 1_000_000;
pub const MAX_SOURCE_CHARS: usize = 512;
pub const CHUNK_CHARS: usize = 1000;
pub const CHUNK_OVERLAP_CHARS: usize = 200;
/// OpenAI takes up to 2,048 inputs per embeddings call; smaller batches keep calls short.
pub const EMBEDDING_BATCH: usize = 64;
/// The largest ingestion body accepted.
pub const MAX_BODY_BYTES: usize = MAX_DOCUMENTS * MAX_DOCUMENT_CHARS / 10;
/// Upserts go to Qdrant in requests of this many points.
pub const UPSERT_BATCH: usize = 256;

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

pub fn parse_documents(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Document>, ApiError> {
    api::require_json(content_type, "documents")?;
    api::require_size(body, MAX_BODY_BYTES)?;
    let expected = |e: &dyn std::fmt::Display| {
        ApiError::invalid(format!(
            "expected {{\"documents\": [{{id, text, source, metadata}}]}}: {e}"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| expected(&e))?;
    // Objects only: serde would read a struct from an array of its fields too.
    let documents_are_objects = value
        .get("documents")
        .and_then(Value::as_array)
        .is_none_or(|docs| docs.iter().all(Value::is_object));
    if !value.is_object() || !documents_are_objects {
        return Err(expected(&"the body and each document must be JSON objects"));
    }
    let parsed: IngestBody = serde_json::from_value(value).map_err(|e| expected(&e))?;
    if parsed.documents.is_empty() || parsed.documents.len() > MAX_DOCUMENTS {
        return Err(ApiError::invalid(format!(
            "send 1 to {MAX_DOCUMENTS} documents"
        )));
    }
    for doc in &parsed.documents {
        validate_id("id", &doc.id)?;
        if doc.text.trim().is_empty() {
            return Err(ApiError::invalid(format!(
                "document `{}` has no text",
                doc.id
            )));
        }
        // A field over its limit is a 400 like any other bad field (413 is
        // for a body over the route's limit, refused before it is read).
        if doc.text.chars().count() > MAX_DOCUMENT_CHARS {
            return Err(ApiError::invalid(format!(
                "document `{}` is over {MAX_DOCUMENT_CHARS} characters",
                doc.id
            )));
        }
        if doc.source.trim().is_empty() || doc.source.chars().count() > MAX_SOURCE_CHARS {
            return Err(ApiError::invalid(format!(
                "document `{}` needs a source of 1 to {MAX_SOURCE_CHARS} characters, not all blank",
                doc.id
            )));
        }
        if doc.text.contains('\0')
            || doc.source.contains('\0')
            || doc.metadata.as_ref().is_some_and(contains_nul)
        {
            // Passages are quoted into history rows, and Postgres text cannot hold NUL.
            return Err(ApiError::invalid(format!(
                "document `{}` contains a NUL character",
                doc.id
            )));
        }
        if doc.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(ApiError::invalid(format!(
                "metadata of `{}` must be an object",
                doc.id
            )));
        }
    }
    Ok(parsed.documents)
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
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
/// A version-3 (name-based, MD5) UUID over the length-prefixed parts.
pub fn point_id(document_id: &str, chunk_index: usize) -> String {
    let digest = md5_of_parts_bytes(&[document_id, &chunk_index.to_string()]);
    uuid::Builder::from_md5_bytes(digest)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// One chunk to embed and upsert: which document, which chunk, its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    pub document: usize,
    pub chunk: usize,
    pub text: String,
}

/// Every chunk of every document, in order: what ingestion embeds.
pub fn plan(documents: &[Document]) -> Vec<PlannedChunk> {
    documents
        .iter()
        .enumerate()
        .flat_map(|(document, doc)| {
            chunk(&doc.text, CHUNK_CHARS, CHUNK_OVERLAP_CHARS)
                .into_iter()
                .enumerate()
                .map(move |(chunk, text)| PlannedChunk {
                    document,
                    chunk,
                    text,
                })
        })
        .collect()
}

/// The Qdrant points for a plan and its vectors (in the plan's order).
pub fn points(documents: &[Document], plan: &[PlannedChunk], vectors: Vec<Vec<f32>>) -> Vec<Point> {
    plan.iter()
        .zip(vectors)
        .map(|(planned, vector)| {
            let doc = &documents[planned.document];
            Point {
                id: point_id(&doc.id, planned.chunk),
                vector,
                payload: payload(doc, planned.chunk, &planned.text),
            }
        })
        .collect()
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
        // The ids of every deployment so far: changing them would orphan stored chunks.
        assert_eq!(id, "5d886380-f107-3721-aad6-5d6c27f5d0a4");
        assert_eq!(id, point_id("doc-1", 0));
        assert_ne!(id, point_id("doc-1", 1));
        assert_ne!(id, point_id("doc-2", 0));
        assert_eq!(id.len(), 36);
        assert_eq!(id.chars().nth(14), Some('3'));
    }

    #[test]
    fn documents_with_nul_are_refused() {
        for body in [
            r#"{"documents":[{"id":"d1","text":"a\u0000b","source":"s"}]}"#,
            r#"{"documents":[{"id":"d1","text":"t","source":"s\u0000"}]}"#,
            r#"{"documents":[{"id":"d1","text":"t","source":"s","metadata":{"k":["\u0000"]}}]}"#,
        ] {
            let e = parse_documents(Some("application/json"), body.as_bytes()).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert!(e.detail.contains("NUL"), "{}", e.detail);
        }
    }

    #[test]
    fn documents_are_validated() {
        let document = |text: &str, source: &str| {
            format!(r#"{{"documents":[{{"id":"d","text":"{text}","source":"{source}"}}]}}"#)
        };
        let long_source = document("t", &"é".repeat(MAX_SOURCE_CHARS + 1));
        let long_text = document(&"t".repeat(MAX_DOCUMENT_CHARS + 1), "s");
        assert!(parse_documents(
            Some("application/json"),
            document("t", &"é".repeat(MAX_SOURCE_CHARS)).as_bytes()
        )
        .is_ok());
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
            // Arrays in place of objects (serde reads a struct from either).
            br#"[[{"id":"d","text":"t","source":"s"}]]"#,
            br#"{"documents":[["d","t","s"]]}"#,
            // Field limits are 400s, like any other bad field.
            long_source.as_bytes(),
            long_text.as_bytes(),
        ] {
            assert_eq!(
                parse_documents(Some("application/json"), bad)
                    .unwrap_err()
                    .status(),
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_documents(Some("text/plain"), ok)
                .unwrap_err()
                .status(),
            415
        );
    }
}
