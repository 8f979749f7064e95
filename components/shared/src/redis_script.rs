//! Redis on the connection an instance keeps: opened by the first request
//! that needs it, shared by the instance's requests (Spin 4 serves up to 16
//! at once on one instance), and dropped after any failure so that the next
//! call reopens. Every call is bounded by what is left of its request's
//! deadline, and at most `context::STORE_CALL`: a Redis that accepts and
//! never answers costs a request some latency, not its answer, and costs
//! the instance's other requests nothing. Scripts run with `EVALSHA`,
//! falling back to `EVAL` when the server has lost them (restart, `SCRIPT
//! FLUSH`, failover).

use std::cell::RefCell;
use std::rc::Rc;

use chatbot_core::digest::script_sha;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::StoreError;

/// A connection shared by the instance's requests.
pub type Conn = Rc<Connection>;

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
        let conn = Rc::new(Connection::open(address).await?);
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
pub async fn execute(
    conn: &Conn,
    command: &str,
    args: Vec<RedisParameter>,
) -> Result<Vec<RedisResult>, StoreError> {
    let mut guard = ForgetUnlessAnswered(Some(conn));
    let answer = crate::within(
        crate::bounded(crate::context::STORE_CALL),
        conn.execute(command, args),
    )
    .await
    .ok_or_else(timed_out)?;
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

pub fn binary(s: impl AsRef<[u8]>) -> RedisParameter {
    RedisParameter::Binary(s.as_ref().to_vec())
}

/// Runs a script by its SHA-1, loading it with `EVAL` when Redis has lost it.
pub async fn eval<K: AsRef<str>>(
    conn: &Conn,
    script: &str,
    keys: &[K],
    args: &[RedisParameter],
) -> Result<Vec<RedisResult>, StoreError> {
    let params = |first: &[u8]| {
        let mut p = Vec::with_capacity(2 + keys.len() + args.len());
        p.push(binary(first));
        p.push(RedisParameter::Int64(keys.len() as i64));
        p.extend(keys.iter().map(|k| binary(k.as_ref())));
        p.extend(args.iter().cloned());
        p
    };
    match execute(conn, "EVALSHA", params(script_sha(script).as_bytes())).await {
        Err(StoreError::Redis(e)) if is_noscript(&e) => {
            execute(conn, "EVAL", params(script.as_bytes())).await
        }
        other => other,
    }
}

/// The bytes of a reply's `index`-th value (`None` for nil or a non-string).
pub fn binary_at(results: &[RedisResult], index: usize) -> Option<&[u8]> {
    match results.get(index) {
        Some(RedisResult::Binary(b)) => Some(b),
        _ => None,
    }
}

/// Every reply as bytes (`HGETALL`, `SMEMBERS`, `ZRANGE`...; nil is empty).
pub fn binaries(results: Vec<RedisResult>) -> Vec<Vec<u8>> {
    results
        .into_iter()
        .map(|r| match r {
            RedisResult::Binary(b) => b,
            RedisResult::Status(s) => s.into_bytes(),
            RedisResult::Int64(i) => i.to_string().into_bytes(),
            RedisResult::Nil => Vec::new(),
        })
        .collect()
}

/// The integers of a script's reply, in order (others skipped).
pub fn integers(results: &[RedisResult]) -> Vec<i64> {
    results
        .iter()
        .filter_map(|r| match r {
            RedisResult::Int64(v) => Some(*v),
            _ => None,
        })
        .collect()
}
