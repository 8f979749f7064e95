// Included by postgres.rs and postgres42.rs, each inside a module that first
// `use`s its interface version's types (`Column`, `DbDataType`, `DbError`,
// `DbValue`, `Error`, `ParameterValue`, `QueryError`, `RowSet`): 4.0 and 4.2
// carry values alike, case for case, so the conversions are written once.

use bytes::BytesMut;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;

/// Rows as Spin returns them.
pub(crate) fn row_set(rows: &[Row]) -> Result<RowSet, Error> {
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

pub(crate) fn query_failed(e: tokio_postgres::Error) -> Error {
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

pub(crate) type SqlParam = Box<dyn ToSql + Send + Sync>;

pub(crate) fn to_sql_parameters(params: &[ParameterValue]) -> Result<Vec<SqlParam>, String> {
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
