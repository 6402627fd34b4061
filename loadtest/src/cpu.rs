//! CPU time of the processes a measurement involves, read from /proc (Linux): the broker
//! (`beam.smp`), Redis, every `dtee-worker`, and this load generator.

use std::collections::BTreeMap;

/// Clock ticks (user + system) per process group.
pub type Snapshot = BTreeMap<String, u64>;

fn group(comm: &str) -> Option<&'static str> {
    match comm {
        "beam.smp" => Some("rabbitmq"),
        "redis-server" => Some("redis"),
        "dtee-worker" => Some("worker"),
        "dtee-loadtest" => Some("loadtest"),
        _ => None,
    }
}

/// The ticks used so far by each group's processes (those alive now).
pub fn snapshot() -> Snapshot {
    let mut totals = Snapshot::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... field 14 utime, 15 stime (1-based, after the comm).
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let Some(name) = group(&stat[open + 1..close]) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *totals.entry(name.to_owned()).or_default() += ticks(11) + ticks(12);
    }
    totals
}

/// Microseconds of CPU per job for each group between two snapshots (100 ticks a second).
pub fn per_job(before: &Snapshot, after: &Snapshot, jobs: usize) -> BTreeMap<String, f64> {
    let mut per_job = BTreeMap::new();
    if jobs == 0 {
        return per_job;
    }
    let mut total = 0.0;
    for (name, ticks) in after {
        let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
        let us = used as f64 * 10_000.0 / jobs as f64;
        total += us;
        per_job.insert(name.clone(), us);
    }
    per_job.insert("total".to_owned(), total);
    per_job
}
