//! A Qdrant-compatible server (REST): collections, points upsert, delete and
//! set payload, `points/search` and `points/query`, `/healthz`, in Qdrant's
//! JSON shapes.
//!
//! It keeps Qdrant's behaviours that clients trip on: ids must be unsigned
//! integers or UUIDs (lowercase, hyphenated when returned); vectors must match
//! the collection size; cosine vectors are normalised on insert; `payload` is
//! returned only with `with_payload` (`true`, or the fields to return); a
//! write without `?wait=true` is answered `acknowledged` and applied a little
//! later; setting the payload of a point that does not exist is a 404.

// Handlers answer with axum responses, errors included.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Controls, Fault, StubServer};

pub const SEARCH: &str = "search";
pub const UPSERT: &str = "upsert";
pub const COLLECTIONS: &str = "collections";
pub const DELETE: &str = "delete";
pub const SET_PAYLOAD: &str = "set_payload";

/// A point id as Qdrant accepts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PointId {
    Num(u64),
    Uuid(String),
}

impl PointId {
    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_u64().map(PointId::Num),
            Value::String(s) => uuid::Uuid::parse_str(s)
                .ok()
                .map(|u| PointId::Uuid(u.hyphenated().to_string())),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            PointId::Num(n) => json!(n),
            PointId::Uuid(u) => json!(u),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Point {
    pub vector: Vec<f32>,
    pub payload: Value,
    pub version: u64,
}

#[derive(Debug, Clone)]
pub struct Collection {
    pub size: usize,
    pub distance: String,
    pub points: BTreeMap<PointId, Point>,
    /// Payload indexes: field name to its type (`keyword`, `integer`, ...).
    pub payload_schema: BTreeMap<String, String>,
}

pub struct QdrantState {
    pub controls: Controls,
    pub api_key: Option<String>,
    pub collections: Mutex<HashMap<String, Collection>>,
    operation: Mutex<u64>,
    /// How long an un-awaited write takes to become visible.
    pub apply_delay: Duration,
}

pub struct QdrantStub {
    pub server: StubServer,
    pub state: Arc<QdrantState>,
}

impl QdrantStub {
    pub async fn start(api_key: Option<&str>) -> anyhow::Result<Self> {
        let state = Arc::new(QdrantState {
            controls: Controls::default(),
            api_key: api_key.map(str::to_string),
            collections: Mutex::default(),
            operation: Mutex::new(0),
            apply_delay: Duration::from_millis(50),
        });
        let router = Router::new()
            .route("/healthz", get(|| async { "healthz check passed" }))
            .route(
                "/collections/{name}",
                put(create_collection)
                    .get(get_collection)
                    .delete(delete_collection),
            )
            .route("/collections/{name}/points", put(upsert_points))
            .route("/collections/{name}/index", put(create_payload_index))
            .route("/collections/{name}/points/delete", post(delete_points))
            .route("/collections/{name}/points/payload", post(set_payload))
            .route("/collections/{name}/points/search", post(search_points))
            .route("/collections/{name}/points/query", post(query_points))
            .with_state(state.clone());
        Ok(Self {
            server: StubServer::serve(router).await?,
            state,
        })
    }

    pub fn url(&self) -> String {
        self.server.origin()
    }

    pub fn controls(&self) -> &Controls {
        &self.state.controls
    }

    /// Creates an empty collection, as an operator (or an earlier ingestion) would.
    pub fn create_collection(&self, name: &str, size: usize) {
        self.state.collections.lock().unwrap().insert(
            name.to_string(),
            Collection {
                size,
                distance: "Cosine".to_string(),
                points: BTreeMap::new(),
                payload_schema: BTreeMap::new(),
            },
        );
    }

    /// A collection's payload indexes, field to type (none when it does not exist).
    pub fn payload_indexes(&self, collection: &str) -> BTreeMap<String, String> {
        self.state
            .collections
            .lock()
            .unwrap()
            .get(collection)
            .map(|c| c.payload_schema.clone())
            .unwrap_or_default()
    }

    /// The payloads of a collection's points, by id (none when it does not exist).
    pub fn payloads(&self, collection: &str) -> Vec<Value> {
        self.state
            .collections
            .lock()
            .unwrap()
            .get(collection)
            .map(|c| c.points.values().map(|p| p.payload.clone()).collect())
            .unwrap_or_default()
    }

    /// Points in a collection (0 when it does not exist).
    pub fn point_count(&self, collection: &str) -> usize {
        self.state
            .collections
            .lock()
            .unwrap()
            .get(collection)
            .map_or(0, |c| c.points.len())
    }
}

fn ok(result: Value) -> Response {
    Json(json!({"result": result, "status": "ok", "time": 0.000_1})).into_response()
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"status": {"error": message.into()}, "time": 0.0})),
    )
        .into_response()
}

async fn admit(
    state: &QdrantState,
    endpoint: &'static str,
    headers: &HeaderMap,
) -> Result<(), Response> {
    if let Some(fault) = state.controls.enter(endpoint).await {
        match fault {
            Fault::RateLimited { retry_after_secs } => {
                let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
                r.headers_mut()
                    .insert("retry-after", retry_after_secs.into());
                return Err(r);
            }
            Fault::Status(code) => {
                return Err(fail(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "Service internal error: injected failure",
                ))
            }
            Fault::Hang(_) => {}
            body @ (Fault::Oversized(_) | Fault::Trickle(_)) => {
                return Err(body.body_response().expect("a body fault answers"))
            }
        }
    }
    if let Some(key) = &state.api_key {
        let given = headers.get("api-key").and_then(|v| v.to_str().ok());
        if given != Some(key.as_str()) {
            return Err(fail(StatusCode::UNAUTHORIZED, "Invalid api-key"));
        }
    }
    Ok(())
}

fn not_found(name: &str) -> Response {
    fail(
        StatusCode::NOT_FOUND,
        format!("Not found: Collection `{name}` doesn't exist!"),
    )
}

fn parse_body(body: &str) -> Result<Value, Response> {
    serde_json::from_str(body).map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("Format error in JSON body: {e}"),
        )
    })
}

async fn create_collection(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = admit(&state, COLLECTIONS, &headers).await {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let vectors = &body["vectors"];
    let (Some(size), Some(distance)) = (vectors["size"].as_u64(), vectors["distance"].as_str())
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: missing field `vectors.size` or `vectors.distance`",
        );
    };
    if !["Cosine", "Dot", "Euclid", "Manhattan"].contains(&distance) || size == 0 {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("Format error in JSON body: bad vectors config {vectors}"),
        );
    }
    let mut collections = state.collections.lock().unwrap();
    if collections.contains_key(&name) {
        return fail(
            StatusCode::CONFLICT,
            format!("Wrong input: Collection `{name}` already exists!"),
        );
    }
    collections.insert(
        name,
        Collection {
            size: size as usize,
            distance: distance.to_string(),
            points: BTreeMap::new(),
            payload_schema: BTreeMap::new(),
        },
    );
    ok(json!(true))
}

async fn get_collection(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, COLLECTIONS, &headers).await {
        return r;
    }
    let collections = state.collections.lock().unwrap();
    let Some(c) = collections.get(&name) else {
        return not_found(&name);
    };
    ok(json!({
        "status": "green",
        "optimizer_status": "ok",
        "points_count": c.points.len(),
        "indexed_vectors_count": 0,
        "segments_count": 1,
        "config": {"params": {"vectors": {"size": c.size, "distance": c.distance}}},
        "payload_schema": c.payload_schema.iter()
            .map(|(field, kind)| (field.clone(), json!({"data_type": kind, "points": c.points.len()})))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

async fn delete_collection(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, COLLECTIONS, &headers).await {
        return r;
    }
    let removed = state.collections.lock().unwrap().remove(&name).is_some();
    ok(json!(removed))
}

#[derive(Deserialize)]
struct WaitParam {
    #[serde(default)]
    wait: Option<bool>,
}

fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
}

type Write = Box<dyn FnOnce(&mut Collection) + Send>;

/// Applies a write now (`wait=true`) or a little later, answering as Qdrant does.
fn apply(state: &Arc<QdrantState>, name: String, wait: bool, write: Write) -> Response {
    let operation_id = {
        let mut op = state.operation.lock().unwrap();
        *op += 1;
        *op
    };
    if wait {
        if let Some(c) = state.collections.lock().unwrap().get_mut(&name) {
            write(c);
        }
        ok(json!({"operation_id": operation_id, "status": "completed"}))
    } else {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(state.apply_delay).await;
            if let Some(c) = state.collections.lock().unwrap().get_mut(&name) {
                write(c);
            }
        });
        ok(json!({"operation_id": operation_id, "status": "acknowledged"}))
    }
}

/// A write's request, admitted (faults), parsed, to a collection that exists.
async fn admitted(
    state: &QdrantState,
    endpoint: &'static str,
    headers: &HeaderMap,
    name: &str,
    body: &str,
) -> Result<Value, Response> {
    admit(state, endpoint, headers).await?;
    let body = parse_body(body)?;
    if !state.collections.lock().unwrap().contains_key(name) {
        return Err(not_found(name));
    }
    Ok(body)
}

/// `PUT /collections/{name}/index`: `{"field_name", "field_schema"}`, the
/// schema a type name or `{"type": ...}`; creating an existing index again is fine.
async fn create_payload_index(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    Query(params): Query<WaitParam>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body = match admitted(&state, COLLECTIONS, &headers, &name, &body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let field = body["field_name"].as_str().map(str::to_string);
    let kind = body["field_schema"]
        .as_str()
        .or_else(|| body["field_schema"]["type"].as_str())
        .map(str::to_string);
    const KINDS: [&str; 8] = [
        "keyword", "integer", "float", "bool", "geo", "text", "datetime", "uuid",
    ];
    let (Some(field), Some(kind)) = (field, kind.filter(|k| KINDS.contains(&k.as_str()))) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: expected `field_name` and a known `field_schema`",
        );
    };
    apply(
        &state,
        name,
        params.wait.unwrap_or(false),
        Box::new(move |c| {
            c.payload_schema.insert(field, kind);
        }),
    )
}

async fn upsert_points(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    Query(params): Query<WaitParam>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = admit(&state, UPSERT, &headers).await {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(size) = state.collections.lock().unwrap().get(&name).map(|c| c.size) else {
        return not_found(&name);
    };
    let Some(points) = body["points"].as_array() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: missing field `points`",
        );
    };
    let mut parsed = Vec::with_capacity(points.len());
    for point in points {
        let Some(id) = PointId::parse(&point["id"]) else {
            return fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "Format error in JSON body: value {} is not a valid point ID, valid values are either an unsigned integer or a UUID",
                    point["id"]
                ),
            );
        };
        let Some(vector) = point["vector"].as_array() else {
            return fail(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `vector`",
            );
        };
        let mut vector: Vec<f32> = vector
            .iter()
            .filter_map(|v| v.as_f64())
            .map(|v| v as f32)
            .collect();
        if vector.len() != size {
            return fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                    vector.len()
                ),
            );
        }
        normalise(&mut vector);
        let payload = point.get("payload").cloned().unwrap_or_else(|| json!({}));
        parsed.push((id, vector, payload));
    }
    let wait = params.wait.unwrap_or(false);
    apply(
        &state,
        name,
        wait,
        Box::new(move |c: &mut Collection| {
            for (id, vector, payload) in parsed {
                let version = c.points.get(&id).map_or(0, |p| p.version + 1);
                c.points.insert(
                    id,
                    Point {
                        vector,
                        payload,
                        version,
                    },
                );
            }
        }),
    )
}

/// Qdrant's payload filter, its `match` and `range` conditions:
/// `{"must": [{"key": k, "match": {"value": v}}, {"key": n, "range": {"gte": 3}}]}`.
fn matches_filter(payload: &Value, filter: &Value) -> bool {
    let conditions = |k: &str| filter[k].as_array().cloned().unwrap_or_default();
    let holds = |c: &Value| {
        let key = c["key"].as_str().unwrap_or("");
        let value = payload.pointer(&format!("/{}", key.replace('.', "/")));
        match c.get("range") {
            Some(range) => value.and_then(Value::as_f64).is_some_and(|v| {
                let bound = |name: &str| range.get(name).and_then(Value::as_f64);
                bound("gt").is_none_or(|b| v > b)
                    && bound("gte").is_none_or(|b| v >= b)
                    && bound("lt").is_none_or(|b| v < b)
                    && bound("lte").is_none_or(|b| v <= b)
            }),
            None => value == Some(&c["match"]["value"]),
        }
    };
    conditions("must").iter().all(holds) && conditions("must_not").iter().all(|c| !holds(c)) && {
        let should = conditions("should");
        should.is_empty() || should.iter().any(holds)
    }
}

async fn delete_points(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    Query(params): Query<WaitParam>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body = match admitted(&state, DELETE, &headers, &name, &body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let ids: Option<Vec<PointId>> = body["points"]
        .as_array()
        .map(|ids| ids.iter().filter_map(PointId::parse).collect());
    let filter = body.get("filter").cloned();
    if ids.is_none() && filter.is_none() {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: expected `points` or `filter`",
        );
    }
    apply(
        &state,
        name,
        params.wait.unwrap_or(false),
        Box::new(move |c: &mut Collection| {
            if let Some(ids) = ids {
                for id in ids {
                    c.points.remove(&id);
                }
            }
            if let Some(filter) = filter {
                c.points.retain(|_, p| !matches_filter(&p.payload, &filter));
            }
        }),
    )
}

/// `POST /collections/{name}/points/payload`: `{"payload": {...}, "points":
/// [ids]}` (or `"filter"`) merges the keys given into those points' payloads;
/// a point named that does not exist is refused, as Qdrant does.
async fn set_payload(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    Query(params): Query<WaitParam>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body = match admitted(&state, SET_PAYLOAD, &headers, &name, &body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let Some(payload) = body["payload"].as_object().cloned() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: missing field `payload`",
        );
    };
    let ids: Option<Vec<PointId>> = match body.get("points").map(Value::as_array) {
        None => None,
        Some(Some(ids)) => match ids.iter().map(PointId::parse).collect() {
            Some(ids) => Some(ids),
            None => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "Format error in JSON body: not a valid point ID",
                )
            }
        },
        Some(None) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: `points` must be a list",
            )
        }
    };
    let filter = body.get("filter").cloned();
    if ids.is_none() && filter.is_none() {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: expected `points` or `filter`",
        );
    }
    if let Some(ids) = &ids {
        let collections = state.collections.lock().unwrap();
        let points = &collections.get(&name).expect("checked").points;
        if let Some(missing) = ids.iter().find(|id| !points.contains_key(id)) {
            return fail(
                StatusCode::NOT_FOUND,
                format!("Not found: No point with id {} found", missing.to_json()),
            );
        }
    }
    apply(
        &state,
        name,
        params.wait.unwrap_or(false),
        Box::new(move |c: &mut Collection| {
            let set = |point: &mut Point| {
                if let Some(fields) = point.payload.as_object_mut() {
                    fields.extend(payload.clone());
                } else {
                    point.payload = Value::Object(payload.clone());
                }
            };
            if let Some(ids) = ids {
                for id in &ids {
                    if let Some(point) = c.points.get_mut(id) {
                        set(point);
                    }
                }
            }
            if let Some(filter) = filter {
                c.points
                    .values_mut()
                    .filter(|p| matches_filter(&p.payload, &filter))
                    .for_each(set);
            }
        }),
    )
}

fn score(distance: &str, a: &[f32], b: &[f32]) -> f32 {
    match distance {
        "Euclid" => a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt(),
        "Manhattan" => a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum(),
        _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// Runs a nearest-neighbour search; `Err` is the error response.
fn search(
    state: &QdrantState,
    name: &str,
    vector: Option<&Vec<Value>>,
    limit: usize,
    body: &Value,
) -> Result<Vec<Value>, Response> {
    let collections = state.collections.lock().unwrap();
    let Some(c) = collections.get(name) else {
        return Err(not_found(name));
    };
    let Some(vector) = vector else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: missing query vector",
        ));
    };
    let mut query: Vec<f32> = vector
        .iter()
        .filter_map(|v| v.as_f64())
        .map(|v| v as f32)
        .collect();
    if query.len() != c.size {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "Wrong input: Vector dimension error: expected dim: {}, got {}",
                c.size,
                query.len()
            ),
        ));
    }
    if c.distance == "Cosine" {
        normalise(&mut query);
    }
    // `true`, or the fields to return (`["a", "b"]`).
    let with_payload = &body["with_payload"];
    let threshold = body["score_threshold"].as_f64().map(|t| t as f32);
    let filter = body.get("filter");
    let lower_is_better = matches!(c.distance.as_str(), "Euclid" | "Manhattan");
    let mut hits: Vec<(&PointId, &Point, f32)> = c
        .points
        .iter()
        .filter(|(_, p)| filter.is_none_or(|f| matches_filter(&p.payload, f)))
        .map(|(id, p)| (id, p, score(&c.distance, &query, &p.vector)))
        .filter(|(_, _, s)| {
            threshold.is_none_or(|t| if lower_is_better { *s <= t } else { *s >= t })
        })
        .collect();
    hits.sort_by(|a, b| {
        let order = b.2.total_cmp(&a.2);
        if lower_is_better {
            order.reverse()
        } else {
            order
        }
    });
    Ok(hits
        .into_iter()
        .take(limit)
        .map(|(id, p, s)| {
            let mut hit = json!({"id": id.to_json(), "version": p.version, "score": s});
            match with_payload {
                Value::Bool(true) => hit["payload"] = p.payload.clone(),
                Value::Array(fields) => {
                    hit["payload"] = fields
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|f| Some((f.to_string(), p.payload.get(f)?.clone())))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                _ => {}
            }
            hit
        })
        .collect())
}

async fn search_points(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = admit(&state, SEARCH, &headers).await {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(limit) = body["limit"].as_u64() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Format error in JSON body: missing field `limit`",
        );
    };
    match search(
        &state,
        &name,
        body["vector"].as_array(),
        limit as usize,
        &body,
    ) {
        Ok(hits) => ok(json!(hits)),
        Err(r) => r,
    }
}

async fn query_points(
    State(state): State<Arc<QdrantState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = admit(&state, SEARCH, &headers).await {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let limit = body["limit"].as_u64().unwrap_or(10) as usize;
    match search(&state, &name, body["query"].as_array(), limit, &body) {
        Ok(hits) => ok(json!({"points": hits})),
        Err(r) => r,
    }
}
