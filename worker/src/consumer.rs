//! The consumer loop: takes deliveries from the current session and spawns a job task for
//! each, keeps the liveness tick and the progress (stall) check, reconnects with backoff when
//! the session is lost, and drains in-flight jobs on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use futures_util::FutureExt as _;
use lapin::message::Delivery;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::broker::session::{Delivered, Session, TenantQueue};
use crate::broker::tenants::Tenants;
use crate::failure::Backoff;
use crate::health::Health;
use crate::hooks::{self, TestHook};
use crate::job::{self, Context};
use crate::stats::Stats;

/// How often the progress check runs.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long without a delivery, while messages wait, before the consumer counts as stalled.
const STALL_IDLE: Duration = Duration::from_secs(10);
/// Tenant queues consumed again per progress check, at most (16 at a time).
const TENANT_RETRIES_PER_TICK: usize = 64;
/// Announcements sent again per progress check, at most (one after the other).
const ANNOUNCEMENTS_PER_TICK: usize = 8;
/// How long one such try, or an announcement, may take.
const RETRY_TIMEOUT: Duration = Duration::from_secs(2);
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

/// The consumer of one worker, and the background tasks that end with it.
pub(crate) struct Consumer {
    /// What job tasks share.
    pub ctx: Arc<Context>,
    /// The current session; `None` while reconnecting.
    pub session: Option<Session>,
    /// The routing keys whose shared queues the worker consumes.
    pub routing_keys: Vec<String>,
    /// The tenant queues the worker consumes.
    pub tenants: Tenants,
    /// Routing keys no longer consumed: their GPU was given up.
    pub disabled_routes: std::collections::HashSet<String>,
    /// Where the next round of tenant-queue retries starts (`retry_tenant_queues`), so that
    /// every failing queue gets its turn.
    pub retry_cursor: usize,
    /// Where the next stall check's look at the tenant queues starts.
    pub ready_cursor: usize,
    /// What the probes report.
    pub health: Arc<Health>,
    /// The registry heartbeat, stopped (and the entry removed) at shutdown.
    pub registry: JoinHandle<()>,
    /// The probe server and the Redis watcher, stopped at shutdown.
    pub probes: Vec<JoinHandle<()>>,
    /// When the last session opened: the reconnection backoff starts afresh only after a
    /// session that lasted [`SETTLED`], so that one that the broker closes at once (a consume
    /// it refuses, say) is not reopened in a tight loop.
    pub last_opened: Option<std::time::Instant>,
}

/// How long a session must last before the next reconnection starts with a short delay again.
const SETTLED: Duration = Duration::from_secs(10);

impl Consumer {
    /// Consumes until `shutdown` turns `true`, then drains and closes.
    pub(crate) async fn run(
        mut self,
        shutdown: watch::Sender<bool>,
        mut shutdown_rx: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut in_flight = JoinSet::new();
        let mut reconnect = reconnect_backoff();
        let mut liveness = tokio::time::interval(Duration::from_secs(1));
        let mut progress = tokio::time::interval(STALL_CHECK);
        self.health.delivered();
        let stall = hooks::active(&self.ctx.config, TestHook::StallConsumer);
        loop {
            let Some(current) = self.session.as_mut() else {
                tokio::select! {
                    _ = shutdown_rx.changed() => break,
                    _ = self.reconnect(&mut reconnect) => continue,
                }
            };
            tokio::select! {
                _ = shutdown_rx.changed() => break,
                _ = liveness.tick() => self.health.tick(),
                _ = self.ctx.session_broken.notified() => {
                    // Only if the current publisher is the dead one: a notification from
                    // before the last reconnect is stale.
                    if !self.ctx.publisher.read().expect("publisher lock").is_open() {
                        warn!("the result channel was closed by the broker; reconnecting");
                        self.drop_session().await;
                    }
                }
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(error) = finished {
                        warn!(%error, "a job task failed");
                    }
                }
                announced = current.announcements.next(), if !stall => match announced {
                    Some(Ok(announcement)) => self.announced(announcement).await,
                    Some(Err(error)) => {
                        warn!(%error, "lost the tenant-queue announcements; reconnecting");
                        self.drop_session().await;
                    }
                    None => {
                        warn!("the broker cancelled the tenant-queue announcements; reconnecting");
                        self.drop_session().await;
                    }
                },
                _ = progress.tick() => {
                    self.disable_failed_devices().await;
                    self.retry_tenant_queues().await;
                    self.health.tick();
                    let room = in_flight.len() < usize::from(self.ctx.config.prefetch);
                    self.check_progress(room).await;
                }
                next = current.consumers.next(), if !stall => match next {
                    Some(Delivered::Delivery(owner, Ok(delivery))) => {
                        // Registered before anything else: no `multiple` ack may pass it.
                        let acks = current.acks.clone();
                        acks.received(delivery.delivery_tag);
                        if let Some(owner) = owner.filter(|owner| !owner.owns(&delivery)) {
                            // Another tenant's message in this tenant's queue: not run, not
                            // answered (its sender's own copy, under its own routing key, is).
                            warn!(queue = %owner, routing_key = %delivery.routing_key, "dropped a message that another tenant's CC or BCC header put into a tenant queue");
                            self.ctx.telemetry.misrouted();
                            job::ack_unanswered(&self.ctx, &delivery, &acks);
                            // Progress all the same: the stall check must not take a stream
                            // of dropped copies for a consumer that stopped receiving.
                            self.health.delivered();
                            continue;
                        }
                        if let Some(queue) = self.tenants.missing(&delivery) {
                            self.provision(queue).await;
                        }
                        self.health.delivered();
                        self.ctx.telemetry.delivery_received(queue_wait(&delivery));
                        let task = job::handle(Arc::clone(&self.ctx), delivery, acks, shutdown_rx.clone());
                        in_flight.spawn(task);
                    }
                    Some(Delivered::Delivery(_, Err(error))) => {
                        warn!(%error, "lost the rabbitmq consumer; reconnecting");
                        self.drop_session().await;
                    }
                    // One consumer ended that this worker did not cancel (the broker did: its
                    // queue was deleted, say). A tenant queue's is declared and consumed again
                    // by the retries (`retry_tenant_queues`, within 5 s), so that the other
                    // queues' deliveries stay where they are; for a shared queue or the
                    // dead-letter queue, a new session declares and consumes everything again.
                    Some(Delivered::Ended(tag, owner)) if current.consumes_with(&tag) => match owner {
                        Some(queue) => {
                            warn!(%queue, "the broker cancelled a tenant queue's consumer; consuming it again");
                            current.forget_consumer(&tag);
                        }
                        None => {
                            warn!(consumer = %tag, "the broker cancelled a consumer; reconnecting");
                            self.drop_session().await;
                        }
                    },
                    Some(Delivered::Ended(..)) => {}
                    None => {
                        warn!("the broker cancelled the consumer; reconnecting");
                        self.drop_session().await;
                    }
                }
            }
        }
        // Jobs retrying a transient failure give up and return to the queue.
        let _ = shutdown.send(true);
        self.drain(in_flight).await;
        self.finish().await;
        Ok(())
    }

    /// One reconnection attempt after a backoff delay. The loop keeps ticking (alive), but
    /// the worker is not ready meanwhile.
    async fn reconnect(&mut self, backoff: &mut Backoff) {
        self.health.amqp_connected.store(false, Ordering::Relaxed);
        if self
            .last_opened
            .take()
            .is_some_and(|opened| opened.elapsed() >= SETTLED)
        {
            *backoff = reconnect_backoff();
        }
        tokio::time::sleep(backoff.next_delay()).await;
        self.health.tick();
        let routing_keys: Vec<String> = self
            .routing_keys
            .iter()
            .filter(|route| !self.disabled_routes.contains(*route))
            .cloned()
            .collect();
        let opened = Session::open(&self.ctx.config, &routing_keys).await;
        self.health.tick();
        match opened {
            Ok((opened, publisher)) => {
                *self.ctx.publisher.write().expect("publisher lock") = publisher;
                self.health.amqp_connected.store(true, Ordering::Relaxed);
                self.last_opened = Some(std::time::Instant::now());
                self.ctx.telemetry.reconnected();
                info!("reconnected to rabbitmq; consuming again");
                self.session = Some(opened);
                self.consume_known_tenants().await;
            }
            Err(error) => {
                warn!(error = %format!("{error:#}"), "reconnecting to rabbitmq failed; will retry")
            }
        }
    }

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
    async fn consume_known_tenants(&mut self) {
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
    async fn provision(&mut self, queue: TenantQueue) {
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
    async fn announced(&mut self, first: Delivery) {
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
    async fn retry_tenant_queues(&mut self) {
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

    /// Stops consuming the queues of GPU targets whose device was given up: their jobs wait for a
    /// worker that can run them, instead of being answered `device_failed` here.
    async fn disable_failed_devices(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        for (target, gpu) in &ctx.gpus {
            let Some(why) = gpu.failed() else {
                continue;
            };
            let routes: Vec<String> =
                dtee_schemas::protocol::served_routing_keys(target, ctx.attestor.platform())
                    .into_iter()
                    .filter(|route| self.disabled_routes.insert(route.clone()))
                    .collect();
            if routes.is_empty() {
                continue;
            }
            warn!(%target, %why, "the GPU was given up; no longer consuming its queues");
            if let Some(session) = self.session.as_mut() {
                session.cancel_routes(&ctx.config.namespace, &routes).await;
            }
        }
    }

    /// Closes the current session; the loop reconnects.
    async fn drop_session(&mut self) {
        if let Some(lost) = self.session.take() {
            lost.close().await;
        }
    }

    /// Ready messages in our queues, room to take them, and no delivery for [`STALL_IDLE`]
    /// means the consumer is stalled.
    async fn check_progress(&mut self, room: bool) {
        let idle = self.health.idle_ms();
        if idle < STALL_IDLE.as_millis() as u64 || !room {
            return;
        }
        let Some(current) = &self.session else {
            return;
        };
        // Bounded: a broker slow to answer must not stop the loop's ticks.
        let waiting = tokio::time::timeout(
            RETRY_TIMEOUT,
            current.messages_ready(&mut self.ready_cursor),
        )
        .await
        .unwrap_or(false);
        if waiting && !self.health.stalled.swap(true, Ordering::Relaxed) {
            warn!(
                idle_s = idle / 1000,
                "the consumer looks stalled: messages wait, nothing is delivered"
            );
        }
    }

    /// Graceful shutdown: no new deliveries; in-flight jobs get the grace period, and the
    /// rest return to the queue.
    async fn drain(&self, mut in_flight: JoinSet<()>) {
        if let Some(current) = &self.session {
            current.cancel_consumers().await;
        }
        let grace = self.ctx.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                unfinished = in_flight.len(),
                "grace period over; unfinished jobs return to the queue"
            );
            in_flight.abort_all();
        }
    }

    /// Logs the totals, stops the background tasks, leaves the registry and closes the
    /// connection (which returns every unacknowledged delivery to its queue).
    async fn finish(self) {
        let stats = self.ctx.telemetry.stats();
        let commits = Stats::get(&stats.commits);
        info!(
            received = Stats::get(&stats.received),
            executed = Stats::get(&stats.executed),
            succeeded = Stats::get(&stats.succeeded),
            failed = Stats::get(&stats.failed),
            deduplicated = Stats::get(&stats.deduplicated),
            commits,
            conflicts = Stats::get(&stats.conflicts),
            mean_commit_us = Stats::get(&stats.commit_micros)
                .checked_div(commits)
                .unwrap_or(0),
            "worker totals"
        );
        self.registry.abort();
        for probe in &self.probes {
            probe.abort();
        }
        let config = &self.ctx.config;
        crate::broker::session::bounded(
            "leaving the registry",
            crate::registry::deregister(
                self.ctx.store.connection(),
                &config.namespace,
                &config.worker_id,
            ),
        )
        .await;
        if let Some(current) = self.session {
            current.close().await;
        }
    }
}

fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(15))
}

/// Time since the client published the delivery (header `dtee-submitted-unix-ms`), if it says.
fn queue_wait(delivery: &Delivery) -> Option<Duration> {
    let headers = delivery.properties.headers().as_ref()?;
    let sent_ms = match headers
        .inner()
        .get(dtee_schemas::protocol::HEADER_SUBMITTED_AT)?
    {
        lapin::types::AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok()?,
        _ => return None,
    };
    let now_ms = crate::clock::unix_ms();
    Some(Duration::from_millis(now_ms.saturating_sub(sent_ms)))
}

/// `attempt`'s answer, or an error if it takes longer than [`RETRY_TIMEOUT`].
async fn within_retry_timeout(
    attempt: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::time::timeout(RETRY_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {RETRY_TIMEOUT:?}")))
}
