//! One log event as one JSON line.
//!
//! Components write these to stderr, one write per line (see
//! `chatbot_spin::log`): under load, lines of concurrent requests then never
//! interleave mid-line. A message is the text of a host or upstream error, so
//! it is cut at a stack trace, stripped of anything that looks like a
//! credential and capped; JSON escapes its newlines, so a line never breaks.

use std::fmt::Write as _;

use crate::config::ends_token;

/// Characters of a message kept (the rest is dropped and `truncated` set).
pub const MESSAGE_CHARS: usize = 300;
/// Characters of an extra field's value kept.
pub const FIELD_CHARS: usize = 120;
/// Characters of the fixed fields (component, request id, event) kept.
const NAME_CHARS: usize = 64;
/// No line is longer: a WASI `blocking-write-and-flush` takes at most 4096
/// bytes, and the whole line must go in one write.
pub const MAX_LINE_BYTES: usize = 4000;

const REDACTED: &str = "[redacted]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
        }
    }
}

/// What the event is about: the service that failed, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    None,
    Redis,
    Postgres,
    OpenAi,
    Qdrant,
    /// The identity provider's key set (JWKS).
    Jwks,
    /// The application's variables.
    Config,
    /// The HTTP client of the request.
    Client,
}

impl Dependency {
    /// The dependency an upstream error names (`chatbot_core::chat::upstream::OPENAI`, `QDRANT`).
    pub fn of_service(service: &str) -> Self {
        match service {
            crate::chat::upstream::OPENAI => Dependency::OpenAi,
            crate::chat::upstream::QDRANT => Dependency::Qdrant,
            _ => Dependency::None,
        }
    }

    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            Dependency::None => return None,
            Dependency::Redis => "redis",
            Dependency::Postgres => "postgres",
            Dependency::OpenAi => "openai",
            Dependency::Qdrant => "qdrant",
            Dependency::Jwks => "jwks",
            Dependency::Config => "config",
            Dependency::Client => "client",
        })
    }
}

/// One event, before formatting.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub level: Level,
    pub component: &'a str,
    pub request_id: &'a str,
    /// A stable snake_case name (`history_write_lost`), what alerts match on.
    pub event: &'a str,
    pub dependency: Dependency,
    pub message: &'a str,
    /// Extra fields (`session_id`, ...): sanitised and capped like the message.
    pub fields: &'a [(&'a str, &'a str)],
}

/// The event as one JSON line, with its trailing newline, at most
/// [`MAX_LINE_BYTES`] long.
pub fn line(event: &Event) -> String {
    let full = format_line(event, MESSAGE_CHARS, event.fields);
    if full.len() <= MAX_LINE_BYTES {
        return full;
    }
    // Only escapes (`\u0001` is 6 bytes) can make it this long: keep less.
    format_line(event, MESSAGE_CHARS / 4, &[])
}

fn format_line(event: &Event, message_chars: usize, fields: &[(&str, &str)]) -> String {
    let (message, message_cut) = sanitize(event.message, message_chars);
    let mut out = String::with_capacity(256 + message.len());
    out.push('{');
    push_field(&mut out, "level", event.level.as_str());
    push_field(&mut out, "component", cap(event.component, NAME_CHARS).0);
    push_field(&mut out, "request_id", cap(event.request_id, NAME_CHARS).0);
    push_field(&mut out, "event", cap(event.event, NAME_CHARS).0);
    if let Some(dependency) = event.dependency.as_str() {
        push_field(&mut out, "dependency", dependency);
    }
    push_field(&mut out, "message", &message);
    let mut truncated = message_cut;
    for (name, value) in fields {
        let (value, cut) = sanitize(value, FIELD_CHARS);
        truncated |= cut;
        push_field(&mut out, cap(name, NAME_CHARS).0, &value);
    }
    if truncated {
        out.push_str(",\"truncated\":true");
    }
    out.push_str("}\n");
    out
}

fn push_field(out: &mut String, name: &str, value: &str) {
    if !out.ends_with('{') {
        out.push(',');
    }
    // serde_json escapes quotes, backslashes and every control character.
    let _ = write!(
        out,
        "{}:{}",
        serde_json::Value::from(name),
        serde_json::Value::from(value)
    );
}

/// The text cut at a stack trace, redacted, then capped; and whether it lost anything.
pub fn sanitize(text: &str, max_chars: usize) -> (String, bool) {
    let (text, cut_at_trace) = cut_backtrace(text);
    let redacted = redact(text.trim_end());
    let (capped, capped_cut) = cap(&redacted, max_chars);
    let mut out = capped.to_string();
    if capped_cut {
        out.push('…');
    }
    (out, cut_at_trace || capped_cut)
}

/// The first `max_chars` characters (never splitting one), and whether any were dropped.
fn cap(text: &str, max_chars: usize) -> (&str, bool) {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// What starts a stack trace in a host's error text: anyhow's `{:?}` with
/// `RUST_BACKTRACE` set, std's panic message, `std::backtrace::Backtrace`'s `{:?}`.
const BACKTRACE_MARKERS: [&str; 3] = ["stack backtrace:", "\nbacktrace", "backtrace ["];

fn cut_backtrace(text: &str) -> (&str, bool) {
    let lower = text.to_ascii_lowercase();
    match BACKTRACE_MARKERS
        .iter()
        .filter_map(|marker| lower.find(marker))
        .min()
    {
        // `to_ascii_lowercase` keeps byte offsets, so `at` is a char boundary of `text`.
        Some(at) => (&text[..at], true),
        None => (text, false),
    }
}

/// Keys whose value is a secret, in `key=value` (connection strings, query
/// strings) or `key: value` (headers, `Debug` output) form.
const SECRET_KEYS: [&str; 8] = [
    "password",
    "passwd",
    "api_key",
    "api-key",
    "apikey",
    "secret",
    "token",
    "authorization",
];

/// Replaces what looks like a credential with `[redacted]`: URLs' userinfo,
/// `Bearer` tokens, `sk-` keys (OpenAI's: at least 8 key characters) and the
/// values of [`SECRET_KEYS`].
pub fn redact(text: &str) -> String {
    let text = crate::config::redact_userinfo(text);
    let text = redact_after(&text, "bearer ", true, ends_token, 1);
    let text = redact_after(&text, "sk-", false, |c| !is_word(c), 8);
    redact_key_values(&text)
}

/// Copies `text` from `copied` up to `value_start`, then `[redacted]` for
/// the `value_len` bytes there; returns where the copy goes on from.
fn redact_span(
    out: &mut String,
    text: &str,
    copied: usize,
    value_start: usize,
    value_len: usize,
) -> usize {
    out.push_str(&text[copied..value_start]);
    out.push_str(REDACTED);
    value_start + value_len
}

/// Replaces the value after each `marker` that starts a word: the value
/// runs to the first character for which `value_ends` holds, and is replaced
/// only when it has at least `min_len` bytes.
fn redact_after(
    text: &str,
    marker: &str,
    ignore_case: bool,
    value_ends: fn(char) -> bool,
    min_len: usize,
) -> String {
    // ASCII lowercasing keeps every byte offset.
    let haystack = if ignore_case {
        text.to_ascii_lowercase()
    } else {
        text.to_string()
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = haystack[from..].find(marker) {
        let start = from + found;
        let value_start = start + marker.len();
        from = value_start;
        if text[..start].chars().next_back().is_some_and(is_word) {
            continue;
        }
        let value = &text[value_start..];
        let value_len = value.find(value_ends).unwrap_or(value.len());
        if value_len < min_len.max(1) {
            continue;
        }
        copied = redact_span(&mut out, text, copied, value_start, value_len);
        from = copied;
    }
    out.push_str(&text[copied..]);
    out
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `password=...`, `password: ...`, `"password": "..."`, `password: Some([..])`.
fn redact_key_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    'search: while from < text.len() {
        let Some((start, key)) = SECRET_KEYS
            .iter()
            .filter_map(|key| lower[from..].find(key).map(|at| (from + at, *key)))
            .min()
        else {
            break;
        };
        from = start + key.len();
        // `token` inside `tokens` or `max_tokens` is not a secret.
        let before = text[..start].chars().next_back();
        let after_key = &text[from..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric())
            || after_key.chars().next().is_some_and(is_word)
        {
            continue;
        }
        // The separator: optional closing quote, `=` or `:`, spaces, optional opening quote.
        let mut value_start = from;
        let mut seen_separator = false;
        for c in after_key.chars() {
            match c {
                '"' | '\'' | ' ' => {}
                '=' | ':' if !seen_separator => seen_separator = true,
                _ => break,
            }
            value_start += c.len_utf8();
        }
        if !seen_separator {
            continue 'search;
        }
        let value = &text[value_start..];
        let mut value_len = if value.starts_with("Some(") {
            value.find(')').map_or(value.len(), |close| close + 1)
        } else {
            value.find(ends_token).unwrap_or(value.len())
        };
        // `Authorization: Bearer xyz`: the scheme and its credentials.
        if ["bearer", "basic"].contains(&value[..value_len].to_ascii_lowercase().as_str()) {
            let credentials = value[value_len..].strip_prefix(' ').unwrap_or("");
            let len = if credentials.starts_with(REDACTED) {
                REDACTED.len()
            } else {
                credentials.find(ends_token).unwrap_or(credentials.len())
            };
            if len > 0 {
                value_len += 1 + len;
            }
        }
        if value_len == 0 {
            continue;
        }
        copied = redact_span(&mut out, text, copied, value_start, value_len);
        from = copied;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(message: &'a str, fields: &'a [(&'a str, &'a str)]) -> Event<'a> {
        Event {
            level: Level::Error,
            component: "query",
            request_id: "0123abcd",
            event: "history_write_lost",
            dependency: Dependency::Postgres,
            message,
            fields,
        }
    }

    fn parsed(line: &str) -> serde_json::Value {
        assert!(line.ends_with('\n'), "{line:?}");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        serde_json::from_str(line).expect("a JSON line")
    }

    #[test]
    fn an_event_is_one_json_line_with_its_fields() {
        let line = line(&event("connection refused", &[("session_id", "s-1")]));
        let value = parsed(&line);
        assert_eq!(value["level"], "error");
        assert_eq!(value["component"], "query");
        assert_eq!(value["request_id"], "0123abcd");
        assert_eq!(value["event"], "history_write_lost");
        assert_eq!(value["dependency"], "postgres");
        assert_eq!(value["message"], "connection refused");
        assert_eq!(value["session_id"], "s-1");
        assert!(value.get("truncated").is_none());
    }

    #[test]
    fn no_dependency_no_field() {
        let mut e = event("left", &[]);
        e.dependency = Dependency::None;
        assert!(parsed(&line(&e)).get("dependency").is_none());
    }

    #[test]
    fn newlines_quotes_and_control_characters_are_escaped() {
        let message = "first\nsecond\r\n\"quoted\" \\ tab\t bell\u{7}";
        let line = line(&event(message, &[("note", "a\nb")]));
        let value = parsed(&line);
        assert_eq!(value["message"], message);
        assert_eq!(value["note"], "a\nb");
    }

    #[test]
    fn a_long_message_is_capped_on_a_char_boundary() {
        // Multi-byte characters: a byte cut would split one.
        let message = "é".repeat(MESSAGE_CHARS * 3);
        let value = parsed(&line(&event(&message, &[])));
        let kept = value["message"].as_str().unwrap();
        assert_eq!(
            kept.chars().count(),
            MESSAGE_CHARS + 1,
            "the cap and an ellipsis"
        );
        assert!(kept.ends_with('…'));
        assert_eq!(value["truncated"], true);
    }

    #[test]
    fn a_line_of_control_characters_stays_within_one_write() {
        let message = "\u{1}".repeat(10_000);
        let field = "\u{2}".repeat(10_000);
        let fields = [
            ("a", field.as_str()),
            ("b", field.as_str()),
            ("c", field.as_str()),
        ];
        let line = line(&event(&message, &fields));
        assert!(line.len() <= MAX_LINE_BYTES, "{} bytes", line.len());
        assert_eq!(parsed(&line)["truncated"], true);
    }

    /// What a failed Postgres call looked like with `RUST_BACKTRACE=1`: the
    /// host's error (anyhow `{:?}`), with the address, then the trace.
    #[test]
    fn a_host_error_with_a_backtrace_becomes_a_short_redacted_line() {
        let mut message = String::from(
            "query failed: Error { kind: Connect, cause: Some(Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }) } \
             opening postgres://chatbot:pg-s3cret@db:5432/chatbot\n\nCaused by:\n    Connection refused (os error 111)\n\nStack backtrace:\n",
        );
        for frame in 0..60 {
            message.push_str(&format!(
                "  {frame}: tokio_postgres::connect::connect_once::{{{{closure}}}}\n             at /cargo/registry/src/tokio-postgres-0.7.13/src/connect.rs:{frame}:5\n"
            ));
        }
        assert!(message.len() > 3000);
        let line = line(&event(&message, &[]));
        assert!(line.len() < 600, "{} bytes: {line}", line.len());
        let value = parsed(&line);
        let kept = value["message"].as_str().unwrap();
        assert!(kept.contains("Connection refused"), "{kept}");
        assert!(!kept.contains("connect_once"), "{kept}");
        assert!(!line.contains("pg-s3cret"), "{line}");
        assert!(
            kept.contains("postgres://[redacted]@db:5432/chatbot"),
            "{kept}"
        );
        assert_eq!(value["truncated"], true);
    }

    #[test]
    fn other_backtrace_forms_are_cut() {
        for text in [
            "boom\nBacktrace:\n 0: main",
            "boom Backtrace [{ fn: \"main\" }]",
            "boom\nstack backtrace:\n   0: rust_begin_unwind",
        ] {
            let (kept, cut) = sanitize(text, MESSAGE_CHARS);
            assert_eq!(kept, "boom", "{text:?}");
            assert!(cut);
        }
    }

    #[test]
    fn credentials_are_redacted() {
        let cases = [
            (
                "redis://:r3dis-pw@cache:6379/0 refused",
                "redis://[redacted]@cache:6379/0 refused",
            ),
            (
                "postgres://app:p@ss/w?rd@db/chatbot failed",
                "postgres://[redacted]@db/chatbot failed",
            ),
            (
                "sent Authorization: Bearer eyJhbGciOi.abc.def and failed",
                "sent Authorization: [redacted] and failed",
            ),
            (
                "invalid key sk-proj-AbCdEf123456 given",
                "invalid key sk-[redacted] given",
            ),
            (
                "host=db user=app password=hunter2 dbname=chatbot",
                "host=db user=app password=[redacted] dbname=chatbot",
            ),
            (
                "Config { user: Some(\"app\"), password: Some([104, 117, 110]), dbname: None }",
                "Config { user: Some(\"app\"), password: [redacted], dbname: None }",
            ),
            (
                "{\"api_key\": \"qdrant-key-1\"}",
                "{\"api_key\": \"[redacted]\"}",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text:?}");
        }
    }

    #[test]
    fn a_bearer_token_alone_is_redacted() {
        assert_eq!(redact("got bearer abc.def.ghi"), "got bearer [redacted]");
    }

    #[test]
    fn ordinary_words_are_kept() {
        for text in [
            "charging 120 tokens failed",
            "max_tokens must be positive",
            "task-runner: http://example.com/path?q=1 answered 503",
            "disk-full",
            "the token is expired",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn a_secret_in_an_extra_field_is_redacted() {
        let line = line(&event("x", &[("url", "https://u:secret-pw@h/")]));
        assert!(!line.contains("secret-pw"), "{line}");
    }
}
