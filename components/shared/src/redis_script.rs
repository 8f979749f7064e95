//! Running Lua scripts with `EVALSHA`, falling back to `EVAL` when the server
//! has lost them (restart, `SCRIPT FLUSH`, failover).

use chatbot_core::digest::script_sha;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::StoreError;

pub fn binary(s: impl AsRef<[u8]>) -> RedisParameter {
    RedisParameter::Binary(s.as_ref().to_vec())
}

/// Runs a script by its SHA-1, loading it with `EVAL` when Redis has lost it.
pub fn eval<K: AsRef<str>>(
    conn: &Connection,
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
    match conn.execute("EVALSHA", &params(script_sha(script).as_bytes())) {
        Err(e) if e.to_string().to_ascii_lowercase().contains("noscript") => {
            conn.execute("EVAL", &params(script.as_bytes()))
        }
        other => other,
    }
    .map_err(StoreError::from)
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
