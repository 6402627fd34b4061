//! The consumer's tenant queues: consumed when announced, provisioned when a tenant's job comes
//! through a shared queue, caught up with when a session opens, and tried again every
//! progress check until consumed and announced.

use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use lapin::message::Delivery;
use tracing::{debug, info, warn};

use super::{Consumer, RETRY_TIMEOUT, STALL_CHECK};
use crate::broker::session::{Session, TenantQueue};
use crate::hooks::{self, TestHook};

/// Tenant queues consumed again per progress check, at most (16 at a time).
const TENANT_RETRIES_PER_TICK: usize = 64;
/// Announcements sent again per progress check, at most (one after the other).
const ANNOUNCEMENTS_PER_TICK: usize = 8;
/// Tenant queues a new session consumes between two liveness ticks, and announcements taken
/// together.
const TENANT_BATCH: usize = 64;
/// How long a new session spends consuming the tenant queues the worker knows before the
/// consumer loop goes on (the rest are tried by [`Consumer::retry_tenant_queues`]).
const CATCH_UP: Duration = Duration::from_secs(20);

/// How [`Consumer::consume_tenant_queues`] logs: a queue announced a moment ago (each success
/// and failure), one tried again (each success), or the catch-up of a new session (a summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tried {
    First,
    Again,
    Quietly,
}

impl Consumer {
    /// The known tenant queues of the routes served that the current session does not consume.
    fn unconsumed_tenant_queues(&self) -> Vec<TenantQueue> {
        let Some(session) = self.session.as_ref() else {
            return Vec::new();
        };
        self.tenants
            .queues()
            .into_iter()
            .filter(|queue| {
                !self.disabled_routes.contains(&queue.route)
                    && !session.consumes(&self.ctx.config, queue)
            })
            .collect()
    }

    /// Declares and consumes `queues` in the current session ([`Session::consume_tenants`]),
    /// each try within [`RETRY_TIMEOUT`]; counts and logs what failed, and answers how many did.
    async fn consume_tenant_queues(&mut self, queues: &[TenantQueue], tried: Tried) -> usize {
        let Some(session) = self.session.as_mut() else {
            return 0;
        };
        let failed = session
            .consume_tenants(&self.ctx.config, queues, RETRY_TIMEOUT)
            .await;
        if tried != Tried::Quietly {
            for queue in queues
                .iter()
                .filter(|queue| failed.iter().all(|(f, _)| f != *queue))
            {
                info!(%queue, "consuming a tenant queue");
            }
        }
        for (queue, error) in &failed {
            self.ctx.telemetry.tenant_queue_failed();
            let error = format!("{error:#}");
            if tried == Tried::First {
                warn!(%queue, %error, "could not consume a tenant queue; trying again");
            } else {
                debug!(%queue, %error, "consuming a tenant queue failed (again)");
            }
        }
        failed.len()
    }

    /// Consumes the tenant queues the worker knows in a new session, [`TENANT_BATCH`] between
    /// two liveness ticks, for up to [`CATCH_UP`]; what is left, or failed, is tried again by
    /// [`Consumer::retry_tenant_queues`]. Their tenants' jobs wait in them meanwhile.
    pub(super) async fn consume_known_tenants(&mut self) {
        if hooks::active(&self.ctx.config, TestHook::StallConsumer) {
            return;
        }
        let started = std::time::Instant::now();
        let missing = self.unconsumed_tenant_queues();
        let mut failed = 0usize;
        for batch in missing.chunks(TENANT_BATCH) {
            if !self.session.as_ref().is_some_and(Session::is_open) || started.elapsed() >= CATCH_UP
            {
                break;
            }
            failed += self.consume_tenant_queues(batch, Tried::Quietly).await;
            self.health.tick();
        }
        let left = self.unconsumed_tenant_queues().len();
        if left > 0 {
            warn!(
                failed,
                left,
                "not every known tenant queue is consumed yet; trying the rest again every {} s",
                STALL_CHECK.as_secs()
            );
        } else if !missing.is_empty() {
            info!(
                queues = missing.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "consuming the known tenant queues"
            );
        }
    }

    /// Consumes the queue of a tenant whose job came through a shared queue, and announces it
    /// to the other workers.
    pub(super) async fn provision(&mut self, queue: TenantQueue) {
        if self.disabled_routes.contains(&queue.route) || !self.tenants.learn(&queue, true) {
            return;
        }
        // Announced by this worker from now on, whatever fails (the next session declares and
        // consumes every known queue).
        self.tenants.announce_later(&queue);
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let name = match session.declare_tenant(&self.ctx.config, &queue).await {
            Ok(name) => name,
            Err(error) => {
                // Not declared, so not bound: the tenant's jobs still reach the shared queue,
                // and the next one provisions the queue again.
                warn!(%queue, error = %format!("{error:#}"), "could not declare a tenant queue");
                self.ctx.telemetry.tenant_queue_failed();
                self.tenants.forget(&queue);
                return;
            }
        };
        // Bound from here on: the tenant's jobs wait there. Announced first, so that the other
        // workers serve it whatever happens here; a failure is tried again, like a failure to
        // consume it (`retry_tenant_queues`).
        self.announce(&queue, true).await;
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session
            .consume_declared(&self.ctx.config, &queue, name)
            .await
        {
            Ok(()) => info!(%queue, "consuming a tenant queue"),
            Err(error) => {
                self.ctx.telemetry.tenant_queue_failed();
                warn!(%queue, error = %format!("{error:#}"), "could not consume a tenant queue; trying again");
            }
        }
    }

    /// Announces a tenant queue this worker declared. A failure is tried again
    /// ([`Consumer::retry_tenant_queues`]): until the others know the queue, its jobs wait for
    /// this worker alone.
    async fn announce(&mut self, queue: &TenantQueue, first: bool) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        match within_retry_timeout(session.announce_tenant(&self.ctx.config, queue)).await {
            Ok(()) => self.tenants.announced(queue),
            Err(error) => {
                self.ctx.telemetry.tenant_queue_failed();
                if first {
                    warn!(%queue, error = %format!("{error:#}"), "could not announce a tenant queue; consuming it here, and trying again");
                } else {
                    debug!(%queue, error = %format!("{error:#}"), "announcing a tenant queue failed again");
                }
            }
        }
    }

    /// A tenant queue announced on `<ns>.tenants` (by this worker or another): consumed if it
    /// is of a served routing key and new here. The announcements already received are taken
    /// with it (up to [`TENANT_BATCH`]), and their queues consumed together: a new worker reads
    /// the whole stream at once.
    pub(super) async fn announced(&mut self, first: Delivery) {
        let mut announcements = vec![first];
        let mut lost = false;
        if let Some(session) = self.session.as_mut() {
            while announcements.len() < TENANT_BATCH {
                match session.announcements.next().now_or_never() {
                    Some(Some(Ok(next))) => announcements.push(next),
                    Some(Some(Err(error))) => {
                        warn!(%error, "lost the tenant-queue announcements; reconnecting");
                        lost = true;
                        break;
                    }
                    Some(None) => {
                        warn!("the broker cancelled the tenant-queue announcements; reconnecting");
                        lost = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        if lost {
            // Learned all the same: the next session consumes them.
            self.drop_session().await;
        }
        // One acknowledgement for all of them (the stream's channel carries nothing else).
        if let Some(last) = announcements.last() {
            let _ = last
                .acker
                .ack(lapin::options::BasicAckOptions { multiple: true })
                .await;
        }
        let mut new = Vec::new();
        for announcement in &announcements {
            let Some(queue) = std::str::from_utf8(&announcement.data)
                .ok()
                .and_then(TenantQueue::parse)
            else {
                warn!("ignoring a malformed tenant-queue announcement");
                continue;
            };
            self.tenants.announced(&queue);
            if !self.disabled_routes.contains(&queue.route) && self.tenants.learn(&queue, false) {
                new.push(queue);
            }
        }
        self.consume_tenant_queues(&new, Tried::First).await;
    }

    /// Consumes the known tenant queues that this session does not (one that failed when
    /// announced or at a reconnection, or one the catch-up of a new session did not reach),
    /// [`TENANT_RETRIES_PER_TICK`] at most, and sends the announcements that failed. Every
    /// [`STALL_CHECK`]; a queue that keeps failing is counted each time
    /// (`dtee_tenant_queue_failures_total`).
    pub(super) async fn retry_tenant_queues(&mut self) {
        if hooks::active(&self.ctx.config, TestHook::StallConsumer) {
            return;
        }
        // The loop delivers nothing meanwhile: a bounded number of tries per tick, each within
        // a bound, taking turns over the queues to try.
        let missing = self.unconsumed_tenant_queues();
        let start = self.retry_cursor % missing.len().max(1);
        let tries: Vec<TenantQueue> = missing
            .iter()
            .cycle()
            .skip(start)
            .take(missing.len().min(TENANT_RETRIES_PER_TICK))
            .cloned()
            .collect();
        self.retry_cursor = self.retry_cursor.wrapping_add(tries.len());
        self.consume_tenant_queues(&tries, Tried::Again).await;
        for queue in self
            .tenants
            .unannounced()
            .into_iter()
            .take(ANNOUNCEMENTS_PER_TICK)
        {
            self.announce(&queue, false).await;
        }
    }
}

/// `attempt`'s answer, or an error if it takes longer than [`RETRY_TIMEOUT`].
async fn within_retry_timeout(
    attempt: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::time::timeout(RETRY_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {RETRY_TIMEOUT:?}")))
}
