//! The token budgets in Redis, for each component that spends OpenAI tokens
//! (a question's miss, an admin's warm-up): the worst case reserved from the
//! day's counts before anything is spent (`sessions::Reserve`, all counts or
//! none), then settled to what was spent (`sessions::settlement`,
//! `sessions::Charge`). The decisions are the core's.

use chatbot_core::limits::sessions::{self, Charge, Reserve, Reserved, Spent};

use crate::redis_script::{run, Conn};
use crate::StoreError;

/// Takes `tokens` from each of `counts` (a day's key and its budget), or
/// from none when what is left of one cannot cover them.
pub async fn reserve(
    conn: &Conn,
    counts: &[(String, u64)],
    tokens: u64,
) -> Result<Reserved, StoreError> {
    run(conn, &Reserve { counts, tokens }).await
}

/// Settles a reservation of `reserved` tokens from the counts `keys` to what
/// was `spent`, and returns the tokens finally charged. A settlement that
/// fails is logged: the reservation then stays, the safe side.
pub async fn settle(conn: Option<&Conn>, keys: &[String], reserved: u64, spent: Spent) -> u64 {
    let (change, charged) = sessions::settlement(reserved, spent);
    if change == 0 {
        return charged;
    }
    let Some(conn) = conn else {
        return charged;
    };
    let settled = run(
        conn,
        &Charge {
            counts: keys,
            change,
        },
    )
    .await;
    if let Err(e) = settled {
        crate::log::write(
            crate::log::Level::Warn,
            "budget_settle_failed",
            crate::log::Dependency::Redis,
            &e,
            &[("change", &change.to_string())],
        );
    }
    charged
}
