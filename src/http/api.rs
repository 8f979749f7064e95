//! What every component answers with, and how it reads what every request
//! carries: the JSON error body of the seed's contract, the one error type
//! handlers return ([`ApiError`], with its closed set of [`ErrorCode`]s), ids,
//! content types and page numbers.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::telemetry::log::Dependency;

/// The error body of the seed's contract: `{"detail": "...", "status": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
    /// A stable machine-readable code, e.g. `invalid_request`, `rate_limited`.
    pub status: String,
    /// On a 5xx: the id under which the log holds the details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    pub fn new(status: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            status: status.into(),
            request_id: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ErrorBody always serialises")
    }
}

/// Every `status` an error body can carry, each with its HTTP status: a
/// refusal names its code and the status follows, so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    /// The body did not arrive within the request's deadline (408).
    RequestTimeout,
    NotFound,
    MethodNotAllowed,
    Conflict,
    Unauthorized,
    Forbidden,
    RateLimited,
    SessionLimit,
    BudgetExceeded,
    /// A dependency (OpenAI, Qdrant) is limiting us or down (503).
    UpstreamUnavailable,
    /// A dependency did not answer in time (504; `upstream_unavailable` on the wire).
    UpstreamTimeout,
    /// A dependency answered an error or nonsense (502; `upstream_unavailable` on the wire).
    UpstreamBadResponse,
    Unavailable,
    ConfigurationError,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidJson => "invalid_json",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::SessionLimit => "session_limit",
            Self::BudgetExceeded => "budget_exceeded",
            Self::UpstreamUnavailable | Self::UpstreamTimeout | Self::UpstreamBadResponse => {
                "upstream_unavailable"
            }
            Self::Unavailable => "unavailable",
            Self::ConfigurationError => "configuration_error",
        }
    }

    /// The HTTP status every refusal with this code answers with.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::InvalidJson => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited | Self::SessionLimit | Self::BudgetExceeded => 429,
            Self::ConfigurationError => 500,
            Self::UpstreamBadResponse => 502,
            Self::UpstreamUnavailable | Self::Unavailable => 503,
            Self::UpstreamTimeout => 504,
        }
    }

    /// The upstream code of a status a failure was answered with (a shared failure's).
    pub const fn of_upstream_status(status: u16) -> Self {
        match status {
            504 => Self::UpstreamTimeout,
            502 => Self::UpstreamBadResponse,
            _ => Self::UpstreamUnavailable,
        }
    }
}

/// Why a request was refused: its code (which decides the HTTP status), the
/// words of the JSON body, and any headers the refusal carries
/// (`Retry-After`, `WWW-Authenticate`, `Allow`). Handlers return
/// `Result<_, ApiError>` and use `?`; the component renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub headers: Vec<(&'static str, String)>,
    /// What the log says of it (never the client: the body names the request
    /// id instead), written once, when the error is answered.
    pub cause: Option<Cause>,
}

/// A failure's log line: its event, the dependency at fault, what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub event: &'static str,
    pub dependency: Dependency,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// The same refusal, with what the log should say of it.
    pub fn caused_by(
        mut self,
        event: &'static str,
        dependency: Dependency,
        detail: impl std::fmt::Display,
    ) -> Self {
        self.cause = Some(Cause {
            event,
            dependency,
            detail: detail.to_string(),
        });
        self
    }

    /// 400 `invalid_request`: the most common refusal.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, detail).with_header("www-authenticate", "Bearer")
    }

    /// 503 `unavailable`, naming the dependency that failed.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, detail)
    }

    /// 500 `configuration_error`.
    pub fn configuration(detail: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::ConfigurationError,
            format!("the service is misconfigured: {detail}"),
        )
    }

    /// 413: a body longer than the `max` bytes its route reads.
    pub fn too_large(max: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("the body may be at most {max} bytes"),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no route for {path}"))
    }

    /// 405 with `Allow` listing the methods the path takes.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &[&str]) -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{method} is not allowed on {path}; use {}",
                allowed.join(" or ")
            ),
        )
        .with_header("allow", allowed.join(", "))
    }

    /// The HTTP status, from the code.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code.as_str(), self.detail.clone())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            self.code.as_str(),
            self.detail
        )
    }
}

impl std::error::Error for ApiError {}

impl From<ConfigError> for ApiError {
    /// 500 `configuration_error`, naming the variable (never a secret's value).
    /// 503 `unavailable` when the host could not read a variable (the next
    /// request reads it again).
    fn from(e: ConfigError) -> Self {
        if e.is_transient() {
            return Self::unavailable(format!("{e}; retry shortly"))
                .with_header("retry-after", "1")
                .caused_by("configuration_unreadable", Dependency::Config, e);
        }
        Self::configuration(&e).caused_by("configuration_error", Dependency::Config, e)
    }
}

/// Longest id (session, user, document) accepted.
pub const MAX_ID_LEN: usize = 128;

/// A path segment as the route captured it, percent-decoded (`%3A` is `:`):
/// clients may escape any character of a segment.
pub fn path_segment(field: &str, raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| ApiError::invalid(format!("`{field}` is not UTF-8 once percent-decoded")))
}

/// Ids are short tokens of safe characters, so they are safe in logs, keys and URLs.
pub fn validate_id(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{field}` must be 1 to {MAX_ID_LEN} characters of letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

/// An id a client named (or a verified token's subject), parsed once where
/// it enters: a value of these types is known to be safe in logs, keys and URLs.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id, or 400 naming the field.
            pub fn parse(raw: &str) -> Result<Self, ApiError> {
                validate_id($field, raw)?;
                Ok(Self(raw.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A chat session's id (`session_id`).
    SessionId,
    "session_id"
);

id_type!(
    /// An end user's id: the body's `user_id` (`none` mode), or a verified
    /// token's `sub` ([`UserId::verified`]).
    UserId,
    "user_id"
);

impl UserId {
    /// A verified token's subject, which the token checks bounded already
    /// (it may hold characters a client-named id may not, as `auth0|x` does).
    pub fn verified(subject: String) -> Self {
        Self(subject)
    }
}

/// `application/json`, with any parameters (`; charset=utf-8`).
pub fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// 415 unless the body is declared JSON.
pub fn require_json(content_type: Option<&str>, what: &str) -> Result<(), ApiError> {
    if is_json_content_type(content_type) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send {what} as Content-Type: application/json"),
        ))
    }
}

/// 413 when a body is larger than a route takes.
pub fn require_size(body: &[u8], max: usize) -> Result<(), ApiError> {
    if body.len() > max {
        Err(ApiError::too_large(max))
    } else {
        Ok(())
    }
}

/// An optional JSON body: none (zero bytes) is the default; anything else
/// must be a JSON object (whitespace alone is not JSON).
pub fn json_body_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    json_object(body).map_err(|e| ApiError::invalid(format!("bad JSON body: {e}")))
}

/// A JSON object read into `T`. Only an object: serde would otherwise read
/// a struct from an array of its fields in order (`[5]` as `{"batch_size": 5}`).
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match serde_json::from_slice(body).map_err(|e| e.to_string())? {
        value @ serde_json::Value::Object(_) => {
            serde_json::from_value(value).map_err(|e| e.to_string())
        }
        _ => Err("the body must be a JSON object".to_string()),
    }
}

/// An optional whole number in a JSON body, for `#[serde(default,
/// deserialize_with = "api::whole_number")]`. JSON has one number type, so
/// `5.0` and `5e0` are the whole number 5 (JSON Schema's `integer` says so
/// too); a fraction is refused.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // i64::MAX as f64 rounds up to 2^63, so the bound excludes it.
    const BOUND: f64 = 9_223_372_036_854_775_808.0;
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < BOUND)
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a whole number")))
}

/// Highest page number any paged list accepts.
pub const MAX_PAGE: i64 = 100_000;

/// Parses `page` from a query string (`page=N`, 1-based, default 1), decoding
/// it as a form does (`page=%31` is page 1).
pub fn parse_page(query: &str) -> Result<i64, ApiError> {
    let raw = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "page")
        .map(|(_, value)| value.into_owned());
    let Some(raw) = raw else {
        return Ok(1);
    };
    raw.parse::<i64>()
        .ok()
        .filter(|p| (1..=MAX_PAGE).contains(p))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "`page` must be a whole number from 1 to {MAX_PAGE}"
            ))
        })
}

/// A conversation's public name: `conv_` and 32 lowercase hex digits (122
/// random bits, made by Postgres's `gen_random_uuid()` when the
/// conversation is). It is the capability to continue the conversation, so
/// a response names it only to the request that made the conversation or
/// named it; the row's `id` (a small integer) never leaves the service.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConversationHandle([u8; HANDLE_LEN]);

const HANDLE_PREFIX: &str = "conv_";
const HANDLE_LEN: usize = HANDLE_PREFIX.len() + 32;

impl ConversationHandle {
    /// `conv_` and 32 lowercase hex digits, or nothing.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(HANDLE_PREFIX)?;
        if digits.len() != 32
            || !digits
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        Some(Self(text.as_bytes().try_into().ok()?))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a handle is ASCII")
    }
}

impl std::fmt::Display for ConversationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ConversationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ConversationHandle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ConversationHandle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("not a conversation handle"))
    }
}

/// The `conversation_id` a history is paged by, if the query names one: a
/// handle, as the query's responses name conversations.
pub fn parse_conversation_param(query: &str) -> Result<Option<ConversationHandle>, ApiError> {
    let raw = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "conversation_id")
        .map(|(_, value)| value.into_owned());
    let Some(raw) = raw else {
        return Ok(None);
    };
    ConversationHandle::parse(&raw).map(Some).ok_or_else(|| {
        ApiError::invalid(
            "`conversation_id` must be a conversation id as a response named it (`conv_` and 32 hex digits)",
        )
    })
}

/// The zero-based index of a page's first item.
pub fn page_start(page: i64, per_page: i64) -> i64 {
    (page - 1) * per_page
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLE: &str = "conv_0123456789abcdef0123456789abcdef";

    #[test]
    fn a_handle_is_conv_and_32_lowercase_hex_digits() {
        let handle = ConversationHandle::parse(HANDLE).unwrap();
        assert_eq!(handle.to_string(), HANDLE);
        assert_eq!(
            serde_json::to_string(&handle).unwrap(),
            format!("\"{HANDLE}\"")
        );
        assert_eq!(
            serde_json::from_str::<ConversationHandle>(&format!("\"{HANDLE}\"")).unwrap(),
            handle
        );
        for bad in [
            "",
            "conv_",
            "42",
            "conv_0123456789ABCDEF0123456789abcdef",
            "conv_0123456789abcdef0123456789abcde",
            "conv_0123456789abcdef0123456789abcdef0",
            "resp_0123456789abcdef0123456789abcdef",
            "conv_0123456789abcdef0123456789abcdeg",
            "conv_0123456789abcdef0123456789abcdé",
        ] {
            assert_eq!(ConversationHandle::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_history_names_its_conversation_by_its_handle() {
        assert_eq!(parse_conversation_param(""), Ok(None));
        assert_eq!(parse_conversation_param("page=2"), Ok(None));
        assert_eq!(
            parse_conversation_param(
                "page=2&conversation_id=conv_0123456789abcdef0123456789abcdef"
            ),
            Ok(ConversationHandle::parse(
                "conv_0123456789abcdef0123456789abcdef"
            ))
        );
        for bad in [
            "conversation_id=17",
            "conversation_id=0",
            "conversation_id=x",
            "conversation_id=-1",
            "conversation_id=",
        ] {
            assert_eq!(
                parse_conversation_param(bad).unwrap_err().status(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn error_body_has_the_seed_field_names() {
        let body = ErrorBody::new("rate_limited", "Rate limit exceeded. Too many requests.");
        let value: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(value["detail"], "Rate limit exceeded. Too many requests.");
        assert_eq!(value["status"], "rate_limited");
        assert_eq!(value.as_object().unwrap().len(), 2);
    }

    #[test]
    fn each_code_has_its_wire_name_and_status() {
        for (code, wire, status) in [
            (ErrorCode::InvalidRequest, "invalid_request", 400),
            (
                ErrorCode::UnsupportedMediaType,
                "unsupported_media_type",
                415,
            ),
            (ErrorCode::ConfigurationError, "configuration_error", 500),
            (ErrorCode::SessionLimit, "session_limit", 429),
            (ErrorCode::RequestTimeout, "request_timeout", 408),
            (ErrorCode::UpstreamTimeout, "upstream_unavailable", 504),
            (ErrorCode::UpstreamBadResponse, "upstream_unavailable", 502),
            (ErrorCode::UpstreamUnavailable, "upstream_unavailable", 503),
        ] {
            assert_eq!((code.as_str(), code.status()), (wire, status));
            assert_eq!(
                ErrorCode::of_upstream_status(status).as_str(),
                "upstream_unavailable"
            );
        }
        assert_eq!(
            ErrorCode::of_upstream_status(504),
            ErrorCode::UpstreamTimeout
        );
        assert_eq!(
            ErrorCode::of_upstream_status(502),
            ErrorCode::UpstreamBadResponse
        );
        let e = ApiError::method_not_allowed("PUT", "/x", &["GET", "POST"]);
        assert_eq!(e.status(), 405);
        assert_eq!(e.headers, vec![("allow", "GET, POST".to_string())]);
        assert_eq!(e.body().status, "method_not_allowed");
        assert_eq!(
            ApiError::unauthorized("no").headers,
            vec![("www-authenticate", "Bearer".to_string())]
        );
    }

    #[test]
    fn ids_are_safe_tokens() {
        assert!(validate_id("session_id", "sess-1_a.b:c").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert_eq!(validate_id("session_id", bad).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn ids_are_parsed_once_and_read_as_text() {
        let session = SessionId::parse("sess-1").unwrap();
        assert_eq!(session, "sess-1");
        assert_eq!(session.len(), 6);
        assert_eq!(serde_json::to_value(&session).unwrap(), "sess-1");
        let refused = UserId::parse("a b").unwrap_err();
        assert_eq!(refused.status(), 400);
        assert!(refused.detail.contains("`user_id`"), "{}", refused.detail);
        assert_eq!(UserId::verified("auth0|x".into()), "auth0|x");
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(path_segment("s", "a%3Ab").unwrap(), "a:b");
        assert_eq!(path_segment("s", "plain").unwrap(), "plain");
        assert_eq!(path_segment("s", "a%20b").unwrap(), "a b");
        assert_eq!(path_segment("s", "%ff").unwrap_err().status(), 400);
    }

    #[test]
    fn content_type_parameters_are_accepted() {
        assert!(is_json_content_type(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("Application/JSON")));
        assert!(!is_json_content_type(Some("application/jsonp")));
        assert_eq!(require_json(None, "it").unwrap_err().status(), 415);
        assert_eq!(require_size(b"abc", 2).unwrap_err().status(), 413);
        assert!(require_size(b"ab", 2).is_ok());
    }

    #[test]
    fn optional_bodies_are_objects_or_nothing() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(default, deserialize_with = "whole_number")]
            n: Option<i64>,
        }
        for (whole, n) in [
            (&br#"{"n":5.0}"#[..], 5),
            (br#"{"n":1e3}"#, 1000),
            (br#"{"n":-2}"#, -2),
        ] {
            assert_eq!(json_body_or_default::<Body>(whole), Ok(Body { n: Some(n) }));
        }
        assert_eq!(
            json_body_or_default::<Body>(br#"{"n":null}"#),
            Ok(Body { n: None })
        );
        for fraction in [&br#"{"n":5.5}"#[..], br#"{"n":1e300}"#, br#"{"n":"5"}"#] {
            assert_eq!(
                json_body_or_default::<Body>(fraction).unwrap_err().status(),
                400
            );
        }
        assert_eq!(json_body_or_default::<Body>(b""), Ok(Body::default()));
        assert_eq!(
            json_body_or_default::<Body>(br#"{"n":5}"#),
            Ok(Body { n: Some(5) })
        );
        for refused in [
            &b"[5]"[..],
            b" ",
            b"\t",
            b"[]",
            b"5",
            b"null",
            b"\"n\"",
            br#"{"m":1}"#,
        ] {
            let e = json_body_or_default::<Body>(refused).unwrap_err();
            assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn pages_parse_like_a_form_and_start_where_they_should() {
        assert_eq!(parse_page(""), Ok(1));
        assert_eq!(parse_page("page=3"), Ok(3));
        assert_eq!(parse_page("x=1&page=2"), Ok(2));
        assert_eq!(parse_page("page=%31"), Ok(1));
        assert!(parse_page("page=0").is_err());
        assert!(parse_page("page=-1").is_err());
        assert!(parse_page("page=abc").is_err());
        assert!(parse_page("page=").is_err());
        assert_eq!(page_start(1, 50), 0);
        assert_eq!(page_start(3, 50), 100);
    }
}
