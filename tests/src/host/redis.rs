//! `fermyon:spin/redis@2.0.0`, as Spin's `factor-outbound-redis` provides it:
//! every `open` makes a **new** connection (Spin does not pool Redis), the
//! address must be in `allowed_outbound_hosts`, and `execute` flattens nested
//! replies into a list.

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, FromRedisValue, Value};
use wasmtime::component::Resource;

use super::{watched, HostCounters, HostState};
use crate::bindings::fermyon::spin2_0_0::redis::{self as v2, Error, RedisParameter, RedisResult};

/// The host side of a guest's `connection` resource.
pub struct RedisConnection {
    conn: MultiplexedConnection,
}

impl RedisConnection {
    /// The live connection behind a resource, so host-side stand-ins can use a lent `borrow<connection>`.
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }
}

impl HostState {
    fn redis(
        &self,
        connection: &Resource<RedisConnection>,
    ) -> Result<MultiplexedConnection, Error> {
        HostCounters::bump(&self.env.counters.redis_commands);
        self.table
            .get(connection)
            .map(|c| c.conn.clone())
            .map_err(|_| Error::Other("could not find connection for resource".into()))
    }
}

fn other(e: redis::RedisError) -> Error {
    Error::Other(e.to_string())
}

pub(crate) mod operations {
    use super::*;

    pub async fn execute(
        conn: &mut MultiplexedConnection,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(v) => cmd.arg(v),
                RedisParameter::Binary(v) => cmd.arg(v),
            };
        }
        cmd.query_async::<Flattened>(conn)
            .await
            .map(|f| f.0)
            .map_err(other)
    }
}

/// A reply flattened the way Spin flattens it: arrays and sets are spliced in.
struct Flattened(Vec<RedisResult>);

impl FromRedisValue for Flattened {
    fn from_redis_value(value: &Value) -> redis::RedisResult<Self> {
        fn append(out: &mut Vec<RedisResult>, value: &Value) -> redis::RedisResult<()> {
            match value {
                Value::Nil => out.push(RedisResult::Nil),
                Value::Int(v) => out.push(RedisResult::Int64(*v)),
                Value::BulkString(b) => out.push(RedisResult::Binary(b.clone())),
                Value::SimpleString(s) => out.push(RedisResult::Status(s.clone())),
                Value::Okay => out.push(RedisResult::Status("OK".into())),
                Value::Array(items) | Value::Set(items) => {
                    for item in items {
                        append(out, item)?;
                    }
                }
                Value::Double(v) => out.push(RedisResult::Binary(v.to_string().into_bytes())),
                Value::Boolean(v) => out.push(RedisResult::Int64(i64::from(*v))),
                Value::BigNumber(v) => out.push(RedisResult::Binary(v.to_string().into_bytes())),
                Value::ServerError(e) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::ResponseError,
                        "Server error",
                        format!("{e:?}"),
                    )))
                }
                other => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::TypeError,
                        "Could not convert Redis response",
                        format!("unsupported reply type: {other:?}"),
                    )))
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        append(&mut out, value)?;
        Ok(Flattened(out))
    }
}

impl v2::Host for HostState {}

impl v2::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<RedisConnection>, Error>> {
        if !self.env.allowed_hosts.allows_url(&address) {
            HostCounters::bump(&self.env.counters.denied);
            return Ok(Err(Error::InvalidAddress));
        }
        HostCounters::bump(&self.env.counters.redis_opens);
        let Ok(client) = redis::Client::open(address.as_str()) else {
            return Ok(Err(Error::InvalidAddress));
        };
        let conn = match watched(&self.env, client.get_multiplexed_async_connection()).await? {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(other(e))),
        };
        Ok(self
            .table
            .push(RedisConnection { conn })
            .map_err(|_| Error::TooManyConnections))
    }

    async fn publish(
        &mut self,
        connection: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let mut conn = self.redis(&connection)?;
        conn.publish::<_, _, ()>(&channel, &payload)
            .await
            .map_err(other)
    }

    async fn get(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut conn = self.redis(&connection)?;
        conn.get(&key).await.map_err(other)
    }

    async fn set(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        let mut conn = self.redis(&connection)?;
        conn.set::<_, _, ()>(&key, &value).await.map_err(other)
    }

    async fn incr(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, Error> {
        let mut conn = self.redis(&connection)?;
        conn.incr(&key, 1).await.map_err(other)
    }

    async fn del(
        &mut self,
        connection: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, Error> {
        let mut conn = self.redis(&connection)?;
        conn.del(&keys).await.map_err(other)
    }

    async fn sadd(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Error> {
        let mut conn = self.redis(&connection)?;
        conn.sadd(&key, &values).await.map_err(|e| {
            if e.kind() == redis::ErrorKind::TypeError {
                Error::TypeError
            } else {
                other(e)
            }
        })
    }

    async fn smembers(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, Error> {
        let mut conn = self.redis(&connection)?;
        conn.smembers(&key).await.map_err(other)
    }

    async fn srem(
        &mut self,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Error> {
        let mut conn = self.redis(&connection)?;
        conn.srem(&key, &values).await.map_err(other)
    }

    async fn execute(
        &mut self,
        connection: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let mut conn = self.redis(&connection)?;
        operations::execute(&mut conn, command, arguments).await
    }

    async fn drop(&mut self, connection: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}
