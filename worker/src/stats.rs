//! Counters of what a worker did. Tests read them directly; the metrics exporter reads the same
//! values.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dtee_schemas::ErrorCode;

/// Monotonic counters of one worker.
#[derive(Debug)]
pub struct Stats {
    /// Failed results published, by error code (indexed like `ErrorCode::ALL`).
    pub failed_by_code: Vec<AtomicU64>,
    /// Kernel runs that ended in an error, by error code (indexed like `ErrorCode::ALL`):
    /// counted when the kernel stops, not when a result is published, so a result republished
    /// from the cache does not count a second kill.
    pub run_errors_by_code: Vec<AtomicU64>,
    /// Deliveries being processed now.
    pub in_flight: AtomicI64,
    /// Dead-lettered jobs answered.
    pub dead_lettered: AtomicU64,
    /// Evidence refreshes that succeeded.
    pub evidence_refreshes: AtomicU64,
    /// Reconnections to RabbitMQ after a lost connection.
    pub reconnects: AtomicU64,
    /// Deliveries received.
    pub received: AtomicU64,
    /// Kernel runs started.
    pub executed: AtomicU64,
    /// Results published with status succeeded.
    pub succeeded: AtomicU64,
    /// Results published with status failed.
    pub failed: AtomicU64,
    /// Jobs answered from the result cache (without running, or, for a job settled late,
    /// discarding a short run).
    pub deduplicated: AtomicU64,
    /// Jobs whose cached result and revocation were read after a short run, in the round trip
    /// that cached their result (`DTEE_LATE_ANSWERS`).
    pub settled_late: AtomicU64,
    /// Transient failures retried.
    pub retried: AtomicU64,
    /// Deliveries acknowledged.
    pub acked: AtomicU64,
    /// Results the broker refused on every try (left in Redis, the job acknowledged).
    pub results_refused: AtomicU64,
    /// State commits applied.
    pub commits: AtomicU64,
    /// Commits refused because bound state changed since the snapshot (each re-runs the job).
    pub conflicts: AtomicU64,
    /// Commits answered "already applied" (redeliveries after a crash).
    pub already_applied: AtomicU64,
    /// Time spent in commit scripts, microseconds.
    pub commit_micros: AtomicU64,
    /// Bytes of kernel blobs read from Redis.
    pub kernel_bytes_fetched: AtomicU64,
    /// Bytes of input blobs read from Redis (each distinct blob of a job once).
    pub input_bytes_fetched: AtomicU64,
    /// Bytes of input blobs and state values read from Redis for jobs that have not finished
    /// running (`job::reads`).
    pub data_bytes_held: AtomicI64,
    /// The most [`Stats::data_bytes_held`] has been.
    pub data_bytes_peak: AtomicU64,
    /// Bytes of results larger than 1 MiB held in result slots (`job::reads`).
    pub result_bytes_held: AtomicU64,
    /// The most [`Stats::result_bytes_held`] has been.
    pub result_bytes_peak: AtomicU64,
    /// Attempts to declare, consume or announce a tenant queue that failed (each is tried
    /// again).
    pub tenant_queue_failures: AtomicU64,
    /// Messages dropped from a tenant queue they were routed into by another tenant's `CC` or
    /// `BCC` header.
    pub misrouted: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            failed_by_code: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            run_errors_by_code: ErrorCode::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicI64::new(0),
            dead_lettered: AtomicU64::new(0),
            evidence_refreshes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            executed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            settled_late: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            results_refused: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            already_applied: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            kernel_bytes_fetched: AtomicU64::new(0),
            input_bytes_fetched: AtomicU64::new(0),
            data_bytes_held: AtomicI64::new(0),
            data_bytes_peak: AtomicU64::new(0),
            result_bytes_held: AtomicU64::new(0),
            result_bytes_peak: AtomicU64::new(0),
            tenant_queue_failures: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts a failed result with `code`.
    pub fn count_failure(&self, code: ErrorCode) {
        if let Some(idx) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.failed_by_code[idx].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a kernel run that ended with `code`.
    pub fn count_run_error(&self, code: ErrorCode) {
        if let Some(idx) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.run_errors_by_code[idx].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
