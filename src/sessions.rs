//! A user's gate in Redis, checked in one round trip before any spending:
//! who owns the session (in `jwt` mode), the user's daily token budget, and
//! how many sessions the user may hold at once (seed 003, 1.2). Also the
//! charge of a miss's tokens to the budget, and the note a rate-limited
//! session leaves for analytics and the security log.

use crate::upstream::{UpstreamError, OPENAI};

/// Seconds in the budget's window: a UTC day.
pub const DAY_SECONDS: u64 = 86_400;

/// `KEYS`: the user's session set, the user's token count for today, the
/// session's owner. `ARGV`: session id, max sessions, idle seconds, daily
/// budget (0: none), owner to enforce (empty: ownership is not enforced),
/// owner key TTL in seconds.
///
/// Checks in this order, and changes nothing unless all pass: the session's
/// owner is this user (or it has none yet), the budget is not spent, the
/// session is active or the user has room for another. Then it refreshes the
/// session's place and claims it for the user. Answers `{code, a, b}`: see
/// [`Gate::from_reply`].
pub const GATE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local idle = tonumber(ARGV[3])
local owner = ARGV[5]
local current_owner = false
if owner ~= '' then
  current_owner = redis.call('GET', KEYS[3])
  if current_owner and current_owner ~= owner then
    return {3, 0, 0}
  end
end
local budget = tonumber(ARGV[4])
if budget > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= budget then
    return {2, used, 0}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - idle)
local n = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if n >= tonumber(ARGV[2]) then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, n, tonumber(oldest[2])}
  end
  n = n + 1
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], idle)
local claimed = 0
if owner ~= '' then
  if current_owner then
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
  else
    redis.call('SET', KEYS[3], owner, 'EX', tonumber(ARGV[6]))
    claimed = 1
  end
end
return {0, n, claimed}
"#;

/// What [`GATE_SCRIPT`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go on. `claimed`: the session had no owner in Redis and is now this
    /// user's (the caller checks Postgres once, in case Redis forgot one).
    Admitted { claimed: bool },
    /// The session belongs to another user.
    NotOwner,
    /// The user has spent `used` tokens of today's budget.
    BudgetSpent { used: i64 },
    /// The user holds `active` sessions already; one frees up in `retry_after_seconds`.
    SessionLimit {
        active: i64,
        retry_after_seconds: i64,
    },
}

impl Gate {
    /// Reads the script's reply; anything unexpected admits (the limits are
    /// advisory when Redis misbehaves, as when it is down).
    pub fn from_reply(reply: &[i64], idle_seconds: u64, now_epoch_seconds: u64) -> Self {
        match reply {
            [1, active, oldest_last_seen] => Self::SessionLimit {
                active: *active,
                retry_after_seconds: (oldest_last_seen + idle_seconds as i64
                    - now_epoch_seconds as i64)
                    .max(1),
            },
            [2, used, _] => Self::BudgetSpent { used: *used },
            [3, _, _] => Self::NotOwner,
            [0, _, claimed] => Self::Admitted {
                claimed: *claimed == 1,
            },
            _ => Self::Admitted { claimed: false },
        }
    }
}

/// The budget's day (days since the epoch, UTC) and the seconds until it rolls.
/// How long Redis keeps a session's owner: as long as Postgres keeps the
/// session (its retention), whether the gate claimed it or a read of Postgres restored it.
pub fn owner_ttl_seconds(retention_days: u32) -> u64 {
    u64::from(retention_days) * DAY_SECONDS
}

pub fn budget_day(now_epoch_seconds: u64) -> (u64, u64) {
    (
        now_epoch_seconds / DAY_SECONDS,
        DAY_SECONDS - now_epoch_seconds % DAY_SECONDS,
    )
}

/// Settles a reservation: adds `ARGV[1]` (negative to give tokens back) to
/// each of the day's counts in `KEYS`, kept `ARGV[2]` seconds (past the
/// day's end, so a late settlement never starts a fresh count).
pub const CHARGE_SCRIPT: &str = r#"
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, tonumber(ARGV[1]))
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return #KEYS
"#;

/// Reserves a miss's worst case from every budget it spends against (the
/// user's day, the deployment's day) before any spending, atomically, so
/// concurrent misses cannot all pass a check of the same count, and from
/// all or none. `KEYS`: the day's counts. `ARGV`: tokens to reserve,
/// seconds a count is kept, then each key's budget. Answers `{1}` when
/// reserved, `{0, i, count}` (nothing changed) when what is left of
/// `KEYS[i]` cannot cover the reservation.
pub const RESERVE_SCRIPT: &str = r#"
local reserve = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  if used + reserve > tonumber(ARGV[2 + i]) then
    return {0, i, used}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, reserve)
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return {1}
"#;

/// Seconds a day's count is kept: past the day's end, so a late settlement
/// never starts a fresh count.
pub const COUNT_TTL_SECONDS: u64 = 2 * DAY_SECONDS;

/// What [`RESERVE_SCRIPT`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Taken,
    /// The count of the `index`-th key (from 0) is `used`: what is left of
    /// its budget is less than the reservation.
    DoesNotFit {
        index: usize,
        used: i64,
    },
}

impl Reserved {
    /// Reads the script's reply; anything unexpected is taken (the budget is
    /// advisory when Redis misbehaves, as when it is down).
    pub fn from_reply(reply: &[i64]) -> Self {
        match reply {
            [0, index, used] if *index >= 1 => Self::DoesNotFit {
                index: (*index - 1) as usize,
                used: *used,
            },
            _ => Self::Taken,
        }
    }
}

/// What a reserved miss turned out to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// No chat call was billed: the answer came from the cache after all (an
    /// identical question's, waited for), or the request failed before the
    /// model ran or was refused by it.
    Nothing,
    /// The model reported its usage.
    Reported(u64),
    /// The model ran but its usage is unknown: the stream was cut, the call
    /// timed out, or the backend reports no usage. OpenAI bills it anyway.
    Unknown,
}

impl Spent {
    /// What a failed miss spent: a call that timed out, broke off mid-answer
    /// or answered garbage may have been billed (the whole reservation
    /// stays); a refusal by the model, or any failure before it was called,
    /// was not.
    pub fn on_failure(error: &UpstreamError, chat_called: bool) -> Self {
        let maybe_billed = matches!(
            error,
            UpstreamError::Timeout { .. }
                | UpstreamError::BadResponse { .. }
                | UpstreamError::Unreachable { .. }
        );
        if chat_called && maybe_billed && error.service() == OPENAI {
            Self::Unknown
        } else {
            Self::Nothing
        }
    }

    /// What an answered miss spent: its reported usage, or (none reported)
    /// the whole reservation. An answer from the cache spent nothing.
    pub fn on_answer(cached: bool, reported_tokens: u64) -> Self {
        match (cached, reported_tokens) {
            (true, _) => Self::Nothing,
            (false, 0) => Self::Unknown,
            (false, tokens) => Self::Reported(tokens),
        }
    }
}

/// The change a settlement makes to the day's count (the reservation was
/// added already) and the tokens the request is finally charged.
pub fn settlement(reserved: u64, spent: Spent) -> (i64, u64) {
    let charged = match spent {
        Spent::Nothing => 0,
        Spent::Reported(tokens) => tokens,
        Spent::Unknown => reserved,
    };
    (charged as i64 - reserved as i64, charged)
}

/// The keys of [`GATE_SCRIPT`].
pub fn gate_keys(user: &str, day: u64, session: &str) -> [String; 3] {
    [
        crate::keys::user_sessions(user),
        crate::keys::user_tokens(user, day),
        crate::keys::session_owner(session),
    ]
}

/// Notes a rate-limited session (a decaying ranking, see `ranking`) and
/// appends the denial to the security log (sampled per address, like
/// `audit::APPEND_SCRIPT`), in one round trip. KEYS:
/// [`note_rate_limited_keys`]. ARGV: session id, the ranking's half-life and
/// cap, audit entry, sample seconds.
pub const NOTE_RATE_LIMITED_SCRIPT: &str = concat!(
    crate::ranking_bump_lua!("1", "2", "1", "2", "3"),
    crate::audit_append_lua!("3", "4", "4", "5")
);

/// The keys of [`NOTE_RATE_LIMITED_SCRIPT`]: the ranking, its base, and the
/// security entry's log and throttle.
pub fn note_rate_limited_keys(entry: &crate::audit::AuditEntry) -> [String; 4] {
    let [log, throttle] = entry.script_keys();
    [
        crate::keys::RATE_LIMITED_SESSIONS.to_string(),
        crate::ranking::base_key(crate::keys::RATE_LIMITED_SESSIONS),
        log,
        throttle,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::QDRANT;

    #[test]
    fn an_owner_is_kept_as_long_as_its_session() {
        assert_eq!(owner_ttl_seconds(30), 2_592_000);
        assert_eq!(owner_ttl_seconds(1), 86_400);
    }

    #[test]
    fn the_gate_reads_the_script_reply() {
        assert_eq!(
            Gate::from_reply(&[0, 3, 1], 60, 100),
            Gate::Admitted { claimed: true }
        );
        assert_eq!(
            Gate::from_reply(&[0, 3, 0], 60, 100),
            Gate::Admitted { claimed: false }
        );
        assert_eq!(
            Gate::from_reply(&[1, 5, 100], 60, 130),
            Gate::SessionLimit {
                active: 5,
                retry_after_seconds: 30
            }
        );
        // Never tells a client to retry in the past.
        assert_eq!(
            Gate::from_reply(&[1, 5, 100], 60, 500),
            Gate::SessionLimit {
                active: 5,
                retry_after_seconds: 1
            }
        );
        assert_eq!(
            Gate::from_reply(&[2, 900, 0], 60, 0),
            Gate::BudgetSpent { used: 900 }
        );
        assert_eq!(Gate::from_reply(&[3, 0, 0], 60, 0), Gate::NotOwner);
        assert_eq!(
            Gate::from_reply(&[], 60, 0),
            Gate::Admitted { claimed: false }
        );
    }

    #[test]
    fn a_reservation_settles_to_what_the_model_reported_or_stays_whole() {
        assert_eq!(Reserved::from_reply(&[1]), Reserved::Taken);
        assert_eq!(
            Reserved::from_reply(&[0, 2, 9_500]),
            Reserved::DoesNotFit {
                index: 1,
                used: 9_500
            }
        );
        assert_eq!(Reserved::from_reply(&[0, 0, 1]), Reserved::Taken);
        assert_eq!(Reserved::from_reply(&[]), Reserved::Taken);
        // Reported usage below the reservation gives the rest back...
        assert_eq!(settlement(3_000, Spent::Reported(700)), (-2_300, 700));
        // ...and above it (a passage larger than this project ingests) adds the excess.
        assert_eq!(settlement(3_000, Spent::Reported(3_400)), (400, 3_400));
        // A cut stream or a silent backend is charged the whole reservation.
        assert_eq!(settlement(3_000, Spent::Unknown), (0, 3_000));
        assert_eq!(settlement(3_000, Spent::Nothing), (-3_000, 0));
    }

    #[test]
    fn only_a_model_call_that_may_have_been_billed_keeps_its_reservation() {
        let timeout = UpstreamError::Timeout { service: OPENAI };
        assert_eq!(Spent::on_failure(&timeout, true), Spent::Unknown);
        assert_eq!(
            Spent::on_failure(&timeout, false),
            Spent::Nothing,
            "the embedding call timed out: the model never ran"
        );
        let cut = UpstreamError::BadResponse {
            service: OPENAI,
            message: "the stream ended before [DONE]".into(),
        };
        assert_eq!(Spent::on_failure(&cut, true), Spent::Unknown);
        let refused = UpstreamError::Status {
            service: OPENAI,
            status: 400,
            message: "bad".into(),
        };
        assert_eq!(Spent::on_failure(&refused, true), Spent::Nothing);
        let qdrant = UpstreamError::Timeout { service: QDRANT };
        assert_eq!(Spent::on_failure(&qdrant, true), Spent::Nothing);
        assert_eq!(Spent::on_answer(true, 900), Spent::Nothing);
        assert_eq!(Spent::on_answer(false, 900), Spent::Reported(900));
        assert_eq!(Spent::on_answer(false, 0), Spent::Unknown);
    }

    #[test]
    fn the_budget_day_rolls_at_utc_midnight() {
        assert_eq!(budget_day(0), (0, 86_400));
        assert_eq!(budget_day(86_399), (0, 1));
        assert_eq!(budget_day(86_400 * 20_000 + 3_600), (20_000, 82_800));
    }
}
