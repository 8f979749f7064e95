//! Structured log lines on stderr (the format is `chatbot_core::telemetry::log`).
//!
//! Each line leaves in one write: `eprintln!` writes every formatted piece
//! separately, so under load the pieces of concurrent requests interleaved
//! mid-line on the host's stderr. A log write never blocks for long: WASI
//! 0.2's stderr is a blocking stream, and a host whose stderr is
//! back-pressured (a full pipe nobody reads) would stall every request of
//! the instance on a `blocking-write-and-flush`. A line waits at most
//! [`LOG_WAIT`] for room, else it is dropped and counted, and the next line
//! that leaves says how many were.

use std::cell::Cell;
use std::fmt::Display;
use std::sync::OnceLock;

pub use chatbot_core::telemetry::log::{Dependency, Level};

static COMPONENT: OnceLock<&'static str> = OnceLock::new();

/// The longest a log line waits for room on stderr before it is dropped.
pub const LOG_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

thread_local! {
    /// Lines dropped since the last one that left.
    static DROPPED: Cell<u64> = const { Cell::new(0) };
}

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
    if !emit(line(level, event, dependency, &message.to_string(), fields).as_bytes()) {
        DROPPED.set(DROPPED.get() + 1);
        return;
    }
    let dropped = DROPPED.replace(0);
    if dropped > 0 {
        let message = format!("{dropped} log lines were dropped: stderr had no room");
        let note = line(
            Level::Warn,
            "log_lines_dropped",
            Dependency::None,
            &message,
            &[],
        );
        if !emit(note.as_bytes()) {
            DROPPED.set(DROPPED.get() + dropped);
        }
    }
}

/// One log line of this component, in the request's name.
fn line(
    level: Level,
    event: &str,
    dependency: Dependency,
    message: &str,
    fields: &[(&str, &str)],
) -> String {
    chatbot_core::telemetry::log::line(&chatbot_core::telemetry::log::Event {
        level,
        component: COMPONENT.get().copied().unwrap_or("unknown"),
        request_id: &crate::request_id(),
        event,
        dependency,
        message,
        fields,
    })
}

/// Writes `line` in one call (at most 4000 bytes), waiting at most
/// [`LOG_WAIT`] for stderr to take it. Whether it was written (a failed
/// log write has nowhere to go).
fn emit(line: &[u8]) -> bool {
    let stderr = wasi::cli::stderr::get_stderr();
    let room = |stderr: &wasi::io::streams::OutputStream| {
        stderr
            .check_write()
            .is_ok_and(|room| room >= line.len() as u64)
    };
    if !room(&stderr) {
        let ready = stderr.subscribe();
        let timer = wasi::clocks::monotonic_clock::subscribe_duration(LOG_WAIT.as_nanos() as u64);
        wasi::io::poll::poll(&[&ready, &timer]);
        if !room(&stderr) {
            return false;
        }
    }
    // Written, then flushed without waiting for the flush to end.
    stderr.write(line).is_ok() && stderr.flush().is_ok()
}
