//! Token-bucket rate limiting: the Lua script Redis runs atomically, and the
//! arithmetic that turns its answer into a decision and HTTP headers.
//!
//! The bucket holds at most `capacity` tokens and refills continuously at
//! `capacity / window` tokens per second. A request of cost `c` is admitted
//! when at least `c` tokens are there, and then takes them; otherwise it is
//! denied and takes nothing, so the bucket never goes negative. Redis's own
//! clock (`TIME`) is used, so replicas with skewed clocks share one bucket.

use crate::redis::script::{integers, Arg, Script, Value};

/// One check of all of a request's buckets at once (per client address,
/// session, user): each is refilled, and the cost is taken from every one
/// only if every one can pay it; a denial takes nothing from any.
pub struct TakeTokens<'a> {
    /// Each bucket's key ([`bucket_key`]) and its configuration.
    pub buckets: &'a [(String, BucketConfig)],
    pub cost: u32,
}

impl Script for TakeTokens<'_> {
    const SOURCE: &'static str = TOKEN_BUCKET_LUA;
    /// `Err`: a reply that does not read (its values, for the log).
    type Reply = Result<ScriptReply, Vec<Value>>;

    fn keys(&self) -> Vec<String> {
        self.buckets.iter().map(|(key, _)| key.clone()).collect()
    }

    /// The cost, then each bucket's capacity and window in milliseconds.
    fn args(&self) -> Vec<Arg> {
        std::iter::once(Arg::from(self.cost))
            .chain(self.buckets.iter().flat_map(|(_, config)| {
                [
                    Arg::from(config.capacity),
                    Arg::from(u64::from(config.window_seconds) * 1000),
                ]
            }))
            .collect()
    }

    /// `{admitted (0/1), now seconds, now microseconds within the second,
    /// milli-tokens left in each bucket...}`.
    fn parse(&self, reply: Vec<Value>) -> Self::Reply {
        ScriptReply::from_integers(&integers(&reply), self.buckets.len()).ok_or(reply)
    }
}

const TOKEN_BUCKET_LUA: &str = r#"
local cost = tonumber(ARGV[1])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local left, rates, caps = {}, {}, {}
local admitted = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local rate = capacity / (tonumber(ARGV[2 * i + 1]) * 1000)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    tokens = capacity
    at = now_us
  end
  local elapsed = now_us - at
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(capacity, tokens + elapsed * rate)
  if cost > tokens then admitted = 0 end
  left[i], rates[i], caps[i] = tokens, rate, capacity
end
local reply = {admitted, tonumber(t[1]), tonumber(t[2])}
for i, key in ipairs(KEYS) do
  local tokens = left[i]
  if admitted == 1 then tokens = tokens - cost end
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at', string.format('%d', now_us))
  -- An idle bucket is full again after this long; then it can simply vanish.
  redis.call('PEXPIRE', key, math.ceil((caps[i] - tokens) / rates[i] / 1000) + 1000)
  reply[#reply + 1] = math.floor(tokens * 1000)
end
return reply
"#;

/// Which limit a bucket enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The client address (`spin-client-addr`, or `X-Forwarded-For` behind trusted proxies).
    ClientAddress,
    /// An IPv6 client's /48, in front of its /64's own bucket: a site that
    /// holds 65,536 /64s gets one larger bucket, not 65,536 of them.
    ClientNetwork,
    Session,
    User,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientAddress => "address",
            Self::ClientNetwork => "network",
            Self::Session => "session",
            Self::User => "user",
        }
    }
}

/// Whether a Redis error is its refusal to write past `maxmemory` (under the
/// `noeviction` policy): Redis is up but full, so nothing it should count can
/// be counted, and a limit must refuse rather than admit as when Redis is down.
pub fn is_out_of_memory(redis_error: &str) -> bool {
    // Redis says `OOM command not allowed when used memory > 'maxmemory'`;
    // clients (redis-rs, which Spin uses) print the code apart: `OOM: command ...`.
    redis_error.contains("command not allowed when used memory")
}

/// Most buckets one check may name.
pub const MAX_BUCKETS: usize = 8;

/// Longest key a caller may pass, in bytes (it is hashed, but a bound keeps
/// requests small): a JWT `sub` of the most characters accepted, each of
/// four bytes, fits.
pub const MAX_KEY_LEN: usize = 4 * crate::limits::identity::MAX_SUBJECT_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    pub capacity: u32,
    pub window_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate-limit key must be 1 to {MAX_KEY_LEN} bytes")]
    InvalidKey,
    #[error("a check names 1 to {MAX_BUCKETS} buckets")]
    BucketCount,
    #[error("cost must be at least 1")]
    ZeroCost,
    #[error("cost {cost} exceeds the bucket capacity {capacity}: it could never be admitted")]
    CostAboveCapacity { cost: u32, capacity: u32 },
}

/// The Redis key for a caller's bucket. The caller's text is hashed, so it can
/// never inject key syntax; every bucket carries the limiter's hash tag, so
/// a request's buckets, checked in one script, share a Redis Cluster slot.
pub fn bucket_key(scope: Scope, caller_key: &str) -> Result<String, LimitError> {
    if caller_key.is_empty() || caller_key.len() > MAX_KEY_LEN {
        return Err(LimitError::InvalidKey);
    }
    Ok(crate::redis::keys::rate_limit_bucket(&format!(
        "{}:{caller_key}",
        scope.as_str()
    )))
}

/// Checks a request before it goes to Redis.
pub fn validate(config: BucketConfig, cost: u32) -> Result<(), LimitError> {
    if cost == 0 {
        Err(LimitError::ZeroCost)
    } else if cost > config.capacity {
        Err(LimitError::CostAboveCapacity {
            cost,
            capacity: config.capacity,
        })
    } else {
        Ok(())
    }
}

/// What the script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptReply {
    pub admitted: bool,
    pub now_seconds: i64,
    pub now_micros: i64,
    /// Milli-tokens left in each bucket, in the order they were named.
    pub milli_tokens_left: Vec<i64>,
}

impl ScriptReply {
    /// Parses the script's integers for `buckets` buckets.
    pub fn from_integers(values: &[i64], buckets: usize) -> Option<Self> {
        match values {
            [admitted, secs, micros, left @ ..] if left.len() == buckets && buckets > 0 => {
                Some(Self {
                    admitted: *admitted == 1,
                    now_seconds: *secs,
                    now_micros: *micros,
                    milli_tokens_left: left.to_vec(),
                })
            }
            _ => None,
        }
    }
}

/// A decision with everything the HTTP headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_at_epoch_seconds: u64,
    pub retry_after_seconds: u32,
}

impl Decision {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_at_epoch_seconds.to_string()),
        ]
    }

    /// `Retry-After` for a denial: at least a second.
    pub fn retry_after(&self) -> String {
        self.retry_after_seconds.max(1).to_string()
    }
}

/// One bucket's decision: `admitted` is the whole check's answer.
fn decide_bucket(
    config: BucketConfig,
    cost: u32,
    admitted: bool,
    milli_tokens_left: i64,
    now: f64,
) -> Decision {
    let capacity = f64::from(config.capacity);
    let tokens = (milli_tokens_left.max(0) as f64 / 1000.0).min(capacity);
    let rate = capacity / f64::from(config.window_seconds.max(1));
    let full_at = now + (capacity - tokens) / rate;
    let retry_after = if admitted {
        0
    } else {
        // At least one second: `Retry-After: 0` would invite an immediate retry.
        (((f64::from(cost) - tokens) / rate).ceil().max(0.0) as u32).max(1)
    };
    Decision {
        allowed: admitted,
        limit: config.capacity,
        remaining: tokens.floor() as u32,
        reset_at_epoch_seconds: full_at.ceil() as u64,
        retry_after_seconds: retry_after,
    }
}

/// Turns the script's reply into the decision to report and the index of the
/// bucket it describes: on a denial, the bucket that takes longest to afford
/// the cost (a retry before then is denied again); otherwise the one with
/// fewest tokens left.
pub fn decide(configs: &[BucketConfig], cost: u32, reply: &ScriptReply) -> (usize, Decision) {
    let now = reply.now_seconds as f64 + reply.now_micros as f64 / 1e6;
    let mut chosen: Option<(usize, Decision)> = None;
    for (i, (config, milli)) in configs.iter().zip(&reply.milli_tokens_left).enumerate() {
        let d = decide_bucket(*config, cost, reply.admitted, *milli, now);
        // On a denial only the buckets that could not pay are candidates.
        let short = *milli < i64::from(cost) * 1000;
        let better = match chosen {
            _ if !reply.admitted && !short => false,
            None => true,
            Some((_, c)) if reply.admitted => d.remaining < c.remaining,
            Some((_, c)) => d.retry_after_seconds > c.retry_after_seconds,
        };
        if better {
            chosen = Some((i, d));
        }
    }
    chosen.unwrap_or_else(|| {
        // A denial where every bucket could pay cannot come from the script;
        // report the first bucket rather than guess.
        (
            0,
            decide_bucket(
                configs[0],
                cost,
                reply.admitted,
                reply.milli_tokens_left[0],
                now,
            ),
        )
    })
}

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit the request (the default: a cache outage should not take the service down).
    Open,
    /// Refuse the request.
    Closed,
}

impl FailurePolicy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "open" | "fail-open" | "fail_open" => Some(Self::Open),
            "closed" | "fail-closed" | "fail_closed" => Some(Self::Closed),
            _ => None,
        }
    }

    /// The decision when the bucket could not be consulted at `now`.
    pub fn decision(self, config: BucketConfig, now_epoch_seconds: u64) -> Decision {
        match self {
            Self::Open => Decision {
                allowed: true,
                limit: config.capacity,
                remaining: config.capacity,
                reset_at_epoch_seconds: now_epoch_seconds,
                retry_after_seconds: 0,
            },
            Self::Closed => Decision {
                allowed: false,
                limit: config.capacity,
                remaining: 0,
                reset_at_epoch_seconds: now_epoch_seconds + 1,
                retry_after_seconds: 1,
            },
        }
    }
}

/// The decision when limiting is switched off.
pub fn disabled_decision(config: BucketConfig, now_epoch_seconds: u64) -> Decision {
    FailurePolicy::Open.decision(config, now_epoch_seconds)
}

/// The 429's detail for the bucket that refused (the seed's words for the
/// session's; the others say which they are), or, when the limiter could
/// not count at all and fails closed (`counted` false), that: blaming an
/// address or a user that sent one request would be wrong.
pub fn refusal_detail(which: Scope, counted: bool) -> &'static str {
    if !counted {
        return "Rate limit unavailable: the limiter cannot reach its store and refuses every request meanwhile (rate_limit_failure_policy = closed, or Redis full). Retry shortly.";
    }
    match which {
        Scope::Session => "Rate limit exceeded. Too many requests.",
        Scope::ClientAddress => "Rate limit exceeded. Too many requests from this address.",
        Scope::ClientNetwork => "Rate limit exceeded. Too many requests from this network.",
        Scope::User => "Rate limit exceeded. Too many requests for this user.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_blames_a_bucket_only_when_it_was_counted() {
        assert_eq!(
            refusal_detail(Scope::Session, true),
            "Rate limit exceeded. Too many requests."
        );
        assert!(refusal_detail(Scope::ClientAddress, true).contains("from this address"));
        for which in [
            Scope::ClientAddress,
            Scope::ClientNetwork,
            Scope::Session,
            Scope::User,
        ] {
            let detail = refusal_detail(which, false);
            assert!(
                detail.contains("rate_limit_failure_policy = closed"),
                "{detail}"
            );
            assert!(!detail.contains("Too many"), "{detail}");
        }
    }

    #[test]
    fn a_full_redis_is_told_from_a_down_one() {
        assert!(is_out_of_memory(
            "OOM command not allowed when used memory > 'maxmemory'. script: 3c2f, on @user_script:12."
        ));
        assert!(is_out_of_memory(
            "OOM: command not allowed when used memory > 'maxmemory'."
        ));
        assert!(!is_out_of_memory("Connection refused (os error 111)"));
        assert!(!is_out_of_memory("NOSCRIPT No matching script"));
    }

    const CONFIG: BucketConfig = BucketConfig {
        capacity: 100,
        window_seconds: 60,
    };

    fn reply(admitted: bool, tokens: &[f64]) -> ScriptReply {
        ScriptReply {
            admitted,
            now_seconds: 1_700_000_000,
            now_micros: 0,
            milli_tokens_left: tokens.iter().map(|t| (t * 1000.0) as i64).collect(),
        }
    }

    fn decide_one(cost: u32, r: ScriptReply) -> Decision {
        decide(&[CONFIG], cost, &r).1
    }

    #[test]
    fn keys_are_hashed_and_hash_tagged() {
        let key = bucket_key(Scope::Session, "abc").unwrap();
        assert!(key.starts_with("chatbot:ratelimit:{rl}:"));
        assert_eq!(key.len(), "chatbot:ratelimit:{rl}:".len() + 32);
        // Hostile input never reaches the key.
        let hostile = bucket_key(Scope::Session, "x} \r\nFLUSHALL {").unwrap();
        assert!(!hostile.contains("FLUSHALL") && !hostile.contains('\n'));
        assert_ne!(
            bucket_key(Scope::Session, "a").unwrap(),
            bucket_key(Scope::Session, "b").unwrap()
        );
        // One name in two scopes is two buckets.
        assert_ne!(
            bucket_key(Scope::Session, "a").unwrap(),
            bucket_key(Scope::User, "a").unwrap()
        );
        assert_eq!(bucket_key(Scope::User, ""), Err(LimitError::InvalidKey));
        assert_eq!(
            bucket_key(Scope::User, &"k".repeat(MAX_KEY_LEN + 1)),
            Err(LimitError::InvalidKey)
        );
    }

    #[test]
    fn admitted_decision_reports_remaining_and_reset() {
        let d = decide_one(1, reply(true, &[99.0]));
        assert!(d.allowed);
        assert_eq!(d.limit, 100);
        assert_eq!(d.remaining, 99);
        assert_eq!(d.retry_after_seconds, 0);
        // One token refills in 0.6 s.
        assert_eq!(d.reset_at_epoch_seconds, 1_700_000_001);
    }

    #[test]
    fn denied_decision_says_when_to_retry() {
        // 0.25 tokens left, cost 1, refill 100/60 per second: 0.45 s, rounded up to 1 s.
        let d = decide_one(1, reply(false, &[0.25]));
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_seconds, 1);
        // Cost 50 with 0 left needs 30 s.
        let d = decide_one(50, reply(false, &[0.0]));
        assert_eq!(d.retry_after_seconds, 30);
        assert_eq!(d.reset_at_epoch_seconds, 1_700_000_060);
    }

    #[test]
    fn validation_rejects_zero_and_impossible_costs() {
        assert_eq!(validate(CONFIG, 0), Err(LimitError::ZeroCost));
        assert!(matches!(
            validate(CONFIG, 101),
            Err(LimitError::CostAboveCapacity { .. })
        ));
        assert_eq!(validate(CONFIG, 100), Ok(()));
    }

    #[test]
    fn failure_policies() {
        assert_eq!(FailurePolicy::parse("open"), Some(FailurePolicy::Open));
        assert_eq!(
            FailurePolicy::parse("Fail-Closed"),
            Some(FailurePolicy::Closed)
        );
        assert_eq!(FailurePolicy::parse("maybe"), None);
        assert!(FailurePolicy::Open.decision(CONFIG, 5).allowed);
        let closed = FailurePolicy::Closed.decision(CONFIG, 5);
        assert!(!closed.allowed);
        assert!(closed.retry_after_seconds >= 1);
    }

    #[test]
    fn script_sha_is_stable_hex() {
        let sha = crate::redis::digest::script_sha(TakeTokens::SOURCE);
        assert_eq!(sha.len(), 40);
        assert!(sha.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            ScriptReply::from_integers(&[1, 5, 6, 99000, 7000], 2),
            Some(ScriptReply {
                admitted: true,
                now_seconds: 5,
                now_micros: 6,
                milli_tokens_left: vec![99000, 7000],
            })
        );
        assert_eq!(ScriptReply::from_integers(&[1, 5, 6, 99000], 2), None);
        assert_eq!(ScriptReply::from_integers(&[1, 2], 0), None);
    }

    #[test]
    fn the_tighter_bucket_is_reported() {
        let small = BucketConfig {
            capacity: 10,
            window_seconds: 60,
        };
        // Admitted: the bucket with fewer tokens left.
        let (i, d) = decide(&[CONFIG, small], 1, &reply(true, &[50.0, 4.0]));
        assert_eq!((i, d.remaining, d.limit), (1, 4, 10));
        // Denied: the bucket that takes longest to afford the cost, not the
        // one that could have paid.
        let (i, d) = decide(&[CONFIG, small], 1, &reply(false, &[0.5, 7.0]));
        assert_eq!(i, 0);
        // Even when the short bucket is the second and both round to 1 s.
        let (i, _) = decide(&[small, CONFIG], 1, &reply(false, &[7.0, 0.9]));
        assert_eq!(i, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_seconds, 1);
        let (i, d) = decide(&[CONFIG, small], 2, &reply(false, &[1.5, 0.0]));
        assert_eq!((i, d.retry_after_seconds), (1, 12));
        assert_eq!(d.retry_after(), "12");
        assert_eq!(d.headers()[1], ("x-ratelimit-remaining", "0".into()));
    }
}
