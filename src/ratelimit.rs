//! Token-bucket rate limiting: the Lua script Redis runs atomically, and the
//! arithmetic that turns its answer into a decision and HTTP headers.
//!
//! The bucket holds at most `capacity` tokens and refills continuously at
//! `capacity / window` tokens per second. A request of cost `c` is admitted
//! when at least `c` tokens are there, and then takes them; otherwise it is
//! denied and takes nothing, so the bucket never goes negative. Redis's own
//! clock (`TIME`) is used, so replicas with skewed clocks share one bucket.

/// The bucket script. `KEYS[1]`: the bucket. `ARGV`: capacity, window in
/// milliseconds, cost. Answers `{admitted (0/1), milli-tokens left, now seconds,
/// now microseconds within the second}`.
pub const TOKEN_BUCKET_SCRIPT: &str = r#"
local capacity = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now_us
end
local rate_per_us = capacity / (window_ms * 1000)
local elapsed = now_us - at
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate_per_us)
local admitted = 0
if cost <= tokens then
  tokens = tokens - cost
  admitted = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%d', now_us))
-- An idle bucket is full again after this long; then it can simply vanish.
local full_in_ms = math.ceil((capacity - tokens) / rate_per_us / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], full_in_ms)
return {admitted, math.floor(tokens * 1000), tonumber(t[1]), tonumber(t[2])}
"#;

/// Longest key a caller may pass (it is hashed, but a bound keeps requests small).
pub const MAX_KEY_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    pub capacity: u32,
    pub window_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate-limit key must be 1 to {MAX_KEY_LEN} bytes")]
    InvalidKey,
    #[error("cost must be at least 1")]
    ZeroCost,
    #[error("cost {cost} exceeds the bucket capacity {capacity}: it could never be admitted")]
    CostAboveCapacity { cost: u32, capacity: u32 },
}

/// The Redis key for a caller's bucket. The caller's text is hashed, so it can
/// never inject key syntax; the `{...}` hash tag keeps one bucket in one
/// Redis Cluster slot.
pub fn bucket_key(caller_key: &str) -> Result<String, LimitError> {
    if caller_key.is_empty() || caller_key.len() > MAX_KEY_LEN {
        return Err(LimitError::InvalidKey);
    }
    Ok(crate::keys::rate_limit_bucket(caller_key))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptReply {
    pub admitted: bool,
    pub milli_tokens_left: i64,
    pub now_seconds: i64,
    pub now_micros: i64,
}

impl ScriptReply {
    /// Parses the script's four integers.
    pub fn from_integers(values: &[i64]) -> Option<Self> {
        match values {
            [admitted, milli, secs, micros] => Some(Self {
                admitted: *admitted == 1,
                milli_tokens_left: *milli,
                now_seconds: *secs,
                now_micros: *micros,
            }),
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
    /// Of two decisions for one request (session and user buckets), the one to
    /// report: a denial, else the one with fewer tokens left.
    pub fn tighter(self, other: Decision) -> Decision {
        if !other.allowed || (self.allowed && other.remaining < self.remaining) {
            other
        } else {
            self
        }
    }

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

/// Turns the script's reply into a decision.
pub fn decide(config: BucketConfig, cost: u32, reply: ScriptReply) -> Decision {
    let capacity = f64::from(config.capacity);
    let tokens = (reply.milli_tokens_left.max(0) as f64 / 1000.0).min(capacity);
    let rate = capacity / f64::from(config.window_seconds.max(1));
    let now = reply.now_seconds as f64 + reply.now_micros as f64 / 1e6;
    let full_at = now + (capacity - tokens) / rate;
    let retry_after = if reply.admitted {
        0
    } else {
        // At least one second: `Retry-After: 0` would invite an immediate retry.
        (((f64::from(cost) - tokens) / rate).ceil() as u32).max(1)
    };
    Decision {
        allowed: reply.admitted,
        limit: config.capacity,
        remaining: tokens.floor() as u32,
        reset_at_epoch_seconds: full_at.ceil() as u64,
        retry_after_seconds: retry_after,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BucketConfig = BucketConfig {
        capacity: 100,
        window_seconds: 60,
    };

    fn reply(admitted: bool, tokens: f64) -> ScriptReply {
        ScriptReply {
            admitted,
            milli_tokens_left: (tokens * 1000.0) as i64,
            now_seconds: 1_700_000_000,
            now_micros: 0,
        }
    }

    #[test]
    fn keys_are_hashed_and_hash_tagged() {
        let key = bucket_key("session:abc").unwrap();
        assert!(key.starts_with("chatbot:ratelimit:{") && key.ends_with('}'));
        assert_eq!(key.len(), "chatbot:ratelimit:{}".len() + 32);
        // Hostile input never reaches the key.
        let hostile = bucket_key("x} \r\nFLUSHALL {").unwrap();
        assert!(!hostile.contains("FLUSHALL") && !hostile.contains('\n'));
        assert_ne!(bucket_key("a").unwrap(), bucket_key("b").unwrap());
        assert_eq!(bucket_key(""), Err(LimitError::InvalidKey));
        assert_eq!(
            bucket_key(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(LimitError::InvalidKey)
        );
    }

    #[test]
    fn admitted_decision_reports_remaining_and_reset() {
        let d = decide(CONFIG, 1, reply(true, 99.0));
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
        let d = decide(CONFIG, 1, reply(false, 0.25));
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_seconds, 1);
        // Cost 50 with 0 left needs 30 s.
        let d = decide(CONFIG, 50, reply(false, 0.0));
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
        let sha = crate::digest::script_sha(TOKEN_BUCKET_SCRIPT);
        assert_eq!(sha.len(), 40);
        assert!(sha.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            ScriptReply::from_integers(&[1, 99000, 5, 6]),
            Some(ScriptReply {
                admitted: true,
                milli_tokens_left: 99000,
                now_seconds: 5,
                now_micros: 6
            })
        );
        assert_eq!(ScriptReply::from_integers(&[1, 2]), None);
    }

    #[test]
    fn the_tighter_decision_is_reported() {
        let allowed = |remaining| Decision {
            allowed: true,
            limit: 100,
            remaining,
            reset_at_epoch_seconds: 10,
            retry_after_seconds: 0,
        };
        let denied = Decision {
            allowed: false,
            remaining: 0,
            retry_after_seconds: 3,
            ..allowed(0)
        };
        assert_eq!(allowed(50).tighter(allowed(20)), allowed(20));
        assert_eq!(allowed(20).tighter(allowed(50)), allowed(20));
        assert_eq!(allowed(50).tighter(denied), denied);
        assert_eq!(denied.tighter(allowed(50)), denied);
        assert_eq!(denied.retry_after(), "3");
        assert_eq!(
            allowed(5).headers()[1],
            ("x-ratelimit-remaining", "5".into())
        );
    }
}
