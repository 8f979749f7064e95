//! Sessions in Redis: how many a user may hold at once (seed 003, 1.2), and
//! the note a rate-limited session leaves for analytics and the audit log.

/// Admits a session for a user if it is already active or the user has fewer
/// than `max` active ones; idle sessions stop counting after `idle` seconds.
/// KEYS: the user's session set, the audit log. ARGV: session id, max,
/// idle seconds, audit entry (written on refusal). Answers
/// `{admitted, active, oldest_last_seen}`: see [`Admission::from_reply`].
pub const ADMIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local idle = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - idle)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], idle)
  return {1, redis.call('ZCARD', KEYS[1]), now}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], now * 1000000 + tonumber(t[2]), ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -10001)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, tonumber(oldest[2])}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], idle)
return {1, n + 1, now}
"#;

/// What [`ADMIT_SCRIPT`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The user holds `active` sessions already; one frees up in `retry_after_seconds`.
    Refused {
        active: i64,
        retry_after_seconds: i64,
    },
}

impl Admission {
    /// Reads the script's reply; anything unexpected admits (the limit is
    /// advisory when Redis misbehaves, like when it is down).
    pub fn from_reply(reply: &[i64], idle_seconds: u64, now_epoch_seconds: u64) -> Self {
        match reply {
            [0, active, oldest_last_seen] => Self::Refused {
                active: *active,
                retry_after_seconds: (oldest_last_seen + idle_seconds as i64
                    - now_epoch_seconds as i64)
                    .max(1),
            },
            _ => Self::Admitted,
        }
    }
}

/// Notes a rate-limited session (top limited sessions, capped at 1,000) and
/// appends the denial to the audit log (capped like `audit::APPEND_SCRIPT`),
/// in one round trip. KEYS: limited sessions, audit log. ARGV: session id, audit entry.
pub const NOTE_RATE_LIMITED_SCRIPT: &str = r#"
redis.call('ZINCRBY', KEYS[1], 1, ARGV[1])
if redis.call('ZCARD', KEYS[1]) > 1000 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, 0)
end
local t = redis.call('TIME')
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[2], score, ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -10001)
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_reads_the_script_reply() {
        assert_eq!(
            Admission::from_reply(&[1, 3, 100], 60, 100),
            Admission::Admitted
        );
        assert_eq!(
            Admission::from_reply(&[0, 5, 100], 60, 130),
            Admission::Refused {
                active: 5,
                retry_after_seconds: 30
            }
        );
        // Never tells a client to retry in the past.
        assert_eq!(
            Admission::from_reply(&[0, 5, 100], 60, 500),
            Admission::Refused {
                active: 5,
                retry_after_seconds: 1
            }
        );
        assert_eq!(Admission::from_reply(&[], 60, 0), Admission::Admitted);
    }
}
