//! The consumer loop: takes deliveries from the current session and spawns a job task for
//! each, keeps the liveness tick and the progress (stall) check, reconnects with backoff when
//! the session is lost, and drains in-flight jobs on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use lapin::message::Delivery;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::broker::session::{Delivered, Session};
use crate::broker::tenants::Tenants;
use crate::failure::Backoff;
use crate::health::Health;
use crate::hooks::{self, TestHook};
use crate::job::{self, Context};
use crate::stats::Stats;

mod tenant_queues;

/// How often the progress check runs.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long without a delivery, while messages wait, before the consumer counts as stalled.
const STALL_IDLE: Duration = Duration::from_secs(10);
/// How long one such try, or an announcement, may take.
const RETRY_TIMEOUT: Duration = Duration::from_secs(2);
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
