//! Graceful shutdown on SIGTERM: stop consuming, let in-flight jobs finish within the grace
//! period, return the rest to the queue, exit cleanly. Nothing is lost.

use std::process::{Command, Stdio};
use std::time::Duration;

use dtee_schemas::job::Limits;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::wasm_job;
use dtee_tests::{TestEnv, RESULT_TIMEOUT};

fn start_worker(env: &TestEnv, grace_secs: u32) -> std::process::Child {
    worker_command(env, grace_secs)
        .spawn()
        .expect("starting dtee-worker")
}

fn worker_command(env: &TestEnv, grace_secs: u32) -> Command {
    let mut command = Command::new(dtee_tests::binary("dtee-worker"));
    command
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_SHUTDOWN_GRACE_SECS", grace_secs.to_string())
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the worker process to exit, and checks that it exited with success.
async fn exits_cleanly(mut worker: std::process::Child) {
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit: {status}");
}

async fn until_depth(env: &TestEnv, depth: u32) {
    for _ in 0..600 {
        if env.queue_depth("wasm").await == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the queue never held {depth} ready messages");
}

fn spin_job(digest: dtee_schemas::Digest, timeout_ms: u64, nonce: &str) -> dtee_schemas::JobSpec {
    let mut spec = wasm_job(digest, "spin");
    spec.limits = Limits {
        timeout_ms: Some(timeout_ms),
        fuel: Some(1_000_000_000_000),
        ..Limits::default()
    };
    spec.nonce = Some(nonce.to_owned());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_jobs_finish_and_returns_the_rest() {
    let env = TestEnv::new("sigterm").await;
    env.start_worker().await.shutdown().await.unwrap(); // declare the topology
    let spin = env.put_kernel("spin").await;
    let waiter = env.client.waiter().await.unwrap();

    // A job that runs for 1.5 s, inside a 20 s grace period: it finishes and is answered.
    let spec = spin_job(spin.clone(), 1500, "finishes");
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();
    let worker = start_worker(&env, 20);
    until_depth(&env, 0).await; // delivered
    sigterm(&worker);
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::ExecutionTimeout),
        "the job ran to its own end"
    );
    exits_cleanly(worker).await;
    assert_eq!(env.queue_depth("wasm").await, 0, "answered and acked");

    // A job that would run for a minute, with a 1 s grace period: it goes back to the queue.
    let spec = spin_job(spin, 60_000, "returns");
    env.client.submit(&spec).await.unwrap();
    let worker = start_worker(&env, 1);
    until_depth(&env, 0).await;
    sigterm(&worker);
    exits_cleanly(worker).await;
    until_depth(&env, 1).await; // nothing lost: the unfinished job is back in the queue
    waiter.close().await;
    env.cleanup().await;
}

/// A "broker" that accepts TCP connections and never says a word; sends each accepted
/// connection's arrival on the returned channel.
fn black_hole() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, arrivals) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream); // kept open, silent
            if accepted.send(()).is_err() {
                return;
            }
        }
    });
    (addr, arrivals)
}

fn start_worker_against(env: &TestEnv, amqp_url: &str) -> std::process::Child {
    Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", amqp_url)
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting dtee-worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_start_that_hangs_on_a_silent_broker() {
    let env = TestEnv::new("sigterm-start").await;
    let (addr, arrivals) = black_hole();
    let worker = start_worker_against(&env, &format!("amqp://guest:guest@{addr}/%2f"));
    // The worker has connected and waits for a broker greeting that never comes.
    tokio::task::spawn_blocking(move || arrivals.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the worker connected to the silent broker");
    sigterm(&worker);
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} to end a hung start",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "clean exit: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_against_a_silent_broker_fails_after_the_set_up_timeout() {
    let env = TestEnv::new("silent-broker").await;
    let (addr, _arrivals) = black_hole();
    let worker = start_worker_against(&env, &format!("amqp://guest:guest@{addr}/%2f"));
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not complete the session set-up within 20 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_returns_its_running_job_though_later_jobs_were_acknowledged() {
    // Acks are sent together (`multiple`) where that is safe: never past a delivery still being
    // worked on. A job that runs for a minute is delivered first, 20 quick jobs after it; once
    // those are answered and acknowledged, the worker is killed: the long job, and only it,
    // must come back to the queue.
    let env = TestEnv::new("ack-kill").await;
    env.start_worker().await.shutdown().await.unwrap(); // declare the topology
    let spin = env.put_kernel("spin").await;
    let echo = env.put_kernel("echo").await;
    let waiter = env.client.waiter().await.unwrap();
    env.client
        .submit(&spin_job(spin, 60_000, "long"))
        .await
        .unwrap();
    let mut watches = Vec::new();
    for index in 0..20 {
        let mut spec = wasm_job(echo.clone(), "noop");
        spec.nonce = Some(format!("quick-{index}"));
        let id = dtee_schemas::job_id(&spec).unwrap();
        watches.push(waiter.watch_fresh(&id).await.unwrap());
        env.client.submit(&spec).await.unwrap();
    }
    until_depth(&env, 21).await;
    // Two kernel slots: the long job holds one, the quick jobs take the other.
    let mut worker = worker_command(&env, 30)
        .env("DTEE_CONCURRENCY", "2")
        .spawn()
        .expect("starting dtee-worker");
    for watch in watches {
        assert!(watch.result(RESULT_TIMEOUT).await.unwrap().succeeded());
    }
    // Longer than an ack may wait for a slower delivery below it (2 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill().unwrap();
    tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    until_depth(&env, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.queue_depth("wasm").await,
        1,
        "only the long job returns: the quick ones were acknowledged"
    );
    waiter.close().await;
    env.cleanup().await;
}

/// The worker measures its own binary at start-up (schemas/ATTESTATION.md) by streaming it
/// through the hash: a worker that has answered a job never held the binary whole, so its peak
/// resident memory stays below the binary's size (the debug build here is several hundred MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_measures_its_binary_without_holding_it_in_memory() {
    let env = TestEnv::new("measure-rss").await;
    env.start_worker().await.shutdown().await.unwrap(); // declare the topology
    let echo = env.put_kernel("echo").await;
    let worker = start_worker(&env, 1);
    let mut spec = wasm_job(echo, "noop");
    spec.nonce = Some("measured".to_owned());
    let result = env.run(&spec).await; // started, measured and serving
    assert!(result.succeeded(), "{result:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    let binary = std::fs::metadata(dtee_tests::binary("dtee-worker"))
        .unwrap()
        .len();
    assert!(
        peak_kib * 1024 < binary,
        "peak resident memory {peak_kib} KiB, binary {binary} bytes"
    );
    sigterm(&worker);
    exits_cleanly(worker).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_though_rabbitmq_and_redis_stop_answering() {
    // Both servers go silent under a running worker (connections open, nothing answered), as a
    // node does that hangs or is stopped without closing its sockets: each step of the
    // shutdown (cancelling the consumers, leaving the registry, the last acks, closing the
    // channel and the connection) gives up after a bound instead of waiting for ever.
    let env = TestEnv::new("silent-shutdown").await;
    let (worker, amqp, redis) = env.start_worker_behind_proxies(|_| {}).await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        dtee_submitter::builder::inline_input("in", b"hello"),
        dtee_submitter::builder::output("out", 16),
    ];
    assert!(env.run(&spec).await.succeeded());
    amqp.freeze();
    redis.freeze();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), worker.shutdown()).await;
    assert!(
        ended.is_ok(),
        "the shutdown still waited after {:?}",
        started.elapsed()
    );
    println!(
        "shutdown against silent servers took {:?}",
        started.elapsed()
    );
    amqp.cut();
    redis.cut();
    env.cleanup().await;
}
