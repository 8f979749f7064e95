//! Loads a Spin application from its manifest and serves HTTP requests to its
//! components the way Spin 4.0's HTTP trigger does: a WASIp2 component gets a
//! fresh instance (and a fresh store) for every request; a WASIp3 component's
//! instances are reused (Spin's defaults: 128 requests, 16 at once, dropped
//! after 1 s idle), and a request is over when its response body ends;
//! `spin-*` request headers, 404 for no route.

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
use wasmtime_wasi_http::handler::{HandlerState, Proxy, ProxyHandler, StoreBundle};
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
        // WASIp3 components (spin-sdk 6): async exports, streams and futures.
        config.wasm_component_model_async(true);
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

/// A component compiled once per process, whoever asks first.
pub fn compile(bytes: &[u8]) -> Result<Component> {
    // One slot per component: tests that start at once wait for the first
    // compilation instead of each compiling the same bytes on two cores.
    type Slot = Arc<Mutex<Option<Component>>>;
    static CACHE: OnceLock<Mutex<HashMap<u64, Slot>>> = OnceLock::new();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let slot = CACHE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .clone();
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(component) = slot.as_ref() {
        return Ok(component.clone());
    }
    let component = Component::new(engine(), bytes)?;
    *slot = Some(component.clone());
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
    /// How WASIp3 components' instances are reused (WASIp2 ones never are).
    pub instance_reuse: InstanceReuse,
}

/// How Spin 4.0's trigger reuses a WASIp3 component's instances (its
/// `wasmtime_wasi_http::handler::ProxyHandler`, configured by `spin up`'s
/// reuse and timeout options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceReuse {
    /// Requests an instance serves before it is dropped.
    pub max_requests: usize,
    /// Requests an instance serves at once.
    pub max_concurrent: usize,
    /// How long an idle instance is kept.
    pub idle_timeout: std::time::Duration,
    /// `--request-timeout`: a request still running after it is cut, and its
    /// instance dropped once the others it serves are done (none by default, as in Spin).
    pub request_timeout: Option<std::time::Duration>,
}

impl InstanceReuse {
    /// What `spin up` does unless told otherwise.
    pub const SPIN_DEFAULTS: Self = Self {
        max_requests: 128,
        max_concurrent: 16,
        idle_timeout: std::time::Duration::from_secs(1),
        request_timeout: None,
    };

    /// One request per instance, as for WASIp2: nothing an instance holds outlives a request.
    pub const ONE_REQUEST_PER_INSTANCE: Self = Self {
        max_requests: 1,
        max_concurrent: 1,
        ..Self::SPIN_DEFAULTS
    };
}

impl Default for InstanceReuse {
    fn default() -> Self {
        Self::SPIN_DEFAULTS
    }
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
            instance_reuse: InstanceReuse::SPIN_DEFAULTS,
        }
    }
}

/// How a component is served.
enum Served {
    /// WASIp2 (`wasi:http/incoming-handler@0.2`): a fresh instance per request.
    P2(ProxyPre<HostState>),
    /// WASIp3 (`wasi:http/handler@0.3`): instances reused by Spin's rules.
    P3(ProxyHandler<ReusedInstances>),
}

struct LoadedComponent {
    served: Served,
    env: Arc<ComponentEnv>,
    /// For [`instantiation_time`].
    pre: wasmtime::component::InstancePre<HostState>,
}

/// The [`HandlerState`] of a WASIp3 component: a store per instance, Spin's reuse rules.
struct ReusedInstances {
    env: Arc<ComponentEnv>,
    reuse: InstanceReuse,
}

impl HandlerState for ReusedInstances {
    type StoreData = HostState;

    fn new_store(&self, _req_id: Option<u64>) -> wasmtime::Result<StoreBundle<HostState>> {
        host::HostCounters::bump(&self.env.counters.instances);
        Ok(StoreBundle {
            store: Store::new(engine(), HostState::new(self.env.clone())),
            write_profile: Box::new(|_| ()),
        })
    }

    fn request_timeout(&self) -> std::time::Duration {
        self.reuse
            .request_timeout
            .unwrap_or(std::time::Duration::MAX)
    }

    fn idle_instance_timeout(&self) -> std::time::Duration {
        self.reuse.idle_timeout
    }

    fn max_instance_reuse_count(&self) -> usize {
        self.reuse.max_requests
    }

    fn max_instance_concurrent_reuse_count(&self) -> usize {
        self.reuse.max_concurrent
    }

    fn handle_worker_error(&self, error: wasmtime::Error) {
        eprintln!(
            "component {:?}: its instance ended with an error: {error:?}",
            self.env.id
        );
    }
}

/// A response body that says when it has ended (or been dropped): until
/// then the request is running, as in Spin, and its instance is kept.
struct UntilEnd {
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, P3ErrorCode>,
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    /// Frames read so far, and after how many reading stops (0: never; see
    /// `HostCounters::stall_response_bodies_after_frames`).
    frames: u64,
    stall_after: u64,
}

type P3ErrorCode = wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

impl Body for UntilEnd {
    type Data = Bytes;
    type Error = P3ErrorCode;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, P3ErrorCode>>> {
        let this = self.get_mut();
        if this.stall_after > 0 && this.frames >= this.stall_after {
            // A client that stopped reading: never polled again, never woken.
            return std::task::Poll::Pending;
        }
        let poll = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if matches!(poll, std::task::Poll::Ready(Some(Ok(_)))) {
            this.frames += 1;
        }
        if matches!(poll, std::task::Poll::Ready(None | Some(Err(_)))) {
            this.ended.take();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
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
            let instance_pre = pre.clone();
            let served = match wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
                Ok(service) => Served::P3(ProxyHandler::new(
                    ReusedInstances {
                        env: env.clone(),
                        reuse: options.instance_reuse,
                    },
                    wasmtime_wasi_http::handler::ProxyPre::P3(service),
                )),
                Err(_) => Served::P2(
                    ProxyPre::new(pre)
                        .map_err(anyhow::Error::from)
                        .with_context(|| format!("component {id:?} is not an HTTP component"))?,
                ),
            };
            components.insert(
                id.clone(),
                LoadedComponent {
                    served,
                    env,
                    pre: instance_pre,
                },
            );
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
            return Ok(empty(404));
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

        let pre = match &component.served {
            Served::P2(pre) => pre.clone(),
            Served::P3(handler) => {
                return Ok(self.handle_p3(handler, component_id, request).await);
            }
        };
        let mut store = Store::new(engine(), HostState::new(component.env.clone()));
        HostCounters::bump(&component.env.counters.instances);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let outparam = store.data_mut().http().new_response_outparam(sender)?;
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
                Ok(empty(500))
            }
        }
    }

    /// Serves a request to a WASIp3 component as Spin 4.0 does: the handler
    /// gives its instance a task (a reused instance, or a new one), the
    /// response goes out as soon as the guest returns it, and the task (so
    /// the request, and the instance) lasts until the response body ends.
    async fn handle_p3<B>(
        &self,
        handler: &ProxyHandler<ReusedInstances>,
        component_id: &str,
        request: hyper::Request<B>,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
    {
        let request =
            request.map(|body| body.map_err(|e| P3ErrorCode::InternalError(Some(e.to_string()))));
        let (respond, response) = tokio::sync::oneshot::channel::<Result<_>>();
        let running = Running::new(&self.in_flight);
        let id = component_id.to_string();
        let stall_after = self
            .counters
            .stall_response_bodies_after_frames
            .load(std::sync::atomic::Ordering::Relaxed);
        handler.spawn(
            None,
            Box::new(move |store, proxy| {
                Box::pin(async move {
                    let _running = running;
                    let Proxy::P3(service) = proxy else {
                        return;
                    };
                    let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(request);
                    let answered = match service.handle(store, request).await {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(code)) => {
                            let _ = respond.send(Err(anyhow!(
                                "component {id:?} answered with an error: {code:?}"
                            )));
                            return;
                        }
                        Err(trap) => {
                            let _ = respond.send(Err(anyhow::Error::from(trap)
                                .context(format!("component {id:?} trapped"))));
                            return;
                        }
                    };
                    let converted =
                        store.with(|mut access| answered.into_http(&mut access, request_io));
                    let answer = match converted {
                        Ok(answer) => answer,
                        Err(e) => {
                            let _ = respond.send(Err(anyhow::Error::from(e)
                                .context(format!("component {id:?} gave an invalid response"))));
                            return;
                        }
                    };
                    let (ended_tx, ended) = tokio::sync::oneshot::channel();
                    let answer = answer.map(|body| {
                        UntilEnd {
                            body,
                            ended: Some(ended_tx),
                            frames: 0,
                            stall_after,
                        }
                        .map_err(|code| {
                            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode::InternalError(
                                Some(format!("{code:?}")),
                            )
                        })
                        .boxed_unsync()
                    });
                    if respond.send(Ok(answer)).is_ok() {
                        // The body ended, failed, or the client dropped it.
                        let _ = ended.await;
                    }
                })
            }),
        );
        match response.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                eprintln!("{error:?}");
                empty(500)
            }
            Err(_) => {
                eprintln!(
                    "component {component_id:?}: its instance was dropped before it answered"
                );
                empty(500)
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

/// A response of Spin's own, with an empty body, as its trigger answers
/// a path no route serves (404) or a component that failed (500).
fn empty(status: u16) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
    response
}

/// Time to instantiate a component once, for benchmarks (a WASIp2
/// component pays it on every request, a WASIp3 one on each new instance).
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
