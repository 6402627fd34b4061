//! What the worker tells about itself, in one place: every observable event of the job path is
//! a method here, and each method updates its counter (in [`Stats`], which tests read) and its
//! histogram (in [`Metrics`], which Prometheus scrapes) exactly once. No other module bumps a
//! counter or records a histogram on the job path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dtee_schemas::ErrorCode;

use crate::metrics::Metrics;
use crate::state::Commit;
use crate::stats::Stats;

/// The worker's counters and histograms, behind typed events.
#[derive(Debug, Clone)]
pub(crate) struct Telemetry {
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
}

impl Telemetry {
    pub(crate) fn new(stats: Arc<Stats>, metrics: Arc<Metrics>) -> Telemetry {
        Telemetry { stats, metrics }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// A delivery arrived; `queue_wait` is the time since the client published it, when known.
    pub(crate) fn delivery_received(&self, queue_wait: Option<Duration>) {
        Stats::bump(&self.stats.received);
        if let Some(wait) = queue_wait {
            self.metrics.queue_wait.record(wait.as_secs_f64());
        }
    }

    /// A delivery is being processed until the guard drops, however its task ends.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.stats))
    }

    /// A delivery was answered and acked (or its ack attempted), `elapsed` after it arrived.
    pub(crate) fn job_answered(&self, elapsed: Duration) {
        self.metrics.end_to_end.record(elapsed.as_secs_f64());
    }

    /// A transient failure; the attempt will be retried.
    pub(crate) fn retrying(&self) {
        Stats::bump(&self.stats.retried);
    }

    /// `bytes` of a kernel blob were read from Redis.
    pub(crate) fn kernel_fetched(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        (self.stats.kernel_bytes_fetched).fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` of input blobs were read from Redis.
    pub(crate) fn inputs_fetched(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        (self.stats.input_bytes_fetched).fetch_add(bytes, Ordering::Relaxed);
    }

    /// Declaring, consuming or announcing a tenant queue failed (it is tried again).
    pub(crate) fn tenant_queue_failed(&self) {
        Stats::bump(&self.stats.tenant_queue_failures);
    }

    /// A message in a tenant queue that is not that tenant's was dropped (`CC`/`BCC`).
    pub(crate) fn misrouted(&self) {
        Stats::bump(&self.stats.misrouted);
    }

    /// A job was answered from the result cache without running.
    pub(crate) fn answered_from_cache(&self) {
        Stats::bump(&self.stats.deduplicated);
    }

    /// A job's prior answers were read after a short run.
    pub(crate) fn settled_late(&self) {
        Stats::bump(&self.stats.settled_late);
    }

    /// A job's writes were found committed already (a redelivery after a crash).
    pub(crate) fn found_applied(&self) {
        Stats::bump(&self.stats.already_applied);
    }

    /// A dead-lettered job is answered `dead_lettered`.
    pub(crate) fn dead_lettered(&self) {
        Stats::bump(&self.stats.dead_lettered);
    }

    /// A kernel run starts.
    pub(crate) fn kernel_started(&self) {
        Stats::bump(&self.stats.executed);
    }

    /// A kernel run ended after `elapsed`, with the code of its error if it failed.
    pub(crate) fn kernel_stopped(&self, elapsed: Duration, error: Option<ErrorCode>) {
        self.metrics.kernel.record(elapsed.as_secs_f64());
        if let Some(code) = error {
            self.stats.count_run_error(code);
        }
    }

    /// A state snapshot was read in `elapsed`.
    pub(crate) fn state_read(&self, elapsed: Duration) {
        self.metrics.state_read.record(elapsed.as_secs_f64());
    }

    /// A commit script ran in `elapsed` and answered `commit`.
    pub(crate) fn state_committed(&self, elapsed: Duration, commit: &Commit) {
        self.metrics.state_commit.record(elapsed.as_secs_f64());
        self.stats
            .commit_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        match commit {
            Commit::Committed { .. } => Stats::bump(&self.stats.commits),
            Commit::AlreadyApplied(_) => Stats::bump(&self.stats.already_applied),
            Commit::Conflict(_) => Stats::bump(&self.stats.conflicts),
            Commit::TooLarge { .. } | Commit::WrongType(_) => {}
        }
    }

    /// A result was published and confirmed in `elapsed`: a success (`Ok`), or a failure with
    /// its code when known.
    pub(crate) fn result_published(
        &self,
        elapsed: Duration,
        status: Result<(), Option<ErrorCode>>,
    ) {
        self.metrics.publish.record(elapsed.as_secs_f64());
        match status {
            Ok(()) => Stats::bump(&self.stats.succeeded),
            Err(code) => {
                Stats::bump(&self.stats.failed);
                if let Some(code) = code {
                    self.stats.count_failure(code);
                }
            }
        }
    }

    /// The broker refused a result on every try.
    pub(crate) fn result_refused(&self) {
        Stats::bump(&self.stats.results_refused);
    }

    /// A delivery was acknowledged.
    pub(crate) fn acked(&self) {
        Stats::bump(&self.stats.acked);
    }

    /// Fresh evidence was produced for the worker key.
    pub(crate) fn evidence_refreshed(&self) {
        Stats::bump(&self.stats.evidence_refreshes);
    }

    /// The worker reconnected to RabbitMQ.
    pub(crate) fn reconnected(&self) {
        Stats::bump(&self.stats.reconnects);
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
