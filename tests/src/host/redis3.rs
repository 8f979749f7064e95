//! `spin:redis/redis@3.0.0`, Spin 4's async Redis interface, as
//! `factor-outbound-redis` provides it: every `open` makes a **new**
//! connection (Spin does not pool Redis; a WASIp3 instance keeps its own),
//! the address must be in `allowed_outbound_hosts`, replies are flattened as
//! in 2.0. Each call is an async host call: a guest may race it against a
//! timer and drop it, which cancels it here.

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use wasmtime::component::{Accessor, Resource};

use super::{watched, HostCounters, HostState, Spin4};
use crate::bindings::fermyon::spin2_0_0::redis as v2;
use crate::bindings::spin4::spin::redis::redis::{
    self as v3, Error, Payload, RedisParameter, RedisResult,
};

/// The host side of a guest's `connection` resource.
pub struct RedisConnection3 {
    pub(crate) conn: MultiplexedConnection,
}

fn other(e: redis::RedisError) -> Error {
    Error::Other(e.to_string())
}

/// The live connection behind a resource (and a count of the command).
fn connection<T>(
    accessor: &Accessor<T, Spin4>,
    resource: &Resource<RedisConnection3>,
) -> Result<MultiplexedConnection, Error> {
    accessor.with(|mut access| {
        let state: &mut HostState = access.get();
        HostCounters::bump(&state.env.counters.redis_commands);
        state
            .table
            .get(resource)
            .map(|c| c.conn.clone())
            .map_err(|_| Error::Other("could not find connection for resource".into()))
    })
}

impl v3::Host for HostState {}

impl v3::HostConnection for HostState {
    async fn drop(&mut self, connection: Resource<RedisConnection3>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl v3::HostConnectionWithStore for Spin4 {
    async fn open<T: Send>(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<RedisConnection3>, Error>> {
        let env = accessor.with(|mut access| access.get().env.clone());
        if !env.allowed_hosts.allows_url(&address) {
            HostCounters::bump(&env.counters.denied);
            return Ok(Err(Error::InvalidAddress));
        }
        HostCounters::bump(&env.counters.redis_opens);
        let Ok(client) = redis::Client::open(address.as_str()) else {
            return Ok(Err(Error::InvalidAddress));
        };
        let conn = match watched(&env, client.get_multiplexed_async_connection()).await? {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(other(e))),
        };
        Ok(accessor.with(|mut access| {
            access
                .get()
                .table
                .push(RedisConnection3 { conn })
                .map_err(|_| Error::TooManyConnections)
        }))
    }

    async fn publish<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        channel: String,
        payload: Payload,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.publish::<_, _, ()>(&channel, &payload)
                .await
                .map_err(other)
        }
        .await)
    }

    async fn get<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Payload>, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.get(&key).await.map_err(other)
        }
        .await)
    }

    async fn set<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
        value: Payload,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.set::<_, _, ()>(&key, &value).await.map_err(other)
        }
        .await)
    }

    async fn incr<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
    ) -> wasmtime::Result<Result<i64, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.incr(&key, 1).await.map_err(other)
        }
        .await)
    }

    async fn del<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.del(&keys).await.map_err(other)
        }
        .await)
    }

    async fn sadd<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.sadd(&key, &values).await.map_err(|e| {
                if e.kind() == redis::ErrorKind::TypeError {
                    Error::TypeError
                } else {
                    other(e)
                }
            })
        }
        .await)
    }

    async fn smembers<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.smembers(&key).await.map_err(other)
        }
        .await)
    }

    async fn srem<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            conn.srem(&key, &values).await.map_err(other)
        }
        .await)
    }

    async fn execute<T: Send>(
        accessor: &Accessor<T, Self>,
        connection: Resource<RedisConnection3>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<RedisResult>, Error>> {
        Ok(async {
            let mut conn = self::connection(accessor, &connection)?;
            // One flattening for both versions: 3.0's parameters and results
            // are 2.0's, case for case.
            let arguments = arguments
                .into_iter()
                .map(|a| match a {
                    RedisParameter::Int64(v) => v2::RedisParameter::Int64(v),
                    RedisParameter::Binary(v) => v2::RedisParameter::Binary(v),
                })
                .collect();
            super::redis::operations::execute(&mut conn, command, arguments)
                .await
                .map(|results| {
                    results
                        .into_iter()
                        .map(|r| match r {
                            v2::RedisResult::Nil => RedisResult::Nil,
                            v2::RedisResult::Status(s) => RedisResult::Status(s),
                            v2::RedisResult::Int64(v) => RedisResult::Int64(v),
                            v2::RedisResult::Binary(b) => RedisResult::Binary(b),
                        })
                        .collect()
                })
                .map_err(|e| match e {
                    v2::Error::InvalidAddress => Error::InvalidAddress,
                    v2::Error::TooManyConnections => Error::TooManyConnections,
                    v2::Error::TypeError => Error::TypeError,
                    v2::Error::Other(text) => Error::Other(text),
                })
        }
        .await)
    }
}
