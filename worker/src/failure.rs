//! What each failure means. This is the one place that decides between "publish a failed
//! result and ack" and "retry later".
//!
//! - Permanent failures are not errors here: they become a failed result with a stable
//!   [`ErrorCode`](dtee_schemas::ErrorCode) (see [`pipeline`](crate::pipeline)), which is
//!   cached, published and acked like a success.
//! - [`Transient`] failures (Redis or RabbitMQ unreachable, a publish not confirmed, a worker
//!   thread lost) are retried by the job task with exponential backoff and full jitter, keeping
//!   the delivery unacknowledged; if the worker stops meanwhile, the broker redelivers it.
//! - A crash leaves the delivery unacknowledged: the broker redelivers it, and the quorum
//!   queue's delivery limit dead-letters a job that keeps killing workers.

use std::time::Duration;

/// A failure worth retrying: nothing is wrong with the job.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct Transient {
    /// Which dependency failed.
    pub what: &'static str,
    /// Its error.
    pub detail: String,
}

impl Transient {
    /// Redis failed.
    pub fn redis(error: redis::RedisError) -> Transient {
        Transient {
            what: "redis",
            detail: error.to_string(),
        }
    }

    /// Publishing a result failed.
    pub fn publish(error: crate::broker::PublishError) -> Transient {
        Transient {
            what: "rabbitmq",
            detail: error.to_string(),
        }
    }

    /// The worker itself failed (a task panicked or was cancelled).
    pub fn internal(detail: String) -> Transient {
        Transient {
            what: "worker",
            detail,
        }
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            attempt: 0,
            base,
            cap,
        }
    }

    /// The next delay: uniform in `[0, min(cap, base * 2^attempt)]`, and never below 1 ms.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = rand::random_range(0..=ceiling.as_nanos().max(1) as u64);
        Duration::from_nanos(nanos).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays
            .iter()
            .all(|d| *d <= Duration::from_millis(500) && *d >= Duration::from_millis(1)));
        // With full jitter the late delays are drawn from [0, 500 ms]; their mean is far above
        // the first one's ceiling of 10 ms.
        let late_mean = delays[10..].iter().sum::<Duration>() / 10;
        assert!(late_mean > Duration::from_millis(20), "{late_mean:?}");
    }
}
