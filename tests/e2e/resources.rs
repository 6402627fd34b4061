//! What one job can make a worker read: the total of its inputs, its buffer count and the size
//! of its kernel are refused from the blobs' lengths, before any blob is read (the worker's
//! `kernel_bytes_fetched` and `input_bytes_fetched` counters stay at zero), and a blob listed
//! many times is read once.

use dtee_schemas::job::JobSpec;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::{blob_input, output, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;
use dtee_worker::WorkerHandle;

const MIB: usize = 1 << 20;

/// An echo job reading "in" and `extra` more inputs, all naming `blob`.
fn job_listing(
    kernel: &dtee_schemas::Digest,
    blob: &dtee_schemas::Digest,
    extra: usize,
) -> JobSpec {
    let mut spec = wasm_job(kernel.clone(), "echo");
    spec.buffers = vec![
        blob_input("in", blob.clone()),
        output("out", 2 * MIB as u64),
    ];
    spec.buffers
        .extend((0..extra).map(|idx| blob_input(&format!("in{idx}"), blob.clone())));
    spec
}

/// The blob bytes the worker has read from Redis: (kernel, inputs).
fn fetched(worker: &WorkerHandle) -> (u64, u64) {
    (
        Stats::get(&worker.stats.kernel_bytes_fetched),
        Stats::get(&worker.stats.input_bytes_fetched),
    )
}

fn assert_refused(result: &dtee_schemas::result::JobResult, what: &str) {
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::ExcessiveResourceRequirements),
        "{what}: {:?}",
        result.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_listed_many_times_is_refused_from_its_length_and_read_once_when_allowed() {
    let env = TestEnv::new("inputs-total").await;
    let worker = env
        .start_worker_with(|config| config.max_input_bytes = 16 * MIB)
        .await;
    let kernel = env.put_kernel("echo").await;
    let (blob, _) = env.client.put_blob(&vec![7u8; MIB]).await.expect("blob");

    // 1 MiB listed 40 times is 40 MiB of inputs: refused before the blob is read.
    let result = env.run(&job_listing(&kernel, &blob, 39)).await;
    assert_refused(&result, "40 listings of 1 MiB");
    assert!(result
        .error
        .as_ref()
        .is_some_and(|e| e.message.contains("input")));
    assert_eq!(fetched(&worker).1, 0, "no input blob was read");
    assert_eq!(Stats::get(&worker.stats.executed), 0);

    // Listed 3 times (3 MiB, within the limit): it runs, and the blob is read once.
    let result = env.run(&job_listing(&kernel, &blob, 2)).await;
    assert!(result.succeeded(), "{:?}", result.error);
    assert_eq!(
        result
            .output("out")
            .expect("out")
            .bytes()
            .expect("base64")
            .len(),
        MIB
    );
    assert_eq!(fetched(&worker).1, MIB as u64, "one read of the blob");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_too_many_buffers_is_refused_before_any_blob_is_read() {
    let env = TestEnv::new("inputs-count").await;
    let worker = env.start_worker().await;
    let kernel = env.put_kernel("echo").await;
    let (blob, _) = env.client.put_blob(&vec![1u8; 1024]).await.expect("blob");

    // 300 listings of one small blob: far over the default of 64 buffers.
    let result = env.run(&job_listing(&kernel, &blob, 299)).await;
    assert_refused(&result, "301 buffers");
    assert!(result
        .error
        .as_ref()
        .is_some_and(|e| e.message.contains("buffers")));
    assert_eq!(
        fetched(&worker),
        (0, 0),
        "neither kernel nor inputs were read"
    );
    assert_eq!(Stats::get(&worker.stats.executed), 0);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_the_input_limit_is_refused_unread() {
    let env = TestEnv::new("inputs-big").await;
    let worker = env
        .start_worker_with(|config| config.max_input_bytes = MIB)
        .await;
    let kernel = env.put_kernel("echo").await;
    let (blob, _) = env
        .client
        .put_blob(&vec![3u8; 2 * MIB])
        .await
        .expect("blob");

    let result = env.run(&job_listing(&kernel, &blob, 0)).await;
    assert_refused(&result, "a 2 MiB input over a 1 MiB limit");
    assert_eq!(fetched(&worker).1, 0, "the blob was not read");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_over_the_kernel_limit_is_refused_unread() {
    let env = TestEnv::new("kernel-big").await;
    let worker = env
        .start_worker_with(|config| config.max_kernel_bytes = MIB)
        .await;
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.resize(2 * MIB, 0);
    let (kernel, _) = env.client.put_blob(&bytes).await.expect("kernel");
    let mut spec = wasm_job(kernel, "echo");
    spec.buffers = vec![output("out", 64)];

    let result = env.run(&spec).await;
    assert_refused(&result, "a 2 MiB kernel over a 1 MiB limit");
    assert!(result
        .error
        .as_ref()
        .is_some_and(|e| e.message.contains("kernel")));
    assert_eq!(fetched(&worker), (0, 0), "the kernel was not read");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
