//! `spin:postgres/postgres@4.0.0`, as Spin's `factor-outbound-pg` provides it:
//! connections come from a pool per address (shared by all instances), the
//! address must be allowed, statements are prepared (one statement per call),
//! and values convert between Postgres types and the WIT `db-value`s the same
//! way (`timestamptz` reads as `datetime`, a `timestamp` parameter is Unix seconds).

// The error types are the WIT's (and axum's response type): sized as they are, like Spin's own host.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;
use wasmtime::component::Resource;

use super::{watched, HostCounters, HostState};
use crate::bindings::spin::postgres4_0_0::postgres::{
    self as v4, Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};

/// What the host does with a `query` whose statement yields no rows.
///
/// Spin 4.0.0–4.0.2 (and Spin's main as of 2026-11) never return from such a
/// `query`: the host waits for column metadata that only comes with a first
/// row, and the guest hangs holding its pooled connection
/// (spinframework/spin#3671). A harness that answered at once would let a
/// product that hangs under real Spin pass its tests, so by default the
/// harness fails the guest instead, louder than Spin and at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ZeroRowQueries {
    /// Trap the guest (the request fails with a 500 and a logged error naming
    /// spinframework/spin#3671), and count it.
    #[default]
    Fail,
    /// Answer with an empty row set, as Spin 3.x did: only for a test that
    /// shows the rule itself.
    Answer,
}

/// What the trap says, so a failing test's log names the cause.
pub const ZERO_ROW_QUERY_TRAP: &str = "a Postgres `query` yielded no rows: under Spin 4.0.x this call never returns and holds its pooled connection (spinframework/spin#3671); shape the statement to yield one row or use `execute` (see chatbot_core::sql)";

/// Pooled connections, one pool per address, like Spin's pooled client factory.
#[derive(Default)]
pub struct Pools(Mutex<HashMap<String, deadpool_postgres::Pool>>);

const POOL_SIZE: usize = 64;

impl Pools {
    fn pool(&self, address: &str) -> anyhow::Result<deadpool_postgres::Pool> {
        let mut pools = self.0.lock().expect("pool map poisoned");
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let config: tokio_postgres::Config = address.parse()?;
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Clean,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()?;
        pools.insert(address.to_string(), pool.clone());
        Ok(pool)
    }
}

/// The host side of a guest's Postgres `connection`: a pooled client, returned on drop.
pub struct PgConnection {
    client: deadpool_postgres::Object,
}

impl HostState {
    fn pg(&self, connection: &Resource<PgConnection>) -> Result<&PgConnection, Error> {
        HostCounters::bump(&self.env.counters.postgres_statements);
        self.table
            .get(connection)
            .map_err(|_| Error::ConnectionFailed("no connection found for resource".into()))
    }
}

impl v4::Host for HostState {}

impl v4::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, Error>> {
        if !self.env.allowed_hosts.allows_url(&address) {
            HostCounters::bump(&self.env.counters.denied);
            return Ok(Err(Error::ConnectionFailed(format!(
                "address {} is not permitted",
                chatbot_core::config::redact_userinfo(&address)
            ))));
        }
        HostCounters::bump(&self.env.counters.postgres_opens);
        let pool = match self.env.postgres_pools.pool(&address) {
            Ok(pool) => pool,
            Err(e) => return Ok(Err(Error::ConnectionFailed(format!("{e:?}")))),
        };
        let client = match watched(&self.env, pool.get()).await? {
            Ok(client) => client,
            Err(e) => return Ok(Err(Error::ConnectionFailed(format!("{e:?}")))),
        };
        Ok(self
            .table
            .push(PgConnection { client })
            .map_err(|e| Error::ConnectionFailed(e.to_string())))
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let rows = match self.query_rows(connection, statement, params).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e)),
        };
        if rows.is_empty() {
            HostCounters::bump(&self.env.counters.postgres_zero_row_queries);
            if self.env.zero_row_queries == ZeroRowQueries::Fail {
                wasmtime::bail!(ZERO_ROW_QUERY_TRAP);
            }
        }
        Ok(row_set(&rows))
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let params = to_sql_parameters(&params).map_err(Error::ValueConversionFailed)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
        self.pg(&connection)?
            .client
            .execute(&statement, &refs)
            .await
            .map_err(query_failed)
    }

    async fn drop(&mut self, connection: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl HostState {
    async fn query_rows(
        &mut self,
        connection: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<Vec<Row>, Error> {
        let params = to_sql_parameters(&params).map_err(Error::BadParameter)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
        self.pg(&connection)?
            .client
            .query(&statement, &refs)
            .await
            .map_err(query_failed)
    }
}

/// Rows as Spin returns them.
fn row_set(rows: &[Row]) -> Result<RowSet, Error> {
    // Spin 3.x answered an empty row set with no columns (4.0.x hangs: see [`ZeroRowQueries`]).
    let Some(first) = rows.first() else {
        return Ok(RowSet {
            columns: vec![],
            rows: vec![],
        });
    };
    let columns = first
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            data_type: data_type(c.type_()),
        })
        .collect();
    let rows = rows
        .iter()
        .map(convert_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::QueryFailed(QueryError::Text(format!("{e:?}"))))?;
    Ok(RowSet { columns, rows })
}

fn query_failed(e: tokio_postgres::Error) -> Error {
    let as_text = format!("{e:?}");
    Error::QueryFailed(match e.as_db_error() {
        None => QueryError::Text(as_text),
        Some(db) => QueryError::DbError(DbError {
            as_text,
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            extras: [
                ("constraint", db.constraint()),
                ("table", db.table()),
                ("column", db.column()),
                ("hint", db.hint()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
            .collect(),
        }),
    })
}

fn data_type(t: &Type) -> DbDataType {
    match *t {
        Type::BOOL => DbDataType::Boolean,
        Type::BYTEA => DbDataType::Binary,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => DbDataType::Str,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        _ => DbDataType::Other(t.name().to_string()),
    }
}

fn datetime(v: NaiveDateTime) -> (i32, u8, u8, u8, u8, u8, u32) {
    (
        v.year(),
        v.month() as u8,
        v.day() as u8,
        v.hour() as u8,
        v.minute() as u8,
        v.second() as u8,
        v.nanosecond(),
    )
}

fn convert_row(row: &Row) -> anyhow::Result<Vec<DbValue>> {
    (0..row.len()).map(|i| convert_entry(row, i)).collect()
}

fn convert_entry(row: &Row, i: usize) -> anyhow::Result<DbValue> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
        f: impl FnOnce(T) -> DbValue,
    ) -> anyhow::Result<DbValue> {
        Ok(row.try_get::<_, Option<T>>(i)?.map_or(DbValue::DbNull, f))
    }
    match *row.columns()[i].type_() {
        Type::BOOL => get(row, i, DbValue::Boolean),
        Type::BYTEA => get(row, i, DbValue::Binary),
        Type::FLOAT4 => get(row, i, DbValue::Floating32),
        Type::FLOAT8 => get(row, i, DbValue::Floating64),
        Type::INT2 => get(row, i, DbValue::Int16),
        Type::INT4 => get(row, i, DbValue::Int32),
        Type::INT8 => get(row, i, DbValue::Int64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => get(row, i, DbValue::Str),
        Type::TIMESTAMP => get(row, i, |v: NaiveDateTime| DbValue::Datetime(datetime(v))),
        Type::TIMESTAMPTZ => get(row, i, |v: DateTime<Utc>| {
            DbValue::Datetime(datetime(v.naive_utc()))
        }),
        Type::DATE => get(row, i, |v: NaiveDate| {
            DbValue::Date((v.year(), v.month() as u8, v.day() as u8))
        }),
        Type::TIME => get(row, i, |v: NaiveTime| {
            DbValue::Time((
                v.hour() as u8,
                v.minute() as u8,
                v.second() as u8,
                v.nanosecond(),
            ))
        }),
        Type::UUID => get(row, i, |v: uuid::Uuid| DbValue::Uuid(v.to_string())),
        Type::JSONB => get(row, i, |v: serde_json::Value| {
            DbValue::Jsonb(serde_json::to_vec(&v).unwrap_or_default())
        }),
        Type::NUMERIC => get(row, i, |v: rust_decimal::Decimal| {
            DbValue::Decimal(v.to_string())
        }),
        Type::INT4_ARRAY => get(row, i, DbValue::ArrayInt32),
        Type::INT8_ARRAY => get(row, i, DbValue::ArrayInt64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => {
            get(row, i, DbValue::ArrayStr)
        }
        _ => get(row, i, |v: RawBytes| DbValue::Unsupported(v.0)),
    }
}

/// Any value we cannot convert is passed through as its raw wire bytes, as Spin does.
struct RawBytes(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawBytes {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawBytes(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// SQL NULL for a parameter of any type.
#[derive(Debug)]
struct PgNull;

impl ToSql for PgNull {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

type SqlParam = Box<dyn ToSql + Send + Sync>;

fn to_sql_parameters(params: &[ParameterValue]) -> Result<Vec<SqlParam>, String> {
    params.iter().map(to_sql_parameter).collect()
}

fn to_sql_parameter(value: &ParameterValue) -> Result<SqlParam, String> {
    use ParameterValue as P;
    Ok(match value {
        P::Boolean(v) => Box::new(*v),
        P::Int8(v) => Box::new(*v),
        P::Int16(v) => Box::new(*v),
        P::Int32(v) => Box::new(*v),
        P::Int64(v) => Box::new(*v),
        P::Floating32(v) => Box::new(*v),
        P::Floating64(v) => Box::new(*v),
        P::Str(v) => Box::new(v.clone()),
        P::Binary(v) => Box::new(v.clone()),
        P::Date((y, m, d)) => Box::new(
            NaiveDate::from_ymd_opt(*y, (*m).into(), (*d).into())
                .ok_or_else(|| format!("invalid date {y}-{m}-{d}"))?,
        ),
        P::Time((h, m, s, ns)) => Box::new(
            NaiveTime::from_hms_nano_opt((*h).into(), (*m).into(), (*s).into(), *ns)
                .ok_or_else(|| format!("invalid time {h}:{m}:{s}.{ns}"))?,
        ),
        P::Datetime((y, mo, d, h, mi, s, ns)) => Box::new(
            NaiveDate::from_ymd_opt(*y, (*mo).into(), (*d).into())
                .and_then(|date| date.and_hms_nano_opt((*h).into(), (*mi).into(), (*s).into(), *ns))
                .ok_or_else(|| "invalid datetime".to_string())?,
        ),
        P::Timestamp(secs) => Box::new(
            DateTime::<Utc>::from_timestamp(*secs, 0)
                .ok_or_else(|| format!("invalid timestamp {secs}"))?,
        ),
        P::Uuid(v) => Box::new(uuid::Uuid::parse_str(v).map_err(|e| e.to_string())?),
        P::Jsonb(v) => {
            Box::new(serde_json::from_slice::<serde_json::Value>(v).map_err(|e| e.to_string())?)
        }
        P::Decimal(v) => Box::new(
            v.parse::<rust_decimal::Decimal>()
                .map_err(|e| e.to_string())?,
        ),
        P::ArrayInt32(v) => Box::new(v.clone()),
        P::ArrayInt64(v) => Box::new(v.clone()),
        P::ArrayStr(v) => Box::new(v.clone()),
        P::ArrayDecimal(v) => Box::new(
            v.iter()
                .map(|d| {
                    d.as_ref()
                        .map(|d| d.parse::<rust_decimal::Decimal>())
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
        ),
        P::DbNull => Box::new(PgNull),
        P::RangeInt32(_) | P::RangeInt64(_) | P::RangeDecimal(_) | P::Interval(_) => {
            return Err("range and interval parameters are not supported by this harness".into())
        }
    })
}
