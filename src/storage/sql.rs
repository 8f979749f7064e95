//! The one rule every Postgres statement of this project keeps.
//!
//! **A statement sent with `query` must yield exactly one row.** Spin 4.0.0 to
//! 4.0.2 (and Spin's main as of 2026-11) never return from the synchronous
//! `query` of `spin:postgres/postgres@4.0.0` when a statement yields no rows: the
//! host waits for column metadata that only comes with a first row
//! (spinframework/spin#3671; this project's issue #10). The guest cannot time
//! out of a host call, and the pooled connection it holds is lost with it: some
//! eighty such requests exhaust the pool and every later Postgres call hangs.
//!
//! So:
//! - a read is shaped to return one row whatever matches: aggregate the rows
//!   into one `jsonb` value (`COALESCE(jsonb_agg(...), '[]'::jsonb)`) in a
//!   `SELECT` with no `FROM`, or use an aggregate without `GROUP BY`;
//! - a statement whose rows are not needed goes through `execute`, which is
//!   unaffected.
//!
//! A statement meant for `query` is a [`OneRowQuery`]: the components' only
//! way to call `query` (`chatbot_spin::pg::query_one_row`) takes one, so a new
//! read has to be declared as keeping the rule, next to its SQL, here in the
//! core. The test harness fails any request whose `query` yields no rows.

/// A statement that yields exactly one row for any parameters (see the module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneRowQuery(&'static str);

impl OneRowQuery {
    /// Declares that `sql` yields exactly one row whatever it matches. Write why
    /// beside the constant.
    pub const fn new(sql: &'static str) -> Self {
        Self(sql)
    }

    pub const fn sql(&self) -> &'static str {
        self.0
    }
}

/// The readiness probe: one constant row.
pub const PING: OneRowQuery = OneRowQuery::new("SELECT 1");
