//! `dtee-loadtest`: measures job throughput and latency against running workers, and the raw
//! AMQP confirm-and-consume rate of the same broker with the same client library, so that job
//! throughput can be quoted as a ratio of what the broker allows.
//!
//! ```text
//! dtee-loadtest jobs --jobs 10000 --in-flight 256       # against workers already running
//! dtee-loadtest amqp --messages 10000 --in-flight 256   # the broker baseline
//! dtee-loadtest both --jobs 10000 --in-flight 256       # baseline, then jobs, then the ratio
//! ```
//!
//! Each mode prints a table and, with `--json`, one JSON object per measurement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use dtee_schemas::cli::ConnectionArgs;
use dtee_schemas::protocol::Namespace;
use dtee_submitter::builder::wasm_job;
use dtee_submitter::{Client, ClientConfig};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

mod baseline;
mod cpu;
mod drain;
mod gpu;
mod redis_stats;
mod shaped;

use baseline::{amqp, roundtrip};

#[derive(Debug, Parser)]
#[command(
    name = "dtee-loadtest",
    about = "Load generator and broker baseline for dtee"
)]
struct Cli {
    /// RabbitMQ, Redis and the namespace.
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Also print each measurement as a JSON line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Submits trivial jobs (the `noop` entry of kernels/wasm/echo.wasm, a fresh nonce each)
    /// and waits for every result.
    Jobs(JobsArgs),
    /// Publishes with confirms to a scratch quorum queue and consumes with manual acks.
    Amqp(AmqpArgs),
    /// The raw job round trip with lapin, no dtee: a "client" publishes a message with a
    /// confirm to a quorum queue; a "worker" consumes it, publishes a ~1.7 KB "result" with a
    /// confirm to a second queue, and acks; the client consumes the result. What a job costs at
    /// the least with the same broker and library.
    Roundtrip(AmqpArgs),
    /// The AMQP baseline, then the jobs, then their ratio.
    Both(JobsArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct JobsArgs {
    /// Jobs to submit.
    #[arg(long, default_value = "10000")]
    jobs: usize,
    /// Jobs submitted but not yet answered, at most.
    #[arg(long, default_value = "256")]
    in_flight: usize,
    /// The kernel file (default: kernels/wasm/echo.wasm next to the current directory).
    #[arg(long, default_value = "kernels/wasm/echo.wasm")]
    kernel: std::path::PathBuf,
    /// Entry point.
    #[arg(long, default_value = "noop")]
    entry: String,
    /// Seconds to wait for all results.
    #[arg(long, default_value = "600")]
    timeout: u64,
    /// Give each job one read_write state binding: it increments one of this many counters
    /// (kernels/wasm/increment.wasm; 0 = no state, the noop kernel).
    #[arg(long, default_value = "0")]
    state_keys: usize,
    /// `noop` (the default), or `sha256`: each job hashes its own 1 MiB blob input, byte i of
    /// which is (31·i + the job's index) mod 256, with kernels/wasm/sha256.wasm; every digest is
    /// checked. Or `vadd`: a GPU job adding two vectors of `--gpu-elements` f32 on
    /// `--gpu-target` (kernels/ptx/vadd.ptx); every output is checked. Not with `--wait all`.
    #[arg(long, default_value = "noop", value_parser = ["noop", "sha256", "vadd"])]
    workload: String,
    /// With `--workload vadd`: the GPU target (`cuda`, or `stand-in` for a worker built with
    /// the test-hooks feature, whose stand-in device host adds on the CPU).
    #[arg(long, default_value = "cuda")]
    gpu_target: String,
    /// With `--workload vadd`: f32 elements per vector.
    #[arg(long, default_value = "1024", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    gpu_elements: u32,
    /// With `--workload sha256`: every job hashes the same 1 MiB blob (stored once; jobs differ
    /// by nonce), a hot input that the worker's blob cache (DTEE_BLOB_CACHE_BYTES) serves.
    #[arg(long)]
    hot_blob: bool,
    /// With `--workload sha256`: hash with kernels/wasm/sha256_host.wasm, through the host's
    /// SHA-256 primitive (`buffer_sha256`), instead of SHA-256 compiled to WebAssembly.
    #[arg(long)]
    host_sha256: bool,
    /// Prefetch of the baseline's consumer (match the worker's).
    #[arg(long, default_value = "16")]
    prefetch: u16,
    /// How results are awaited: `reply` (a watch per job through the waiter's one reply
    /// binding, publishing every job: `ResultWaiter::watch_reply_only`), `reply-read` (the
    /// same, reading the result key before publishing, as `dtee run` does:
    /// `ResultWaiter::watch_reply`), `per-job` (a binding per job id, as a client waiting for a
    /// job it did not submit does), or `all` (one binding to `#`, a monitor's view).
    #[arg(long, default_value = "reply", value_parser = ["reply", "reply-read", "per-job", "all"])]
    wait: String,
    /// Drain mode: the shell command that starts one worker (for example
    /// `target/release/dtee-worker`), run with this run's connection settings and namespace.
    /// With no worker consuming the namespace, it is started once so that the topology exists
    /// and stopped; then every job is queued; then it is started again, and the run is timed
    /// from that start (its start-up included) until every result is in.
    #[arg(long, value_name = "COMMAND")]
    drain_worker: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
struct AmqpArgs {
    /// Messages to send.
    #[arg(long, default_value = "10000")]
    messages: usize,
    /// Publisher confirms outstanding, at most.
    #[arg(long, default_value = "256")]
    in_flight: usize,
    /// Consumer prefetch.
    #[arg(long, default_value = "16")]
    prefetch: u16,
    /// Message size in bytes (a trivial job is about 300).
    #[arg(long, default_value = "300")]
    size: usize,
    /// `roundtrip` only: `plain` (the default exchange and two quorum queues, bare properties)
    /// or `dtee` (the exchanges, queue arguments, properties and headers of a dtee job and its
    /// result, with no dtee code: what of RabbitMQ's cost per job is the protocol's shape).
    #[arg(long, default_value = "plain")]
    shape: String,
}

/// One measurement.
#[derive(Debug, Serialize)]
struct Report {
    mode: String,
    count: usize,
    in_flight: usize,
    seconds: f64,
    per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    /// CPU time per job of each process involved (user + system, from /proc), microseconds.
    cpu_us_per_job: std::collections::BTreeMap<String, f64>,
    /// `jobs` on one Redis node: what Redis counted per job, by command (`INFO commandstats`,
    /// every client of the server; a script counts under `evalsha`, its time including the
    /// calls it makes, and each call it makes again under its own name). Not for the raw
    /// baselines, which use no Redis.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    redis_per_job: std::collections::BTreeMap<String, redis_stats::PerJob>,
}

impl Report {
    fn new(
        mode: impl Into<String>,
        in_flight: usize,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Report {
        latencies.sort();
        let pick = |q: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let idx = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[idx].as_secs_f64() * 1000.0
        };
        Report {
            mode: mode.into(),
            count: latencies.len(),
            in_flight,
            seconds: elapsed.as_secs_f64(),
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            latency_ms_p50: pick(0.5),
            latency_ms_p90: pick(0.9),
            latency_ms_p99: pick(0.99),
            latency_ms_max: pick(1.0),
            cpu_us_per_job: Default::default(),
            redis_per_job: Default::default(),
        }
    }
}

fn print_table(reports: &[&Report]) {
    println!(
        "{:<14} {:>8} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "mode",
        "count",
        "in-flight",
        "seconds",
        "per second",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for r in reports {
        println!(
            "{:<14} {:>8} {:>9} {:>9.2} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.mode,
            r.count,
            r.in_flight,
            r.seconds,
            r.per_second,
            r.latency_ms_p50,
            r.latency_ms_p90,
            r.latency_ms_p99,
            r.latency_ms_max
        );
    }
    println!("CPU per job, microseconds (user + system, from /proc):");
    for r in reports {
        let parts: Vec<String> = r
            .cpu_us_per_job
            .iter()
            .map(|(name, us)| format!("{name} {us:.0}"))
            .collect();
        println!("  {:<14} {}", r.mode, parts.join(", "));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let namespace = Namespace::new(cli.connection.namespace.clone())?;
    let tls = dtee_net::Tls::load(&cli.connection.tls)?;
    let reports = match &cli.mode {
        Mode::Jobs(args) => vec![jobs(&cli, &namespace, args).await?],
        Mode::Amqp(args) => vec![amqp(&cli.connection.amqp_url, &tls, args).await?],
        Mode::Roundtrip(args) => vec![roundtrip(&cli.connection.amqp_url, &tls, args).await?],
        Mode::Both(args) => {
            let baseline = amqp(
                &cli.connection.amqp_url,
                &tls,
                &AmqpArgs {
                    messages: args.jobs,
                    in_flight: args.in_flight,
                    prefetch: args.prefetch,
                    size: 300,
                    shape: "plain".into(),
                },
            )
            .await?;
            let jobs = jobs(&cli, &namespace, args).await?;
            vec![baseline, jobs]
        }
    };
    let refs: Vec<&Report> = reports.iter().collect();
    print_table(&refs);
    if let [baseline, jobs] = refs.as_slice() {
        println!(
            "jobs / raw AMQP throughput: {:.3} ({:.0} / {:.0} per second)",
            jobs.per_second / baseline.per_second,
            jobs.per_second,
            baseline.per_second
        );
    }
    if cli.json {
        for report in &reports {
            println!("{}", serde_json::to_string(report)?);
        }
    }
    Ok(())
}

async fn jobs(cli: &Cli, namespace: &Namespace, args: &JobsArgs) -> anyhow::Result<Report> {
    if args.workload != "noop" && args.wait == "all" {
        bail!(
            "--workload {} needs --wait reply, reply-read or per-job",
            args.workload
        );
    }
    if args.drain_worker.is_some() && args.wait == "all" {
        bail!("--drain-worker needs --wait reply, reply-read or per-job");
    }
    let tls = dtee_net::Tls::load(&cli.connection.tls)?;
    let options = dtee_net::RedisOptions::default();
    let redis = dtee_net::redis_conn::connect(&cli.connection.redis_url, &tls, options)
        .await
        .context("connecting to Redis")?;
    let redis_before = redis_stats::snapshot(&redis).await;
    let mut report = if let Some(command) = &args.drain_worker {
        drain::jobs_drained(cli, namespace, args, command).await?
    } else {
        let before = cpu::snapshot();
        let mut report = if args.wait == "all" {
            jobs_all(cli, namespace, args).await?
        } else {
            jobs_watched(cli, namespace, args).await?
        };
        report.cpu_us_per_job = cpu::per_job(&before, &cpu::snapshot(), report.count);
        report
    };
    let redis_after = redis_stats::snapshot(&redis).await;
    report.redis_per_job =
        redis_stats::per_job(redis_before.as_ref(), redis_after.as_ref(), report.count);
    Ok(report)
}

/// The job of index `idx` of a run: the noop kernel, or an increment of one of the state keys.
fn job_spec(
    args: &JobsArgs,
    digest: &dtee_schemas::Digest,
    tenant: &str,
    run_id: u64,
    idx: usize,
) -> dtee_schemas::JobSpec {
    if args.workload == "vadd" {
        let mut spec = gpu::job(digest, &args.gpu_target, args.gpu_elements, idx);
        spec.nonce = Some(format!("{run_id:016x}-{idx}"));
        return spec;
    }
    let mut spec = wasm_job(digest.clone(), &args.entry);
    if args.state_keys > 0 {
        spec.kernel.entry = "increment".to_owned();
        let key = format!("{tenant}/loadtest/{run_id:016x}/{}", idx % args.state_keys);
        spec.buffers = vec![dtee_submitter::builder::state(
            "counter",
            &key,
            dtee_schemas::job::AccessMode::ReadWrite,
            true,
        )];
    }
    spec.nonce = Some(format!("{run_id:016x}-{idx}"));
    spec
}

async fn connect_and_store_kernel(
    cli: &Cli,
    namespace: &Namespace,
    args: &JobsArgs,
) -> anyhow::Result<(Arc<Client>, dtee_schemas::Digest)> {
    let client = Arc::new(
        Client::connect(ClientConfig {
            amqp_url: cli.connection.amqp_url.clone(),
            redis_url: cli.connection.redis_url.clone(),
            namespace: namespace.clone(),
            tls: dtee_net::Tls::load(&cli.connection.tls)?,
        })
        .await
        .context("connecting")?,
    );
    client
        .check_topology()
        .await
        .context("no dtee topology in this namespace: start a worker first")?;
    let kernel_path = if args.workload == "vadd" {
        gpu::kernel_path(&args.kernel)
    } else if args.state_keys > 0 {
        args.kernel.with_file_name("increment.wasm")
    } else if args.workload == "sha256" && args.host_sha256 {
        args.kernel.with_file_name("sha256_host.wasm")
    } else if args.workload == "sha256" {
        args.kernel.with_file_name("sha256.wasm")
    } else {
        args.kernel.clone()
    };
    let kernel = std::fs::read(&kernel_path)
        .with_context(|| format!("reading {}", kernel_path.display()))?;
    let (digest, _) = client.put_blob(&kernel).await?;
    Ok((client, digest))
}

/// The 1 MiB input of the sha256 workload: byte i is (31·i + seed) mod 256.
fn sha256_input(seed: usize) -> Vec<u8> {
    (0..1usize << 20)
        .map(|i| (31usize.wrapping_mul(i).wrapping_add(seed) % 256) as u8)
        .collect()
}

/// With the sha256 workload, gives the job its 1 MiB input: its own, stored as a blob (as a
/// client would), or the one hot blob every job shares; returns the digest to expect.
async fn with_input(
    client: &Client,
    mut spec: dtee_schemas::JobSpec,
    sha256: bool,
    hot: Option<(dtee_schemas::Digest, dtee_schemas::Digest)>,
    idx: usize,
) -> anyhow::Result<(dtee_schemas::JobSpec, Option<dtee_schemas::Digest>)> {
    if !sha256 {
        return Ok((spec, None));
    }
    let (blob, expected) = match hot {
        Some((blob, digest)) => (blob, digest),
        None => {
            let data = sha256_input(idx);
            let digest = dtee_schemas::Digest::of(&data);
            (client.put_blob(&data).await?.0, digest)
        }
    };
    spec.kernel.entry = "sha256".to_owned();
    spec.buffers = vec![
        dtee_submitter::builder::blob_input("data", blob),
        dtee_submitter::builder::output("digest", 32),
    ];
    Ok((spec, Some(expected)))
}

/// With `--hot-blob` and the sha256 workload: the one 1 MiB input every job hashes, stored
/// once, and its digest.
async fn hot_blob(
    client: &Client,
    args: &JobsArgs,
) -> anyhow::Result<Option<(dtee_schemas::Digest, dtee_schemas::Digest)>> {
    if !(args.hot_blob && args.workload == "sha256") {
        return Ok(None);
    }
    let data = sha256_input(0);
    Ok(Some((
        client.put_blob(&data).await?.0,
        dtee_schemas::Digest::of(&data),
    )))
}

/// Fails when a succeeded sha256 job's digest is not SHA-256 of its input.
fn check_digest(
    result: &dtee_schemas::JobResult,
    expected: Option<&dtee_schemas::Digest>,
    idx: usize,
) -> anyhow::Result<()> {
    if let (Some(expected), true) = (expected, result.succeeded()) {
        let digest = result
            .output("digest")
            .map(|o| o.bytes())
            .transpose()?
            .unwrap_or_default();
        if digest.as_slice() != expected.to_bytes().as_slice() {
            bail!("job {idx}: the kernel's digest is not SHA-256 of its input");
        }
    }
    Ok(())
}

/// Every job watched on its own, as real clients wait: through the waiter's reply binding
/// (`reply`, `reply-read`), or with a binding per job id (`per-job`).
async fn jobs_watched(cli: &Cli, namespace: &Namespace, args: &JobsArgs) -> anyhow::Result<Report> {
    let (client, digest) = connect_and_store_kernel(cli, namespace, args).await?;
    let tenant = client.tenant().to_owned();
    let waiter = Arc::new(client.waiter().await?);
    let run_id: u64 = rand::random();
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let timeout = Duration::from_secs(args.timeout);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(args.jobs);
    let mut failed = 0usize;
    let mut collect = |outcome: anyhow::Result<(bool, Duration)>| -> anyhow::Result<()> {
        let (succeeded, latency) = outcome?;
        failed += usize::from(!succeeded);
        latencies.push(latency);
        Ok(())
    };
    let hot = hot_blob(&client, args).await?;
    for idx in 0..args.jobs {
        let permit = Arc::clone(&slots).acquire_owned().await.expect("open");
        let spec = job_spec(args, &digest, &tenant, run_id, idx);
        let (client, waiter) = (Arc::clone(&client), Arc::clone(&waiter));
        let sha256 = args.workload == "sha256";
        let gpu_elements = (args.workload == "vadd").then_some(args.gpu_elements);
        let hot = hot.clone();
        let wait = Wait::of(args);
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let (spec, expected) = with_input(&client, spec, sha256, hot, idx).await?;
            let job = dtee_submitter::PreparedJob::new(&spec)?;
            let result = submit_watched(&client, &waiter, &job, wait)
                .await?
                .result(timeout)
                .await?;
            check_digest(&result, expected.as_ref(), idx)?;
            if let Some(elements) = gpu_elements {
                gpu::check(&result, elements, idx)?;
            }
            anyhow::Ok((result.succeeded(), sent.elapsed()))
        });
        while let Some(done) = tasks.try_join_next() {
            collect(done?)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        collect(done?)?;
    }
    let elapsed = started.elapsed();
    if failed > 0 {
        bail!("{failed} jobs failed");
    }
    Ok(Report::new(
        mode_name(args, ""),
        args.in_flight,
        elapsed,
        latencies,
    ))
}

/// How a watched job is awaited (`--wait`, other than `all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Through the waiter's reply binding, publishing whatever Redis holds.
    Reply,
    /// Through the reply binding, after reading the result key (not published if cached).
    ReplyRead,
    /// A binding per job id.
    PerJob,
}

impl Wait {
    pub(crate) fn of(args: &JobsArgs) -> Wait {
        match args.wait.as_str() {
            "reply" => Wait::Reply,
            "reply-read" => Wait::ReplyRead,
            _ => Wait::PerJob,
        }
    }
}

/// Watches for `job`'s result as `wait` says, then publishes it (unless `reply-read` found
/// its result cached).
pub(crate) async fn submit_watched<'w>(
    client: &dtee_submitter::Client,
    waiter: &'w dtee_submitter::ResultWaiter,
    job: &dtee_submitter::PreparedJob,
    wait: Wait,
) -> anyhow::Result<dtee_submitter::Watch<'w>> {
    let watch = match wait {
        Wait::Reply => waiter.watch_reply_only(job.id()).await?,
        Wait::ReplyRead => waiter.watch_reply(job.id()).await?,
        Wait::PerJob => waiter.watch_fresh(job.id()).await?,
    };
    if !watch.is_cached() {
        let reply_to = (wait != Wait::PerJob).then(|| waiter.reply_to());
        client.submit_prepared(job, reply_to).await?;
    }
    Ok(watch)
}

/// `jobs`, `state` or `sha256`, the wait path, and `suffix`: `sha256/reply`, `jobs/reply/drain`.
fn mode_name(args: &JobsArgs, suffix: &str) -> String {
    let load = if args.workload == "vadd" {
        "vadd"
    } else if args.state_keys > 0 {
        "state"
    } else if args.workload == "sha256" && args.host_sha256 {
        "sha256-host"
    } else if args.workload == "sha256" {
        "sha256"
    } else {
        "jobs"
    };
    format!("{load}/{}{suffix}", args.wait)
}

/// Every result through one binding to `#` (needs a user without a topic permission on the
/// results exchange).
async fn jobs_all(cli: &Cli, namespace: &Namespace, args: &JobsArgs) -> anyhow::Result<Report> {
    let (client, digest) = connect_and_store_kernel(cli, namespace, args).await?;
    let tenant = client.tenant().to_owned();
    let waiter = client.waiter().await?;
    let mut results = waiter.subscribe_all().await?;
    let run_id: u64 = rand::random();

    let sent: Arc<Mutex<HashMap<dtee_schemas::Digest, Instant>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let submitter = {
        let (client, sent, slots, args) = (
            Arc::clone(&client),
            Arc::clone(&sent),
            Arc::clone(&slots),
            args.clone(),
        );
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for idx in 0..args.jobs {
                slots.acquire().await.expect("open").forget();
                let spec = job_spec(&args, &digest, &tenant, run_id, idx);
                let job = dtee_submitter::PreparedJob::new(&spec)?;
                sent.lock().await.insert(job.id().clone(), Instant::now());
                let client = Arc::clone(&client);
                tasks.spawn(async move { client.submit_prepared(&job, None).await });
                while let Some(done) = tasks.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            anyhow::Ok(())
        })
    };
    let mut latencies = Vec::with_capacity(args.jobs);
    let mut failed = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    while latencies.len() < args.jobs {
        let Ok(Some((result, _cached))) = tokio::time::timeout_at(deadline, results.recv()).await
        else {
            bail!(
                "only {} of {} results arrived in {} s",
                latencies.len(),
                args.jobs,
                args.timeout
            );
        };
        let Some(sent_at) = sent.lock().await.remove(&result.job_id) else {
            continue; // A duplicate, or another client's job.
        };
        if !result.succeeded() {
            failed += 1;
        }
        latencies.push(sent_at.elapsed());
        slots.add_permits(1);
    }
    let elapsed = started.elapsed();
    submitter.await??;
    waiter.close().await;
    if failed > 0 {
        bail!("{failed} jobs failed");
    }
    let mode = if args.state_keys > 0 {
        "state/all"
    } else {
        "jobs/all"
    };
    Ok(Report::new(mode, args.in_flight, elapsed, latencies))
}
