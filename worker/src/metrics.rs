//! Prometheus metrics of one worker, with its own recorder (no global recorder, so several
//! workers in one process, as in the tests, keep separate metrics).
//!
//! Counters are kept in [`Stats`] (one source of truth, also read by the tests) and copied into
//! the exporter when `/metrics` is scraped; histograms are recorded where the time is spent.
//! Label values come only from small fixed sets: error codes, limit names, the platform.

use crate::backend::gpu::GpuBackend;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dtee_schemas::attestation::Platform;
use dtee_schemas::ErrorCode;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::stats::Stats;

/// Histogram buckets in seconds: 100 µs to 5 minutes.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The error codes that mean a limit stopped the kernel, with their `limit` label.
const LIMIT_KILLS: &[(ErrorCode, &str)] = &[
    (ErrorCode::FuelExhausted, "fuel"),
    (ErrorCode::ExecutionTimeout, "timeout"),
    (ErrorCode::MemoryLimitExceeded, "memory"),
    (ErrorCode::OutputLimitExceeded, "output"),
];

/// Reads one counter of [`Stats`].
type StatReader = fn(&Stats) -> u64;

/// The worker's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    stats: Arc<Stats>,
    counters: Vec<(Counter, StatReader)>,
    failed: Vec<(Counter, usize)>,
    limit_kills: Vec<(Counter, usize)>,
    in_flight: Gauge,
    data_bytes: Gauge,
    result_bytes: Gauge,
    evidence_age: Gauge,
    /// Each GPU device: its target's backend, its index there, its restarts and whether it is up.
    devices: Vec<(Arc<GpuBackend>, usize, Counter, Gauge)>,
    /// Time from publication (header `dtee-submitted-unix-ms`) to delivery.
    pub queue_wait: Histogram,
    /// Kernel execution (instantiation and entry call).
    pub kernel: Histogram,
    /// State snapshot reads.
    pub state_read: Histogram,
    /// State commit scripts.
    pub state_commit: Histogram,
    /// Result publish and confirm.
    pub publish: Histogram,
    /// Delivery to ack.
    pub end_to_end: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn code_index(code: ErrorCode) -> usize {
    ErrorCode::ALL
        .iter()
        .position(|c| *c == code)
        .expect("every code is in ALL")
}

impl Metrics {
    /// Registers every metric; `platform` and `backend` label the build-info gauge.
    pub fn new(
        stats: Arc<Stats>,
        platform: Platform,
        backend: &str,
        gpus: &[Arc<GpuBackend>],
    ) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        let describe_counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
        };
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &metadata())
        };
        describe_counter("dtee_jobs_received_total", "Job deliveries received.");
        describe_counter(
            "dtee_jobs_succeeded_total",
            "Results published with status succeeded.",
        );
        describe_counter(
            "dtee_jobs_failed_total",
            "Results published with status failed, by error code.",
        );
        describe_counter(
            "dtee_jobs_retried_total",
            "Transient failures retried with backoff.",
        );
        describe_counter(
            "dtee_results_refused_total",
            "Results the broker refused (nack) on every try: the job acknowledged without the message.",
        );
        describe_counter(
            "dtee_jobs_deduplicated_total",
            "Jobs answered from the result cache (without running, or discarding a short run settled late).",
        );
        describe_counter(
            "dtee_jobs_settled_late_total",
            "Jobs whose cached result and revocation were read after a short run, with the caching of their result.",
        );
        describe_counter(
            "dtee_jobs_dead_lettered_total",
            "Jobs answered dead_lettered after their delivery limit.",
        );
        describe_counter(
            "dtee_kernel_runs_total",
            "Kernel runs started (a state conflict runs a job again).",
        );
        describe_counter("dtee_state_commits_total", "State commits applied.");
        describe_counter(
            "dtee_state_conflicts_total",
            "State commits refused because bound state changed.",
        );
        describe_counter(
            "dtee_limit_kills_total",
            "Kernels stopped by a limit, by limit.",
        );
        describe_counter(
            "dtee_attestation_refreshes_total",
            "Evidence refreshes that succeeded.",
        );
        describe_counter(
            "dtee_rabbitmq_reconnects_total",
            "Reconnections to RabbitMQ after a lost connection.",
        );
        describe_counter(
            "dtee_tenant_queue_failures_total",
            "Attempts to declare, consume or announce a tenant queue that failed (each is tried again).",
        );
        describe_counter(
            "dtee_jobs_misrouted_total",
            "Messages dropped from a tenant queue that another tenant's CC or BCC header routed there.",
        );
        let counters: Vec<(Counter, StatReader)> = vec![
            (counter("dtee_jobs_received_total", vec![]), |s| {
                Stats::get(&s.received)
            }),
            (counter("dtee_jobs_succeeded_total", vec![]), |s| {
                Stats::get(&s.succeeded)
            }),
            (counter("dtee_jobs_retried_total", vec![]), |s| {
                Stats::get(&s.retried)
            }),
            (counter("dtee_results_refused_total", vec![]), |s| {
                Stats::get(&s.results_refused)
            }),
            (counter("dtee_jobs_deduplicated_total", vec![]), |s| {
                Stats::get(&s.deduplicated)
            }),
            (counter("dtee_jobs_settled_late_total", vec![]), |s| {
                Stats::get(&s.settled_late)
            }),
            (counter("dtee_jobs_dead_lettered_total", vec![]), |s| {
                Stats::get(&s.dead_lettered)
            }),
            (counter("dtee_kernel_runs_total", vec![]), |s| {
                Stats::get(&s.executed)
            }),
            (counter("dtee_state_commits_total", vec![]), |s| {
                Stats::get(&s.commits)
            }),
            (counter("dtee_state_conflicts_total", vec![]), |s| {
                Stats::get(&s.conflicts)
            }),
            (counter("dtee_attestation_refreshes_total", vec![]), |s| {
                Stats::get(&s.evidence_refreshes)
            }),
            (counter("dtee_rabbitmq_reconnects_total", vec![]), |s| {
                Stats::get(&s.reconnects)
            }),
            (counter("dtee_tenant_queue_failures_total", vec![]), |s| {
                Stats::get(&s.tenant_queue_failures)
            }),
            (counter("dtee_jobs_misrouted_total", vec![]), |s| {
                Stats::get(&s.misrouted)
            }),
        ];
        let failed = ErrorCode::ALL
            .iter()
            .enumerate()
            .map(|(idx, code)| {
                (
                    counter(
                        "dtee_jobs_failed_total",
                        vec![Label::new("code", code.as_str())],
                    ),
                    idx,
                )
            })
            .collect();
        let limit_kills = LIMIT_KILLS
            .iter()
            .map(|(code, limit)| {
                (
                    counter("dtee_limit_kills_total", vec![Label::new("limit", *limit)]),
                    code_index(*code),
                )
            })
            .collect();
        let gauge = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            recorder.describe_gauge(KeyName::from(name), None, SharedString::from(help));
            recorder.register_gauge(&Key::from_parts(name, labels), &metadata())
        };
        let in_flight = gauge("dtee_jobs_in_flight", "Deliveries being processed.", vec![]);
        let data_bytes = gauge(
            "dtee_job_data_bytes",
            "Bytes of input blobs and state values read for jobs that have not finished running.",
            vec![],
        );
        let result_bytes = gauge(
            "dtee_job_result_bytes",
            "Bytes of results over 1 MiB held in result slots until the broker confirms them.",
            vec![],
        );
        let evidence_age = gauge(
            "dtee_evidence_age_seconds",
            "Age of the worker's current evidence.",
            vec![],
        );
        let build_info = gauge(
            "dtee_build_info",
            "Version, backend and attestation platform of this worker (value 1).",
            vec![
                Label::new("version", env!("CARGO_PKG_VERSION")),
                Label::new("backend", backend.to_owned()),
                Label::new("platform", platform.as_str()),
            ],
        );
        build_info.set(1.0);
        recorder.describe_counter(
            KeyName::from("dtee_device_host_restarts_total"),
            None,
            SharedString::from("Device hosts started again (after a deadline kill, a crash or a fault), per GPU device."),
        );
        let devices = gpus
            .iter()
            .flat_map(|gpu| {
                gpu.devices()
                    .iter()
                    .enumerate()
                    .map(|(index, device)| (Arc::clone(gpu), index, device.ordinal))
                    .collect::<Vec<_>>()
            })
            .map(|(gpu, index, ordinal)| {
                let labels = vec![
                    Label::new("target", gpu.target().to_owned()),
                    Label::new("device", ordinal.to_string()),
                ];
                (
                    gpu,
                    index,
                    recorder.register_counter(
                        &Key::from_parts("dtee_device_host_restarts_total", labels.clone()),
                        &metadata(),
                    ),
                    gauge(
                        "dtee_device_up",
                        "1 while the GPU is in use, 0 once it was given up.",
                        labels,
                    ),
                )
            })
            .collect();
        let histogram = |name: &'static str, help: &'static str| {
            recorder.describe_histogram(
                KeyName::from(name),
                Some(Unit::Seconds),
                SharedString::from(help),
            );
            recorder.register_histogram(&Key::from_name(name), &metadata())
        };
        Metrics {
            queue_wait: histogram(
                "dtee_queue_wait_seconds",
                "Time from publication to delivery.",
            ),
            kernel: histogram("dtee_kernel_execution_seconds", "Kernel execution time."),
            state_read: histogram("dtee_state_read_seconds", "State snapshot read time."),
            state_commit: histogram("dtee_state_commit_seconds", "State commit script time."),
            publish: histogram(
                "dtee_result_publish_seconds",
                "Result publish-and-confirm time.",
            ),
            end_to_end: histogram("dtee_job_duration_seconds", "Delivery to ack."),
            recorder,
            handle,
            stats,
            counters,
            failed,
            limit_kills,
            in_flight,
            data_bytes,
            result_bytes,
            evidence_age,
            devices,
        }
    }

    /// The exposition text, with counters brought up to date from [`Stats`].
    pub fn render(&self, evidence_created_at_unix_ms: u64) -> String {
        let stats = &self.stats;
        for (counter, read) in &self.counters {
            counter.absolute(read(stats));
        }
        for (counter, idx) in &self.failed {
            counter.absolute(Stats::get(&stats.failed_by_code[*idx]));
        }
        for (counter, idx) in &self.limit_kills {
            counter.absolute(Stats::get(&stats.run_errors_by_code[*idx]));
        }
        self.in_flight
            .set(stats.in_flight.load(std::sync::atomic::Ordering::Relaxed) as f64);
        self.data_bytes.set(
            stats
                .data_bytes_held
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        self.result_bytes.set(
            stats
                .result_bytes_held
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.evidence_age
            .set(now.saturating_sub(evidence_created_at_unix_ms) as f64 / 1000.0);
        for (gpu, index, restarts, up) in &self.devices {
            let host = &gpu.devices()[*index].host;
            restarts.absolute(host.restarts());
            up.set(if host.failed().is_some() { 0.0 } else { 1.0 });
        }
        let _ = &self.recorder;
        self.handle.render()
    }
}
