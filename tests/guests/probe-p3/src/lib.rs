//! A WASIp3 probe guest (spin-sdk 6.0) for the harness's own tests of Spin 4's
//! async model: each route exercises one behaviour and reports it as JSON.
//!
//! An instance serves many requests, up to 16 at once, so what lives in a
//! `static` or `thread_local` here is the instance's, shared by its requests.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use futures::SinkExt;
use serde_json::{json, Value};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::{http_service, pg, redis, variables};

// The dependency this probe is composed with (`tests/guests/probe-p3-dep`).
spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../../wit/deps/spin-sdk-6", "wit/counter.wit"],
    world: "harness:counter/user",
    with: {
        "spin:redis/redis@3.0.0": spin_sdk::redis::wit::redis,
    },
});

thread_local! {
    /// This instance's name: the tests count instances by it.
    static INSTANCE: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        hasher.finish()
    };
    /// Requests this instance has begun.
    static SEEN: Cell<u64> = const { Cell::new(0) };
    /// Requests running in this instance now, and the most there ever were.
    static IN_FLIGHT: Cell<u64> = const { Cell::new(0) };
    static MOST_IN_FLIGHT: Cell<u64> = const { Cell::new(0) };
    /// The instance's Redis connection, opened by its first request that needs it.
    static KEPT: RefCell<Option<Rc<redis::Connection>>> = const { RefCell::new(None) };
}

fn instance() -> String {
    format!("{:016x}", INSTANCE.with(|i| *i))
}

fn param(req: &Request, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn millis(req: &Request, name: &str, default: u64) -> Duration {
    Duration::from_millis(
        param(req, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// A whole JSON answer with its length declared, so that Spin writes it in
/// one piece (without the length, its chunked end may follow separately and
/// wait on Nagle's algorithm for a keep-alive client's delayed ACK).
fn reply(status: u16, value: Value) -> http::Response<String> {
    let body = value.to_string();
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body(body)
        .expect("a valid response")
}

/// `work`, or `None` once `limit` has passed (the work is dropped, its host call cancelled).
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    let work = std::pin::pin!(work);
    let timer = std::pin::pin!(spin_sdk::time::sleep(limit));
    match select(work, timer).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// The instance's kept connection: opened by the first request that finds
/// none (requests that find none at once each open one, and the last is kept:
/// they are separate component-model tasks, and wit-bindgen's executor traps
/// when one task's future wakes another's, as a shared async lock would),
/// dropped after an error so the next request reopens.
async fn kept_redis() -> Result<Rc<redis::Connection>, String> {
    if let Some(conn) = KEPT.with(|k| k.borrow().clone()) {
        return Ok(conn);
    }
    let address = variables::get("redis_address")
        .await
        .map_err(|e| e.to_string())?;
    let conn = Rc::new(
        redis::Connection::open(&address)
            .await
            .map_err(|e| e.to_string())?,
    );
    KEPT.with(|k| *k.borrow_mut() = Some(conn.clone()));
    Ok(conn)
}

async fn incr(key: &str) -> Result<i64, String> {
    let conn = kept_redis().await?;
    match conn.incr(key).await {
        Ok(value) => Ok(value),
        Err(e) => {
            KEPT.with(|k| k.borrow_mut().take());
            Err(e.to_string())
        }
    }
}

/// Counts this request in flight until dropped.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        SEEN.with(|s| s.set(s.get() + 1));
        let now = IN_FLIGHT.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        MOST_IN_FLIGHT.with(|m| m.set(m.get().max(now)));
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|n| n.set(n.get() - 1));
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let _in_flight = InFlight::enter();
    let path = req.uri().path().trim_start_matches("/probe3/").to_string();
    match path.as_str() {
        "hello" => hello().await.into_response(),
        "kept-redis" => {
            let key = param(&req, "key").unwrap_or_else(|| "probe3:kept".into());
            match incr(&key).await {
                Ok(value) => reply(200, json!({"instance": instance(), "value": value})),
                Err(e) => reply(502, json!({"error": e})),
            }
            .into_response()
        }
        "dependency-lent" | "dependency-kept" => {
            let key = param(&req, "key").unwrap_or_else(|| "probe3:dependency".into());
            dependency(path == "dependency-lent", key)
                .await
                .into_response()
        }
        "redis-within" => redis_within(millis(&req, "ms", 500)).await.into_response(),
        "postgres-within" => postgres_within(millis(&req, "ms", 500))
            .await
            .into_response(),
        "postgres" => postgres().await.into_response(),
        "concurrent" => concurrent(&req).await.into_response(),
        "floor" => floor().await.into_response(),
        "after" => after(&req, false).into_response(),
        "after-end" => after(&req, true).into_response(),
        _ => reply(404, json!({"error": "no such probe"})).into_response(),
    }
}

/// `INCR` in the composed dependency: on a connection this request opens and
/// lends (`lent`), or on the one the dependency keeps.
async fn dependency(lend: bool, key: String) -> http::Response<String> {
    use harness::counter::counter;
    let outcome = async {
        let address = variables::get("redis_address")
            .await
            .map_err(|e| e.to_string())?;
        if lend {
            let conn = redis::wit::redis::Connection::open(address)
                .await
                .map_err(|e| format!("{e:?}"))?;
            counter::incr_lent(&conn, key).await
        } else {
            counter::incr_kept(address, key).await
        }
    }
    .await;
    match outcome {
        Ok(counted) => reply(
            200,
            json!({
                "instance": instance(),
                "dependency_instance": format!("{:016x}", counted.instance),
                "value": counted.value,
            }),
        ),
        Err(e) => reply(502, json!({"error": e})),
    }
}

async fn hello() -> http::Response<String> {
    let greeting = variables::get("greeting").await.unwrap_or_default();
    reply(
        200,
        json!({
            "instance": instance(),
            "seen": SEEN.with(Cell::get),
            "greeting": greeting,
        }),
    )
}

/// Open Redis and GET, bounded by `limit`: against a server that accepts and
/// never answers, a 504 when the limit passes.
async fn redis_within(limit: Duration) -> http::Response<String> {
    let started = Instant::now();
    let work = async {
        let address = variables::get("redis_address")
            .await
            .map_err(|e| e.to_string())?;
        let conn = redis::Connection::open(&address)
            .await
            .map_err(|e| e.to_string())?;
        conn.get("probe3:missing").await.map_err(|e| e.to_string())
    };
    answer_within(limit, started, work).await
}

/// Open Postgres and run one query, bounded by `limit`.
async fn postgres_within(limit: Duration) -> http::Response<String> {
    let started = Instant::now();
    let work = async {
        let address = variables::get("postgres_address")
            .await
            .map_err(|e| e.to_string())?;
        let conn = pg::Connection::open(address)
            .await
            .map_err(|e| e.to_string())?;
        let rows = conn
            .query("SELECT 1", vec![])
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(rows.len())
    };
    answer_within(limit, started, work).await
}

async fn answer_within<T: std::fmt::Debug>(
    limit: Duration,
    started: Instant,
    work: impl Future<Output = Result<T, String>>,
) -> http::Response<String> {
    let outcome = within(limit, work).await;
    let waited_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Some(Ok(value)) => reply(
            200,
            json!({"value": format!("{value:?}"), "waited_ms": waited_ms}),
        ),
        Some(Err(e)) => reply(502, json!({"error": e, "waited_ms": waited_ms})),
        None => reply(
            504,
            json!({"error": "deadline passed", "waited_ms": waited_ms}),
        ),
    }
}

/// A one-row and a zero-row query through the async API (rows drained either way).
async fn postgres() -> http::Response<String> {
    let outcome = async {
        let address = variables::get("postgres_address")
            .await
            .map_err(|e| e.to_string())?;
        let conn = pg::Connection::open(address)
            .await
            .map_err(|e| e.to_string())?;
        let one = conn
            .query("SELECT 'hello'::text AS greeting", vec![])
            .await
            .map_err(|e| e.to_string())?;
        let columns: Vec<String> = one.columns().iter().map(|c| c.name.clone()).collect();
        let one = one.collect().await.map_err(|e| e.to_string())?;
        let greeting: Option<String> = one.first().and_then(|r| r.get("greeting"));
        let none = conn
            .query("SELECT 1 AS n WHERE false", vec![])
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(json!({
            "columns": columns,
            "greeting": greeting,
            "rows": one.len(),
            "empty_rows": none.len(),
        }))
    }
    .await;
    match outcome {
        Ok(body) => reply(200, body),
        Err(e) => reply(502, json!({"error": e})),
    }
}

/// The least a cache hit does on Spin 4's model, the benchmark's WASIp3
/// floor: three commands on the instance's kept Redis connection (a hit's
/// are the limiter, lookup and recorder scripts) and one durable single-row
/// insert, into `floor_writes`, which the benchmark creates.
async fn floor() -> http::Response<String> {
    let outcome = async {
        let conn = kept_redis().await?;
        for key in ["floor:limiter", "floor:cache", "floor:recorder"] {
            if let Err(e) = conn
                .execute(
                    "GET",
                    [redis::RedisParameter::Binary(key.as_bytes().to_vec())],
                )
                .await
            {
                KEPT.with(|k| k.borrow_mut().take());
                return Err(e.to_string());
            }
        }
        let address = variables::get("postgres_address")
            .await
            .map_err(|e| e.to_string())?;
        let pg = pg::Connection::open(address)
            .await
            .map_err(|e| e.to_string())?;
        pg.execute(
            "INSERT INTO floor_writes (session_id) VALUES ($1)",
            vec![pg::ParameterValue::Str("floor".into())],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    match outcome {
        Ok(()) => reply(200, json!({"ok": true})),
        Err(e) => reply(502, json!({"error": e})),
    }
}

/// Holds the request `ms`, with its `tag` in a local: what it answers is its
/// own tag, however many other requests the instance ran meanwhile.
async fn concurrent(req: &Request) -> http::Response<String> {
    let tag = param(req, "tag").unwrap_or_default();
    spin_sdk::time::sleep(millis(req, "ms", 200)).await;
    reply(
        200,
        json!({
            "instance": instance(),
            "tag": tag,
            "most_in_flight": MOST_IN_FLIGHT.with(Cell::get),
        }),
    )
}

/// Sends the whole body at once, then (the client has every byte) waits `ms`
/// and counts the request in Redis under `key`, and only then ends the body:
/// work the host cannot drop, because the request is not over until the body
/// ends. With `end_first`, the body ends before the wait: the counting is
/// then work after the request, which a recycled instance drops.
fn after(
    req: &Request,
    end_first: bool,
) -> http::Response<impl http_body::Body<Data = bytes::Bytes, Error = anyhow::Error>> {
    let key = param(req, "key").unwrap_or_else(|| "probe3:after".into());
    let wait = millis(req, "ms", 0);
    let text = "sent\n";
    let (mut tx, body) = spin_sdk::http::body::stream::<bytes::Bytes>();
    spin_sdk::wasip3::spawn(async move {
        let _ = tx.send(bytes::Bytes::from_static(text.as_bytes())).await;
        if end_first {
            drop(tx);
            spin_sdk::time::sleep(wait).await;
            let _ = incr(&key).await;
        } else {
            spin_sdk::time::sleep(wait).await;
            let _ = incr(&key).await;
            drop(tx);
        }
    });
    let mut response = http::Response::builder()
        .status(200)
        .header("content-type", "text/plain");
    if param(req, "declare_length").is_some() {
        response = response.header("content-length", text.len().to_string());
    }
    response.body(body).expect("a valid response")
}
