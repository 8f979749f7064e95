//! Real Redis and PostgreSQL servers for the test run.
//!
//! Each is started once per process, on a free loopback port in a temporary
//! directory, from a thread that lives as long as the process, with a
//! parent-death signal so no server outlives the tests. `REDIS_URL` and
//! `DATABASE_URL` point at servers of your own instead.
//!
//! Isolation: each test gets its own Redis database number (flushed first)
//! and its own Postgres database, cloned from a template that has the
//! migrations applied.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Databases redis-server is started with, so every test can have its own.
const REDIS_DATABASES: u32 = 4096;
const TEMPLATE_DB: &str = "chatbot_template";
/// Set (to anything) to start PostgreSQL with its durability settings intact.
pub const DURABLE_POSTGRES: &str = "CHATBOT_DURABLE_POSTGRES";

/// A test's Postgres database (`url`); dropped once the last holder is gone.
pub struct TestDatabase {
    pub url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(services) = SERVICES.get() {
            let name = std::mem::take(&mut self.name);
            services.finished_databases.lock().unwrap().push(name);
        }
    }
}

static SERVICES: OnceLock<Services> = OnceLock::new();

pub struct Services {
    /// `redis://127.0.0.1:PORT` (no database number).
    pub redis_base: String,
    redis_databases: u32,
    /// `postgres://USER@127.0.0.1:PORT` (no database name).
    pub postgres_base: String,
    /// The servers' process ids when this process started them (the
    /// benchmark reads their CPU time); `None` for `REDIS_URL`/`DATABASE_URL`.
    pub redis_pid: Option<u32>,
    pub postgres_pid: Option<u32>,
    next_redis_db: AtomicU32,
    next_pg_db: AtomicU32,
    /// Databases no [`TestDatabase`] holds any more, to drop.
    finished_databases: std::sync::Mutex<Vec<String>>,
    template_ready: tokio::sync::Mutex<bool>,
}

/// The process-wide servers, started on first use.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| start().expect("starting Redis and PostgreSQL for the tests"))
}

fn start() -> Result<Services> {
    let (redis_base, redis_databases, redis_pid) = match std::env::var("REDIS_URL") {
        Ok(url) => (url.trim_end_matches('/').to_string(), 16, None),
        Err(_) => {
            let (url, pid) = spawn_owned(start_redis)?;
            (url, REDIS_DATABASES, Some(pid))
        }
    };
    let (postgres_base, postgres_pid) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url.trim_end_matches('/').to_string(), None),
        Err(_) => {
            let (url, pid) = spawn_owned(start_postgres)?;
            (url, Some(pid))
        }
    };
    Ok(Services {
        redis_base,
        redis_databases,
        postgres_base,
        redis_pid,
        postgres_pid,
        next_redis_db: AtomicU32::new(1),
        next_pg_db: AtomicU32::new(0),
        finished_databases: std::sync::Mutex::default(),
        template_ready: tokio::sync::Mutex::new(false),
    })
}

/// Runs `start` on a thread that never exits, so a child's parent-death
/// signal fires only when the whole process goes away. Returns the server's
/// URL and process id.
pub(crate) fn spawn_owned(
    start: impl FnOnce() -> Result<(String, Child, tempfile::TempDir)> + Send + 'static,
) -> Result<(String, u32)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-services".into())
        .spawn(move || {
            match start() {
                Ok((url, child, dir)) => {
                    tx.send(Ok((url, child.id()))).ok();
                    // Keep the child and its directory for the life of the process.
                    let _keep = (child, dir);
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    tx.send(Err(e)).ok();
                }
            }
        })?;
    rx.recv()?
}

/// A loopback port nobody listens on, for a server started later (Redis,
/// PostgreSQL, `spin up`). Taken from just below the kernel's ephemeral range
/// and never twice by one process: a listener that binds port 0 in the
/// meantime (every stand-in does) cannot be given it, so a test never talks
/// to another test's server.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let low = ephemeral_low.saturating_sub(12_000).max(1_024);
    let span = ephemeral_low - low;
    // Processes start at different places (the suite beside the benchmark, say).
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{ephemeral_low}")
}

pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub(crate) fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    // Debian installs PostgreSQL's server binaries off the PATH.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .with_context(|| format!("{name} not found: install it (see .ci/run)"))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not listen on port {port} within 30 s")
}

/// A redis-server of a test's own, for tests that stop it. Dropping it kills it.
pub struct PrivateRedis {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> Result<Self> {
        let (url, child, dir) = start_redis()?;
        Ok(Self {
            url,
            child,
            _dir: dir,
        })
    }

    /// Stops the server now; connections to it fail from here on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The data directory of a server started for this process. The process-wide
/// servers' directories outlive it (statics are never dropped; the servers die
/// with the process by their parent-death signal), so each start first removes
/// the directories of test processes that are gone.
pub(crate) fn data_dir() -> Result<tempfile::TempDir> {
    const PREFIX: &str = "chatbot-test-services-";
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    Ok(tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir()?)
}

fn start_redis() -> Result<(String, Child, tempfile::TempDir)> {
    let dir = data_dir()?;
    let port = free_port()?;
    let mut command = Command::new(find_binary("redis-server")?);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--databases", &REDIS_DATABASES.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command);
    let mut child = command.spawn().context("starting redis-server")?;
    wait_for_port(port, &mut child, "redis-server")?;
    Ok((format!("redis://127.0.0.1:{port}"), child, dir))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL refuses to run as root; as root, run it as the `postgres` user.
fn postgres_command(binary: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=KILL",
            "--",
        ])
        .arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

fn start_postgres() -> Result<(String, Child, tempfile::TempDir)> {
    let dir = data_dir()?;
    let data = dir.path().join("data");
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("chown of the Postgres temp dir failed");
        }
    }
    let user = "postgres";
    let output = postgres_command(&find_binary("initdb")?)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ])
        .arg("--no-sync")
        .output()
        .context("running initdb")?;
    if !output.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let port = free_port()?;
    let mut command = postgres_command(&find_binary("postgres")?);
    command
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir.path())
        .args(["-c", "max_connections=300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !is_root() {
        die_with_parent(&mut command);
    }
    // Tests do not need durability; this keeps them fast. The benchmark
    // (`CHATBOT_DURABLE_POSTGRES=1`) commits as production does.
    if std::env::var_os(DURABLE_POSTGRES).is_none() {
        command.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    } else {
        // And shows where its time goes, per statement.
        command.args([
            "-c",
            "shared_preload_libraries=pg_stat_statements",
            "-c",
            "pg_stat_statements.track_planning=on",
        ]);
    }
    let mut child = command.spawn().context("starting postgres")?;
    wait_for_port(port, &mut child, "postgres")?;
    // Listening is not accepting: wait until it is out of start-up.
    let pg_isready = find_binary("pg_isready")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(&pg_isready)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-q"])
            .status()?
            .success();
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("postgres did not become ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((format!("postgres://{user}@127.0.0.1:{port}"), child, dir))
}

/// The SQL files in `migrations/`, in order.
pub fn migrations() -> Result<Vec<(String, String)>> {
    let dir = crate::project_root().join("migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            Ok((name, std::fs::read_to_string(&p)?))
        })
        .collect()
}

/// Applies the migrations to the database at `url`, each once, in order.
pub async fn migrate(url: &str) -> Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 name TEXT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    for (name, sql) in migrations()? {
        let done = client
            .query_opt("SELECT 1 FROM schema_migrations WHERE name = $1", &[&name])
            .await?
            .is_some();
        if !done {
            client
                .batch_execute(&sql)
                .await
                .with_context(|| format!("applying migration {name}"))?;
            client
                .execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[&name])
                .await?;
        }
    }
    Ok(())
}

/// A plain client for test assertions and set-up (not the guest's path).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "connecting to {}",
                chatbot_core::config::redact_userinfo(url)
            )
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Services {
    /// A fresh, empty Redis database: `redis://127.0.0.1:PORT/N`.
    pub async fn fresh_redis(&self) -> Result<String> {
        let n = self.next_redis_db.fetch_add(1, Ordering::Relaxed);
        let db = 1 + (n - 1) % (self.redis_databases - 1);
        let url = format!("{}/{db}", self.redis_base);
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
        Ok(url)
    }

    /// A fresh database with the migrations applied: `postgres://USER@127.0.0.1:PORT/NAME`.
    pub async fn fresh_postgres(&self) -> Result<Arc<TestDatabase>> {
        self.ensure_template().await?;
        let n = self.next_pg_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        let admin = connect(&format!("{}/postgres", self.postgres_base)).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        // Cloning the template is much faster than migrating every database.
        // Postgres allows one clone of a template at a time, hence the retries.
        let mut attempts = 0;
        loop {
            match admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempts < 50 && e.to_string().contains("being accessed") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("creating the test database"),
            }
        }
        self.drop_finished_databases(&admin).await;
        Ok(Arc::new(TestDatabase {
            url: format!("{}/{name}", self.postgres_base),
            name,
        }))
    }

    /// Drops the databases of tests that are over (a run makes hundreds, some
    /// 8 MB each). One still in use (a connection not yet closed) is tried again later.
    async fn drop_finished_databases(&self, admin: &tokio_postgres::Client) {
        let finished = std::mem::take(&mut *self.finished_databases.lock().unwrap());
        let mut in_use = Vec::new();
        for name in finished {
            if admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .is_err()
            {
                in_use.push(name);
            }
        }
        self.finished_databases.lock().unwrap().append(&mut in_use);
    }

    async fn ensure_template(&self) -> Result<()> {
        // Held across the migration: one test prepares the template, the others wait.
        let mut ready = self.template_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let admin = connect(&format!("{}/postgres", self.postgres_base)).await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&TEMPLATE_DB],
            )
            .await?
            .is_some();
        if !exists {
            match admin
                .batch_execute(&format!("CREATE DATABASE {TEMPLATE_DB}"))
                .await
            {
                Ok(()) => {}
                Err(e) if e.to_string().contains("already exists") => {}
                Err(e) => return Err(e.into()),
            }
        }
        migrate(&format!("{}/{TEMPLATE_DB}", self.postgres_base)).await?;
        *ready = true;
        Ok(())
    }
}
