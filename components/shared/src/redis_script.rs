//! Redis on the connection an instance keeps: opened by the first request
//! that needs it, shared by the instance's requests (Spin 4 serves up to 16
//! at once on one instance), and dropped after any failure so that the next
//! call reopens. Every call is bounded by what is left of its request's
//! deadline, and at most `context::STORE_CALL`: a Redis that accepts and
//! never answers costs a request some latency, not its answer, and costs
//! the instance's other requests nothing. Scripts run with `EVALSHA`,
//! falling back to `EVAL` when the server has lost them (restart, `SCRIPT
//! FLUSH`, failover).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use chatbot_core::redis::digest::script_sha;
use chatbot_core::redis::script::{Arg, Script, Value};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::StoreError;

/// A connection shared by the instance's requests.
pub type Conn = Rc<Kept>;

/// A connection, and whether a call on it went unanswered. A request keeps
/// its own handle to the instance's connection: once one call got no answer
/// in time, every later call on that handle fails at once (the instance
/// forgets the connection, and the next request opens another), so a Redis
/// that goes silent mid-life costs a request one wait, not one per call.
pub struct Kept {
    connection: Connection,
    silent: Cell<bool>,
}

thread_local! {
    /// The instance's connection (and the address it was opened to).
    static KEPT: RefCell<Option<(String, Conn)>> = const { RefCell::new(None) };
}

fn kept_for(address: &str) -> Option<Conn> {
    KEPT.with(|k| {
        k.borrow()
            .as_ref()
            .filter(|(a, _)| a == address)
            .map(|(_, c)| c.clone())
    })
}

fn timed_out() -> StoreError {
    StoreError::Redis("no answer in time (the request's deadline, or 2 s for one call)".into())
}

/// The instance's connection to `address`, opened now if it has none.
/// Requests that find none at once each open one, and the instance keeps
/// the last: they are separate component-model tasks, and one task may not
/// wake another (wit-bindgen's executor traps), so none waits on another's open.
pub async fn connect(address: &str) -> Result<Conn, StoreError> {
    if let Some(conn) = kept_for(address) {
        return Ok(conn);
    }
    let work = async {
        let conn = Rc::new(Kept {
            connection: Connection::open(address).await?,
            silent: Cell::new(false),
        });
        KEPT.with(|k| *k.borrow_mut() = Some((address.to_string(), conn.clone())));
        Ok(conn)
    };
    crate::within(crate::bounded(crate::context::STORE_CALL), work)
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

/// Drops the instance's connection if it is `conn` (it failed or went
/// silent): the next call opens a new one.
pub fn forget(conn: &Conn) {
    KEPT.with(|k| {
        let mut kept = k.borrow_mut();
        if kept.as_ref().is_some_and(|(_, c)| Rc::ptr_eq(c, conn)) {
            *kept = None;
        }
    });
}

/// Forgets the connection unless disarmed: a call that failed, timed out or
/// was dropped mid-way leaves a connection nobody should trust.
struct ForgetUnlessAnswered<'a>(Option<&'a Conn>);

impl Drop for ForgetUnlessAnswered<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            forget(conn);
        }
    }
}

/// One command, within the request's deadline.
pub async fn execute(conn: &Conn, command: &str, args: Vec<Arg>) -> Result<Vec<Value>, StoreError> {
    let params = args.into_iter().map(parameter).collect();
    Ok(send(conn, command, params)
        .await?
        .into_iter()
        .map(value)
        .collect())
}

async fn send(
    conn: &Conn,
    command: &str,
    args: Vec<RedisParameter>,
) -> Result<Vec<RedisResult>, StoreError> {
    let limit = crate::bounded(crate::context::STORE_CALL);
    if limit.is_zero() || conn.silent.get() {
        // Never sent: the request's deadline has passed (the connection
        // says nothing about itself, and the instance keeps it), or an
        // earlier call on this connection went unanswered.
        return Err(timed_out());
    }
    let mut guard = ForgetUnlessAnswered(Some(conn));
    let Some(answer) = crate::within(limit, conn.connection.execute(command, args)).await else {
        conn.silent.set(true);
        return Err(timed_out());
    };
    match answer {
        Ok(results) => {
            guard.0 = None;
            Ok(results)
        }
        // Redis answered that it lost the script: the connection is fine.
        Err(spin_sdk::redis::Error::Other(message)) if is_noscript(&message) => {
            guard.0 = None;
            Err(StoreError::Redis(message))
        }
        Err(e) => Err(e.into()),
    }
}

fn is_noscript(message: &str) -> bool {
    message.to_ascii_lowercase().contains("noscript")
}

/// Runs one call of a script (its keys, arguments and reply are the core's:
/// `chatbot_core::redis::script`).
pub async fn run<S: Script>(conn: &Conn, script: &S) -> Result<S::Reply, StoreError> {
    let args: Vec<RedisParameter> = script.args().into_iter().map(parameter).collect();
    let reply = eval(conn, S::SOURCE, &script.keys(), &args).await?;
    Ok(script.parse(reply.into_iter().map(value).collect()))
}

fn parameter(arg: Arg) -> RedisParameter {
    match arg {
        Arg::Int(int) => RedisParameter::Int64(int),
        Arg::Bytes(bytes) => RedisParameter::Binary(bytes),
    }
}

/// A reply's value in the core's terms.
pub fn value(result: RedisResult) -> Value {
    match result {
        RedisResult::Nil => Value::Nil,
        RedisResult::Int64(int) => Value::Int(int),
        RedisResult::Binary(bytes) => Value::Bytes(bytes),
        RedisResult::Status(status) => Value::Status(status),
    }
}

/// Runs a script by its SHA-1, loading it with `EVAL` when Redis has lost it.
async fn eval(
    conn: &Conn,
    script: &str,
    keys: &[String],
    args: &[RedisParameter],
) -> Result<Vec<RedisResult>, StoreError> {
    let params = |first: &[u8]| {
        let mut p = Vec::with_capacity(2 + keys.len() + args.len());
        p.push(RedisParameter::Binary(first.to_vec()));
        p.push(RedisParameter::Int64(keys.len() as i64));
        p.extend(
            keys.iter()
                .map(|k| RedisParameter::Binary(k.as_bytes().to_vec())),
        );
        p.extend(args.iter().cloned());
        p
    };
    match send(conn, "EVALSHA", params(script_sha(script).as_bytes())).await {
        Err(StoreError::Redis(e)) if is_noscript(&e) => {
            send(conn, "EVAL", params(script.as_bytes())).await
        }
        other => other,
    }
}
