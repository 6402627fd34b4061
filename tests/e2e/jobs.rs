//! Jobs run end to end and their outputs are right; identical jobs run once.

use dtee_schemas::job::ScalarType;
use dtee_schemas::Digest;
use dtee_submitter::builder::{blob_input, inline_input, output, param, wasm_job};
use dtee_tests::{f32_bytes, f32_values, TestEnv};
use dtee_worker::stats::Stats;
use sha2::Digest as _;

fn matmul_reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_sha256_and_saxpy_outputs_match_rust_references() {
    let env = TestEnv::new("outputs").await;
    let worker = env.start_worker().await;

    // matmul: 17x23 times 23x11, values chosen to exercise rounding.
    let (m, n, k) = (17usize, 11usize, 23usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104_729 % 1000) as f32 - 500.0) / 91.0)
        .collect();
    let mut spec = wasm_job(env.put_kernel("matmul").await, "matmul");
    spec.buffers = vec![
        inline_input("a", &f32_bytes(&a)),
        inline_input("b", &f32_bytes(&b)),
        output("c", (m * n * 4) as u64),
    ];
    spec.params = vec![
        param("m", ScalarType::U32, m as f64),
        param("n", ScalarType::U32, n as f64),
        param("k", ScalarType::U32, k as f64),
    ];
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let c = f32_values(&result.output("c").expect("output c").bytes().unwrap());
    let expected = matmul_reference(&a, &b, m, n, k);
    assert_eq!(c.len(), expected.len());
    for (idx, (got, want)) in c.iter().zip(&expected).enumerate() {
        assert_eq!(got.to_bits(), want.to_bits(), "c[{idx}]: {got} != {want}");
    }

    // sha256 of a 1 MiB + 3 byte blob input (not a multiple of the block size), hashed in
    // WebAssembly and by the host's primitive (buffer_sha256), which charges far less fuel.
    let data: Vec<u8> = (0..(1 << 20) + 3).map(|i| (i * 31 % 251) as u8).collect();
    let (data_digest, _) = env.client.put_blob(&data).await.unwrap();
    let mut fuel = Vec::new();
    for kernel in ["sha256", "sha256_host"] {
        let mut spec = wasm_job(env.put_kernel(kernel).await, "sha256");
        spec.buffers = vec![
            blob_input("data", data_digest.clone()),
            output("digest", 32),
        ];
        let result = env.run(&spec).await;
        assert!(result.succeeded(), "{kernel}: {:?}", result.error);
        let digest = result.output("digest").unwrap();
        assert_eq!(
            digest.bytes().unwrap(),
            sha2::Sha256::digest(&data).to_vec(),
            "{kernel}"
        );
        assert_eq!(digest.digest, Digest::of(&digest.bytes().unwrap()));
        fuel.push(result.resources.unwrap().fuel_consumed);
    }
    assert!(
        fuel[1] * 10 < fuel[0],
        "host hashing charges less fuel: {fuel:?}"
    );

    // saxpy.
    let x = [1.5f32, -2.0, 3.25, 1e-3];
    let y = [10.0f32, 20.0, -30.0, 4.0];
    let mut spec = wasm_job(env.put_kernel("saxpy").await, "saxpy");
    spec.buffers = vec![
        inline_input("x", &f32_bytes(&x)),
        inline_input("y", &f32_bytes(&y)),
        output("out", 16),
    ];
    spec.params = vec![param("a", ScalarType::F32, 2.5)];
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let out = f32_values(&result.output("out").unwrap().bytes().unwrap());
    let expected: Vec<f32> = x.iter().zip(&y).map(|(x, y)| 2.5f32 * x + y).collect();
    assert_eq!(out, expected);
    let resources = result.resources.expect("resources reported");
    assert!(resources.fuel_consumed > 0 && resources.peak_memory_bytes >= 65536);

    assert_eq!(Stats::get(&worker.stats.executed), 4);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_job_is_answered_from_the_cache_not_run_again() {
    let env = TestEnv::new("dedup").await;
    // The usual order, prior answers first: with late answers (the default, tests/e2e/late.rs)
    // a short stateless repeat runs and its run is discarded.
    let worker = env
        .start_worker_with(|config| config.late_answers = false)
        .await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"hello dtee"), output("out", 64)];

    let first = env.run(&spec).await;
    assert!(first.succeeded());
    assert_eq!(first.output("out").unwrap().bytes().unwrap(), b"hello dtee");
    let second = env.run(&spec).await;
    assert_eq!(
        second, first,
        "the republished result is the cached one, execution id included"
    );
    // The waiter may find the cached result before the worker handles the second delivery:
    // wait until the worker has answered it before reading its counters.
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 2).await;
    assert_eq!(Stats::get(&worker.stats.executed), 1, "the kernel ran once");
    assert_eq!(
        Stats::get(&worker.stats.deduplicated),
        1,
        "the second delivery hit the cache"
    );

    // A nonce makes it a new job, and a new execution.
    spec.nonce = Some("again".to_owned());
    let third = env.run(&spec).await;
    assert_ne!(third.job_id, first.job_id);
    assert_ne!(
        third.execution.unwrap().execution_id,
        first.execution.unwrap().execution_id
    );
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 3).await;
    assert_eq!(Stats::get(&worker.stats.executed), 2);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// PROTOCOL.md §10: a worker with two kernel slots that takes both deliveries of a job
/// submitted twice at once runs it once; the second delivery waits for the first's result and is
/// answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_a_job_delivered_twice_at_once_only_once() {
    let env = TestEnv::new("same-id").await;
    let worker = env.start_worker().await;
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    // Runs a few hundred milliseconds and fails with fuel_exhausted, a final failure that is
    // cached.
    spec.limits.timeout_ms = Some(60_000);
    spec.limits.fuel = Some(400_000_000);
    let body = serde_json::to_vec(&spec).unwrap();
    let id = dtee_schemas::parse_job(&body).unwrap().id;
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit_json(&body).await.unwrap();
    env.client.submit_json(&body).await.unwrap();
    let result = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        Some(dtee_schemas::ErrorCode::FuelExhausted)
    );
    // Both deliveries are answered.
    let deadline = std::time::Instant::now() + dtee_tests::RESULT_TIMEOUT;
    while Stats::get(&worker.stats.acked) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "both deliveries answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(Stats::get(&worker.stats.received), 2);
    assert_eq!(Stats::get(&worker.stats.executed), 1, "run once");
    assert_eq!(Stats::get(&worker.stats.deduplicated), 1);
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A hot input blob is read from Redis once per worker (the blob cache), and per job when the
/// cache is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_input_blob_is_fetched_once_per_worker() {
    let env = TestEnv::new("blob-cache").await;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 256) as u8).collect();
    let blob = env.client.put_blob(&data).await.unwrap().0;
    let kernel = env.put_kernel("sha256").await;
    for (cache_bytes, expected) in [(1 << 20, data.len()), (0, 3 * data.len())] {
        let worker = env
            .start_worker_with(|c| c.blob_cache_bytes = cache_bytes)
            .await;
        for run in 0..3 {
            let mut spec = wasm_job(kernel.clone(), "sha256");
            spec.buffers = vec![blob_input("data", blob.clone()), output("digest", 32)];
            spec.nonce = Some(format!("cache {cache_bytes} run {run}"));
            let result = env.run(&spec).await;
            assert_eq!(
                result.output("digest").unwrap().bytes().unwrap(),
                sha2::Sha256::digest(&data).to_vec()
            );
        }
        assert_eq!(
            Stats::get(&worker.stats.input_bytes_fetched),
            expected as u64,
            "cache of {cache_bytes} bytes"
        );
        worker.shutdown().await.unwrap();
    }
    env.cleanup().await;
}
