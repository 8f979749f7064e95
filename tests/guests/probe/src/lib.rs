//! A probe guest for the harness's own tests: each route exercises one host
//! interface and reports what happened as JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::{pg4, redis, variables};

/// Lives in the instance's memory: if instances were reused, it would grow.
static REQUESTS_SEEN: AtomicU64 = AtomicU64::new(0);

fn query_param(req: &Request, name: &str) -> Option<String> {
    req.query().split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%2F", "/").replace("%3A", ":"))
    })
}

fn json_response(status: u16, value: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(value.to_string())
        .build()
}

/// What both floors do first: open Redis once and run three commands on it
/// (a hit's are the limiter, lookup and recorder scripts); then open Postgres.
fn redis_part_of_a_hit() -> Result<pg4::Connection, String> {
    let address = variables::get("redis_address").map_err(|e| e.to_string())?;
    let conn = redis::Connection::open(&address).map_err(|e| e.to_string())?;
    for key in ["floor:limiter", "floor:cache", "floor:recorder"] {
        conn.execute(
            "GET",
            &[redis::RedisParameter::Binary(key.as_bytes().to_vec())],
        )
        .map_err(|e| e.to_string())?;
    }
    let address = variables::get("postgres_address").map_err(|e| e.to_string())?;
    pg4::Connection::open(&address).map_err(|e| e.to_string())
}

/// The least a cache hit does: open Redis once, three commands on it, and
/// one durable single-row insert (the smallest record of an exchange), into
/// `floor_writes`, which the benchmark creates.
fn floor() -> Response {
    let outcome = (|| -> Result<(), String> {
        let pg = redis_part_of_a_hit()?;
        pg.execute(
            "INSERT INTO floor_writes (session_id) VALUES ($1)",
            &[pg4::ParameterValue::Str("floor".into())],
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    })();
    floor_response(outcome)
}

fn floor_response(outcome: Result<(), String>) -> Response {
    match outcome {
        Ok(()) => json_response(200, json!({ "ok": true })),
        Err(e) => json_response(502, json!({ "error": e })),
    }
}

/// The floor as it was measured before: the Redis part, then the whole
/// one-statement exchange (session and conversation upserts included).
fn hit_floor() -> Response {
    let outcome = (|| -> Result<(), String> {
        let pg = redis_part_of_a_hit()?;
        let citations = br#"[{"source":"bench.pdf","chunk_id":"c","score":0.5,"snippet":"s"}]"#;
        pg.query(
            chatbot_core::storage::history::STORE_EXCHANGE_SQL.sql(),
            &[
                pg4::ParameterValue::Str("floor".into()),
                pg4::ParameterValue::DbNull,
                pg4::ParameterValue::Int32(30),
                pg4::ParameterValue::Str("What is measured?".into()),
                pg4::ParameterValue::Str("benchmark".into()),
                pg4::ParameterValue::Boolean(true),
                pg4::ParameterValue::Str("An answer.".into()),
                pg4::ParameterValue::Jsonb(citations.to_vec()),
                // The session's owner is not enforced (auth_mode none).
                pg4::ParameterValue::Boolean(false),
                // When the question was asked (Unix seconds).
                pg4::ParameterValue::Floating64(1.8e9),
                // The session's latest conversation, not a new one.
                pg4::ParameterValue::DbNull,
                pg4::ParameterValue::Boolean(false),
            ],
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    })();
    floor_response(outcome)
}

#[http_component]
async fn handle(req: Request) -> Response {
    let seen = REQUESTS_SEEN.fetch_add(1, Ordering::SeqCst) + 1;
    match (req.method(), req.path()) {
        (Method::Get, "/probe/memory") => json_response(200, json!({ "requests_seen": seen })),
        // The benchmarks' baselines: a hello world, and the floor of a cache hit.
        (Method::Get, "/probe/hello") => Response::new(200, "hello"),
        (Method::Get, "/probe/hit-floor") => hit_floor(),
        (Method::Get, "/probe/floor") => floor(),
        (Method::Get, "/probe/variable") => {
            let name = query_param(&req, "name").unwrap_or_default();
            match variables::get(&name) {
                Ok(value) => json_response(200, json!({ "value": value })),
                Err(e) => json_response(404, json!({ "error": format!("{e:?}") })),
            }
        }
        (Method::Get, "/probe/redis") => {
            let address = query_param(&req, "address")
                .unwrap_or_else(|| variables::get("redis_address").unwrap_or_default());
            let conn = match redis::Connection::open(&address) {
                Ok(c) => c,
                Err(e) => return json_response(502, json!({ "error": format!("{e:?}") })),
            };
            let key = "probe:key";
            let outcome = conn
                .set(key, b"probe-value".as_ref())
                .and_then(|()| conn.get(key))
                .and_then(|v| {
                    let n = conn.incr("probe:counter")?;
                    let flat = conn.execute(
                        "MGET",
                        &[
                            redis::RedisParameter::Binary(key.as_bytes().to_vec()),
                            redis::RedisParameter::Binary(b"probe:missing".to_vec()),
                        ],
                    )?;
                    Ok((v, n, flat.len()))
                });
            match outcome {
                Ok((value, counter, mget_len)) => json_response(
                    200,
                    json!({
                        "value": value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        "counter": counter,
                        "mget_results": mget_len,
                    }),
                ),
                Err(e) => json_response(502, json!({ "error": format!("{e:?}") })),
            }
        }
        (Method::Get, "/probe/postgres") => {
            let address = query_param(&req, "address")
                .unwrap_or_else(|| variables::get("postgres_address").unwrap_or_default());
            let conn = match pg4::Connection::open(&address) {
                Ok(c) => c,
                Err(e) => return json_response(502, json!({ "error": format!("{e:?}") })),
            };
            let rows = conn.query(
                "SELECT $1::text AS greeting, $2::bigint + 1 AS next, now() AS at, NULL::text AS nothing",
                &[
                    pg4::ParameterValue::Str("hello".into()),
                    pg4::ParameterValue::Int64(41),
                ],
            );
            match rows {
                Ok(rows) => {
                    let row = &rows.rows[0];
                    json_response(
                        200,
                        json!({
                            "columns": rows.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                            "greeting": format!("{:?}", row[0]),
                            "next": format!("{:?}", row[1]),
                            "at_is_datetime": matches!(row[2], pg4::DbValue::Datetime(_)),
                            "nothing_is_null": matches!(row[3], pg4::DbValue::DbNull),
                        }),
                    )
                }
                Err(e) => json_response(502, json!({ "error": format!("{e:?}") })),
            }
        }
        // A statement that yields no rows, sent with `query` (Spin 4.0.x hangs on it).
        (Method::Get, "/probe/postgres-empty") => {
            let address = variables::get("postgres_address").unwrap_or_default();
            let outcome = pg4::Connection::open(&address)
                .and_then(|conn| conn.query("SELECT 1 AS one WHERE false", &[]));
            match outcome {
                Ok(rows) => json_response(200, json!({ "rows": rows.rows.len() })),
                Err(e) => json_response(502, json!({ "error": format!("{e:?}") })),
            }
        }
        (Method::Get, "/probe/http") => {
            let url = query_param(&req, "url").unwrap_or_default();
            let outbound = spin_sdk::http::Request::get(url);
            match spin_sdk::http::send::<_, Response>(outbound).await {
                Ok(response) => json_response(200, json!({ "status": response.status() })),
                Err(e) => json_response(502, json!({ "error": format!("{e:?}") })),
            }
        }
        _ => json_response(404, json!({ "error": "no such probe" })),
    }
}
