//! The device host's boundaries, through the STAND-IN device (no GPU on these machines; see
//! `worker/src/backend/gpu/stand_in.rs`): what a kernel prints cannot reach the worker as an
//! answer, a kernel's own overruns never take the device away from other tenants, and a host
//! does not outlive its worker.

use std::time::{Duration, Instant};

use dtee_schemas::job::Limits;
use dtee_schemas::ErrorCode;
use dtee_tests::run_as;
use dtee_tests::TestEnv;

use crate::gpu::{stand_in_job, stand_in_worker_with_metrics as worker};

/// The stand-in device's host restarts so far, from the worker's metrics.
async fn host_restarts(addr: std::net::SocketAddr) -> u64 {
    let (_, metrics) = dtee_tests::http_get(addr, "/metrics").await;
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("dtee_device_host_restarts_total{target=\"stand-in\",device=\"0\"} ")
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no restart count in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_kernel_prints_can_neither_break_nor_forge_the_hosts_answer() {
    let env = TestEnv::new("gpu-print").await;
    let (worker, addr) = worker(&env).await;
    // The `print` kernel writes its input to the host's standard output, as a device-side
    // printf reaches it, then copies it to `out`. The input is a whole answer frame to the
    // host's first request, claiming `out` holds FORGED…: before the protocol had its own
    // descriptor, the worker read it as the answer.
    let forged = serde_json::json!({"id": 1, "body": {"failure": null, "sticky": false,
        "device_bytes": 0, "kernel_time_us": 0, "copied_bytes": 0, "copy_time_us": 0,
        "payloads": [32]}})
    .to_string();
    let mut frame = (forged.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(forged.as_bytes());
    frame.extend_from_slice(&[b'F'; 32]);
    let mut spec = stand_in_job(&env, "print", "printed").await;
    spec.buffers[0] = dtee_submitter::builder::inline_input("in", &frame);
    let result = run_as(&env.client, &spec).await;
    assert!(result.succeeded(), "{result:?}");
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap(),
        frame[..32],
        "the kernel's own copy, not the printed frame"
    );
    let after = run_as(&env.client, &stand_in_job(&env, "copy", "after").await).await;
    assert_eq!(
        after.output("out").unwrap().bytes().unwrap()[..5],
        *b"after"
    );
    assert_eq!(host_restarts(addr).await, 0, "the host never broke");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A stand-in kernel that never ends, submitted by `client` with a 100 ms deadline: answered
/// `execution_timeout`.
async fn overrun(env: &TestEnv, client: &dtee_submitter::Client, nonce: &str) {
    let mut spin = stand_in_job(env, "sleep", nonce).await;
    spin.limits = Limits {
        timeout_ms: Some(100),
        ..Limits::default()
    };
    let result = run_as(client, &spin).await;
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::ExecutionTimeout),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_that_overrun_their_deadline_never_take_the_device_away() {
    // Three tenants' kernels that run past their deadlines (deadlines the jobs chose), more than
    // MAX_RESTARTS of them within a minute: each job pays for its own fresh host, and none
    // counts against the device, whoever submitted it (host::MIN_TENANTS tenants' kernel
    // faults would give it up: tests/e2e/gpu.rs, with crashes).
    let env = TestEnv::new("gpu-overruns").await;
    let (worker, addr) = worker(&env).await;
    let others = [
        env.tenant_client("dtee-test-gpu-overrun").await,
        env.tenant_client("dtee-test-gpu-overrun-third").await,
    ];
    let max = dtee_worker::backend::gpu::host::MAX_RESTARTS;
    const { assert!(dtee_worker::backend::gpu::host::MIN_TENANTS <= 3) };
    for attempt in 0..max + 3 {
        let client = match attempt % 3 {
            0 => &env.client,
            n => &others[n - 1],
        };
        overrun(&env, client, &format!("overrun {attempt}")).await;
    }
    let started = Instant::now();
    for client in [&env.client, &others[0], &others[1]] {
        let served = run_as(client, &stand_in_job(&env, "copy", "still up").await).await;
        assert!(served.succeeded(), "{served:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(host_restarts(addr).await, max as u64 + 3);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_host_does_not_outlive_its_worker() {
    // A worker process whose host runs a kernel that never ends (its deadline a minute away);
    // SIGKILL the worker, so that no clean-up runs: the host must exit, not keep the device.
    let env = TestEnv::new("gpu-orphan").await;
    let mut spin = stand_in_job(&env, "sleep", "orphaned").await;
    spin.limits = Limits {
        timeout_ms: Some(60_000),
        ..Limits::default()
    };
    // Declare the topology, so that the job can be queued before the worker process starts.
    env.start_worker_with(|c| c.targets = vec!["wasm".to_owned(), "stand-in".to_owned()])
        .await
        .shutdown()
        .await
        .unwrap();
    env.client.submit(&spin).await.unwrap();
    let mut worker = KillOnDrop(
        std::process::Command::new(dtee_tests::binary("dtee-worker"))
            .env("DTEE_NAMESPACE", env.namespace.as_str())
            .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
            .env("DTEE_REDIS_URL", dtee_tests::redis_url())
            .env("DTEE_TARGETS", "wasm,stand-in")
            .env("DTEE_LOG", "warn")
            // Nothing of the worker's (nor of its host's) holds the test's output open.
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting dtee-worker"),
    );
    // Taken from the queue, then a moment for the host to start the kernel.
    let started = Instant::now();
    while env.queue_depth("stand-in").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job was taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let host = children(worker.0.id())
        .into_iter()
        .next()
        .expect("the worker runs a device host");
    worker.0.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix.
    worker.0.wait().unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !std::path::Path::new(&format!("/proc/{host}")).exists() || is_zombie(host) {
            gone = true;
            break;
        }
    }
    if !gone {
        let _ = std::process::Command::new("kill")
            .args(["-9", &host.to_string()])
            .status();
    }
    assert!(gone, "device host {host} outlived its worker by 5 s");
    env.cleanup().await;
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failing test leaves no
/// worker behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of `pid`'s children, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Whether `pid` has exited and waits only to be reaped (its parent, the killed worker, is
/// gone, so init reaps it soon).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// The process id of the device host that ran a stand-in `pid` job of `client`'s.
async fn host_pid(env: &TestEnv, client: &dtee_submitter::Client, nonce: &str) -> u32 {
    let result = run_as(client, &stand_in_job(env, "pid", nonce).await).await;
    assert!(result.succeeded(), "{result:?}");
    let out = result.output("out").unwrap().bytes().unwrap();
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

/// A job of another tenant than the last gets a fresh device host, and so a fresh GPU context:
/// memory that a driver reuses between launches in one context (a kernel's local memory, AMD's
/// scratch) is not cleared, and the next tenant's kernel could read it. Changes of tenant are
/// not failures: more of them than MAX_RESTARTS within a minute leave the device up and are
/// not counted as restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_gpu_job_runs_in_a_fresh_device_host() {
    let env = TestEnv::new("gpu-fresh-host").await;
    let (worker, addr) = worker(&env).await;
    let bob = env.tenant_client("dtee-test-bob").await;
    let first = host_pid(&env, &env.client, "a-1").await;
    assert_eq!(
        host_pid(&env, &env.client, "a-2").await,
        first,
        "one tenant's jobs share a host"
    );
    let mut last = first;
    let mut seen = std::collections::HashSet::from([first]);
    for round in 0..6 {
        for (client, who) in [(&bob, "b"), (&env.client, "a")] {
            let pid = host_pid(&env, client, &format!("{who}-round-{round}")).await;
            assert_ne!(
                pid, last,
                "{who}'s job in round {round} ran in the last tenant's host"
            );
            assert!(seen.insert(pid), "a host ran for two tenants");
            last = pid;
        }
    }
    assert_eq!(
        host_restarts(addr).await,
        0,
        "changes of tenant are no restarts"
    );
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// With `DTEE_GPU_SHARE_HOST`, tenants that trust each other share a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_a_device_host_when_the_worker_is_told_to() {
    let env = TestEnv::new("gpu-shared-host").await;
    let worker = env
        .start_worker_with(|c| {
            c.targets = vec!["wasm".to_owned(), "stand-in".to_owned()];
            c.gpu_share_host = true;
        })
        .await;
    let bob = env.tenant_client("dtee-test-bob").await;
    let first = host_pid(&env, &env.client, "a").await;
    assert_eq!(host_pid(&env, &bob, "b").await, first);
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
