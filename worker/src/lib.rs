//! The dtee worker: consumes kernel jobs from RabbitMQ, runs them under hard limits, and
//! publishes their results.
//!
//! Public surface (what the binary, the tests and embedders use): [`start`] returns a
//! [`WorkerHandle`], and [`run`] serves until a shutdown future completes (the binary passes
//! SIGTERM/SIGINT); [`config`] builds the [`Config`](config::Config); [`stats`] holds the
//! counters tests read; [`attestation`] (providers) and [`state`] (the commit protocol) are
//! public for their own tests. Everything else is internal to the crate.
//!
//! Modules, in the order a job meets them:
//! - [`config`] — typed configuration from flags and environment;
//! - `broker` — the RabbitMQ session, topology, and result publishing with confirms;
//! - `consumer` — the consumer loop: deliveries, reconnection, stall check, drain;
//! - `job` — the path of one job, one stage per file (admit, prior, plan, fetch, execute,
//!   outcome, deliver, dead_letter);
//! - `store` — Redis blobs and the result cache; [`state`] — bound state: snapshots and
//!   atomic commits;
//! - [`backend`] — kernel execution (WebAssembly today);
//! - [`attestation`] — the worker key, its evidence, and signed execution statements;
//! - `registry` — the worker's entry in Redis, with a heartbeat and evidence refresh;
//! - `failure` — what each failure means (retry or fail the job);
//! - `telemetry` — typed events over [`stats`] (counters) and `metrics` (Prometheus);
//!   `health` — `/metrics`, `/healthz`, `/readyz`.
//!
//! **Invariant:** a delivery is acked only after its result is cached and confirmed by the
//! broker.

pub mod attestation;
pub mod backend;
mod blob_cache;
mod broker;
mod clock;
pub mod config;
mod consumer;
mod failure;
mod fair;
mod fair_cache;
mod health;
mod hooks;
mod job;
mod metrics;
mod registry;
mod secrets;
pub mod state;
pub mod stats;
mod store;
mod telemetry;
pub mod tools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dtee_schemas::job::WasmProfile;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::attestation::Attestor;
use crate::backend::wasm::WasmBackend;
use crate::backend::Backend as _;
use crate::broker::session::Session;
use crate::config::Config;
use crate::consumer::Consumer;
use crate::health::Health;
use crate::job::Context;
use crate::stats::Stats;
use crate::telemetry::Telemetry;

pub use crate::config::{Args, ConfigError};
pub use dtee_schemas::cli::redact;

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
        started = start(config) => started?,
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

/// Starts a worker: connects to Redis, attests, connects to RabbitMQ (declaring the
/// topology), starts the registry heartbeat and the probes, and starts consuming. If the
/// RabbitMQ connection is lost later, the worker reconnects with backoff, declares its
/// topology again and resumes; `/readyz` reports the outage meanwhile.
pub async fn start(mut config: Config) -> anyhow::Result<WorkerHandle> {
    let store = store::Store::connect(&config.redis_url, &config.tls, config.namespace.clone())
        .await
        .with_context(|| format!("connecting to redis at {}", redact(&config.redis_url)))?;
    // A commit past Redis's own string limit would fail inside the commit script: the script
    // checks the smaller of the two limits before it writes anything.
    if let Some(limit) = state::redis_value_limit(&store.connection()).await {
        if limit < config.max_state_value_bytes {
            info!(
                limit,
                "redis proto-max-bulk-len is below DTEE_MAX_STATE_VALUE_BYTES; using it"
            );
            config.max_state_value_bytes = limit;
        }
    }
    // The GPUs, before the identity: the targets served are part of the measured configuration.
    let gpus = start_gpus(&mut config)?;
    // Identity first: a worker that cannot attest as asked does not consume.
    let attestor = Arc::new(attest(&config)?);
    info!(platform = %attestor.platform(), "worker key attested");
    let routing_keys: Vec<String> = config
        .targets
        .iter()
        .flat_map(|target| dtee_schemas::protocol::served_routing_keys(target, attestor.platform()))
        .collect();
    // The tenant queues: the session reads their announcements from the start.
    let tenants = broker::tenants::Tenants::new(&routing_keys, config.max_tenant_queues);
    let (session, publisher) = Session::open(&config, &routing_keys).await?;
    let [wasm, wasm_fast] = [WasmProfile::Deterministic, WasmProfile::Fast].map(|profile| {
        WasmBackend::with_profile(
            profile,
            config.module_cache_size,
            config.module_cache_bytes,
            config.compile.clone(),
            config.concurrency,
        )
        .map(Arc::new)
    });
    let (wasm, wasm_fast) = (wasm?, wasm_fast?);
    let stats = Arc::new(Stats::default());
    let devices: Vec<Arc<backend::gpu::GpuBackend>> = gpus.values().cloned().collect();
    let metrics = Arc::new(metrics::Metrics::new(
        Arc::clone(&stats),
        attestor.platform(),
        wasm.name(),
        &devices,
    ));
    let telemetry = Telemetry::new(Arc::clone(&stats), Arc::clone(&metrics));
    let registry = tokio::spawn(registry::run(
        store.connection(),
        config.namespace.clone(),
        Arc::clone(&attestor),
        routing_keys.clone(),
        config.heartbeat,
        config.evidence_refresh,
        telemetry.clone(),
    ));
    let health = Arc::new(Health {
        devices,
        ..Health::default()
    });
    health.tick();
    health
        .amqp_connected
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (probes, metrics_addr) =
        serve_probes(&config, &store, &metrics, &health, &attestor).await?;
    let worker_id = config.worker_id.clone();
    let secret_link = secrets::SecretLink::new(
        config.amqp_url.clone(),
        config.tls.clone(),
        config.namespace.clone(),
    );
    let blob_cache_bytes = config.blob_cache_bytes;
    let ctx = Arc::new(Context {
        attestor,
        telemetry,
        kernel_slots: fair::FairSlots::new(config.concurrency),
        compile_slots: fair::FairSlots::new(config.compile.concurrency),
        data_slots: fair::FairSlots::new(config.concurrency),
        result_slots: fair::FairSlots::new(
            config.concurrency + gpus.values().map(|gpu| gpu.devices().len()).sum::<usize>(),
        ),
        state: state::StateStore::new(store.connection(), config.namespace.clone()),
        config,
        store,
        publisher: std::sync::RwLock::new(publisher),
        wasm,
        wasm_fast,
        gpus,
        turns: job::turns::Turns::default(),
        long_kernels: Default::default(),
        compile_refusals: Default::default(),
        blob_cache: blob_cache::BlobCache::new(blob_cache_bytes),
        secrets: secret_link,
        session_broken: tokio::sync::Notify::new(),
    });
    let consumer = Consumer {
        ctx,
        session: Some(session),
        routing_keys,
        tenants,
        disabled_routes: std::collections::HashSet::new(),
        retry_cursor: 0,
        ready_cursor: 0,
        health,
        registry,
        probes,
        last_opened: Some(std::time::Instant::now()),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(consumer.run(shutdown.clone(), shutdown_rx));
    Ok(WorkerHandle {
        stats,
        worker_id,
        metrics_addr,
        shutdown,
        task,
    })
}

/// Measures the worker, opens its attestation provider, and makes its key and first evidence.
fn attest(config: &Config) -> anyhow::Result<Attestor> {
    let measurement =
        attestation::measure(&measured_configuration(config)).context("measuring the worker")?;
    let provider =
        attestation::open_provider(config.attestation, &config.provider_settings, &measurement)
            .context("opening the attestation provider")?;
    Attestor::start(&config.worker_id, measurement, provider).context("attesting the worker key")
}

/// Binds the metrics address (if configured) and serves the probes there; always watches
/// Redis for readiness.
async fn serve_probes(
    config: &Config,
    store: &store::Store,
    metrics: &Arc<metrics::Metrics>,
    health: &Arc<Health>,
    attestor: &Arc<Attestor>,
) -> anyhow::Result<(
    Vec<tokio::task::JoinHandle<()>>,
    Option<std::net::SocketAddr>,
)> {
    let mut probes = Vec::new();
    let mut bound = None;
    if let Some(addr) = config.metrics_addr {
        let listener = health::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let local = listener
            .local_addr()
            .context("reading the metrics address")?;
        probes.push(tokio::spawn(health::serve(
            listener,
            Arc::clone(metrics),
            Arc::clone(health),
            Arc::clone(attestor),
        )));
        info!(bound = %local, "serving /metrics, /healthz and /readyz");
        bound = Some(local);
    }
    probes.push(tokio::spawn(watch_redis(store.clone(), Arc::clone(health))));
    Ok((probes, bound))
}

/// The configuration that the worker's measurement covers: everything that changes what a job
/// does or may do, nothing secret and nothing instance-specific.
fn measured_configuration(config: &Config) -> serde_json::Value {
    serde_json::json!({
        "namespace": config.namespace.as_str(),
        "targets": config.targets,
        "default_limits": config.default_limits,
        "max_limits": config.max_limits,
        "max_device_memory_bytes": config.max_device_memory_bytes,
        "max_job_bytes": config.max_job_bytes,
        "max_kernel_bytes": config.max_kernel_bytes,
        "compile_timeout_ms": config.compile.timeout.as_millis() as u64,
        "compile_memory_bytes": config.compile.memory_bytes,
        "max_result_bytes": config.max_result_bytes,
        "max_state_value_bytes": config.max_state_value_bytes,
        "max_input_bytes": config.max_input_bytes,
        "max_buffers": config.max_buffers,
        "max_params": config.max_params,
        "single_tenant": config.single_tenant,
        "state_max_attempts": config.state_max_attempts,
    })
}

/// Keeps the Redis readiness flag current with a PING every two seconds.
async fn watch_redis(store: store::Store, health: Arc<Health>) {
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

/// Finds the GPUs this worker serves and starts a device host for each (every device of a
/// target serves it), and resolves `DTEE_TARGETS`: `auto` becomes wasm plus the targets found; a GPU
/// target named explicitly without a device to serve it refuses start-up, with the reason.
fn start_gpus(
    config: &mut Config,
) -> anyhow::Result<std::collections::HashMap<String, Arc<backend::gpu::GpuBackend>>> {
    use backend::gpu::{self, device::DriverKind};
    let auto = config.targets.len() == 1 && config.targets[0] == config::args::AUTO_TARGETS;
    let wanted: Vec<String> = config
        .targets
        .iter()
        .filter(|target| gpu::is_gpu_target(target))
        .cloned()
        .collect();
    let mut kinds: Vec<DriverKind> = if auto {
        [DriverKind::Cuda, DriverKind::Hip]
            .into_iter()
            .filter(|kind| kind.built())
            .collect()
    } else {
        wanted
            .iter()
            .filter_map(|t| gpu::driver_for_target(t))
            .collect()
    };
    kinds.dedup();
    let program = config
        .compile
        .program
        .clone()
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()));
    let mut gpus = std::collections::HashMap::new();
    let mut reasons: Vec<(DriverKind, String)> = Vec::new();
    for kind in kinds {
        let devices = match gpu::device::probe(kind) {
            Ok(devices) => devices,
            Err(why) => {
                info!(driver = kind.name(), "no GPU for this driver: {why}");
                reasons.push((kind, why));
                continue;
            }
        };
        #[cfg(feature = "test-hooks")]
        let devices = if kind == DriverKind::StandIn {
            gpu::stand_in_devices(config.stand_in_devices)
        } else {
            devices
        };
        // Every device of a target serves it (of one architecture), each through its own
        // device host.
        let mut by_target = Vec::new();
        for group in gpu::serving_groups(kind, &devices) {
            if !auto && !wanted.contains(&group.target) {
                continue;
            }
            for (ordinal, arch) in &group.left_out {
                warn!(target = %group.target, ordinal, %arch, "this device is left out: a target's devices share one architecture (give it its own worker with CUDA_VISIBLE_DEVICES or HIP_VISIBLE_DEVICES)");
            }
            by_target.push((group.target, group.ordinals));
        }
        for (target, ordinals) in by_target {
            match gpu::GpuBackend::start(kind, &ordinals, program.clone(), config.gpu_share_host) {
                Ok(backend) => {
                    for device in backend.devices() {
                        info!(%target, ordinal = device.ordinal, device = %device.info.device.name, arch = %device.info.device.arch, driver = %device.info.device.driver, "serving a GPU");
                    }
                    gpus.insert(target, Arc::new(backend));
                }
                Err(why) => {
                    warn!(%target, "no device host started: {why}");
                    reasons.push((kind, why));
                }
            }
        }
    }
    for target in &wanted {
        if !gpus.contains_key(target) {
            let kind = gpu::driver_for_target(target);
            let why = reasons
                .iter()
                .filter(|(k, _)| Some(*k) == kind)
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            anyhow::bail!(
                "DTEE_TARGETS names {target}, but this worker has no device for it: {}",
                if why.is_empty() {
                    "no such device was found".to_owned()
                } else {
                    why
                }
            );
        }
    }
    if auto {
        let mut targets = vec!["wasm".to_owned()];
        let mut found: Vec<String> = gpus.keys().cloned().collect();
        found.sort();
        targets.extend(found);
        config.targets = targets;
    }
    Ok(gpus)
}
