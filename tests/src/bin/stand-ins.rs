//! `stand-ins`: the local OpenAI- and Qdrant-compatible servers on their own,
//! for running the application under a real `spin up` without an OpenAI key
//! or a Qdrant server (`deploy/local/run.sh` does). Prints the Spin variables
//! that point the application at them, one `NAME=value` a line, then serves
//! until stopped.
//!
//! Options:
//!   --env-file PATH        also write the variables there (`export NAME=value` lines)
//!   --chat-latency-ms N    answer chat completions after N ms (default 0)
//!   --no-qdrant            only the OpenAI stand-in (a real Qdrant is used)

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chatbot_core::config::names;
use chatbot_harness::stubs;

/// The key the OpenAI stand-in takes (it is no secret: nothing real is behind it).
const STAND_IN_KEY: &str = "local-stub-key";

#[tokio::main]
async fn main() -> Result<()> {
    let mut env_file = None;
    let mut chat_latency = Duration::ZERO;
    let mut with_qdrant = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--env-file" => env_file = Some(args.next().context("--env-file needs a path")?),
            "--chat-latency-ms" => {
                chat_latency = Duration::from_millis(
                    args.next()
                        .context("--chat-latency-ms needs a number")?
                        .parse()?,
                )
            }
            "--no-qdrant" => with_qdrant = false,
            other => bail!("unknown option {other:?}"),
        }
    }
    let openai = stubs::openai::OpenAiStub::start(STAND_IN_KEY, 256).await?;
    openai
        .controls()
        .set_latency(stubs::openai::CHAT, chat_latency);
    let mut variables = vec![
        (names::OPENAI_BASE_URL, openai.base_url()),
        (names::OPENAI_API_KEY, STAND_IN_KEY.to_string()),
        (names::OPENAI_ALLOWED_HOST, openai.server.origin()),
    ];
    let qdrant = if with_qdrant {
        let qdrant = stubs::qdrant::QdrantStub::start(None).await?;
        variables.extend([
            (names::QDRANT_URL, qdrant.url()),
            (names::QDRANT_API_KEY, String::new()),
            (names::QDRANT_ALLOWED_HOST, qdrant.url()),
        ]);
        Some(qdrant)
    } else {
        None
    };
    let lines: Vec<String> = variables
        .iter()
        .map(|(name, value)| format!("SPIN_VARIABLE_{}={value}", name.to_uppercase()))
        .collect();
    if let Some(path) = env_file {
        let exports: String = lines.iter().map(|l| format!("export {l}\n")).collect();
        std::fs::write(&path, exports).with_context(|| format!("writing {path}"))?;
    }
    for line in &lines {
        println!("{line}");
    }
    tokio::signal::ctrl_c().await?;
    drop((openai, qdrant));
    Ok(())
}
