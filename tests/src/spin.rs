//! The product under a real `spin up` (Spin 4.0.x: `SPIN_BIN`, or `spin` on
//! `PATH`; `.ci/run` puts `../shared/tools/spin/install.sh`'s folder there),
//! with the shipped `spin.toml`, a test's own Redis and Postgres databases,
//! the OpenAI stand-in, and the real Qdrant when one is installed (else the
//! stand-in). What the harness cannot promise about Spin is checked here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chatbot_core::config::names;

use crate::real_qdrant::RealQdrant;
use crate::services::{data_dir, die_with_parent, free_port, services};
use crate::stubs::openai::OpenAiStub;
use crate::stubs::qdrant::QdrantStub;
use crate::{project_root, standard_variables, Deployment};

/// The Spin the suite runs, or why there is none.
pub fn spin_binary() -> std::result::Result<PathBuf, String> {
    let candidate = match std::env::var_os("SPIN_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("spin"))
            .find(|p| p.is_file())
            .ok_or("no `spin` on PATH and SPIN_BIN is not set")?,
    };
    let output = Command::new(&candidate)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", candidate.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !version.starts_with("spin 4.0.") {
        return Err(format!(
            "{} is {version:?}, not Spin 4.0.x",
            candidate.display()
        ));
    }
    Ok(candidate)
}

/// What Qdrant an app under Spin talks to.
pub enum Qdrant {
    /// The real server, with a collection of the app's own.
    Real { url: String, collection: String },
    /// The stand-in, where no Qdrant is installed.
    StandIn(Arc<QdrantStub>),
}

impl Qdrant {
    pub fn url(&self) -> String {
        match self {
            Qdrant::Real { url, .. } => url.clone(),
            Qdrant::StandIn(stub) => stub.url(),
        }
    }

    pub fn collection(&self) -> &str {
        match self {
            Qdrant::Real { collection, .. } => collection,
            Qdrant::StandIn(_) => crate::DEFAULT_COLLECTION,
        }
    }
}

/// How to start an app under Spin.
#[derive(Default)]
pub struct SpinAppBuilder {
    manifest: Option<PathBuf>,
    variables: BTreeMap<String, String>,
    spin_args: Vec<String>,
    alone: bool,
}

impl SpinAppBuilder {
    /// Runs the app with the machine to itself (see [`crate::machine`]):
    /// for a test that measures how Spin writes its answers.
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self
    }

    /// Another manifest than the project's `spin.toml` (the harness's probe app, say).
    pub fn manifest(mut self, path: impl Into<PathBuf>) -> Self {
        self.manifest = Some(path.into());
        self
    }

    /// Sets a variable (`SPIN_VARIABLE_<NAME>`).
    pub fn variable(mut self, name: &str, value: impl Into<String>) -> Self {
        self.variables.insert(name.to_string(), value.into());
        self
    }

    /// Points a dependency elsewhere and allows it in `allowed_outbound_hosts`.
    pub fn address(mut self, variable: &str, url: impl Into<String>) -> Self {
        self.variables
            .extend(crate::address_variables(variable, url.into()));
        self
    }

    /// An option for `spin up` (`--max-instance-reuse-count`, say).
    pub fn spin_arg(mut self, arg: impl Into<String>) -> Self {
        self.spin_args.push(arg.into());
        self
    }

    /// Starts the app under Spin, or says why the test is skipped: `None`
    /// when no Spin 4.0.x is installed (a failure to start one that is, panics).
    pub async fn spawn_or_skip(self, test: &str) -> Option<SpinApp> {
        match spin_binary() {
            Ok(spin) => Some(
                self.spawn(&spin)
                    .await
                    .unwrap_or_else(|e| panic!("starting the app under {}: {e:#}", spin.display())),
            ),
            Err(why) => {
                eprintln!("{test}: SKIPPED on real Spin: {why}");
                None
            }
        }
    }

    pub async fn spawn(self, spin: &Path) -> Result<SpinApp> {
        // Before the compile lock: a test waiting to run alone holds no other.
        let machine = if self.alone {
            crate::machine::alone().await
        } else {
            crate::machine::busy().await
        };
        reap_strays();
        // The first start compiles the components (half a minute on two
        // cores, then Spin's cache has them): one at a time until one has
        // started, so that concurrent tests do not all compile them at once.
        static COMPILED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
        let mut first = Some(COMPILED.lock().await).filter(|compiled| !**compiled);
        let services = services();
        let redis_url = services.fresh_redis().await?;
        let database = services.fresh_postgres().await?;
        let openai = Arc::new(
            OpenAiStub::start(crate::TEST_OPENAI_KEY, crate::TEST_EMBEDDING_DIMENSIONS).await?,
        );
        let qdrant = match RealQdrant::shared() {
            Some(real) => Qdrant::Real {
                url: real.url.clone(),
                collection: real.fresh_collection(),
            },
            None => Qdrant::StandIn(Arc::new(
                QdrantStub::start(Some(crate::TEST_QDRANT_KEY)).await?,
            )),
        };
        let mut variables =
            standard_variables(&redis_url, &database.url, &openai.base_url(), &qdrant.url());
        variables.insert(
            names::QDRANT_COLLECTION.to_string(),
            qdrant.collection().to_string(),
        );
        variables.extend(self.variables);

        let dir = data_dir()?;
        let port = free_port()?;
        let log_path = dir.path().join("spin-up.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(spin);
        command
            .arg("up")
            .arg("--from")
            .arg(
                self.manifest
                    .unwrap_or_else(|| project_root().join("spin.toml")),
            )
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            // As the README tells operators: a little above request_timeout_ms plus 5 s.
            .args(["--request-timeout", "40s"])
            .args(&self.spin_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: `spin up` runs the trigger as a child
            // that outlives it when only `spin up` is killed.
            command.process_group(0);
        }
        die_with_parent(&mut command);
        let mut child = command.spawn().context("starting spin up")?;
        let marker = stray_marker(child.id());
        std::fs::write(&marker, b"")?;
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            // Spin listens once its components are ready: any answer will do
            // (a manifest without `/health` answers Spin's own 404).
            if let Ok(mut client) = crate::wire::WireClient::connect(addr).await {
                if client.send("GET", "/health", &[], b"").await.is_ok() {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "spin up exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "spin up did not answer HTTP within 300 s:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(compiled) = first.as_mut() {
            **compiled = true;
        }
        drop(first);
        Ok(SpinApp {
            deployment: Deployment {
                addr,
                redis_url,
                database,
                settle: None,
            },
            openai,
            qdrant,
            child,
            marker,
            dir,
            _machine: machine,
        })
    }
}

/// The application running under a real `spin up`; stopped when dropped.
pub struct SpinApp {
    pub deployment: Deployment,
    pub openai: Arc<OpenAiStub>,
    pub qdrant: Qdrant,
    child: Child,
    marker: PathBuf,
    dir: tempfile::TempDir,
    // Released after Drop has stopped Spin.
    _machine: crate::machine::Share,
}

impl std::ops::Deref for SpinApp {
    type Target = Deployment;

    fn deref(&self) -> &Deployment {
        &self.deployment
    }
}

impl SpinApp {
    pub fn builder() -> SpinAppBuilder {
        SpinAppBuilder::default()
    }

    /// The process ids of `spin up` and its trigger (whose CPU the benchmark reads).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `spin up` printed, and each component's stderr.
    pub fn log(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.dir.path().join("spin-up.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if let Ok(contents) = std::fs::read_to_string(&path) {
                    text.push_str(&format!("\n--- {}\n{contents}", path.display()));
                }
            }
        }
        text
    }
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        stop_group(self.child.id());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.marker);
    }
}

fn stop_group(group: u32) {
    let group = -(group as i32);
    // SAFETY: kill has no memory effects.
    unsafe {
        libc::kill(group, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(100));
    unsafe {
        libc::kill(group, libc::SIGKILL);
    }
}

const STRAY_PREFIX: &str = "chatbot-spin-group-";

/// A file naming this process and a `spin up` group it started, so that a
/// later run can stop the group if this process dies without dropping it.
fn stray_marker(group: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{STRAY_PREFIX}{}-{group}", std::process::id()))
}

/// Stops the `spin up` groups of test processes that are gone.
fn reap_strays() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((owner, group)) = name
            .strip_prefix(STRAY_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(o, g)| Some((o.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            stop_group(group);
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
