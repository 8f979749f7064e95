//! Loads a Spin application from its manifest and serves HTTP requests to its
//! components the way Spin's HTTP trigger does: a fresh instance (and a fresh
//! store) for every request, `spin-*` request headers, 404 for no route.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::WasiHttpView;

use crate::allowed_hosts::AllowedHosts;
use crate::host::chatbot::ChatbotImports;
use crate::host::{self, ComponentEnv, HostCounters, HostState};
use crate::manifest::{manifest_dir, Manifest, ResolvedVariables};
use crate::routes::Router;

/// One engine per process; compiled components are cached by content, so
/// tests that load the same app do not pay for compilation again.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        // Spin instantiates through the pooling allocator; so do we, so that
        // per-request instantiation and memory growth cost what they cost there.
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling
            .total_component_instances(1_000)
            .total_core_instances(10_000)
            .total_memories(10_000)
            .total_tables(10_000)
            .max_memory_size(256 << 20)
            // As Spin's engine does (crates/core/src/lib.rs, `SPIN_WASMTIME_LINEAR_MEMORY_KEEP_RESIDENT`,
            // `SPIN_WASMTIME_TABLE_KEEP_RESIDENT`): a freed slot keeps up to 2 MiB of each
            // linear memory and 512 KiB of each table resident, zeroed, for the next
            // instance. So a replica's memory grows with requests in flight as Spin's does.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(512 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        // `CHATBOT_WASM_PERFMAP=1`: write /tmp/perf-<pid>.map, so that `perf`
        // names the guests' functions (profiling the benchmark).
        if std::env::var_os("CHATBOT_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).expect("creating the wasmtime engine")
    })
}

fn compile(bytes: &[u8]) -> Result<Component> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Component>>> = OnceLock::new();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(c) = cache.lock().unwrap().get(&key) {
        return Ok(c.clone());
    }
    let component = Component::new(engine(), bytes)?;
    cache.lock().unwrap().insert(key, component.clone());
    Ok(component)
}

/// How to load an application.
pub struct AppOptions {
    pub manifest: PathBuf,
    /// Variable overrides by name (what `SPIN_VARIABLE_<NAME>` would set).
    pub variables: BTreeMap<String, String>,
    /// Serve the project's interfaces from the host instead of composing the
    /// dependency components: tests a component alone.
    pub chatbot_imports: Option<Arc<ChatbotImports>>,
    /// Load only these components (all when `None`).
    pub only: Option<Vec<String>>,
    /// What a Postgres `query` that yields no rows does (fails, by default, as it would hang Spin 4.0.x).
    pub zero_row_queries: host::postgres::ZeroRowQueries,
    /// How long a Redis or Postgres open waits before the harness traps it (Spin waits forever).
    pub host_call_watchdog: std::time::Duration,
    /// Collects the guests' stderr (see [`App::stderr`]) instead of passing it through.
    pub capture_stderr: bool,
}

impl AppOptions {
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            variables: BTreeMap::new(),
            chatbot_imports: None,
            only: None,
            zero_row_queries: Default::default(),
            host_call_watchdog: host::DEFAULT_HOST_CALL_WATCHDOG,
            capture_stderr: false,
        }
    }
}

struct LoadedComponent {
    pre: ProxyPre<HostState>,
    env: Arc<ComponentEnv>,
}

/// Handlers still running, some after their response was sent (Spin lets a
/// handler work on once its response body is finished).
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one running handler until dropped.
struct Running(Arc<InFlight>);

impl Running {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(in_flight.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// A loaded application, ready to serve requests.
pub struct App {
    in_flight: Arc<InFlight>,
    components: HashMap<String, LoadedComponent>,
    router: Router,
    pub counters: Arc<HostCounters>,
    pub manifest: Manifest,
    pub variables: ResolvedVariables,
    /// The guests' stderr, when [`AppOptions::capture_stderr`] is set.
    pub stderr: Option<host::stderr::CapturedStderr>,
}

/// The response a component gave, fully buffered.
#[derive(Debug, Clone)]
pub struct BufferedResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl App {
    pub fn load(options: AppOptions) -> Result<Self> {
        let manifest = Manifest::load(&options.manifest)?;
        let base = manifest_dir(&options.manifest);
        let variables = ResolvedVariables::resolve(&manifest, &options.variables)?;
        let counters = Arc::new(HostCounters::default());
        let pools = Arc::new(host::postgres::Pools::default());
        let stderr = options
            .capture_stderr
            .then(host::stderr::CapturedStderr::default);
        let mut router = Router::default();
        let mut components = HashMap::new();
        for trigger in &manifest.trigger.http {
            let id = &trigger.component;
            if options.only.as_ref().is_some_and(|only| !only.contains(id)) {
                continue;
            }
            router.add(&trigger.route, id);
            if components.contains_key(id) {
                continue;
            }
            let decl = &manifest.component[id];
            let mut bytes =
                read_source(&base, &decl.source).with_context(|| format!("component {id:?}"))?;
            let stand_ins = options
                .chatbot_imports
                .clone()
                .filter(|_| !decl.dependencies.is_empty());
            if !decl.dependencies.is_empty() && stand_ins.is_none() {
                if !decl.dependencies_inherit_configuration {
                    bail!("component {id:?} has dependencies that need its configuration: set dependencies_inherit_configuration = true");
                }
                let deps = decl
                    .dependencies
                    .iter()
                    .map(|(import, dep)| {
                        if dep.export.is_some() {
                            bail!(
                                "dependency {import:?}: `export` is not supported by the harness"
                            );
                        }
                        Ok((import.clone(), read_source(&base, &dep.path)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                bytes = crate::compose::compose(&bytes, &deps)
                    .with_context(|| format!("composing the dependencies of {id:?}"))?;
            }
            let allowed = decl
                .allowed_outbound_hosts
                .iter()
                .map(|entry| variables.render(entry))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("allowed_outbound_hosts of {id:?}"))?;
            let allowed_hosts = AllowedHosts::parse(&allowed)
                .with_context(|| format!("allowed_outbound_hosts of {id:?}"))?;
            let component_variables = decl
                .variables
                .iter()
                .map(|(name, template)| Ok((name.clone(), variables.render(template)?)))
                .collect::<Result<BTreeMap<_, _>>>()
                .with_context(|| format!("variables of {id:?}"))?;
            let env = Arc::new(ComponentEnv {
                id: id.clone(),
                allowed_hosts,
                variables: component_variables,
                counters: counters.clone(),
                postgres_pools: pools.clone(),
                zero_row_queries: options.zero_row_queries,
                chatbot_imports: stand_ins.clone(),
                host_call_watchdog: options.host_call_watchdog,
                stderr: stderr.clone(),
            });
            let component = compile(&bytes).with_context(|| format!("compiling {id:?}"))?;
            let linker = host::linker(engine(), stand_ins.is_some())?;
            // Fails here, at load, if the component imports anything a Spin host does not provide.
            let pre = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component {id:?} imports something the host does not provide")
                })?;
            let pre = ProxyPre::new(pre)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component {id:?} is not an HTTP component"))?;
            components.insert(id.clone(), LoadedComponent { pre, env });
        }
        Ok(Self {
            in_flight: Arc::default(),
            components,
            router,
            counters,
            manifest,
            variables,
            stderr,
        })
    }

    /// Serves one request: route it, instantiate the component afresh, call its handler.
    pub async fn handle<B>(
        &self,
        mut request: hyper::Request<B>,
        client_addr: std::net::SocketAddr,
    ) -> Result<hyper::Response<HyperOutgoingBody>>
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
    {
        let path = request.uri().path().to_string();
        let Some((component_id, matched)) = self.router.route(&path) else {
            return Ok(plain(404, "Not Found"));
        };
        let component = &self.components[component_id];
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_string();
        let full_url = format!(
            "http://{host}{}",
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        *request.uri_mut() = full_url.parse().context("rebuilding the request URL")?;
        let headers = request.headers_mut();
        for (name, value) in [
            ("spin-full-url", full_url.as_str()),
            ("spin-path-info", matched.path_info.as_str()),
            ("spin-matched-route", matched.raw_route.as_str()),
            ("spin-raw-component-route", matched.raw_route.as_str()),
            ("spin-component-route", matched.component_route.as_str()),
            ("spin-base-path", "/"),
            ("spin-client-addr", &client_addr.to_string()),
        ] {
            headers.insert(name, http::HeaderValue::from_str(value)?);
        }

        let mut store = Store::new(engine(), HostState::new(component.env.clone()));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let outparam = store.data_mut().http().new_response_outparam(sender)?;
        let pre = component.pre.clone();
        let running = Running::new(&self.in_flight);
        let task = tokio::task::spawn(async move {
            let _running = running;
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(anyhow!(
                "component {component_id:?} answered with an error: {code:?}"
            )),
            Err(_) => {
                let outcome = task.await;
                let error = match outcome {
                    Ok(Ok(())) => anyhow!("component {component_id:?} never set a response"),
                    Ok(Err(e)) => anyhow::Error::from(e)
                        .context(format!("component {component_id:?} trapped")),
                    Err(e) => anyhow!(e).context(format!("component {component_id:?} panicked")),
                };
                eprintln!("{error:?}");
                Ok(plain(500, "Internal Server Error"))
            }
        }
    }

    /// Waits until no handler is running: what a request does after its
    /// response (the history write, the metrics) is then done.
    pub async fn settled(&self) {
        loop {
            let idle = self.in_flight.idle.notified();
            if self
                .in_flight
                .count
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            idle.await;
        }
    }

    /// `handle`, with the whole response body read.
    pub async fn handle_buffered<B>(&self, request: hyper::Request<B>) -> Result<BufferedResponse>
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
    {
        let response = self.handle(request, ([127, 0, 0, 1], 0).into()).await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response body: {e:?}"))?
            .to_bytes();
        Ok(BufferedResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub fn component_ids(&self) -> impl Iterator<Item = &str> {
        self.components.keys().map(String::as_str)
    }
}

fn read_source(base: &Path, source: &str) -> Result<Vec<u8>> {
    let path = base.join(source);
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build the components first: see README)",
            path.display()
        )
    })
}

fn plain(status: u16, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
    response
}

/// Time to instantiate a component once, for benchmarks.
pub async fn instantiation_time(app: &App, component_id: &str) -> Result<std::time::Duration> {
    let component = app
        .components
        .get(component_id)
        .with_context(|| format!("no component {component_id:?}"))?;
    let mut store = Store::new(engine(), HostState::new(component.env.clone()));
    let started = Instant::now();
    component.pre.instantiate_async(&mut store).await?;
    Ok(started.elapsed())
}

/// A component called through its exports rather than over HTTP (the limiter,
/// the recorder), hosted alone with the same Spin interfaces. Every
/// [`Library::instantiate`] is a fresh store and instance, like a request.
pub struct Library {
    pre: wasmtime::component::InstancePre<HostState>,
    pub env: Arc<ComponentEnv>,
}

impl Library {
    /// `variables` are what the component's `variables::get` sees; `allowed` its allow-list.
    pub fn load(
        path: &Path,
        variables: BTreeMap<String, String>,
        allowed: &[String],
    ) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading {} (build the components first)", path.display()))?;
        let env = Arc::new(ComponentEnv {
            id: path.display().to_string(),
            allowed_hosts: AllowedHosts::parse(allowed)?,
            variables,
            counters: Arc::new(HostCounters::default()),
            postgres_pools: Arc::new(host::postgres::Pools::default()),
            zero_row_queries: Default::default(),
            chatbot_imports: None,
            host_call_watchdog: host::DEFAULT_HOST_CALL_WATCHDOG,
            stderr: None,
        });
        let component = compile(&bytes)?;
        let pre = host::linker(engine(), false)?.instantiate_pre(&component)?;
        Ok(Self { pre, env })
    }

    pub fn new_store(&self) -> Store<HostState> {
        Store::new(engine(), HostState::new(self.env.clone()))
    }

    pub fn instance_pre(&self) -> &wasmtime::component::InstancePre<HostState> {
        &self.pre
    }
}
