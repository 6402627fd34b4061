//! Chaos: jobs (a quarter of them increments on shared counters) while worker processes are
//! killed with SIGKILL at random moments and restarted, and RabbitMQ and Redis are each
//! restarted once mid-run. Afterwards every job has exactly one terminal result, the counters
//! are exact, no queue holds a message, and every worker is alive and serving. Every result
//! message is collected in a durable queue of the test's own: each job received at least one,
//! every duplicate is identical to the terminal result, and the figures are printed.
//!
//! Its own test binary, so it runs alone (it restarts the shared RabbitMQ). Redis runs with
//! persistence (AOF, fsync always) on its own port, owned by the test. CI runs 600 jobs; the
//! full size is `DTEE_CHAOS_JOBS=5000 cargo test -p dtee-tests --test chaos -- --nocapture`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, output, state, wasm_job};
use dtee_submitter::{Client, ClientConfig};
use dtee_tests::TestEnv;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};

const WORKERS: usize = 3;
const COUNTERS: usize = 4;

/// A Redis with persistence, on a port of its own.
struct PersistentRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl PersistentRedis {
    fn start(port: u16, dir: &std::path::Path) -> PersistentRedis {
        std::fs::create_dir_all(dir).unwrap();
        PersistentRedis {
            port,
            dir: dir.to_owned(),
            child: Self::spawn(port, dir),
        }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops Redis (SIGTERM: it syncs the AOF) and starts it again on the same data.
    fn restart(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, &self.dir);
    }
}

impl Drop for PersistentRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_worker(env: &TestEnv, redis: &str, idx: usize, port: u16) -> Child {
    Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", redis)
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_STATE_MAX_ATTEMPTS", "1000")
        .env(
            "DTEE_WORKER_ID",
            format!("chaos-{idx}-{}", rand::random::<u32>()),
        )
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dtee-worker")
}

/// Messages delivered from `queue` and not yet acknowledged, as RabbitMQ counts them.
fn unacknowledged(queue: &str) -> u64 {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_unacknowledged"])
        .output()
        .expect("rabbitmqctl list_queues");
    let listing = String::from_utf8_lossy(&output.stdout);
    listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, count)| count.trim().parse().expect("a count"))
        .unwrap_or_else(|| panic!("queue {queue} not listed: {listing}"))
}

fn restart_rabbitmq() {
    for args in [
        &["stop_app"][..],
        &["start_app"][..],
        &["await_startup"][..],
    ] {
        let status =
            dtee_tests::blocking(|| Command::new("rabbitmqctl").arg("-q").args(args).status())
                .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {args:?}");
    }
}

async fn connect(env: &TestEnv) -> Client {
    loop {
        let config = ClientConfig {
            amqp_url: dtee_tests::amqp_url(),
            redis_url: env.redis_url.clone(),
            namespace: env.namespace.clone(),
            tls: dtee_tests::tls(),
        };
        match Client::connect(config).await {
            Ok(client) => return client,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_killed_workers_and_restarted_broker_and_redis() {
    let jobs: usize = std::env::var("DTEE_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("dtee-chaos-redis-{}", std::process::id()));
    let mut redis = PersistentRedis::start(free_port(), &dir);
    let mut env = TestEnv::with_redis("chaos", &redis.url()).await;
    env.start_worker().await.shutdown().await.unwrap(); // declare the topology
    let tenant = env.client.tenant().to_owned();
    let echo = env.put_kernel("echo").await;
    let increment = env.put_kernel("increment").await;
    let counters: Vec<String> = (0..COUNTERS)
        .map(|c| format!("{tenant}/chaos/{}/{c}", env.namespace))
        .collect();

    let mut specs: Vec<(JobSpec, Option<usize>)> = Vec::with_capacity(jobs);
    for idx in 0..jobs {
        if idx % 4 == 0 {
            let counter = idx / 4 % COUNTERS;
            let mut spec = wasm_job(increment.clone(), "increment");
            spec.buffers = vec![state(
                "counter",
                &counters[counter],
                AccessMode::ReadWrite,
                true,
            )];
            spec.nonce = Some(idx.to_string());
            specs.push((spec, Some(counter)));
        } else {
            let mut spec = wasm_job(echo.clone(), "echo");
            spec.buffers = vec![
                inline_input("in", format!("chaos {idx}").as_bytes()),
                output("out", 32),
            ];
            spec.nonce = Some(idx.to_string());
            specs.push((spec, None));
        }
    }
    let ids: Vec<Digest> = specs
        .iter()
        .map(|(spec, _)| dtee_schemas::job_id(spec).unwrap())
        .collect();

    // Every result message published during the run lands in a durable quorum queue of the
    // test's own (it survives the broker restart), to count results received and duplicates.
    let audit_queue = format!("{}.chaos-audit", env.namespace);
    declare_audit_queue(&env, &audit_queue).await;

    let redis_url = redis.url();
    let ports: Vec<u16> = (0..WORKERS).map(|_| free_port()).collect();
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|idx| start_worker(&env, &redis_url, idx, ports[idx]))
        .collect();
    let mut kills = 0usize;
    let mut self_exits = 0usize;
    let mut client = connect(&env).await;
    let mut next_kill = Instant::now() + Duration::from_millis(500);
    let (mut rabbit_restarted, mut redis_restarted) = (false, false);
    let mut submitted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // Submit in slices; resubmitting after a failed confirm is safe (same job id).
        let slice_end = (submitted + 50).min(jobs);
        while submitted < slice_end {
            match client.submit(&specs[submitted].0).await {
                Ok(_) => submitted += 1,
                Err(_) => client = connect(&env).await,
            }
        }
        for (idx, worker) in workers.iter_mut().enumerate() {
            // A supervisor's job: a worker that exited (say it could not start while RabbitMQ
            // was restarting) is started again, and counted.
            if worker.try_wait().unwrap().is_some() {
                self_exits += 1;
                *worker = start_worker(&env, &redis_url, idx, ports[idx]);
            }
        }
        if Instant::now() >= next_kill {
            let victim = rand::random_range(0..WORKERS);
            workers[victim].kill().unwrap();
            workers[victim].wait().unwrap();
            kills += 1;
            workers[victim] = start_worker(&env, &redis_url, victim, ports[victim]);
            next_kill = Instant::now() + Duration::from_millis(rand::random_range(500..1500));
        }
        if !rabbit_restarted && submitted >= jobs / 3 {
            restart_rabbitmq();
            rabbit_restarted = true;
            client = connect(&env).await;
        }
        if !redis_restarted && submitted >= 2 * jobs / 3 {
            redis.restart();
            redis_restarted = true;
        }
        // Done when every job has a final result.
        if submitted == jobs {
            let mut redis_conn = client.redis();
            let mut missing = 0;
            for chunk in ids.chunks(500) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|id| env.namespace.result_key(id))
                    .collect();
                match redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut redis_conn)
                    .await
                {
                    Ok(values) => missing += values.iter().filter(|v| v.is_none()).count(),
                    Err(_) => missing += chunk.len(),
                }
            }
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} jobs still have no final result after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(rabbit_restarted && redis_restarted);
    // The harness's own connection did not survive the broker restart.
    env.client = connect(&env).await;

    // Every job has one terminal result, and it is right.
    let mut redis_conn = client.redis();
    let mut succeeded_increments = [0u64; COUNTERS];
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for ((spec, counter), id) in specs.iter().zip(&ids) {
        let body: Vec<u8> = redis::cmd("GET")
            .arg(env.namespace.result_key(id))
            .query_async(&mut redis_conn)
            .await
            .unwrap();
        let result: JobResult = serde_json::from_slice(&body).unwrap();
        assert_eq!(&result.job_id, id);
        let label = result
            .error_code()
            .map_or("succeeded".to_owned(), |code| code.to_string());
        *outcomes.entry(label).or_default() += 1;
        match counter {
            Some(counter) if result.succeeded() => succeeded_increments[*counter] += 1,
            Some(_) => {}
            None if result.succeeded() => {
                let text =
                    String::from_utf8(result.output("out").unwrap().bytes().unwrap()).unwrap();
                assert_eq!(
                    Some(text.trim_start_matches("chaos ")),
                    spec.nonce.as_deref()
                );
            }
            None => {}
        }
    }
    // Nothing in this run is a reason to fail a job: crashes and restarts are retried and
    // redelivered, so every job succeeded (a dead_lettered or state_conflict here is a bug).
    assert_eq!(
        outcomes.get("succeeded"),
        Some(&jobs),
        "every job succeeds: {outcomes:?}"
    );
    // Counters are exact: one increment per increment job, none twice, none lost.
    let mut expected = [0u64; COUNTERS];
    for counter in specs.iter().filter_map(|(_, counter)| *counter) {
        expected[counter] += 1;
    }
    assert_eq!(succeeded_increments, expected);
    for (counter, key) in counters.iter().enumerate() {
        let (value, version) = client
            .state_get(&StateKey::parse(key).unwrap())
            .await
            .unwrap();
        let value = value.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
        assert_eq!(value, succeeded_increments[counter], "counter {counter}");
        assert_eq!(
            version, succeeded_increments[counter],
            "counter {counter} version"
        );
    }
    // No queue holds a message; every worker is alive and still serving.
    for _ in 0..200 {
        if env.queue_depth("wasm").await == 0
            && env.queue_depth_of(&env.namespace.dead_letter_queue()).await == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.queue_depth("wasm").await, 0);
    assert_eq!(
        env.queue_depth_of(&env.namespace.dead_letter_queue()).await,
        0
    );
    // Nor does any worker hold one unacknowledged (say a result it cannot publish).
    let mut queues = env.job_queues("wasm").await;
    queues.push(env.namespace.dead_letter_queue());
    for queue in queues {
        let mut held = unacknowledged(&queue);
        for _ in 0..100 {
            if held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = unacknowledged(&queue);
        }
        if held != 0 {
            let channels = Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "list_channels",
                    "name",
                    "consumer_count",
                    "messages_unacknowledged",
                ])
                .output()
                .unwrap();
            eprintln!("{}", String::from_utf8_lossy(&channels.stdout));
        }
        assert_eq!(held, 0, "{queue} has unacknowledged messages after 10 s");
    }
    // Every worker is alive, and ready: connected to RabbitMQ and Redis, and its consumer
    // loop running.
    for (worker, port) in workers.iter_mut().zip(&ports) {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "a worker died on its own"
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        dtee_tests::wait_for_status(addr, "/readyz", 200).await;
        assert_eq!(dtee_tests::http_get(addr, "/healthz").await.0, 200);
    }
    // Results received: every job at least one result message, and every message for a job
    // the same bytes as its one cached terminal result (redeliveries after a kill republish it).
    let messages = drain_audit_queue(&env, &audit_queue).await;
    let mut received: HashMap<Digest, usize> = HashMap::new();
    let mut republished = 0usize;
    for (body, cached) in &messages {
        let result: JobResult = serde_json::from_slice(body).unwrap();
        let terminal: Vec<u8> = redis::cmd("GET")
            .arg(env.namespace.result_key(&result.job_id))
            .query_async(&mut redis_conn)
            .await
            .unwrap();
        assert_eq!(
            body, &terminal,
            "a result message for {} differs from its terminal result",
            result.job_id
        );
        *received.entry(result.job_id).or_default() += 1;
        republished += usize::from(*cached);
    }
    let lost: Vec<&Digest> = ids.iter().filter(|id| !received.contains_key(id)).collect();
    assert!(
        lost.is_empty(),
        "{} jobs had no result message, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(
        received.len(),
        jobs,
        "result messages for jobs nobody submitted"
    );
    let duplicates = messages.len() - received.len();
    let mut spec = wasm_job(echo, "echo");
    spec.buffers = vec![inline_input("in", b"still serving"), output("out", 32)];
    let waiter = client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    client.submit(&spec).await.unwrap();
    assert!(watch
        .result(Duration::from_secs(60))
        .await
        .unwrap()
        .succeeded());
    waiter.close().await;
    println!(
        "chaos: {jobs} jobs ({} increments on {COUNTERS} counters), {WORKERS} workers, {kills} SIGKILLs, {self_exits} restarts after a failed start, RabbitMQ restarted 1x, Redis restarted 1x, outcomes {outcomes:?}, result messages received {} for {} jobs ({duplicates} duplicates, all identical to the terminal result; {republished} republished from the cache), counters {succeeded_increments:?}, {:.1} s",
        jobs.div_ceil(4),
        messages.len(),
        received.len(),
        started.elapsed().as_secs_f64()
    );
    for mut worker in workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    if let Ok(channel) = env.client.connection().create_channel().await {
        let _ = channel
            .queue_delete(audit_queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    env.cleanup().await;
}

async fn declare_audit_queue(env: &TestEnv, queue: &str) {
    let channel = env.client.connection().create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            env.namespace.results_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "declared".into()).await;
}

/// Every message in the audit queue, with whether it carried the `dtee-cached` header.
async fn drain_audit_queue(env: &TestEnv, queue: &str) -> Vec<(Vec<u8>, bool)> {
    let channel = env.client.connection().create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let cached = dtee_submitter::is_republished(&message.delivery.properties);
        messages.push((message.delivery.data, cached));
    }
    let _ = channel.close(200, "drained".into()).await;
    messages
}
