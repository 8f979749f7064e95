//! Running Lua scripts with `EVALSHA`, falling back to `EVAL` when the server
//! has lost them (restart, `SCRIPT FLUSH`, failover).

use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

pub fn binary(s: impl AsRef<[u8]>) -> RedisParameter {
    RedisParameter::Binary(s.as_ref().to_vec())
}

pub fn sha1_hex(script: &str) -> String {
    chatbot_core::metrics::script_sha(script)
}

pub fn eval(
    conn: &Connection,
    script: &str,
    keys: &[&str],
    args: &[RedisParameter],
) -> Result<Vec<RedisResult>, String> {
    let params = |first: &[u8]| {
        let mut p = Vec::with_capacity(2 + keys.len() + args.len());
        p.push(binary(first));
        p.push(RedisParameter::Int64(keys.len() as i64));
        p.extend(keys.iter().map(binary));
        p.extend(args.iter().cloned());
        p
    };
    match conn.execute("EVALSHA", &params(sha1_hex(script).as_bytes())) {
        Err(e) if e.to_string().to_ascii_lowercase().contains("noscript") => {
            conn.execute("EVAL", &params(script.as_bytes()))
        }
        other => other,
    }
    .map_err(|e| e.to_string())
}

/// The bytes of a `GET`-like reply (`None` for nil).
pub fn first_binary(results: &[RedisResult]) -> Option<Vec<u8>> {
    match results.first() {
        Some(RedisResult::Binary(b)) => Some(b.clone()),
        _ => None,
    }
}
