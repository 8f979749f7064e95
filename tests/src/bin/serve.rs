//! `serve`: runs the application from `spin.toml` on a local port, as
//! `spin up` would — the development host for machines without the `spin` CLI,
//! and the host the benchmarks use.
//!
//! Variables come from `SPIN_VARIABLE_<NAME>` (as in Spin). Options:
//!   --manifest PATH     the manifest (default: spin.toml in the project)
//!   --listen ADDR       where to listen (default 127.0.0.1:3000)
//!   --migrate           apply migrations/ to `postgres_address` first
//!   --stubs             start local OpenAI- and Qdrant-compatible stand-ins and use them
//!                       (for trying the app without an OpenAI key or a Qdrant server)

use chatbot_core::config::names;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chatbot_harness::manifest::{Manifest, ResolvedVariables};
use chatbot_harness::{project_root, services, stubs, App, AppOptions};

struct Options {
    manifest: PathBuf,
    listen: SocketAddr,
    migrate: bool,
    stubs: bool,
}

fn options() -> Result<Options> {
    let mut options = Options {
        manifest: project_root().join("spin.toml"),
        listen: "127.0.0.1:3000".parse()?,
        migrate: false,
        stubs: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--manifest" => {
                options.manifest = args.next().context("--manifest needs a path")?.into()
            }
            "--listen" => {
                options.listen = args.next().context("--listen needs an address")?.parse()?
            }
            "--migrate" => options.migrate = true,
            "--stubs" => options.stubs = true,
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("serve.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    let manifest = Manifest::load(&options.manifest)?;
    let mut variables: BTreeMap<String, String> = ResolvedVariables::env_overrides(&manifest);

    // Keep the stand-ins alive for as long as we serve.
    let mut _stand_ins = None;
    if options.stubs {
        let openai = stubs::openai::OpenAiStub::start("local-stub-key", 256).await?;
        let qdrant = stubs::qdrant::QdrantStub::start(None).await?;
        for (name, value) in [
            (names::OPENAI_BASE_URL, openai.base_url()),
            (names::OPENAI_API_KEY, "local-stub-key".to_string()),
            (names::OPENAI_ALLOWED_HOST, openai.server.origin()),
            (names::QDRANT_URL, qdrant.url()),
            (names::QDRANT_API_KEY, String::new()),
            (names::QDRANT_ALLOWED_HOST, qdrant.url()),
        ] {
            variables.insert(name.to_string(), value);
        }
        eprintln!(
            "using local stand-ins: OpenAI-compatible at {}, Qdrant-compatible at {}",
            openai.base_url(),
            qdrant.url()
        );
        _stand_ins = Some((openai, qdrant));
    }

    let resolved = ResolvedVariables::resolve(&manifest, &variables)?;
    // Keep the allow-list in step with the addresses unless told otherwise.
    for (address, allowed) in chatbot_harness::ALLOW_LIST_VARIABLES {
        if !variables.contains_key(allowed) {
            // An empty address (jwt_jwks_url when no JWKS is used) keeps the manifest's default.
            if let Some(value) = resolved.get(address).filter(|v| !v.trim().is_empty()) {
                variables.insert(allowed.to_string(), chatbot_harness::origin_of(value));
            }
        }
    }

    if options.migrate {
        let address = ResolvedVariables::resolve(&manifest, &variables)?
            .get(names::POSTGRES_ADDRESS)
            .context("postgres_address is not set")?
            .to_string();
        services::migrate(&address)
            .await
            .context("applying migrations")?;
        eprintln!(
            "migrations applied to {}",
            chatbot_core::config::redact_userinfo(&address)
        );
    }

    let app = Arc::new(App::load(AppOptions {
        variables,
        ..AppOptions::new(options.manifest.clone())
    })?);
    let server = chatbot_harness::server::start(app.clone(), options.listen).await?;
    eprintln!(
        "serving {} on {}",
        app.manifest.application.name,
        server.origin()
    );
    for trigger in &app.manifest.trigger.http {
        eprintln!(
            "  {}{}  -> {}",
            server.origin(),
            trigger.route,
            trigger.component
        );
    }
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping");
    Ok(())
}
