//! A wasm job chooses its profile: `deterministic` (the default: fuel metered, canonical NaN
//! bit patterns) or `fast` (the deadline only). Through a real worker, its compiler child and
//! RabbitMQ: each profile's result, its resources, and the signed statement naming it.

use dtee_schemas::job::WasmProfile;
use dtee_schemas::{Digest, ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{output, wasm_job};
use dtee_tests::TestEnv;

fn nan_job(kernel: &Digest, profile: Option<WasmProfile>) -> JobSpec {
    let mut spec = wasm_job(kernel.clone(), "nan");
    spec.buffers = vec![output("out", 4)];
    spec.kernel.profile = profile;
    spec
}

fn nan_bits(result: &JobResult) -> u32 {
    assert!(result.succeeded(), "{:?}", result.error);
    let bytes = result.output("out").unwrap().bytes().unwrap();
    u32::from_le_bytes(bytes.try_into().unwrap())
}

/// The profile the signed execution statement names (absent: the default).
fn signed_profile(result: &JobResult) -> serde_json::Value {
    let envelope = &result.attestation.as_ref().expect("attested").envelope;
    let statement: serde_json::Value =
        serde_json::from_slice(&envelope.payload_bytes().unwrap()).unwrap();
    statement["kernel"]["profile"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_runs_unmetered_with_the_hosts_nan_bits_and_says_so_in_its_statement() {
    let env = TestEnv::new("profiles").await;
    let worker = env.start_worker().await;
    let kernel = env.put_kernel("nan").await;

    let default = env.run(&nan_job(&kernel, None)).await;
    let deterministic = env
        .run(&nan_job(&kernel, Some(WasmProfile::Deterministic)))
        .await;
    let fast = env.run(&nan_job(&kernel, Some(WasmProfile::Fast))).await;

    assert_eq!(nan_bits(&default), 0x7fc0_0000);
    assert_eq!(nan_bits(&deterministic), 0x7fc0_0000);
    assert!(f32::from_bits(nan_bits(&fast)).is_nan());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(nan_bits(&fast), 0xffc0_0000, "x86-64's own NaN");

    let fuel = |r: &JobResult| r.resources.as_ref().map(|u| u.fuel_consumed);
    assert!(fuel(&deterministic).unwrap() > 0);

    assert_eq!(signed_profile(&default), serde_json::Value::Null);
    assert_eq!(signed_profile(&deterministic), "deterministic");
    assert_eq!(signed_profile(&fast), "fast");

    // Three jobs, three ids: a profile is part of what a job is, so no profile's cached
    // answer is another's.
    let ids = [&default, &deterministic, &fast].map(|r| r.job_id.clone());
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);

    // The fast profile's deadline still stops a kernel that never returns (a deterministic
    // job would stop the same way: its default fuel lasts seconds).
    let mut spin = wasm_job(env.put_kernel("spin").await, "spin");
    spin.kernel.profile = Some(WasmProfile::Fast);
    spin.limits.timeout_ms = Some(100);
    let stopped = env.run(&spin).await;
    assert_eq!(
        stopped.error.as_ref().map(|e| e.code),
        Some(ErrorCode::ExecutionTimeout),
        "{:?}",
        stopped.error
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
