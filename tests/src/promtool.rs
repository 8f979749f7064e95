//! Runs `promtool` (Debian package `prometheus`), for the tests of the
//! exposition, the alert rules and the dashboard's queries.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool args...` with `stdin`; whether it succeeded, and its stdout and stderr.
pub fn run(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; see .ci/run)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
