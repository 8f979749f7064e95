//! CPU time and memory of the processes a benchmark drives, read from the
//! kernel: `/proc/<pid>/stat` for the servers (a process and every process
//! under it, with the children it has reaped), `getrusage` and the thread
//! CPU clock for this process.

use std::time::Duration;

/// `utime + stime + cutime + cstime` of one process, from `/proc/<pid>/stat`.
fn process_ticks(pid: u32) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: `) state ppid ...`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Some((ticks, parent))
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100).max(1)
}

/// CPU time of each root and all its descendants (the Postgres backends are
/// the postmaster's children; an exited one is in the postmaster's `cutime`),
/// from one pass over `/proc`. A root that is not running reads zero.
pub fn tree_cpu(roots: &[u32]) -> Vec<Duration> {
    let mut parents: std::collections::HashMap<u32, (u64, u32)> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                if let Some(found) = process_ticks(pid) {
                    parents.insert(pid, found);
                }
            }
        }
    }
    let descends = |mut pid: u32, root: u32| loop {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&(_, parent)) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    };
    roots
        .iter()
        .map(|&root| {
            let ticks: u64 = parents
                .iter()
                .filter(|(&pid, _)| descends(pid, root))
                .map(|(_, &(ticks, _))| ticks)
                .sum();
            Duration::from_micros(ticks * 1_000_000 / ticks_per_second())
        })
        .collect()
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time (user + system) of this whole process.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the struct it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This process's peak resident set since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets [`peak_rss`] to the current resident set (Linux `clear_refs` 5).
pub fn reset_peak_rss() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work_and_tree_cpu_reads_this_process() {
        let before = own_cpu();
        let thread_before = thread_cpu();
        let mut x = 0u64;
        // Work until this thread has used 50 ms of CPU, however busy the
        // machine (a wall-clock loop gets less CPU when other jobs run).
        let started = std::time::Instant::now();
        while thread_cpu() - thread_before < Duration::from_millis(50)
            && started.elapsed() < Duration::from_secs(60)
        {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let thread_used = thread_cpu() - thread_before;
        assert!(
            thread_used >= Duration::from_millis(50),
            "{thread_used:?} in a minute"
        );
        // The process's CPU holds this thread's.
        assert!(own_cpu() - before >= thread_used - Duration::from_millis(5));
        // This process is its own tree's root; its ticks are coarse but not zero after the loop.
        let trees = tree_cpu(&[std::process::id(), u32::MAX]);
        assert!(trees[0] >= Duration::from_millis(10));
        assert_eq!(trees[1], Duration::ZERO);
    }

    #[test]
    fn peak_rss_sees_touched_memory_and_resets() {
        reset_peak_rss().unwrap();
        let start = peak_rss();
        assert!(start > 0);
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        assert!(peak_rss() >= start + (60 << 20));
        drop(block);
        reset_peak_rss().unwrap();
        assert!(peak_rss() < start + (60 << 20));
    }
}
