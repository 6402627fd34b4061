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
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

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
    /// Prefetch of the baseline's consumer (match the worker's).
    #[arg(long, default_value = "16")]
    prefetch: u16,
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
}

/// One measurement.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    count: usize,
    in_flight: usize,
    seconds: f64,
    per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
}

impl Report {
    fn new(
        mode: &'static str,
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
            mode,
            count: latencies.len(),
            in_flight,
            seconds: elapsed.as_secs_f64(),
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            latency_ms_p50: pick(0.5),
            latency_ms_p90: pick(0.9),
            latency_ms_p99: pick(0.99),
            latency_ms_max: pick(1.0),
        }
    }
}

fn print_table(reports: &[&Report]) {
    println!(
        "{:<6} {:>8} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
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
            "{:<6} {:>8} {:>9} {:>9.2} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let namespace = Namespace::new(cli.connection.namespace.clone())?;
    let reports = match &cli.mode {
        Mode::Jobs(args) => vec![jobs(&cli, &namespace, args).await?],
        Mode::Amqp(args) => vec![amqp(&cli.connection.amqp_url, args).await?],
        Mode::Both(args) => {
            let baseline = amqp(
                &cli.connection.amqp_url,
                &AmqpArgs {
                    messages: args.jobs,
                    in_flight: args.in_flight,
                    prefetch: args.prefetch,
                    size: 300,
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
    let client = Arc::new(
        Client::connect(ClientConfig {
            amqp_url: cli.connection.amqp_url.clone(),
            redis_url: cli.connection.redis_url.clone(),
            namespace: namespace.clone(),
        })
        .await
        .context("connecting")?,
    );
    client
        .check_topology()
        .await
        .context("no dtee topology in this namespace: start a worker first")?;
    let kernel_path = if args.state_keys > 0 {
        args.kernel.with_file_name("increment.wasm")
    } else {
        args.kernel.clone()
    };
    let kernel = std::fs::read(&kernel_path)
        .with_context(|| format!("reading {}", kernel_path.display()))?;
    let tenant = client.tenant().to_owned();
    let (digest, _) = client.put_blob(&kernel).await?;
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
                let id = dtee_schemas::job_id(&spec).expect("job id");
                sent.lock().await.insert(id, Instant::now());
                let client = Arc::clone(&client);
                tasks.spawn(async move { client.submit(&spec).await });
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
    let mode = if args.state_keys > 0 { "state" } else { "jobs" };
    Ok(Report::new(mode, args.in_flight, elapsed, latencies))
}

async fn amqp(url: &str, args: &AmqpArgs) -> anyhow::Result<Report> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    let queue = format!("dtee-loadtest.baseline.{:08x}", rand::random::<u32>());
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await?;

    let consume = connection.create_channel().await?;
    consume
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let payload = vec![b'x'; args.size];
    // As in the jobs mode, at most `in_flight` messages are between publish and consumption.
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let started = Instant::now();
    let messages = args.messages;
    let consumer_task = {
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                let delivery = consumer.next().await.context("consumer closed")??;
                let sent_ns = delivery.properties.timestamp().unwrap_or(0);
                let now_ns = started.elapsed().as_nanos() as u64;
                latencies.push(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                slots.add_permits(1);
                // Ack off the hot path, one by one, as the worker does.
                let acker = delivery.acker;
                tokio::spawn(async move { acker.ack(BasicAckOptions::default()).await });
            }
            anyhow::Ok(latencies)
        })
    };
    let mut confirms = tokio::task::JoinSet::new();
    for _ in 0..args.messages {
        slots.acquire().await?.forget();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(started.elapsed().as_nanos() as u64);
        let confirm = publish
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await?;
        confirms.spawn(confirm);
        while let Some(done) = confirms.try_join_next() {
            done??;
        }
    }
    while let Some(done) = confirms.join_next().await {
        done??;
    }
    let latencies = consumer_task.await??;
    let elapsed = started.elapsed();
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(Report::new("amqp", args.in_flight, elapsed, latencies))
}
