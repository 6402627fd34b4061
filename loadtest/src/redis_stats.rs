//! Redis's own account of a run: `INFO commandstats` read before and after, per job. The
//! counts are exact where CPU time from `/proc` is noisy: a change that saves a round trip or a
//! call inside a script shows in them directly. They count every client of the Redis server
//! (the workers, this load generator, anything else using it), and calls made inside a script
//! once for the script (`evalsha`) and once each. One Redis node only (a cluster's nodes would
//! each need reading): on a cluster nothing is reported.

use std::collections::BTreeMap;

use serde::Serialize;

/// Calls and microseconds of each command, as `INFO commandstats` lists them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, (u64, u64)>);

/// One command's share of a run, per job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerJob {
    /// Calls per job.
    pub calls: f64,
    /// Microseconds per job Redis spent in the command (for a script, its calls included).
    pub us: f64,
}

/// The server's command statistics now, or `None` on a cluster or when Redis refuses `INFO`.
pub async fn snapshot(redis: &dtee_net::RedisConn) -> Option<Snapshot> {
    if redis.is_cluster() {
        return None;
    }
    let mut connection = redis.clone();
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .ok()?;
    Some(parse(&text))
}

/// `INFO commandstats` text: lines such as `cmdstat_get:calls=8000,usec=1513,...`.
fn parse(text: &str) -> Snapshot {
    let mut stats = BTreeMap::new();
    for line in text.lines() {
        let Some((name, fields)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(command) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse::<u64>().ok())
        };
        if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
            stats.insert(command.to_owned(), (calls, usec));
        }
    }
    Snapshot(stats)
}

/// What each command added between `before` and `after`, per job of `count`: commands that
/// ran fewer than once per hundred jobs are left out. Empty when either snapshot is missing,
/// or the statistics were reset in between. (No total: a script's time includes the calls it
/// makes, which count again under their own names.)
pub fn per_job(
    before: Option<&Snapshot>,
    after: Option<&Snapshot>,
    count: usize,
) -> BTreeMap<String, PerJob> {
    let (Some(before), Some(after)) = (before, after) else {
        return BTreeMap::new();
    };
    if count == 0 {
        return BTreeMap::new();
    }
    let jobs = count as f64;
    let mut out = BTreeMap::new();
    for (command, &(calls, usec)) in &after.0 {
        let (calls_before, usec_before) = before.0.get(command).copied().unwrap_or((0, 0));
        if calls < calls_before || usec < usec_before {
            return BTreeMap::new();
        }
        let share = PerJob {
            calls: (calls - calls_before) as f64 / jobs,
            us: (usec - usec_before) as f64 / jobs,
        };
        // The `INFO` of the snapshot itself, and commands of other clients now and then.
        if share.calls >= 0.01 {
            out.insert(command.clone(), share);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Commandstats\r\ncmdstat_get:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=1,usec=5,usec_per_call=5.00\r\n";
    const AFTER: &str = "# Commandstats\r\ncmdstat_get:calls=210,usec=420,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=100,usec=3000,usec_per_call=30.00\r\ncmdstat_info:calls=2,usec=10,usec_per_call=5.00\r\ncmdstat_config|resetstat:calls=1,usec=3,usec_per_call=3.00\r\n";

    #[test]
    fn counts_what_each_command_added_per_job() {
        let (before, after) = (parse(BEFORE), parse(AFTER));
        let per = per_job(Some(&before), Some(&after), 200);
        let get = PerJob {
            calls: 1.0,
            us: 2.0,
        };
        assert_eq!(per["get"], get);
        let evalsha = PerJob {
            calls: 0.5,
            us: 15.0,
        };
        assert_eq!(per["evalsha"], evalsha);
        assert!(!per.contains_key("info"), "one call in 200 jobs: left out");
        assert!(
            !per.contains_key("config|resetstat"),
            "one call in 200 jobs"
        );
        assert_eq!(per.len(), 2);
    }

    #[test]
    fn nothing_without_both_snapshots_or_after_a_reset() {
        let (before, after) = (parse(BEFORE), parse(AFTER));
        assert!(per_job(None, Some(&after), 100).is_empty());
        assert!(
            per_job(Some(&after), Some(&before), 100).is_empty(),
            "reset between"
        );
        assert!(per_job(Some(&before), Some(&after), 0).is_empty());
    }
}
