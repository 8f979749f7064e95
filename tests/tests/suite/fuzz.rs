//! The API against its contract: schemathesis, a generic OpenAPI fuzzer,
//! generates requests from `deploy/openapi.yaml` (valid ones and broken ones),
//! sends them to the real components, and checks every answer against the
//! document with all its checks: no 5xx, only documented status codes,
//! headers and bodies as documented, valid data accepted, invalid data
//! refused, 405 with `Allow` for methods a path does not take.
//!
//! schemathesis comes from `deploy/local/setup.sh --for-tests` (pinned in
//! `deploy/local/test-requirements.txt`); without it this test fails and says
//! how to install it, rather than passing without having run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chatbot_harness::{admin_authorization, project_root, TestApp};

/// Cases per operation and phase: enough to find what the document leaves
/// out, few enough for the whole run to stay well under two minutes on two
/// cores. `FUZZ_MAX_EXAMPLES` asks for more (a longer hunt, by hand).
const MAX_EXAMPLES: &str = "20";
/// The same seed every run: a failure reproduces, and the run does not flicker.
const SEED: &str = "20240614";
/// A hard stop, in case schemathesis or the app hangs.
const RUN_LIMIT: Duration = Duration::from_secs(110);

/// The pinned version, from the requirements file the setup script installs.
fn pinned_version() -> String {
    let path = project_root().join("deploy/local/test-requirements.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|line| line.trim().strip_prefix("schemathesis=="))
        .unwrap_or_else(|| panic!("{} pins no schemathesis version", path.display()))
        .to_string()
}

/// `SCHEMATHESIS` if set, else the setup script's virtual environment.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("rag-chatbot/test-venv/bin/schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract_under_fuzzing() {
    let _machine = chatbot_harness::machine::busy().await;
    let binary = schemathesis();
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let pinned = pinned_version();
    match &version {
        Ok(v) if v.ends_with(&format!("version {pinned}")) => {}
        other => panic!(
            "schemathesis {pinned} is needed at {} (found: {other:?}); \
             install it with `bash deploy/local/setup.sh --for-tests`, \
             or point SCHEMATHESIS at a schemathesis {pinned} executable",
            binary.display()
        ),
    }

    let app = TestApp::spawn().await.unwrap();
    let url = format!("http://{}", app.server.addr);
    // Reports, and anything else schemathesis writes, stay out of the project.
    let work = tempfile::tempdir().unwrap();
    let schema = project_root().join("deploy/openapi.yaml");
    let authorization = format!("Authorization: {}", admin_authorization());
    let max_examples = std::env::var("FUZZ_MAX_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into());
    let args = [
        "run",
        schema.to_str().unwrap(),
        "--url",
        &url,
        "--checks",
        "all",
        "--max-examples",
        &max_examples,
        "--seed",
        SEED,
        // Examples found in earlier runs would make this run differ from the last.
        "--generation-database",
        "none",
        // One worker: hypothesis 6 on Python 3.11 fails in `ast.parse` when
        // several threads describe strategies at once ("AST constructor
        // recursion depth mismatch").
        "--workers",
        "1",
        // Every failure of an operation, not only its first.
        "--continue-on-failure",
        "--request-timeout",
        "20",
        // The admin routes are fuzzed too; `ignored_auth` drops the header to check the 401s.
        "--header",
        &authorization,
        "--no-color",
    ];
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(args)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let limit = if max_examples == MAX_EXAMPLES {
        RUN_LIMIT
    } else {
        Duration::from_secs(3600)
    };
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {limit:?}"))
        .expect("running schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "schemathesis {pinned} took {:.1?} ({} {})",
        started.elapsed(),
        binary.display(),
        args.join(" ")
            .replace(&admin_authorization(), "Bearer <admin token>")
    );
    assert!(
        output.status.success(),
        "schemathesis found the API and deploy/openapi.yaml disagree ({}):\n{report}",
        output.status
    );
}
