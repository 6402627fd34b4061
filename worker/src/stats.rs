//! Counters of what a worker did. Tests read them directly; the metrics exporter reads the same
//! values.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of one worker.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries received.
    pub received: AtomicU64,
    /// Kernel runs started.
    pub executed: AtomicU64,
    /// Results published with status succeeded.
    pub succeeded: AtomicU64,
    /// Results published with status failed.
    pub failed: AtomicU64,
    /// Jobs answered from the result cache without running.
    pub deduplicated: AtomicU64,
    /// Transient failures retried.
    pub retried: AtomicU64,
    /// Deliveries acknowledged.
    pub acked: AtomicU64,
    /// State commits applied.
    pub commits: AtomicU64,
    /// Commits refused because bound state changed since the snapshot (each re-runs the job).
    pub conflicts: AtomicU64,
    /// Commits answered "already applied" (redeliveries after a crash).
    pub already_applied: AtomicU64,
    /// Time spent in commit scripts, microseconds.
    pub commit_micros: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
