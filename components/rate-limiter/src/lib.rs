//! The rate-limiter component: `chatbot:ratelimit/limiter` over a token bucket
//! in Redis. One decision is one Redis round trip (`EVALSHA`, or `EVAL` when
//! the server has lost the script: `chatbot_spin::redis_script::eval`) on the
//! caller's connection.

use chatbot_core::ratelimit::{self, BucketConfig, FailurePolicy, LimitError, ScriptReply};
use chatbot_spin::now_epoch_seconds;
use chatbot_spin::redis_script::{eval, integers};
use chatbot_spin::settings::open_redis;
use chatbot_spin::StoreError;
use spin_sdk::redis::{Connection, RedisParameter};

wit_bindgen::generate!({
    path: ["../../wit/deps/spin-sdk", "../../wit/ratelimit.wit"],
    world: "chatbot:ratelimit/rate-limiter",
    with: {
        "fermyon:spin/redis@2.0.0": spin_sdk::wit::v2::redis,
    },
});

use exports::chatbot::ratelimit::limiter::{Decision, Error, Guest, Outcome};

struct Limiter;

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

/// Runs the bucket script (by SHA, reloaded if Redis lost it): one round trip.
fn run_script(
    conn: &Connection,
    key: &str,
    bucket: BucketConfig,
    cost: u32,
) -> Result<ScriptReply, StoreError> {
    let reply = eval(
        conn,
        ratelimit::TOKEN_BUCKET_SCRIPT,
        &[key],
        &[
            RedisParameter::Int64(i64::from(bucket.capacity)),
            RedisParameter::Int64(i64::from(bucket.window_seconds) * 1000),
            RedisParameter::Int64(i64::from(cost)),
        ],
    )?;
    ScriptReply::from_integers(&integers(&reply))
        .ok_or_else(|| StoreError::Unexpected(format!("bucket script reply {reply:?}")))
}

fn check(conn: Option<&Connection>, key: &str, cost: u32) -> Result<Decision, Error> {
    let settings =
        chatbot_spin::settings::limiter().map_err(|e| Error::Configuration(e.to_string()))?;
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
        None => open_redis().and_then(|conn| run_script(&conn, &bucket_key, settings.bucket, cost)),
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
