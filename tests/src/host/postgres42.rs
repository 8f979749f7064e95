//! `spin:postgres/postgres@4.2.0`, Spin 4's Postgres interface: 4.0's
//! synchronous calls (with the same zero-row rule, see postgres.rs) and the
//! async ones a WASIp3 guest uses (`open-async`, `query-async`,
//! `execute-async`), which a guest may race against a timer and drop.
//! Connections come from the same per-address pools as 4.0's.

#![allow(clippy::result_large_err)]

use tokio_postgres::types::ToSql;
use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::postgres::zero_row_rule;
use super::{watched, ComponentEnv, HostCounters, HostState, Spin4};
use crate::bindings::spin4::spin::postgres::postgres::{
    self as v42, Column, Error, ParameterValue, Row, RowSet,
};
use values::{query_failed, row_set, to_sql_parameters};

/// Postgres values as `spin:postgres@4.2.0` carries them.
mod values {
    use crate::bindings::spin4::spin::postgres::postgres::{
        Column, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
    };
    include!("postgres_values.rs");
}

/// The host side of a guest's 4.2 `connection`: a pooled client, returned on drop.
pub struct PgConnection42 {
    client: std::sync::Arc<deadpool_postgres::Object>,
}

/// A `connection-builder`: the address, until `build`.
pub struct PgConnectionBuilder {
    pub(crate) address: String,
}

/// A pooled client for `address`, if the component may reach it.
async fn open_client(
    env: &ComponentEnv,
    address: &str,
) -> wasmtime::Result<Result<deadpool_postgres::Object, Error>> {
    if !env.allowed_hosts.allows_url(address) {
        HostCounters::bump(&env.counters.denied);
        return Ok(Err(Error::ConnectionFailed(format!(
            "address {} is not permitted",
            chatbot_core::config::redact_userinfo(address)
        ))));
    }
    HostCounters::bump(&env.counters.postgres_opens);
    let pool = match env.postgres_pools.pool(address) {
        Ok(pool) => pool,
        Err(e) => return Ok(Err(Error::ConnectionFailed(format!("{e:?}")))),
    };
    Ok(watched(env, pool.get())
        .await?
        .map_err(|e| Error::ConnectionFailed(format!("{e:?}"))))
}

/// Rows of `statement`, read whole (Spin buffers them on the host too).
async fn rows_of(
    client: &deadpool_postgres::Object,
    statement: &str,
    params: &[ParameterValue],
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let params = to_sql_parameters(params).map_err(Error::BadParameter)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    client.query(statement, &refs).await.map_err(query_failed)
}

async fn execute_on(
    client: &deadpool_postgres::Object,
    statement: &str,
    params: &[ParameterValue],
) -> Result<u64, Error> {
    let params = to_sql_parameters(params).map_err(Error::ValueConversionFailed)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    client.execute(statement, &refs).await.map_err(query_failed)
}

impl HostState {
    fn pg42(
        &self,
        connection: &Resource<PgConnection42>,
    ) -> Result<std::sync::Arc<deadpool_postgres::Object>, Error> {
        HostCounters::bump(&self.env.counters.postgres_statements);
        self.table
            .get(connection)
            .map(|c| c.client.clone())
            .map_err(|_| Error::ConnectionFailed("no connection found for resource".into()))
    }

    fn push_pg42(
        &mut self,
        client: deadpool_postgres::Object,
    ) -> Result<Resource<PgConnection42>, Error> {
        self.table
            .push(PgConnection42 {
                client: std::sync::Arc::new(client),
            })
            .map_err(|e| Error::ConnectionFailed(e.to_string()))
    }
}

impl v42::Host for HostState {}

impl v42::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection42>, Error>> {
        let env = self.env.clone();
        Ok(match open_client(&env, &address).await? {
            Ok(client) => self.push_pg42(client),
            Err(e) => Err(e),
        })
    }

    async fn query(
        &mut self,
        connection: Resource<PgConnection42>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        let client = match self.pg42(&connection) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let rows = match rows_of(&client, &statement, &params).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e)),
        };
        zero_row_rule(&self.env, &rows)?;
        Ok(row_set(&rows))
    }

    async fn execute(
        &mut self,
        connection: Resource<PgConnection42>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let client = match self.pg42(&connection) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        Ok(execute_on(&client, &statement, &params).await)
    }

    async fn drop(&mut self, connection: Resource<PgConnection42>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl v42::HostConnectionBuilder for HostState {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgConnectionBuilder>> {
        Ok(self.table.push(PgConnectionBuilder { address })?)
    }

    async fn set_ca_root(
        &mut self,
        _builder: Resource<PgConnectionBuilder>,
        _certificate: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        // The harness's Postgres is on loopback without TLS: a root is accepted and unused.
        Ok(Ok(()))
    }

    async fn build(
        &mut self,
        builder: Resource<PgConnectionBuilder>,
    ) -> wasmtime::Result<Result<Resource<PgConnection42>, Error>> {
        let address = self.table.get(&builder)?.address.clone();
        v42::HostConnection::open(self, address).await
    }

    async fn drop(&mut self, builder: Resource<PgConnectionBuilder>) -> wasmtime::Result<()> {
        self.table.delete(builder)?;
        Ok(())
    }
}

impl v42::HostConnectionBuilderWithStore for Spin4 {
    async fn build_async<T: Send>(
        accessor: &Accessor<T, Self>,
        builder: Resource<PgConnectionBuilder>,
    ) -> wasmtime::Result<Result<Resource<PgConnection42>, Error>> {
        let (env, address) = accessor.with(|mut access| -> wasmtime::Result<_> {
            let state: &mut HostState = access.get();
            Ok((
                state.env.clone(),
                state.table.get(&builder)?.address.clone(),
            ))
        })?;
        open_async(accessor, &env, &address).await
    }
}

async fn open_async<T: Send>(
    accessor: &Accessor<T, Spin4>,
    env: &ComponentEnv,
    address: &str,
) -> wasmtime::Result<Result<Resource<PgConnection42>, Error>> {
    Ok(match open_client(env, address).await? {
        Ok(client) => accessor.with(|mut access| access.get().push_pg42(client)),
        Err(e) => Err(e),
    })
}

impl v42::HostConnectionWithStore for Spin4 {
    async fn open_async<T: Send>(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection42>, Error>> {
        let env = accessor.with(|mut access| access.get().env.clone());
        open_async(accessor, &env, &address).await
    }

    /// A zero-row statement answers at once here, as in Spin 4's async path
    /// (the spin#3671 hang is in the synchronous `query` only), and is
    /// counted: every `query` the product sends promises one row
    /// (`chatbot_core::storage::sql::OneRowQuery`), so a test can check that
    /// none broke the promise (`tests/empty_reads.rs`).
    async fn query_async<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection42>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<Column>,
                StreamReader<Row>,
                FutureReader<Result<(), Error>>,
            ),
            Error,
        >,
    > {
        let client = match accessor.with(|mut access| access.get().pg42(&connection)) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let rows = match rows_of(&client, &statement, &params).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e)),
        };
        if rows.is_empty() {
            accessor.with(|mut access| {
                HostCounters::bump(&access.get().env.counters.postgres_zero_row_queries)
            });
        }
        let RowSet { columns, rows } = match row_set(&rows) {
            Ok(set) => set,
            Err(e) => return Ok(Err(e)),
        };
        let (rows, done) = accessor.with(|mut access| -> wasmtime::Result<_> {
            let rows = StreamReader::new(&mut access, rows)?;
            let done = FutureReader::new(&mut access, async {
                Ok::<_, wasmtime::Error>(Ok::<(), Error>(()))
            })?;
            Ok((rows, done))
        })?;
        Ok(Ok((columns, rows, done)))
    }

    async fn execute_async<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection42>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let client = match accessor.with(|mut access| access.get().pg42(&connection)) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        Ok(execute_on(&client, &statement, &params).await)
    }
}
