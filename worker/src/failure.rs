//! What each failure means. This is the one place that decides between "publish a failed
//! result and ack" and "retry later".
//!
//! - Permanent failures are not errors here: they become a failed result with a stable
//!   [`ErrorCode`](dtee_schemas::ErrorCode) (see [`job`](crate::job)), which is
//!   cached, published and acked like a success.
//! - [`Transient`] failures (Redis or RabbitMQ unreachable, a publish not confirmed, a worker
//!   thread lost) are retried by the job task with exponential backoff and full jitter, keeping
//!   the delivery unacknowledged; if the worker stops meanwhile, the broker redelivers it.
//! - A crash leaves the delivery unacknowledged: the broker redelivers it, and the quorum
//!   queue's delivery limit dead-letters a job that keeps killing workers.

use std::time::Duration;

/// A failure worth retrying: nothing is wrong with the job.
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    /// Redis failed (unreachable, timed out, refused a command).
    #[error("redis failed")]
    Redis(#[source] redis::RedisError),
    /// Publishing a result failed or was not confirmed.
    #[error("rabbitmq: publishing the result failed")]
    Publish(#[source] crate::broker::publisher::PublishError),
    /// A worker task for the job was lost (cancelled, or the runtime is shutting down).
    #[error("worker: the {what} task was lost")]
    TaskLost {
        /// Which task.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The backend could not run its compiler (not the kernel's fault).
    #[error("worker: compiling the kernel")]
    Prepare(#[source] crate::backend::PrepareError),
    /// The secret keeper could not be asked, or did not answer in time.
    #[error("the secret keeper is unavailable")]
    Keeper(#[source] dtee_keeper::client::KeeperClientError),
    /// Fewer Redis replicas than `DTEE_REDIS_WAIT_REPLICAS` acknowledged the job's writes in
    /// time: it is not answered yet.
    #[error("redis: {acknowledged} of {wanted} replicas acknowledged the job's writes in time")]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged.
        acknowledged: i64,
    },
    /// The secret keeper answered that its store is unavailable.
    #[error("the secret keeper's store is unavailable: {0}")]
    KeeperStore(String),
}

impl From<redis::RedisError> for Transient {
    fn from(error: redis::RedisError) -> Transient {
        Transient::Redis(error)
    }
}

impl From<crate::broker::publisher::PublishError> for Transient {
    fn from(error: crate::broker::publisher::PublishError) -> Transient {
        Transient::Publish(error)
    }
}

/// An error and its chain of causes on one line (`a: b: c`), for logs.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
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
    fn a_transient_error_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Transient::Redis(redis::RedisError::from(io));
        let text = Chain(&error).to_string();
        assert!(text.starts_with("redis failed: "), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

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
