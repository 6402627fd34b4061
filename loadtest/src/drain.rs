//! Drain mode (`jobs --drain-worker COMMAND`): a backlog of queued jobs, timed from the moment
//! a worker starts on it. How a pool catches up after an outage or a burst, and the measure a
//! task queue's "N queued, then start the workers" benchmark gives.
//!
//! 1. The worker command runs once until the namespace's topology exists, then stops (SIGTERM),
//!    so that jobs can be queued with no consumer.
//! 2. Every job is queued (at most `--in-flight` submissions at once), each watched first.
//! 3. The worker starts again; the clock starts with it (its start-up included); each job's
//!    latency is from that start to its result. CPU per job covers the queueing and the drain.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dtee_schemas::protocol::Namespace;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::process::{Child, Command};

use super::{
    check_digest, connect_and_store_kernel, cpu, hot_blob, job_spec, mode_name, with_input,
};
use super::{Cli, JobsArgs, Report};

/// Starts `command` (through `sh -c exec …`) with the run's settings.
fn start_worker(cli: &Cli, namespace: &Namespace, command: &str) -> anyhow::Result<Child> {
    let mut worker = Command::new("sh");
    worker
        .arg("-c")
        .arg(format!("exec {command}"))
        .env("DTEE_AMQP_URL", &cli.connection.amqp_url)
        .env("DTEE_REDIS_URL", &cli.connection.redis_url)
        .env("DTEE_NAMESPACE", namespace.as_str())
        .kill_on_drop(true);
    let tls = &cli.connection.tls;
    for (name, file) in [
        ("DTEE_TLS_CA_FILE", &tls.tls_ca_file),
        ("DTEE_TLS_CERT_FILE", &tls.tls_cert_file),
        ("DTEE_TLS_KEY_FILE", &tls.tls_key_file),
    ] {
        if let Some(file) = file {
            worker.env(name, file);
        }
    }
    worker
        .spawn()
        .with_context(|| format!("starting the worker: {command}"))
}

/// Stops a worker started here: SIGTERM (it finishes what it holds), then waits.
async fn stop_worker(mut worker: Child) -> anyhow::Result<()> {
    if let Some(pid) = worker.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(60), worker.wait()).await {
        Ok(status) => {
            status?;
        }
        Err(_) => worker.kill().await?,
    }
    Ok(())
}

pub(super) async fn jobs_drained(
    cli: &Cli,
    namespace: &Namespace,
    args: &JobsArgs,
    command: &str,
) -> anyhow::Result<Report> {
    // 1. The topology, from a worker that then stops.
    let worker = start_worker(cli, namespace, command)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (client, digest) = loop {
        match connect_and_store_kernel(cli, namespace, args).await {
            Ok(connected) => break connected,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.context("the worker did not declare its topology")),
        }
    };
    // The exchange comes first, the queues and bindings then: a probe job (mandatory, so an
    // unroutable one is refused) is published until it is routed. Its answer is not awaited.
    let probe = job_spec(args, &digest, client.tenant(), rand::random(), 0);
    loop {
        match client.submit(&probe).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!("the worker did not declare its queues: {error}"),
        }
    }
    stop_worker(worker).await?;

    // 2. The backlog.
    let before = cpu::snapshot();
    let tenant = client.tenant().to_owned();
    let waiter = client.waiter().await?;
    let wait = crate::Wait::of(args);
    let run_id: u64 = rand::random();
    let sha256 = args.workload == "sha256";
    let hot = hot_blob(&client, args).await?;
    let waiter = &waiter;
    let client = &client;
    let hot = &hot;
    let digest = &digest;
    let tenant = &tenant;
    let watches: Vec<_> = stream::iter(0..args.jobs)
        .map(|idx| async move {
            let spec = job_spec(args, digest, tenant, run_id, idx);
            let (spec, expected) = with_input(client, spec, sha256, hot.clone(), idx).await?;
            let job = dtee_submitter::PreparedJob::new(&spec)?;
            let watch = crate::submit_watched(client, waiter, &job, wait).await?;
            anyhow::Ok((idx, watch, expected))
        })
        .buffer_unordered(args.in_flight)
        .try_collect()
        .await?;

    // 3. The drain, timed from the worker's start.
    let worker = start_worker(cli, namespace, command)?;
    let started = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let answers: Vec<(bool, Duration)> = stream::iter(watches)
        .map(|(idx, watch, expected)| async move {
            let result = watch.result(timeout).await?;
            check_digest(&result, expected.as_ref(), idx)?;
            if args.workload == "vadd" {
                crate::gpu::check(&result, args.gpu_elements, idx)?;
            }
            anyhow::Ok((result.succeeded(), started.elapsed()))
        })
        .buffer_unordered(usize::MAX)
        .try_collect()
        .await?;
    let failed = answers.iter().filter(|(succeeded, _)| !succeeded).count();
    let latencies: Vec<Duration> = answers.into_iter().map(|(_, latency)| latency).collect();
    let elapsed = started.elapsed();
    let after = cpu::snapshot();
    stop_worker(worker).await?;
    if failed > 0 {
        bail!("{failed} jobs failed");
    }
    let mut report = Report::new(mode_name(args, "/drain"), args.jobs, elapsed, latencies);
    report.cpu_us_per_job = cpu::per_job(&before, &after, report.count);
    Ok(report)
}
