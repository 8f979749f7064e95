//! A user's gate in Redis, checked in one round trip before any spending:
//! who owns the session (in `jwt` mode), the user's daily token budget, and
//! how many sessions the user may hold at once (seed 003, 1.2). Also the
//! charge of a miss's tokens to the budget, and the note a rate-limited
//! session leaves for analytics and the security log.

use crate::chat::upstream::{UpstreamError, OPENAI};
use crate::redis::keys;
use crate::redis::script::{integers, Arg, Script, Value};

/// Seconds in the budget's window: a UTC day.
pub const DAY_SECONDS: u64 = 86_400;

/// The user's gate. Checks in this order, and changes nothing unless all pass: the session's
/// owner is this user (or it has none yet), the budget is not spent, the
/// session is active or the user has room for another. Then it refreshes the
/// session's place and claims it for the user. Answers `{code, a, b}`: see
/// [`Gate::from_reply`].
pub struct GateCheck<'a> {
    pub user: &'a str,
    pub session: &'a str,
    pub max_sessions: u64,
    pub idle_seconds: u64,
    /// The user's daily token budget (0: none).
    pub budget_per_day: u64,
    pub owner: OwnerCheck,
    /// How long Redis keeps the session's owner ([`owner_ttl_seconds`]).
    pub owner_ttl_seconds: u64,
    pub now_epoch_seconds: u64,
}

/// Whether a session must belong to the user asking (jwt mode), or ownership
/// is not checked (`none` mode, where a user id is the client's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerCheck {
    Enforced,
    NotEnforced,
}

impl OwnerCheck {
    pub fn enforced(self) -> bool {
        self == Self::Enforced
    }
}

impl Script for GateCheck<'_> {
    const SOURCE: &'static str = GATE_LUA;
    type Reply = Gate;

    /// The user's session set, the user's token count for today, the session's owner.
    fn keys(&self) -> Vec<String> {
        let (day, _) = budget_day(self.now_epoch_seconds);
        vec![
            keys::user_sessions(self.user),
            keys::user_tokens(self.user, day),
            keys::session_owner(self.session),
        ]
    }

    /// Session id, max sessions, idle seconds, daily budget, owner to enforce
    /// (empty: not enforced), owner key TTL in seconds.
    fn args(&self) -> Vec<Arg> {
        vec![
            Arg::from(self.session),
            Arg::from(self.max_sessions),
            Arg::from(self.idle_seconds),
            Arg::from(self.budget_per_day),
            Arg::from(if self.owner.enforced() { self.user } else { "" }),
            Arg::from(self.owner_ttl_seconds),
        ]
    }

    fn parse(&self, reply: Vec<Value>) -> Gate {
        Gate::from_reply(&integers(&reply), self.idle_seconds, self.now_epoch_seconds)
    }
}

const GATE_LUA: &str = r#"
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

/// What [`GateCheck`] decided.
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

/// Settles a reservation: adds `change` (negative to give tokens back) to
/// each of the day's counts the reservation took from, each kept
/// [`COUNT_TTL_SECONDS`] (past the day's end, so a late settlement never
/// starts a fresh count).
pub struct Charge<'a> {
    pub counts: &'a [String],
    pub change: i64,
}

impl Script for Charge<'_> {
    const SOURCE: &'static str = CHARGE_LUA;
    type Reply = ();

    fn keys(&self) -> Vec<String> {
        self.counts.to_vec()
    }

    fn args(&self) -> Vec<Arg> {
        vec![Arg::from(self.change), Arg::from(COUNT_TTL_SECONDS)]
    }

    fn parse(&self, _: Vec<Value>) {}
}

const CHARGE_LUA: &str = r#"
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, tonumber(ARGV[1]))
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return #KEYS
"#;

/// Reserves a miss's worst case from every budget it spends against (the
/// user's day, the deployment's day) before any spending, atomically, so
/// concurrent misses cannot all pass a check of the same count, and from
/// all or none.
pub struct Reserve<'a> {
    /// Each count (a day's key) and its budget.
    pub counts: &'a [(String, u64)],
    pub tokens: u64,
}

impl Script for Reserve<'_> {
    const SOURCE: &'static str = RESERVE_LUA;
    type Reply = Reserved;

    fn keys(&self) -> Vec<String> {
        self.counts.iter().map(|(key, _)| key.clone()).collect()
    }

    /// Tokens to reserve, seconds a count is kept, then each count's budget.
    fn args(&self) -> Vec<Arg> {
        [Arg::from(self.tokens), Arg::from(COUNT_TTL_SECONDS)]
            .into_iter()
            .chain(self.counts.iter().map(|(_, budget)| Arg::from(*budget)))
            .collect()
    }

    /// `{1}` when reserved, `{0, i, count}` (nothing changed) when what is
    /// left of the `i`-th count cannot cover the reservation.
    fn parse(&self, reply: Vec<Value>) -> Reserved {
        Reserved::from_reply(&integers(&reply))
    }
}

const RESERVE_LUA: &str = r#"
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

/// What [`Reserve`] decided.
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
    /// was not, beyond the tokens calls before it reported (a follow-up's
    /// rewrite, `reported`).
    pub fn on_failure(error: &UpstreamError, chat_called: bool, reported: u64) -> Self {
        let billed = chat_called && error.may_have_been_billed() && error.service() == OPENAI;
        Self::unless_billed(billed, reported)
    }

    /// What a request cut at its deadline spent: the model bills a call cut
    /// short, so once it was asked the whole reservation stays; before, only
    /// what calls before it reported.
    pub fn at_the_deadline(chat_called: bool, reported: u64) -> Self {
        Self::unless_billed(chat_called, reported)
    }

    /// All of the reservation when the chat call may have been billed, else
    /// the tokens reported.
    fn unless_billed(billed: bool, reported: u64) -> Self {
        match (billed, reported) {
            (true, _) => Self::Unknown,
            (false, 0) => Self::Nothing,
            (false, tokens) => Self::Reported(tokens),
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

/// Notes a rate-limited session (a decaying ranking, see `ranking`) and
/// appends the denial to the security log (sampled per address, like
/// `audit::Append`), in one round trip.
pub struct NoteRateLimited<'a> {
    pub session_id: &'a str,
    pub entry: &'a crate::telemetry::audit::AuditEntry,
}

impl Script for NoteRateLimited<'_> {
    const SOURCE: &'static str = concat!(
        crate::ranking_bump_lua!("1", "2", "1", "2", "3"),
        crate::audit_append_lua!("3", "4", "4", "5")
    );
    type Reply = ();

    /// The ranking, its base, and the security entry's log and throttle.
    fn keys(&self) -> Vec<String> {
        let [log, throttle] = self.entry.script_keys();
        vec![
            keys::RATE_LIMITED_SESSIONS.to_string(),
            crate::cache::ranking::base_key(keys::RATE_LIMITED_SESSIONS),
            log,
            throttle,
        ]
    }

    /// The session, the ranking's half-life and cap, the entry, its sample seconds.
    fn args(&self) -> Vec<Arg> {
        use crate::cache::ranking;
        vec![
            Arg::from(self.session_id),
            Arg::from(ranking::RATE_LIMITED_HALF_LIFE_SECONDS),
            Arg::from(ranking::RATE_LIMITED_CAP),
            Arg::from(self.entry.to_json()),
            Arg::from(self.entry.action.sample_seconds()),
        ]
    }

    fn parse(&self, _: Vec<Value>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::upstream::QDRANT;

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
        assert_eq!(Spent::on_failure(&timeout, true, 0), Spent::Unknown);
        assert_eq!(
            Spent::on_failure(&timeout, false, 0),
            Spent::Nothing,
            "the embedding call timed out: the model never ran"
        );
        let cut = UpstreamError::BadResponse {
            service: OPENAI,
            message: "the stream ended before [DONE]".into(),
        };
        assert_eq!(Spent::on_failure(&cut, true, 0), Spent::Unknown);
        let refused = UpstreamError::Status {
            service: OPENAI,
            status: 400,
            message: "bad".into(),
        };
        assert_eq!(Spent::on_failure(&refused, true, 0), Spent::Nothing);
        let qdrant = UpstreamError::Timeout { service: QDRANT };
        assert_eq!(Spent::on_failure(&qdrant, true, 0), Spent::Nothing);
        // A follow-up's rewrite was billed before Qdrant failed: it is charged.
        assert_eq!(Spent::on_failure(&qdrant, true, 42), Spent::Reported(42));
        assert_eq!(Spent::on_failure(&timeout, true, 42), Spent::Unknown);
        // Cut at the deadline: before the model was asked, what was reported; after, all of it.
        assert_eq!(Spent::at_the_deadline(false, 0), Spent::Nothing);
        assert_eq!(Spent::at_the_deadline(false, 42), Spent::Reported(42));
        assert_eq!(Spent::at_the_deadline(true, 42), Spent::Unknown);
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
