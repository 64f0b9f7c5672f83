//! What the benchmarks read of their own process: CPU time (whole process and per thread),
//! resident memory, and percentiles of what they timed.
//!
//! ```text
//!  /proc/self/stat, /proc/self/task/*/stat, /proc/self/status ─► seconds, MiB
//! ```

use std::collections::BTreeMap;

use anyhow::Context;

/// CPU time (user + system) of this process, all threads included.
pub(super) fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse::<f64>()?)
    };
    // Linux reports these in USER_HZ, which is 100 on every mainstream architecture.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// User and system CPU seconds of each live thread of this process, by thread id, with its
/// name (librdkafka names its threads `rdk:main`, `rdk:broker<N>`; the consume thread is a
/// tokio blocking thread).
pub(super) fn thread_cpu() -> BTreeMap<String, (String, f64, f64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = head[open + 1..].trim_end_matches(|c: char| c.is_ascii_digit());
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let seconds = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 100.0
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        out.insert(tid, (name.to_owned(), seconds(11), seconds(12)));
    }
    out
}

/// The CPU each thread name took between two [`thread_cpu`] readings (threads, user, system,
/// the busiest thread), largest first.
pub(super) fn thread_cpu_delta(
    before: &BTreeMap<String, (String, f64, f64)>,
    after: &BTreeMap<String, (String, f64, f64)>,
) -> String {
    let mut by_name: BTreeMap<&str, (usize, f64, f64, f64)> = BTreeMap::new();
    for (tid, (name, user, system)) in after {
        let (_, u0, s0) = before.get(tid).cloned().unwrap_or_default();
        let (u, s) = (user - u0, system - s0);
        let entry = by_name.entry(name).or_default();
        entry.0 += 1;
        entry.1 += u;
        entry.2 += s;
        entry.3 = entry.3.max(u + s);
    }
    let mut rows: Vec<_> = by_name
        .into_iter()
        .filter(|(_, (_, u, s, _))| u + s > 0.0)
        .collect();
    rows.sort_by(|a, b| (b.1.1 + b.1.2).total_cmp(&(a.1.1 + a.1.2)));
    rows.iter()
        .map(|(name, (n, u, s, busiest))| {
            format!("{name} ×{n} {u:.2}s user + {s:.2}s system (busiest {busiest:.2}s)")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Resident memory of this process now, from /proc.
pub(super) fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// The most resident memory this process has had, from /proc.
pub(super) fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory line of /proc/self/status (in kB there), in MiB; 0 if unreadable.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
