//! Cache invalidation requests (`POST /health/cache/clear`): what to clear.

use serde::Deserialize;

use crate::api::{validate_id, ApiError};

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
    let request: ClearRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ClearRequest {
            cache_type: None,
            session_id: None,
            page_context: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid(format!(
                "expected {{\"cache_type\", \"session_id\", \"page_context\"}}: {e}"
            ))
        })?
    };
    match (
        request.cache_type.as_deref(),
        request.session_id,
        request.page_context,
    ) {
        (None | Some("query"), Some(session), None) => {
            validate_id("session_id", &session)?;
            Ok(ClearScope::Session(session))
        }
        (None | Some("query"), None, Some(page)) if !page.trim().is_empty() => {
            Ok(ClearScope::PageContext(page))
        }
        (_, Some(_), Some(_)) => Err(ApiError::invalid(
            "give either `session_id` or `page_context`, not both",
        )),
        (_, None, Some(_)) => Err(ApiError::invalid("`page_context` must not be empty")),
        (Some(_), Some(_), None) => Err(ApiError::invalid(
            "`session_id` scopes the query cache only",
        )),
        (None | Some("all"), None, None) => Ok(ClearScope::All),
        (Some("query"), None, None) => Ok(ClearScope::Query),
        (Some("embedding"), None, None) => Ok(ClearScope::Embedding),
        (Some(other), _, _) => Err(ApiError::invalid(format!(
            "unknown cache_type `{other}`: use all, query or embedding"
        ))),
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
            br#"{"cache_type":"embedding","session_id":"s"}"#,
        ] {
            assert_eq!(
                parse_clear(bad).unwrap_err().status,
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
