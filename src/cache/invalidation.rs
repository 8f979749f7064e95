//! Cache invalidation requests (`POST /health/cache/clear`): what to clear.

use serde::Deserialize;

use crate::http::api::{validate_id, ApiError};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearRequest {
    /// `all`, `query` or `embedding` (default `all`).
    #[serde(default)]
    pub cache_type: Option<String>,
    /// Only this session's cached answers.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only answers for this page context.
    #[serde(default)]
    pub page_context: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearScope {
    All,
    Query,
    Embedding,
    Session(String),
    PageContext(String),
}

pub fn parse_clear(body: &[u8]) -> Result<ClearScope, ApiError> {
    // No body (zero bytes) clears everything; anything else must be a JSON object.
    let request: ClearRequest = if body.is_empty() {
        ClearRequest {
            cache_type: None,
            session_id: None,
            page_context: None,
        }
    } else {
        crate::http::api::json_object(body).map_err(|e| {
            ApiError::invalid(format!(
                "expected {{\"cache_type\", \"session_id\", \"page_context\"}}: {e}"
            ))
        })?
    };
    let cache_type = request.cache_type.as_deref();
    if let Some(other) = cache_type.filter(|t| !["all", "query", "embedding"].contains(t)) {
        return Err(ApiError::invalid(format!(
            "unknown cache_type `{other}`: use all, query or embedding"
        )));
    }
    match (cache_type, request.session_id, request.page_context) {
        (_, Some(_), Some(_)) => Err(ApiError::invalid(
            "give either `session_id` or `page_context`, not both",
        )),
        (Some("all" | "embedding"), Some(_), None) | (Some("all" | "embedding"), None, Some(_)) => {
            Err(ApiError::invalid(
                "`session_id` and `page_context` scope the query cache only",
            ))
        }
        (_, Some(session), None) => {
            validate_id("session_id", &session)?;
            Ok(ClearScope::Session(session))
        }
        (_, None, Some(page)) if page.trim().is_empty() => {
            Err(ApiError::invalid("`page_context` must not be blank"))
        }
        (_, None, Some(page)) => Ok(ClearScope::PageContext(page)),
        (None | Some("all"), None, None) => Ok(ClearScope::All),
        (Some("query"), None, None) => Ok(ClearScope::Query),
        (_, None, None) => Ok(ClearScope::Embedding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_requests_parse_into_scopes() {
        assert_eq!(parse_clear(b""), Ok(ClearScope::All));
        assert_eq!(
            parse_clear(br#"{"cache_type":"embedding"}"#),
            Ok(ClearScope::Embedding)
        );
        assert_eq!(
            parse_clear(br#"{"cache_type":"query"}"#),
            Ok(ClearScope::Query)
        );
        assert_eq!(
            parse_clear(br#"{"session_id":"s1"}"#),
            Ok(ClearScope::Session("s1".into()))
        );
        assert_eq!(
            parse_clear(br#"{"page_context":"Ch 1"}"#),
            Ok(ClearScope::PageContext("Ch 1".into()))
        );
        for bad in [
            &br#"{"cache_type":"nope"}"#[..],
            br#"{"session_id":"a b"}"#,
            br#"{"session_id":"s","page_context":"p"}"#,
            br#"{"x":1}"#,
            b"[",
            b"[null, null]",
            b" ",
            b"null",
            br#"{"cache_type":"embedding","session_id":"s"}"#,
            br#"{"cache_type":"all","page_context":"p"}"#,
            br#"{"page_context":"  "}"#,
        ] {
            assert_eq!(
                parse_clear(bad).unwrap_err().status(),
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
