//! `spin:postgres/postgres@4.0.0`, as Spin's `factor-outbound-pg` provides it:
//! connections come from a pool per address (shared by all instances), the
//! address must be allowed, statements are prepared (one statement per call),
//! and values convert between Postgres types and the WIT `db-value`s the same
//! way (`timestamptz` reads as `datetime`, a `timestamp` parameter is Unix seconds).

// The error types are the WIT's (and axum's response type): sized as they are, like Spin's own host.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use wasmtime::component::Resource;

use super::{watched, HostCounters, HostState};
use crate::bindings::spin::postgres4_0_0::postgres::{self as v4, Error, ParameterValue, RowSet};
use values::{query_failed, row_set, to_sql_parameters};

/// Postgres values as `spin:postgres@4.0.0` carries them.
mod values {
    use crate::bindings::spin::postgres4_0_0::postgres::{
        Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
    };
    include!("postgres_values.rs");
}

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
pub const ZERO_ROW_QUERY_TRAP: &str = "a Postgres `query` yielded no rows: under Spin 4.0.x this call never returns and holds its pooled connection (spinframework/spin#3671); shape the statement to yield one row or use `execute` (see chatbot_core::storage::sql)";

/// A synchronous `query` that yielded no rows: counted, and trapped unless
/// the rule is switched off (see [`ZeroRowQueries`]).
pub(crate) fn zero_row_rule(
    env: &super::ComponentEnv,
    rows: &[tokio_postgres::Row],
) -> wasmtime::Result<()> {
    if rows.is_empty() {
        HostCounters::bump(&env.counters.postgres_zero_row_queries);
        if env.zero_row_queries == ZeroRowQueries::Fail {
            wasmtime::bail!(ZERO_ROW_QUERY_TRAP);
        }
    }
    Ok(())
}

/// Pooled connections, one pool per address, like Spin's pooled client factory.
#[derive(Default)]
pub struct Pools(Mutex<HashMap<String, deadpool_postgres::Pool>>);

const POOL_SIZE: usize = 64;

impl Pools {
    pub(crate) fn pool(&self, address: &str) -> anyhow::Result<deadpool_postgres::Pool> {
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
        zero_row_rule(&self.env, &rows)?;
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
