//! The rate-limiter component: `chatbot:ratelimit/limiter` over a token bucket
//! in Redis. One decision is one Redis round trip (`EVALSHA`, or `EVAL` when
//! the server has lost the script) on the caller's connection.

use std::time::{SystemTime, UNIX_EPOCH};

use chatbot_core::config::{self, names};
use chatbot_core::ratelimit::{self, BucketConfig, FailurePolicy, LimitError, ScriptReply};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use spin_sdk::variables;

wit_bindgen::generate!({
    path: ["../../wit/deps/spin-sdk", "../../wit/ratelimit.wit"],
    world: "chatbot:ratelimit/rate-limiter",
    with: {
        "fermyon:spin/redis@2.0.0": spin_sdk::wit::v2::redis,
    },
});

use exports::chatbot::ratelimit::limiter::{Decision, Error, Guest, Outcome};

struct Limiter;

struct Settings {
    enabled: bool,
    bucket: BucketConfig,
    on_failure: FailurePolicy,
}

fn variable(name: &str) -> Result<String, Error> {
    variables::get(name).map_err(|e| Error::Configuration(format!("variable `{name}`: {e}")))
}

fn settings() -> Result<Settings, Error> {
    let config_error = |e: config::ConfigError| Error::Configuration(e.to_string());
    let enabled = config::parse_bool(
        names::RATE_LIMIT_ENABLED,
        &variable(names::RATE_LIMIT_ENABLED)?,
    )
    .map_err(config_error)?;
    let capacity = config::parse_u64(
        names::RATE_LIMIT_REQUESTS,
        &variable(names::RATE_LIMIT_REQUESTS)?,
        1,
        1_000_000,
    )
    .map_err(config_error)? as u32;
    let window_seconds = config::parse_u64(
        names::RATE_LIMIT_WINDOW_SECONDS,
        &variable(names::RATE_LIMIT_WINDOW_SECONDS)?,
        1,
        86_400,
    )
    .map_err(config_error)? as u32;
    let raw_policy = variable(names::RATE_LIMIT_FAILURE_POLICY)?;
    let on_failure = FailurePolicy::parse(&raw_policy).ok_or_else(|| {
        Error::Configuration(format!(
            "variable `{}` = {raw_policy:?} is not `open` or `closed`",
            names::RATE_LIMIT_FAILURE_POLICY
        ))
    })?;
    Ok(Settings {
        enabled,
        bucket: BucketConfig {
            capacity,
            window_seconds,
        },
        on_failure,
    })
}

fn now_epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn limit_error(e: LimitError) -> Error {
    match e {
        LimitError::InvalidKey => Error::InvalidKey(e.to_string()),
        LimitError::ZeroCost | LimitError::CostAboveCapacity { .. } => Error::InvalidCost,
    }
}

fn to_wit(d: ratelimit::Decision, outcome: Outcome) -> Decision {
    Decision {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_at_epoch_seconds: d.reset_at_epoch_seconds,
        retry_after_seconds: d.retry_after_seconds,
        outcome,
    }
}

/// Runs the bucket script: `EVALSHA`, falling back to `EVAL` if Redis lost it.
fn run_script(
    conn: &Connection,
    key: &str,
    bucket: BucketConfig,
    cost: u32,
) -> Result<ScriptReply, String> {
    let args = |first: Vec<u8>| {
        vec![
            RedisParameter::Binary(first),
            RedisParameter::Int64(1),
            RedisParameter::Binary(key.as_bytes().to_vec()),
            RedisParameter::Int64(i64::from(bucket.capacity)),
            RedisParameter::Int64(i64::from(bucket.window_seconds) * 1000),
            RedisParameter::Int64(i64::from(cost)),
        ]
    };
    let sha = ratelimit::token_bucket_script_sha();
    let reply = match conn.execute("EVALSHA", &args(sha.into_bytes())) {
        // The server lost the script (restart, SCRIPT FLUSH, failover). Hosts word
        // this differently (`NOSCRIPT ...`, `NoScriptError: ...`), so match loosely.
        Err(e) if e.to_string().to_ascii_lowercase().contains("noscript") => conn.execute(
            "EVAL",
            &args(ratelimit::TOKEN_BUCKET_SCRIPT.as_bytes().to_vec()),
        ),
        other => other,
    }
    .map_err(|e| e.to_string())?;
    let integers: Vec<i64> = reply
        .iter()
        .filter_map(|r| match r {
            RedisResult::Int64(v) => Some(*v),
            _ => None,
        })
        .collect();
    ScriptReply::from_integers(&integers)
        .ok_or_else(|| format!("unexpected script reply {reply:?}"))
}

fn check(conn: Option<&Connection>, key: &str, cost: u32) -> Result<Decision, Error> {
    let settings = settings()?;
    let bucket_key = ratelimit::bucket_key(key).map_err(limit_error)?;
    ratelimit::validate(settings.bucket, cost).map_err(limit_error)?;
    if !settings.enabled {
        return Ok(to_wit(
            ratelimit::disabled_decision(settings.bucket, now_epoch_seconds()),
            Outcome::Disabled,
        ));
    }
    let reply = match conn {
        Some(conn) => run_script(conn, &bucket_key, settings.bucket, cost),
        None => {
            let address = variable(names::REDIS_ADDRESS)?;
            Connection::open(&address)
                .map_err(|e| format!("open: {e}"))
                .and_then(|conn| run_script(&conn, &bucket_key, settings.bucket, cost))
        }
    };
    match reply {
        Ok(reply) => Ok(to_wit(
            ratelimit::decide(settings.bucket, cost, reply),
            Outcome::Enforced,
        )),
        Err(reason) => {
            eprintln!(
                "rate limiter: Redis unavailable ({reason}); failing {:?}",
                settings.on_failure
            );
            let outcome = match settings.on_failure {
                FailurePolicy::Open => Outcome::FailedOpen,
                FailurePolicy::Closed => Outcome::FailedClosed,
            };
            Ok(to_wit(
                settings
                    .on_failure
                    .decision(settings.bucket, now_epoch_seconds()),
                outcome,
            ))
        }
    }
}

impl Guest for Limiter {
    fn check(conn: &Connection, key: String, cost: u32) -> Result<Decision, Error> {
        check(Some(conn), &key, cost)
    }

    fn check_standalone(key: String, cost: u32) -> Result<Decision, Error> {
        check(None, &key, cost)
    }
}

export!(Limiter);
