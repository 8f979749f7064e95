//! A real Qdrant server for the run, when one is installed (`QDRANT_BIN`, or
//! `qdrant` on `PATH`: `.ci/run` puts `../shared/tools/qdrant/install.sh`'s
//! folder there). Started once per process on free loopback ports in a
//! temporary directory, with the tests' API key; each app that uses it gets a
//! collection name of its own, so tests share the server, not their data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::services::{data_dir, die_with_parent, free_port, spawn_owned};

/// The Qdrant binary to run, if any.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QDRANT_BIN") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("qdrant"))
        .find(|p| p.is_file())
}

pub struct RealQdrant {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    next_collection: AtomicU32,
}

impl RealQdrant {
    /// The process-wide server, started on first use; `None` when no Qdrant is installed.
    pub fn shared() -> Option<&'static RealQdrant> {
        static SERVER: OnceLock<Option<RealQdrant>> = OnceLock::new();
        SERVER
            .get_or_init(|| {
                let binary = binary()?;
                Some(start(binary).expect("starting the real Qdrant"))
            })
            .as_ref()
    }

    /// A collection name no other app of this run uses.
    pub fn fresh_collection(&self) -> String {
        let n = self.next_collection.fetch_add(1, Ordering::Relaxed);
        format!("test_{}_{n}", std::process::id())
    }
}

fn start(binary: PathBuf) -> Result<RealQdrant> {
    let (url, _pid) = spawn_owned(move || spawn(&binary))?;
    Ok(RealQdrant {
        url,
        next_collection: AtomicU32::new(0),
    })
}

fn spawn(binary: &std::path::Path) -> Result<(String, Child, tempfile::TempDir)> {
    let dir = data_dir()?;
    let (http, grpc) = (free_port()?, free_port()?);
    let mut command = Command::new(binary);
    command
        .current_dir(dir.path())
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
        .env("QDRANT__SERVICE__API_KEY", crate::TEST_QDRANT_KEY)
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .env("QDRANT__STORAGE__STORAGE_PATH", dir.path().join("storage"))
        .env(
            "QDRANT__STORAGE__SNAPSHOTS_PATH",
            dir.path().join("snapshots"),
        )
        .env(
            "QDRANT_INIT_FILE_PATH",
            dir.path().join(".qdrant-initialized"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let url = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", http)) {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return Ok((url, child, dir));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("qdrant exited early with {status}");
        }
        if Instant::now() > deadline {
            bail!("qdrant did not answer /healthz within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
