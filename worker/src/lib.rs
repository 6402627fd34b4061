//! The dtee worker: consumes kernel jobs from RabbitMQ, runs them under hard limits, and
//! publishes their results.
//!
//! Entry points: [`Worker::start`] returns a [`WorkerHandle`] (tests use it directly), and
//! [`run`] serves until a shutdown future completes (the binary passes SIGTERM/SIGINT).
//!
//! Modules, in the order a job meets them:
//! - [`config`] — typed configuration from flags and environment;
//! - [`broker`] — RabbitMQ connection, topology, result publishing with confirms;
//! - [`store`] — Redis blobs and result cache;
//! - [`pipeline`] — the path of one job;
//! - [`state`] — bound Redis state: snapshots and atomic commits;
//! - [`backend`] — kernel execution (WebAssembly today);
//! - [`attestation`] — the worker key, its evidence, and signed execution statements;
//! - [`registry`] — the worker's entry in Redis, with a heartbeat and evidence refresh;
//! - [`failure`] — what each failure means (retry or fail the job);
//! - [`stats`] — counters.
//!
//! **Invariant:** a delivery is acked only after its result is cached and confirmed by the
//! broker.

pub mod attestation;
pub mod backend;
pub mod broker;
pub mod config;
pub mod failure;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod state;
pub mod stats;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::stream::{SelectAll, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::backend::wasm::WasmBackend;
use crate::config::Config;
use crate::failure::Backoff;
use crate::pipeline::Context;
use crate::stats::Stats;

pub use crate::config::{Args, ConfigError};

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Counters of what the worker did.
    pub stats: Arc<Stats>,
    /// The worker's id, as published in results.
    pub worker_id: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Flipped to `true` to ask the consumer loop to stop.
    shutdown: watch::Sender<bool>,
    /// The consumer loop; it returns once in-flight jobs are done or the grace period ends.
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Stops consuming, lets in-flight jobs finish (up to the grace period), returns the rest
    /// to the queue, and closes the connection.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("the worker task panicked")?
    }
}

/// Serves jobs until `shutdown` completes, then shuts down gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // A signal while starting (say RabbitMQ is slow to answer) ends the start at once.
    let mut worker = tokio::select! {
        started = Worker::start(config) => started?,
        _ = &mut shutdown => {
            info!("shutting down before the worker started");
            return Ok(());
        }
    };
    info!(worker_id = %worker.worker_id, "worker started");
    tokio::select! {
        _ = &mut shutdown => {
            info!("shutting down");
            worker.shutdown().await
        }
        // The consumer loop reconnects by itself; it only ends early if it panics.
        ended = &mut worker.task => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the consumer stopped")),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(anyhow::anyhow!("the consumer task failed: {error}")),
        },
    }
}

/// How often the progress check runs.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long without a delivery, while messages wait, before the consumer counts as stalled.
const STALL_IDLE: Duration = Duration::from_secs(10);

/// Builds and starts workers.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Connects to Redis and RabbitMQ, declares the topology, and starts consuming. If the
    /// RabbitMQ connection is lost later, the worker reconnects with backoff, declares its
    /// topology again and resumes; `/readyz` reports the outage meanwhile.
    pub async fn start(config: Config) -> anyhow::Result<WorkerHandle> {
        let store = store::Store::connect(&config.redis_url, config.namespace.clone())
            .await
            .with_context(|| format!("connecting to redis at {}", redact(&config.redis_url)))?;
        // Identity first: a worker that cannot attest as asked does not consume.
        let measurement = attestation::measure(&measured_configuration(&config))
            .context("measuring the worker")?;
        let provider =
            attestation::open_provider(config.attestation, &config.provider_settings, &measurement)
                .context("opening the attestation provider")?;
        let attestor = Arc::new(
            attestation::Attestor::start(&config.worker_id, measurement, provider)
                .context("attesting the worker key")?,
        );
        info!(platform = %attestor.platform(), "worker key attested");
        let routing_keys: Vec<String> = config
            .targets
            .iter()
            .flat_map(|target| {
                dtee_schemas::protocol::served_routing_keys(target, attestor.platform())
            })
            .collect();
        let (first_session, publisher) = Session::open(&config, &routing_keys).await?;
        let wasm = Arc::new(WasmBackend::new(config.module_cache_size)?);
        let stats = Arc::new(Stats::default());
        let worker_id = config.worker_id.clone();
        let state = state::StateStore::new(store.connection(), config.namespace.clone());
        let registry = tokio::spawn(registry::run(
            store.connection(),
            config.namespace.clone(),
            Arc::clone(&attestor),
            routing_keys.clone(),
            config.heartbeat,
            config.evidence_refresh,
            Arc::clone(&stats),
        ));
        let metrics = Arc::new(metrics::Metrics::new(
            Arc::clone(&stats),
            attestor.platform(),
            "wasm",
        ));
        let health = Arc::new(health::Health::default());
        health.tick();
        health
            .amqp_connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut probes = Vec::new();
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let listener = health::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                let bound = listener
                    .local_addr()
                    .context("reading the metrics address")?;
                probes.push(tokio::spawn(health::serve(
                    listener,
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                    Arc::clone(&attestor),
                )));
                info!(%bound, "serving /metrics, /healthz and /readyz");
                Some(bound)
            }
            None => None,
        };
        probes.push(tokio::spawn(watch_redis(
            store.clone(),
            Arc::clone(&health),
        )));
        let ctx = Arc::new(Context {
            attestor,
            metrics,
            kernel_slots: Semaphore::new(config.concurrency),
            state,
            config,
            store,
            publisher: std::sync::RwLock::new(publisher),
            wasm,
            stats: Arc::clone(&stats),
            session_broken: tokio::sync::Notify::new(),
        });
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let stop_retrying = shutdown.clone();
        let task = tokio::spawn(async move {
            let mut in_flight = JoinSet::new();
            let mut session = Some(first_session);
            let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
            let mut liveness = tokio::time::interval(Duration::from_secs(1));
            // Progress check: ready messages in our queues, room to take them, and no delivery
            // for STALL_IDLE means the consumer is stalled.
            let mut progress = tokio::time::interval(STALL_CHECK);
            health.delivered();
            let stall_consumer = ctx.config.test_hook == Some(config::TestHook::StallConsumer);
            loop {
                let Some(current) = session.as_mut() else {
                    // Reconnecting: the loop keeps ticking (alive), but the worker is not ready.
                    health
                        .amqp_connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    let delay = reconnect.next_delay();
                    tokio::select! {
                        _ = shutdown_rx.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    health.tick();
                    let opened = tokio::select! {
                        _ = shutdown_rx.changed() => break,
                        opened = Session::open(&ctx.config, &routing_keys) => opened,
                    };
                    health.tick();
                    match opened {
                        Ok((opened, publisher)) => {
                            *ctx.publisher.write().expect("publisher lock") = publisher;
                            health
                                .amqp_connected
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            reconnect =
                                Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
                            Stats::bump(&ctx.stats.reconnects);
                            info!("reconnected to rabbitmq; consuming again");
                            session = Some(opened);
                        }
                        Err(error) => {
                            warn!(error = %format!("{error:#}"), "reconnecting to rabbitmq failed; will retry")
                        }
                    }
                    continue;
                };
                tokio::select! {
                    _ = shutdown_rx.changed() => break,
                    _ = liveness.tick() => health.tick(),
                    _ = ctx.session_broken.notified() => {
                        // Only if the current publisher is the dead one: a notification from
                        // before the last reconnect is stale.
                        let dead = !ctx.publisher.read().expect("publisher lock").is_open();
                        if dead {
                            warn!("the result channel was closed by the broker; reconnecting");
                            if let Some(lost) = session.take() {
                                lost.close().await;
                            }
                        }
                    }
                    Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                        if let Err(error) = finished {
                            warn!(%error, "a job task failed");
                        }
                    }
                    _ = progress.tick() => {
                        let idle = health.idle_ms();
                        let room = in_flight.len() < usize::from(ctx.config.prefetch);
                        if idle >= STALL_IDLE.as_millis() as u64 && room {
                            let waiting = current.ready_messages(&ctx.config.namespace, &routing_keys).await;
                            if waiting > 0 && !health.stalled.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                warn!(waiting, idle_s = idle / 1000, "the consumer looks stalled: messages wait, nothing is delivered");
                            }
                        }
                    }
                    next = current.consumers.next(), if !stall_consumer => match next {
                        Some(Ok(delivery)) => {
                            health.delivered();
                            Stats::bump(&ctx.stats.received);
                            let ctx = Arc::clone(&ctx);
                            let shutdown = shutdown_rx.clone();
                            in_flight.spawn(handle(ctx, delivery, shutdown));
                        }
                        Some(Err(error)) => {
                            warn!(%error, "lost the rabbitmq consumer; reconnecting");
                            if let Some(lost) = session.take() {
                                lost.close().await;
                            }
                        }
                        None => {
                            warn!("the broker cancelled the consumer; reconnecting");
                            if let Some(lost) = session.take() {
                                lost.close().await;
                            }
                        }
                    }
                }
            }
            // Graceful shutdown: no new deliveries; in-flight jobs get the grace period. Jobs
            // retrying a transient failure give up and return to the queue.
            let _ = stop_retrying.send(true);
            if let Some(current) = &session {
                current.cancel_consumers().await;
            }
            let grace = ctx.config.shutdown_grace;
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
            let stats = &ctx.stats;
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
            registry.abort();
            for probe in &probes {
                probe.abort();
            }
            registry::deregister(
                ctx.store.connection(),
                &ctx.config.namespace,
                &ctx.config.worker_id,
            )
            .await;
            // Closing the channels returns every unacknowledged delivery to its queue.
            if let Some(current) = session {
                current.close().await;
            }
            Ok(())
        });
        Ok(WorkerHandle {
            stats,
            worker_id,
            metrics_addr,
            shutdown,
            task,
        })
    }
}

/// One connection to RabbitMQ: the consumer channel and its consumers.
struct Session {
    connection: lapin::Connection,
    consume: lapin::Channel,
    consumers: SelectAll<lapin::Consumer>,
    consumer_tags: Vec<String>,
}

/// How long opening a session (connect, declare, consume) may take before it counts as failed:
/// a broker that accepts the TCP connection and then says nothing must not hang the worker.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(20);

impl Session {
    /// Connects, declares the topology, opens the result publisher, and consumes every
    /// routing key's queue and the dead-letter queue, within [`SESSION_OPEN_TIMEOUT`].
    async fn open(
        config: &Config,
        routing_keys: &[String],
    ) -> anyhow::Result<(Session, broker::ResultPublisher)> {
        tokio::time::timeout(
            SESSION_OPEN_TIMEOUT,
            Self::open_unbounded(config, routing_keys),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "rabbitmq at {} did not complete the session set-up within {} s",
                redact(&config.amqp_url),
                SESSION_OPEN_TIMEOUT.as_secs()
            )
        })?
    }

    async fn open_unbounded(
        config: &Config,
        routing_keys: &[String],
    ) -> anyhow::Result<(Session, broker::ResultPublisher)> {
        let connection = broker::connect(
            &config.amqp_url,
            &format!("dtee-worker {}", config.worker_id),
        )
        .await
        .with_context(|| format!("connecting to rabbitmq at {}", redact(&config.amqp_url)))?;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        broker::declare_topology(
            &setup,
            &config.namespace,
            routing_keys,
            config.delivery_limit,
        )
        .await
        .context("declaring the topology")?;
        let _ = setup.close(200, "declared".into()).await;
        let publisher = broker::ResultPublisher::new(
            connection
                .create_channel()
                .await
                .context("opening the result channel")?,
            &config.namespace,
            &config.worker_id,
        )
        .await
        .context("enabling publisher confirms")?;
        let consume = connection
            .create_channel()
            .await
            .context("opening the consumer channel")?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let mut consumers = SelectAll::new();
        let mut consumer_tags = Vec::new();
        // Every worker also answers dead-lettered jobs, so that no submitter waits forever.
        let queues = routing_keys
            .iter()
            .map(|key| {
                (
                    config.namespace.job_queue(key),
                    format!("{}.{key}", config.worker_id),
                )
            })
            .chain([(
                config.namespace.dead_letter_queue(),
                format!("{}.dead", config.worker_id),
            )]);
        // The stall-consumer test hook consumes nothing: messages wait while the worker is up.
        let stall = config.test_hook == Some(config::TestHook::StallConsumer);
        for (queue, tag) in queues.filter(|_| !stall) {
            let consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            consumers.push(consumer);
            consumer_tags.push(tag);
        }
        Ok((
            Session {
                connection,
                consume,
                consumers,
                consumer_tags,
            },
            publisher,
        ))
    }

    /// Messages ready in the queues this session consumes (0 if the broker cannot say).
    async fn ready_messages(
        &self,
        namespace: &dtee_schemas::protocol::Namespace,
        routing_keys: &[String],
    ) -> u64 {
        let Ok(channel) = self.connection.create_channel().await else {
            return 0;
        };
        let mut ready = 0u64;
        for key in routing_keys {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(queue) = channel
                .queue_declare(
                    namespace.job_queue(key).into(),
                    passive,
                    FieldTable::default(),
                )
                .await
            {
                ready += u64::from(queue.message_count());
            }
        }
        let _ = channel.close(200, "checked".into()).await;
        ready
    }

    /// Stops the broker from delivering more.
    async fn cancel_consumers(&self) {
        for tag in &self.consumer_tags {
            let _ = self
                .consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    /// Closes the connection; unacknowledged deliveries return to their queues.
    async fn close(self) {
        let _ = self.consume.close(200, "worker shutting down".into()).await;
        let _ = self
            .connection
            .close(200, "worker shutting down".into())
            .await;
    }
}

/// Processes one delivery, retrying transient failures with backoff until it is answered or
/// the worker stops.
async fn handle(ctx: Arc<Context>, delivery: Delivery, shutdown: watch::Receiver<bool>) {
    let span = tracing::debug_span!("job", message_id = ?delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()));
    async move {
        let received = std::time::Instant::now();
        ctx.stats.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _in_flight = InFlight(&ctx.stats);
        if let Some(sent_ms) = submitted_at_unix_ms(&delivery) {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            ctx.metrics.queue_wait.record(now_ms.saturating_sub(sent_ms) as f64 / 1000.0);
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let attempt = async {
                let outcome = if delivery.exchange.as_str() == ctx.config.namespace.dead_letter_exchange() {
                    pipeline::evaluate_dead_letter(&ctx, &delivery).await?
                } else {
                    pipeline::evaluate(&ctx, &delivery).await?
                };
                pipeline::deliver(&ctx, &delivery, outcome).await
            };
            match attempt.await {
                Ok(()) => {
                    ctx.metrics.end_to_end.record(received.elapsed().as_secs_f64());
                    return;
                }
                Err(error) => {
                    Stats::bump(&ctx.stats.retried);
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "transient failure; will retry");
                    if *shutdown.borrow() {
                        debug!("shutting down: returning the job to the queue");
                        let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                        let _ = delivery.acker.nack(requeue).await;
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// The URL without its password, for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The configuration that the worker's measurement covers: everything that changes what a job
/// does or may do, nothing secret and nothing instance-specific.
fn measured_configuration(config: &Config) -> serde_json::Value {
    serde_json::json!({
        "namespace": config.namespace.as_str(),
        "targets": config.targets,
        "default_limits": config.default_limits,
        "max_limits": config.max_limits,
        "max_job_bytes": config.max_job_bytes,
        "max_kernel_bytes": config.max_kernel_bytes,
        "max_result_bytes": config.max_result_bytes,
        "single_tenant": config.single_tenant,
        "state_max_attempts": config.state_max_attempts,
    })
}

/// Decrements the in-flight gauge when a job task ends, however it ends.
struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `dtee-submitted-unix-ms` header the client sets, if present.
fn submitted_at_unix_ms(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers
        .inner()
        .get(dtee_schemas::protocol::HEADER_SUBMITTED_AT)?
    {
        lapin::types::AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
        _ => None,
    }
}

/// Keeps the Redis readiness flag current with a PING every two seconds.
async fn watch_redis(store: store::Store, health: Arc<health::Health>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        ticker.tick().await;
        let ping = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
        health.redis_ok.store(
            matches!(ping, Ok(Ok(()))),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
