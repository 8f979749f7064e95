//! Retention: expired rows are deleted in bounded batches.
//!
//! These statements go through `execute` (their rows are not needed), never
//! `query`: see `crate::storage::sql` (issue #10).

/// Deletes up to `$1` expired rows of a table per call; run until it deletes fewer.
pub const CLEANUP_STATEMENTS: [(&str, &str); 3] = [
    ("messages", "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE expires_at <= now() LIMIT $1)"),
    ("conversations", "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations WHERE expires_at <= now() LIMIT $1)"),
    ("user_sessions", "DELETE FROM user_sessions WHERE id IN (SELECT id FROM user_sessions WHERE expires_at <= now() LIMIT $1)"),
];

pub const DEFAULT_CLEANUP_BATCH: i64 = 1000;
pub const MAX_CLEANUP_BATCHES: u32 = 1000;

/// One `/admin/cleanup` call's way through [`CLEANUP_STATEMENTS`], a batch at
/// a time, and what it deleted. The component runs [`Cleanup::next`]'s
/// statement (with [`Cleanup::batch_size`] as `$1`) while there is one,
/// reports each batch's count with [`Cleanup::deleted`], and calls
/// [`Cleanup::cut_short`] when time runs out: a call then answers what it
/// did and that rows may remain (`"more": true`), and the next call goes on
/// (deleting is idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    batch: i64,
    /// The table being cleaned (an index into [`CLEANUP_STATEMENTS`]; past
    /// the end once every table is clean).
    table: usize,
    deleted: [u64; CLEANUP_STATEMENTS.len()],
    batches: u32,
    cut_short: bool,
}

impl Cleanup {
    pub fn new(batch: i64) -> Self {
        Self {
            batch,
            table: 0,
            deleted: [0; CLEANUP_STATEMENTS.len()],
            batches: 0,
            cut_short: false,
        }
    }

    pub fn batch_size(&self) -> i64 {
        self.batch
    }

    /// Batches run so far.
    pub fn batches(&self) -> u32 {
        self.batches
    }

    /// The statement of the next batch, or `None`: every table is clean,
    /// [`MAX_CLEANUP_BATCHES`] ran, or time ran out.
    pub fn next(&self) -> Option<&'static str> {
        if self.cut_short || self.batches >= MAX_CLEANUP_BATCHES {
            return None;
        }
        CLEANUP_STATEMENTS
            .get(self.table)
            .map(|(_, statement)| *statement)
    }

    /// The batch [`Cleanup::next`] named deleted `rows`: fewer than a batch,
    /// and its table is clean.
    pub fn deleted(&mut self, rows: u64) {
        if let Some(total) = self.deleted.get_mut(self.table) {
            *total += rows;
        }
        self.batches += 1;
        if rows < self.batch.max(0) as u64 {
            self.table += 1;
        }
    }

    /// Time ran out: no more batches in this call.
    pub fn cut_short(&mut self) {
        self.cut_short = true;
    }

    /// Whether expired rows may remain (the call stopped before every table
    /// was clean): call again.
    pub fn more(&self) -> bool {
        self.table < CLEANUP_STATEMENTS.len()
    }

    /// The reply: what each table lost, the batches run, whether to call again.
    pub fn report(&self) -> serde_json::Value {
        let deleted: serde_json::Map<String, serde_json::Value> = CLEANUP_STATEMENTS
            .iter()
            .zip(self.deleted)
            .map(|((table, _), rows)| (table.to_string(), rows.into()))
            .collect();
        serde_json::json!({
            "status": if self.more() { "partial" } else { "done" },
            "deleted": deleted,
            "batches": self.batches,
            "more": self.more(),
        })
    }
}

/// Whether another batch fits in what is left of the call's deadline: a
/// batch takes about as long as the longest one so far, and twice that
/// leaves it room to run long. A call that stops here answers what it did
/// instead of having its next batch cut by the deadline.
pub fn another_batch_fits(
    time_left: std::time::Duration,
    longest_batch: std::time::Duration,
) -> bool {
    time_left > longest_batch.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    /// Runs `cleanup` with batches deleting `counts` in turn; the statements run.
    fn run(cleanup: &mut Cleanup, counts: &[u64]) -> Vec<&'static str> {
        let mut ran = Vec::new();
        for &rows in counts {
            let Some(statement) = cleanup.next() else {
                break;
            };
            ran.push(statement);
            cleanup.deleted(rows);
        }
        ran
    }

    #[test]
    fn each_table_is_cleaned_until_a_batch_deletes_fewer_than_a_batch() {
        let mut cleanup = Cleanup::new(2);
        let ran = run(&mut cleanup, &[2, 2, 1, 0, 2, 0]);
        let [messages, conversations, sessions] = CLEANUP_STATEMENTS.map(|(_, s)| s);
        assert_eq!(
            ran,
            [
                messages,
                messages,
                messages,
                conversations,
                sessions,
                sessions
            ]
        );
        assert_eq!(cleanup.next(), None);
        assert!(!cleanup.more());
        assert_eq!(
            cleanup.report(),
            json!({
                "status": "done",
                "deleted": {"messages": 5, "conversations": 0, "user_sessions": 2},
                "batches": 6,
                "more": false,
            })
        );
    }

    #[test]
    fn a_call_cut_short_reports_what_it_did_and_that_more_remains() {
        let mut cleanup = Cleanup::new(10);
        run(&mut cleanup, &[10, 10]);
        cleanup.cut_short();
        assert_eq!(cleanup.next(), None, "no batch after time ran out");
        assert!(cleanup.more());
        let report = cleanup.report();
        assert_eq!(report["status"], "partial");
        assert_eq!(report["more"], true);
        assert_eq!(report["batches"], 2);
        assert_eq!(report["deleted"]["messages"], 20);
        // Cut short after the last table was clean: nothing remains.
        let mut done = Cleanup::new(10);
        run(&mut done, &[0, 0, 0]);
        done.cut_short();
        assert!(!done.more());
    }

    #[test]
    fn a_call_stops_after_its_most_batches_and_says_more_may_remain() {
        let mut cleanup = Cleanup::new(1);
        let ran = run(&mut cleanup, &vec![1; MAX_CLEANUP_BATCHES as usize + 5]);
        assert_eq!(ran.len(), MAX_CLEANUP_BATCHES as usize);
        assert!(cleanup.more());
        assert_eq!(cleanup.report()["more"], true);
    }

    #[test]
    fn another_batch_runs_only_with_room_for_twice_the_longest_so_far() {
        let ms = Duration::from_millis;
        assert!(another_batch_fits(ms(1000), ms(0)));
        assert!(another_batch_fits(ms(1000), ms(499)));
        assert!(!another_batch_fits(ms(1000), ms(500)));
        assert!(!another_batch_fits(Duration::ZERO, Duration::ZERO));
        assert!(!another_batch_fits(ms(10), Duration::MAX), "no overflow");
    }
}
