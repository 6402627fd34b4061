//! GPU jobs through the real worker, RabbitMQ and Redis, on a STAND-IN device (no GPU exists on
//! the CI machines): the worker's `stand-in` driver (built only with the `test-hooks` feature)
//! speaks the device-host protocol and runs fake "kernels" chosen by entry point: `copy`,
//! `sleep` (never returns), `crash` (the host aborts), `fault` (a sticky kernel fault, as CUDA
//! reports an illegal address). What is real: the job path for GPU formats, the device sizing
//! and limit checks, the supervisor that kills a host at the job's deadline and starts a fresh
//! one, the results and their attestation. The CUDA and HIP drivers themselves are exercised
//! without a device here (`a_worker_told_to_serve_a_gpu_it_lacks_refuses_to_start`) and on a
//! real NVIDIA GPU by tests/gpu/device-check.sh.

use std::time::{Duration, Instant};

use dtee_schemas::job::{AccessMode, KernelFormat, Launch, Limits, ScalarType};
use dtee_schemas::state::StateKey;
use dtee_schemas::{ErrorCode, JobSpec};
use dtee_submitter::builder::{inline_input, output, param, state, wasm_job};
use dtee_tests::{run_as, TestEnv};

/// A PTX kernel's bytes (the stand-in only checks the format; its entry decides what it does).
fn ptx() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kernels/ptx/vadd.ptx"
    ))
    .expect("kernels/ptx/vadd.ptx (kernels/build.sh)")
}

pub(crate) async fn stand_in_job(env: &TestEnv, entry: &str, nonce: &str) -> JobSpec {
    let (digest, _) = env.client.put_blob(&ptx()).await.unwrap();
    let mut spec = wasm_job(digest, entry);
    spec.kernel.format = KernelFormat::Ptx;
    spec.kernel.target = "stand-in".to_owned();
    spec.launch = Some(Launch {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        shared_mem_bytes: 0,
    });
    spec.buffers = vec![inline_input("in", nonce.as_bytes()), output("out", 32)];
    spec
}

async fn stand_in_worker(env: &TestEnv) -> dtee_worker::WorkerHandle {
    env.start_worker_with(|c| c.targets = vec!["wasm".to_owned(), "stand-in".to_owned()])
        .await
}

/// A worker serving wasm and the stand-in, with its metrics served.
pub(crate) async fn stand_in_worker_with_metrics(
    env: &TestEnv,
) -> (dtee_worker::WorkerHandle, std::net::SocketAddr) {
    let worker = env
        .start_worker_with(|c| {
            c.targets = vec!["wasm".to_owned(), "stand-in".to_owned()];
            c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    let addr = worker.metrics_addr.unwrap();
    (worker, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_job_runs_on_the_device_host_and_its_result_names_the_device() {
    let env = TestEnv::new("gpu-run").await;
    let worker = stand_in_worker(&env).await;
    let spec = stand_in_job(&env, "copy", "copied by the stand-in").await;
    let result = run_as(&env.client, &spec).await;
    assert!(result.succeeded(), "{result:?}");
    let out = result.output("out").unwrap().bytes().unwrap();
    let mut expected = b"copied by the stand-in".to_vec();
    expected.resize(32, 0);
    assert_eq!(out, expected, "a GPU output is its declared size");
    let execution = result.execution.as_ref().unwrap();
    assert_eq!(execution.backend, "stand-in");
    assert_eq!(execution.device.as_ref().unwrap().vendor, "stand-in");
    let resources = result.resources.unwrap();
    assert_eq!(resources.device_memory_bytes, 22 + 32);
    let (statement, _) = dtee_tests::statement_of(&result);
    let tcb = &statement.tcb;
    assert!(!tcb.gpu_in_tcb);
    assert_eq!(tcb.backend, "stand-in");
    assert_eq!(tcb.device.as_ref().unwrap().vendor, "stand-in");
    // Results are cached and deduplicated as for wasm.
    let again = run_as(&env.client, &spec).await;
    assert_eq!(
        again.execution.unwrap().execution_id,
        execution.execution_id
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_kills_a_host_past_its_deadline_and_survives_crashes_and_faults() {
    let env = TestEnv::new("gpu-supervisor").await;
    let worker = stand_in_worker(&env).await;

    // A kernel that never returns: killed at its 500 ms deadline.
    let mut spin = stand_in_job(&env, "sleep", "spin").await;
    spin.limits = Limits {
        timeout_ms: Some(500),
        ..Limits::default()
    };
    let started = Instant::now();
    let result = run_as(&env.client, &spin).await;
    let took = started.elapsed();
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::ExecutionTimeout),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let after = run_as(
        &env.client,
        &stand_in_job(&env, "copy", "after the kill").await,
    )
    .await;
    assert!(
        after.succeeded(),
        "a fresh host runs the next job: {after:?}"
    );

    // A host that dies: device_failed (not final), and the next job runs on a fresh host.
    let crash = run_as(&env.client, &stand_in_job(&env, "crash", "crash").await).await;
    assert_eq!(
        crash.error_code(),
        Some(ErrorCode::DeviceFailed),
        "{crash:?}"
    );
    assert!(!ErrorCode::DeviceFailed.is_final());
    let after = run_as(
        &env.client,
        &stand_in_job(&env, "copy", "after the crash").await,
    )
    .await;
    assert!(after.succeeded(), "{after:?}");

    // A kernel fault: the kernel's fault (final), the context is gone, the next job runs.
    let fault = run_as(&env.client, &stand_in_job(&env, "fault", "fault").await).await;
    assert_eq!(
        fault.error_code(),
        Some(ErrorCode::KernelTrapped),
        "{fault:?}"
    );
    let after = run_as(
        &env.client,
        &stand_in_job(&env, "copy", "after the fault").await,
    )
    .await;
    assert!(after.succeeded(), "{after:?}");

    // The wasm backend went on meanwhile, on the same worker.
    let mut wasm = wasm_job(env.put_kernel("echo").await, "echo");
    wasm.buffers = vec![inline_input("in", b"cpu"), output("out", 8)];
    assert!(run_as(&env.client, &wasm).await.succeeded());
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Runs `spec` and checks that it failed with `code` before any device memory was allocated;
/// returns the error's message.
async fn refused(env: &TestEnv, spec: &JobSpec, code: ErrorCode) -> String {
    let result = run_as(&env.client, spec).await;
    assert_eq!(result.error_code(), Some(code), "{result:?}");
    assert_eq!(result.resources.map_or(0, |r| r.device_memory_bytes), 0);
    result.error.unwrap().message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_limits_are_checked_before_the_device_is_asked() {
    let env = TestEnv::new("gpu-limits").await;
    let worker = stand_in_worker(&env).await;

    // Buffers over the job's memory limit.
    let mut big = stand_in_job(&env, "copy", "big").await;
    big.buffers = vec![inline_input("in", b"x"), output("out", 8 << 20)];
    big.limits = Limits {
        memory_bytes: Some(1 << 20),
        output_bytes: Some(16 << 20),
        ..Limits::default()
    };
    refused(&env, &big, ErrorCode::MemoryLimitExceeded).await;

    // An output larger than the output limit: a GPU kernel writes its whole declared buffer,
    // so the buffer is not shrunk to the limit (the kernel would write past it); the job is
    // refused before the device is asked.
    let mut wide = stand_in_job(&env, "fill", "wide").await;
    wide.buffers = vec![inline_input("in", b"x"), output("out", 2 << 20)];
    wide.limits = Limits {
        output_bytes: Some(1 << 20),
        ..Limits::default()
    };
    let message = refused(&env, &wide, ErrorCode::OutputLimitExceeded).await;
    assert!(
        message.contains("2097152 bytes"),
        "the whole declared buffer is counted: {message}"
    );

    // More shared memory per block than the device allows.
    let mut shared = stand_in_job(&env, "copy", "shared").await;
    shared.launch.as_mut().unwrap().shared_mem_bytes = 1 << 20;
    let message = refused(&env, &shared, ErrorCode::ExcessiveResourceRequirements).await;
    assert!(message.contains("shared memory"), "{message}");

    // A GPU format on a target that runs wasm.
    let mut wrong = stand_in_job(&env, "copy", "wrong").await;
    wrong.kernel.target = "wasm".to_owned();
    let result = run_as(&env.client, &wrong).await;
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::UnsupportedTarget),
        "{result:?}"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_job_commits_its_state_like_a_wasm_job() {
    let env = TestEnv::new("gpu-state").await;
    let worker = stand_in_worker(&env).await;
    let tenant = env.client.tenant().to_owned();
    let key = StateKey::parse(&format!("{tenant}/gpu/counter")).unwrap();
    let mut spec = stand_in_job(&env, "copy", "new state").await;
    let mut binding = state("s", &key.to_string(), AccessMode::ReadWrite, true);
    if let dtee_schemas::job::Buffer::State { max_size, .. } = &mut binding {
        *max_size = Some(16);
    }
    spec.buffers = vec![inline_input("in", b"new state"), binding];
    let result = run_as(&env.client, &spec).await;
    assert!(result.succeeded(), "{result:?}");
    let (value, version) = env.client.state_get(&key).await.unwrap();
    let mut expected = b"new state".to_vec();
    expected.resize(16, 0);
    assert_eq!(
        value.unwrap(),
        expected,
        "written back whole: max_size bytes"
    );
    assert_eq!(version, 1);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_serve_a_gpu_it_lacks_refuses_to_start() {
    let env = TestEnv::new("gpu-refuse").await;
    for target in ["cuda", "hip.gfx90a"] {
        let mut config = env.worker_config();
        config.targets = vec!["wasm".to_owned(), target.to_owned()];
        let error = dtee_worker::start(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("a worker started with {target} and no such device"));
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!(
                "DTEE_TARGETS names {target}, but this worker has no device for it"
            )),
            "{message}"
        );
    }
    env.cleanup().await;
}

/// Runs `dtee-worker exec` on `job` with the blobs of `blobs`.
fn exec(job: &serde_json::Value, blobs: &[&[u8]]) -> (std::process::Output, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("dtee-exec-{}", rand_suffix()));
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    for (index, blob) in blobs.iter().enumerate() {
        std::fs::write(dir.join("blobs").join(index.to_string()), blob).unwrap();
    }
    let path = dir.join("job.json");
    std::fs::write(&path, serde_json::to_vec(job).unwrap()).unwrap();
    let output = std::process::Command::new(dtee_tests::binary("dtee-worker"))
        .arg("exec")
        .arg(&path)
        .arg("--blobs")
        .arg(dir.join("blobs"))
        .env("DTEE_ATTESTATION", "software")
        .output()
        .unwrap();
    let result = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    std::fs::write(dir.join("result.json"), &output.stdout).unwrap();
    (output, result)
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn exec_runs_one_job_without_a_broker_and_its_result_verifies() {
    let echo = dtee_tests::kernel("echo");
    let job = serde_json::json!({
        "schema": "dtee.job/v1",
        "kernel": {"digest": dtee_schemas::Digest::of(&echo).to_string(), "format": "wasm", "entry": "echo", "target": "wasm"},
        "buffers": [
            {"kind": "input", "name": "in", "inline": "aGVsbG8="},
            {"kind": "output", "name": "out", "size": 16}
        ],
        "params": []
    });
    let (output, result) = exec(&job, &[&echo]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["outputs"][0]["data"], "aGVsbG8=");
    // The signed result verifies offline like any other.
    let file = std::env::temp_dir().join(format!("dtee-exec-result-{}.json", rand_suffix()));
    std::fs::write(&file, serde_json::to_vec(&result).unwrap()).unwrap();
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/policies/software-dev.toml"
    );
    let verified = std::process::Command::new(dtee_tests::binary("dtee"))
        .args(["verify", file.to_str().unwrap(), "--policy", policy])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // A GPU job through the stand-in device host; state bindings are refused.
    let ptx = ptx();
    let mut gpu = job.clone();
    gpu["kernel"] = serde_json::json!({"digest": dtee_schemas::Digest::of(&ptx).to_string(), "format": "ptx", "entry": "copy", "target": "stand-in"});
    gpu["launch"] = serde_json::json!({"grid": [1, 1, 1], "block": [32, 1, 1]});
    let (output, result) = exec(&gpu, &[&ptx]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(result["execution"]["backend"], "stand-in");
    assert_eq!(result["outputs"][0]["size"], 16);
    let mut stateful = job.clone();
    stateful["buffers"][1] =
        serde_json::json!({"kind": "state", "name": "s", "key": "alice/s", "mode": "read_only"});
    let (output, _) = exec(&stateful, &[&echo]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("state bindings are refused"));
}

/// Crash job `attempt`, submitted by the test's own tenant and `others` in turn (as many
/// tenants as it takes for a device's restarts to be the device's, `host::MIN_TENANTS`):
/// answered `device_failed`; returns the error's message.
async fn crash_in_turn(env: &TestEnv, others: &[dtee_submitter::Client], attempt: usize) -> String {
    let client = match attempt % (others.len() + 1) {
        0 => &env.client,
        n => &others[n - 1],
    };
    let crash = stand_in_job(env, "crash", &format!("crash {attempt}")).await;
    let result = run_as(client, &crash).await;
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::DeviceFailed),
        "{result:?}"
    );
    result.error.unwrap().message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_keeps_failing_is_given_up_and_its_queue_no_longer_consumed() {
    let env = TestEnv::new("gpu-give-up").await;
    let (worker, addr) = stand_in_worker_with_metrics(&env).await;
    let max = dtee_worker::backend::gpu::host::MAX_RESTARTS;
    // One tenant's crashing kernels, more than MAX_RESTARTS within a minute, cost that tenant
    // its jobs, not the device: another tenant's job still runs.
    let others = [
        env.tenant_client("dtee-test-gpu-other").await,
        env.tenant_client("dtee-test-gpu-third").await,
    ];
    let other = &others[0];
    for attempt in 0..max + 2 {
        let crash = stand_in_job(&env, "crash", &format!("one tenant {attempt}")).await;
        let result = run_as(&env.client, &crash).await;
        assert_eq!(result.error_code(), Some(ErrorCode::DeviceFailed));
        assert!(!result.error.unwrap().message.contains("given up"));
    }
    let served = run_as(other, &stand_in_job(&env, "copy", "still up").await).await;
    assert!(served.succeeded(), "{served:?}");
    // Crashes that three tenants' jobs meet (host::MIN_TENANTS) are the device's: past
    // MAX_RESTARTS within a minute it is given up.
    let mut given_up = None;
    for attempt in 0..=max + 1 {
        let message = crash_in_turn(&env, &others, attempt).await;
        if message.contains("given up") {
            given_up = Some(attempt);
            break;
        }
    }
    let attempt = given_up.expect("the device was never given up");
    println!("given up at crash job {attempt} of two tenants");
    let (status, body) = dtee_tests::http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("GPU target stand-in is not served"), "{body}");
    let (_, metrics) = dtee_tests::http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("dtee_device_up{target=\"stand-in\",device=\"0\"} 0"),
        "{metrics}"
    );
    assert!(
        // Every job after a crash started a fresh host: max + 1 in the first round, one for
        // the other tenant's job, one per crash job of the second round after its first.
        metrics.contains(&format!(
            "dtee_device_host_restarts_total{{target=\"stand-in\",device=\"0\"}} {}",
            max + 2 + attempt
        )),
        "{metrics}"
    );
    // Within one progress check (5 s) the worker stops consuming the stand-in's queues: a job
    // for it waits in its queue for a worker that can run it, while wasm jobs are still served.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let waiting = stand_in_job(&env, "copy", "waits").await;
    env.client.submit(&waiting).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.queue_depth("stand-in").await,
        1,
        "the job waits in its queue"
    );
    let mut wasm = wasm_job(env.put_kernel("echo").await, "echo");
    wasm.buffers = vec![inline_input("in", b"cpu"), output("out", 8)];
    assert!(run_as(&env.client, &wasm).await.succeeded());
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_a_target_runs_jobs_and_one_given_up_leaves_the_others_serving() {
    let env = TestEnv::new("gpu-devices").await;
    let worker = env
        .start_worker_with(|c| {
            c.targets = vec!["wasm".to_owned(), "stand-in".to_owned()];
            c.stand_in_devices = 2;
            c.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    let addr = worker.metrics_addr.unwrap();
    // Two jobs whose kernels take 1.5 s each, submitted together: each gets its own device,
    // and their kernel runs overlap (each run's interval ends at `finished_at` and lasts its
    // wall time).
    let mut naps = Vec::new();
    for nonce in ["nap a", "nap b"] {
        let mut spec = stand_in_job(&env, "nap", nonce).await;
        spec.params = vec![param("ms", ScalarType::U32, 1500.0)];
        naps.push(spec);
    }
    let (a, b) = tokio::join!(run_as(&env.client, &naps[0]), run_as(&env.client, &naps[1]));
    let interval = |result: &dtee_schemas::JobResult| {
        assert!(result.succeeded(), "{result:?}");
        let execution = result.execution.as_ref().unwrap();
        let end = execution.finished_at_unix_ms;
        let start = end - result.resources.unwrap().wall_time_us / 1000;
        let device = execution.device.clone().unwrap();
        let (statement, _) = dtee_tests::statement_of(result);
        assert_eq!(
            statement.tcb.device.unwrap(),
            device,
            "the statement names it"
        );
        (start, end, device.ordinal.unwrap())
    };
    let ((start_a, end_a, device_a), (start_b, end_b, device_b)) = (interval(&a), interval(&b));
    assert_ne!(device_a, device_b, "each job ran on its own device");
    assert!(
        start_a < end_b && start_b < end_a,
        "the two kernels ran at the same time: {start_a}..{end_a} and {start_b}..{end_b}"
    );
    // Crashes give one device up (a job takes the first idle device that is not given up, so
    // they all land on the same one); the job that finds it given up runs on the other device,
    // which goes on serving the target, and the worker stays ready.
    let down = |metrics: &str| {
        metrics
            .lines()
            .filter(|line| line.starts_with("dtee_device_up{") && line.ends_with(" 0"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let others = [
        env.tenant_client("dtee-test-gpu-devices-other").await,
        env.tenant_client("dtee-test-gpu-devices-third").await,
    ];
    let mut given_up = Vec::new();
    for attempt in 0..2 * (dtee_worker::backend::gpu::host::MAX_RESTARTS + 1) {
        // Three tenants' jobs crash it: the device's fault, not one tenant's.
        let message = crash_in_turn(&env, &others, attempt).await;
        assert!(!message.contains("given up"), "{message}");
        given_up = down(&dtee_tests::http_get(addr, "/metrics").await.1);
        if !given_up.is_empty() {
            println!("a device was given up after crash job {attempt}: {given_up:?}");
            break;
        }
    }
    assert_eq!(given_up.len(), 1, "one device was given up: {given_up:?}");
    let after = run_as(
        &env.client,
        &stand_in_job(&env, "copy", "still served").await,
    )
    .await;
    assert!(after.succeeded(), "{after:?}");
    let ordinal = after.execution.unwrap().device.unwrap().ordinal.unwrap();
    assert!(
        !given_up[0].contains(&format!("device=\"{ordinal}\"")),
        "the job ran on the device still up (device {ordinal}), not on {given_up:?}"
    );
    let (status, body) = dtee_tests::http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "one device up serves the target: {body}");
    let (_, metrics) = dtee_tests::http_get(addr, "/metrics").await;
    let up = metrics
        .lines()
        .filter(|line| line.starts_with("dtee_device_up{"))
        .count();
    assert_eq!(up, 2, "{metrics}");
    assert_eq!(down(&metrics), given_up);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
