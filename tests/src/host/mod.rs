//! The per-request host state and the linker: everything a Spin 3.x/4.x host
//! gives a spin-sdk 5.x component, one module per interface.

pub mod chatbot;
pub mod http;
pub mod postgres;
pub mod postgres42;
pub mod redis;
pub mod redis3;
pub mod stderr;
pub mod variables;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::allowed_hosts::AllowedHosts;

/// Counts of what components asked of the host, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub redis_opens: AtomicU64,
    pub redis_commands: AtomicU64,
    pub postgres_opens: AtomicU64,
    pub postgres_statements: AtomicU64,
    /// `query` statements that yielded no rows: a synchronous one would hang Spin 4.0.x (see
    /// postgres.rs); an async one answers, but breaks the product's one-row promise either way.
    pub postgres_zero_row_queries: AtomicU64,
    pub outbound_http: AtomicU64,
    pub denied: AtomicU64,
    /// `variables::get` calls (Spin resolves each one; a request pays for every read).
    pub variable_reads: AtomicU64,
    /// Instances created (one per request for WASIp2; reused for WASIp3).
    pub instances: AtomicU64,
    /// A fault, not a count: while above zero, each `variables::get` fails
    /// with a provider error (as a vault provider that is down would) and
    /// takes one off.
    pub failing_variable_reads: AtomicU64,
    /// A fault, not a count: while above zero, a response body is read that
    /// many frames and then no more, as by a client that stops reading (its
    /// socket's buffers full): the guest's writes meet back-pressure.
    pub stall_response_bodies_after_frames: AtomicU64,
}

impl HostCounters {
    /// Whether this variable read fails (see `failing_variable_reads`).
    pub(crate) fn variable_read_fails(&self) -> bool {
        self.failing_variable_reads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

/// A snapshot of [`HostCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub redis_opens: u64,
    pub redis_commands: u64,
    pub postgres_opens: u64,
    pub postgres_statements: u64,
    pub postgres_zero_row_queries: u64,
    pub outbound_http: u64,
    pub denied: u64,
    pub variable_reads: u64,
    pub instances: u64,
}

impl HostCounters {
    pub fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            redis_opens: get(&self.redis_opens),
            redis_commands: get(&self.redis_commands),
            postgres_opens: get(&self.postgres_opens),
            postgres_statements: get(&self.postgres_statements),
            postgres_zero_row_queries: get(&self.postgres_zero_row_queries),
            outbound_http: get(&self.outbound_http),
            denied: get(&self.denied),
            variable_reads: get(&self.variable_reads),
            instances: get(&self.instances),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, earlier: Counts) -> Counts {
        Counts {
            redis_opens: self.redis_opens - earlier.redis_opens,
            redis_commands: self.redis_commands - earlier.redis_commands,
            postgres_opens: self.postgres_opens - earlier.postgres_opens,
            postgres_statements: self.postgres_statements - earlier.postgres_statements,
            postgres_zero_row_queries: self.postgres_zero_row_queries
                - earlier.postgres_zero_row_queries,
            outbound_http: self.outbound_http - earlier.outbound_http,
            denied: self.denied - earlier.denied,
            variable_reads: self.variable_reads - earlier.variable_reads,
            instances: self.instances - earlier.instances,
        }
    }
}

/// What one component may do: fixed at load time, shared by all its instances.
pub struct ComponentEnv {
    pub id: String,
    pub allowed_hosts: AllowedHosts,
    /// The component's own variables, templates already resolved (what `variables::get` sees).
    pub variables: BTreeMap<String, String>,
    pub counters: Arc<HostCounters>,
    /// Postgres pools, per address, shared by every instance of the app (Spin pools; see postgres.rs).
    pub postgres_pools: Arc<postgres::Pools>,
    /// What a `query` that yields no rows does (Spin 4.0.x hangs on it).
    pub zero_row_queries: postgres::ZeroRowQueries,
    /// Stand-ins for the project's interfaces when a component is hosted alone.
    pub chatbot_imports: Option<Arc<chatbot::ChatbotImports>>,
    /// How long a Redis or Postgres open may wait before the harness traps it:
    /// Spin has no timeout there and would wait forever (see [`SILENT_SERVER_TRAP`]).
    pub host_call_watchdog: std::time::Duration,
    /// Where the guests' stderr goes: the harness's own stderr when `None`.
    pub stderr: Option<stderr::CapturedStderr>,
}

/// What a trapped open says. Spin's Redis client (redis-rs 0.32, no response
/// or connection timeout by default) and its Postgres pool (deadpool without
/// timeouts; tokio-postgres's `connect_timeout` bounds only the TCP connect)
/// wait forever on a server that accepts the connection and never answers.
/// The harness fails louder instead, after [`ComponentEnv::host_call_watchdog`].
pub const SILENT_SERVER_TRAP: &str = "the server accepted the connection and never answered: under Spin this open would wait forever (Spin's Redis and Postgres clients have no timeout for it)";

/// The default watchdog: far beyond any test's wait, short of a hung suite.
pub const DEFAULT_HOST_CALL_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a host open under the watchdog: the trap (an `Err` of the outer
/// result) when it outlives it.
pub async fn watched<T>(
    env: &ComponentEnv,
    open: impl std::future::Future<Output = T>,
) -> wasmtime::Result<T> {
    tokio::time::timeout(env.host_call_watchdog, open)
        .await
        .map_err(|_| wasmtime::format_err!(SILENT_SERVER_TRAP))
}

/// The store data of one instance, i.e. of one request.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) outbound: http::OutboundHttp,
    pub(crate) env: Arc<ComponentEnv>,
}

impl HostState {
    pub fn new(env: Arc<ComponentEnv>) -> Self {
        // No sockets, files, arguments or environment: a Spin component reaches
        // the network only through the outbound APIs, which enforce the allow-list.
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        match &env.stderr {
            Some(captured) => wasi.stderr(captured.clone()),
            None => wasi.inherit_stderr(),
        };
        let wasi = wasi.build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: http::OutboundHttp { env: env.clone() },
            env,
        }
    }

    pub fn env(&self) -> &ComponentEnv {
        &self.env
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The Spin 4 interfaces' async host calls reach the store's [`HostState`]
/// through an accessor of this kind.
pub struct Spin4;

impl HasData for Spin4 {
    type Data<'a> = &'a mut HostState;
}

/// Builds a linker with what a Spin 4.0 host gives every component: WASI 0.2
/// and 0.3, wasi:http 0.2 and 0.3, Spin's Redis (2.0 and 3.0), Postgres (4.0
/// and 4.2) and variables (2.0 and 3.0), and (when asked) host stand-ins for
/// the project's interfaces.
pub fn linker(engine: &Engine, with_chatbot_imports: bool) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    crate::bindings::SpinHost::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    crate::bindings::spin4::Spin4Host::add_to_linker::<_, Spin4>(&mut linker, |s| s)?;
    if with_chatbot_imports {
        crate::bindings::chatbot::ChatbotImports::add_to_linker::<_, Spin4>(&mut linker, |s| s)?;
    }
    Ok(linker)
}
