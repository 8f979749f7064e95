//! Structured log lines on stderr (the format is `chatbot_core::telemetry::log`).
//!
//! Each line leaves in one `blocking-write-and-flush`: `eprintln!` writes
//! every formatted piece separately, so under load the pieces of concurrent
//! requests interleaved mid-line on the host's stderr.

use std::fmt::Display;
use std::sync::OnceLock;

pub use chatbot_core::telemetry::log::{Dependency, Level};

static COMPONENT: OnceLock<&'static str> = OnceLock::new();

/// Names the component in its lines: its entry point calls this first (each
/// component, composed or not, has its own memory and so its own name).
pub fn set_component(name: &'static str) {
    let _ = COMPONENT.set(name);
}

pub fn error(event: &str, dependency: Dependency, message: impl Display) {
    write(Level::Error, event, dependency, message, &[]);
}

pub fn warn(event: &str, dependency: Dependency, message: impl Display) {
    write(Level::Warn, event, dependency, message, &[]);
}

pub fn info(event: &str, dependency: Dependency, message: impl Display) {
    write(Level::Info, event, dependency, message, &[]);
}

/// An event with extra fields (`session_id`, ...). Never pass a secret: the
/// redaction is a net, not a licence.
pub fn write(
    level: Level,
    event: &str,
    dependency: Dependency,
    message: impl Display,
    fields: &[(&str, &str)],
) {
    let message = message.to_string();
    let request_id = crate::request_id();
    let line = chatbot_core::telemetry::log::line(&chatbot_core::telemetry::log::Event {
        level,
        component: COMPONENT.get().copied().unwrap_or("unknown"),
        request_id: &request_id,
        event,
        dependency,
        message: &message,
        fields,
    });
    // One call with the whole line (at most 4000 bytes; the call takes 4096):
    // the host writes it at once. A failed log write has nowhere to go.
    let _ = wasi::cli::stderr::get_stderr().blocking_write_and_flush(line.as_bytes());
}
