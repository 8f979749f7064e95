//! The rate-limiter component: `chatbot:ratelimit/limiter` over a token bucket
//! in Redis. One decision is one Redis round trip (`EVALSHA`, or `EVAL` when
//! the server has lost the script: `chatbot_spin::redis_script::run`) on the
//! connection the limiter's instance keeps, bounded by the caller's timeout.

use chatbot_core::config::settings::LimiterSettings;
use chatbot_core::limits::ratelimit::{self, BucketConfig, FailurePolicy, LimitError, TakeTokens};
use chatbot_spin::now_epoch_seconds;
use chatbot_spin::redis_script::run;
use chatbot_spin::settings::open_redis;
use chatbot_spin::StoreError;

spin_sdk::wit_bindgen::generate!({
    runtime_path: "spin_sdk::wit_bindgen::rt",
    path: ["../../wit/ratelimit.wit"],
    world: "chatbot:ratelimit/rate-limiter",
});

use exports::chatbot::ratelimit::limiter::{Bucket, Decision, Error, Guest, Outcome, Scope};

struct Limiter;

fn limit_error(e: LimitError) -> Error {
    match e {
        LimitError::InvalidKey | LimitError::BucketCount => Error::InvalidKey(e.to_string()),
        LimitError::ZeroCost | LimitError::CostAboveCapacity { .. } => Error::InvalidCost,
    }
}

fn to_wit(d: ratelimit::Decision, outcome: Outcome, scope: Scope) -> Decision {
    Decision {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_at_epoch_seconds: d.reset_at_epoch_seconds,
        retry_after_seconds: d.retry_after_seconds,
        outcome,
        scope,
    }
}

fn core_scope(scope: Scope) -> ratelimit::Scope {
    match scope {
        Scope::ClientAddress => ratelimit::Scope::ClientAddress,
        Scope::ClientNetwork => ratelimit::Scope::ClientNetwork,
        Scope::Session => ratelimit::Scope::Session,
        Scope::User => ratelimit::Scope::User,
    }
}

fn config_for(settings: &LimiterSettings, scope: Scope) -> BucketConfig {
    match scope {
        Scope::ClientAddress => settings.per_address,
        Scope::ClientNetwork => settings.per_network,
        Scope::Session | Scope::User => settings.bucket,
    }
}

async fn check(buckets: &[Bucket], cost: u32) -> Result<Decision, Error> {
    let settings = chatbot_spin::settings::limiter()
        .await
        .map_err(|e| Error::Configuration(e.to_string()))?;
    if buckets.is_empty() || buckets.len() > ratelimit::MAX_BUCKETS {
        return Err(limit_error(LimitError::BucketCount));
    }
    let mut named = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let key =
            ratelimit::bucket_key(core_scope(bucket.scope), &bucket.key).map_err(limit_error)?;
        let config = config_for(&settings, bucket.scope);
        ratelimit::validate(config, cost).map_err(limit_error)?;
        named.push((key, config));
    }
    let configs: Vec<BucketConfig> = named.iter().map(|(_, config)| *config).collect();
    let first = buckets[0].scope;
    if !settings.enabled {
        return Ok(to_wit(
            ratelimit::disabled_decision(configs[0], now_epoch_seconds()),
            Outcome::Disabled,
            first,
        ));
    }
    let reply = match open_redis().await {
        Ok(conn) => run(
            &conn,
            &TakeTokens {
                buckets: &named,
                cost,
            },
        )
        .await
        .and_then(|reply| {
            reply
                .map_err(|values| StoreError::Unexpected(format!("bucket script reply {values:?}")))
        }),
        Err(e) => Err(e),
    };
    match reply {
        Ok(reply) => {
            let (index, decision) = ratelimit::decide(&configs, cost, &reply);
            Ok(to_wit(decision, Outcome::Enforced, buckets[index].scope))
        }
        Err(reason) if reason.is_out_of_memory() => {
            // Full, not down: every request would otherwise go uncounted to
            // OpenAI, whatever the policy. Refused until Redis has room.
            chatbot_spin::log::error(
                "rate_limiter_redis_full",
                chatbot_spin::log::Dependency::Redis,
                &reason,
            );
            Ok(to_wit(
                FailurePolicy::Closed.decision(configs[0], now_epoch_seconds()),
                Outcome::FailedClosed,
                first,
            ))
        }
        Err(reason) => {
            chatbot_spin::log::write(
                chatbot_spin::log::Level::Warn,
                "rate_limiter_redis_unavailable",
                chatbot_spin::log::Dependency::Redis,
                &reason,
                &[("failing", &format!("{:?}", settings.on_failure))],
            );
            let outcome = match settings.on_failure {
                FailurePolicy::Open => Outcome::FailedOpen,
                FailurePolicy::Closed => Outcome::FailedClosed,
            };
            Ok(to_wit(
                settings
                    .on_failure
                    .decision(configs[0], now_epoch_seconds()),
                outcome,
                first,
            ))
        }
    }
}

impl Guest for Limiter {
    async fn check(buckets: Vec<Bucket>, cost: u32, timeout_ms: u32) -> Result<Decision, Error> {
        chatbot_spin::context::serve_caller("rate-limiter", timeout_ms, async move {
            check(&buckets, cost).await
        })
        .await
    }
}

export!(Limiter);
