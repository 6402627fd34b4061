//! Kernel compilation is bounded: a kernel that Cranelift takes long to compile fails
//! `kernel_compile_limit_exceeded` at the worker's compile deadline, and a cheap job queued
//! behind it is answered instead of waiting for the compilation.

use std::time::{Duration, Instant};

use dtee_schemas::{ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_submitter::{ResultWaiter, Watch};
use dtee_tests::{TestEnv, RESULT_TIMEOUT};
use dtee_worker::stats::Stats;

/// The worker's compile deadline in this test.
const COMPILE_TIMEOUT: Duration = Duration::from_millis(1000);

fn uleb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut n: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    uleb(content.len() as u64, out);
    out.extend_from_slice(content);
}

/// A valid kernel (exports `memory` and `run`) that is slow to compile: one function with
/// `locals` i32 locals and `blocks` `if` blocks, each setting one local under a condition read
/// from another, then every local read. `salt` makes the bytes (so the digest) distinct.
fn slow_to_compile(locals: u32, blocks: u32, salt: i64) -> Vec<u8> {
    let mut body = vec![1]; // one run of locals
    uleb(u64::from(locals), &mut body);
    body.push(0x7f);
    body.push(0x41); // i32.const salt; local.set 0
    sleb(salt, &mut body);
    body.push(0x21);
    uleb(0, &mut body);
    for k in 0..blocks {
        body.push(0x20); // local.get; if; i32.const k; local.set; end
        uleb(u64::from((k * 7 + 1) % locals), &mut body);
        body.extend_from_slice(&[0x04, 0x40, 0x41]);
        sleb(i64::from(k), &mut body);
        body.push(0x21);
        uleb(u64::from(k % locals), &mut body);
        body.push(0x0b);
    }
    body.extend_from_slice(&[0x20, 0x00]);
    for i in 1..locals {
        body.push(0x20); // local.get i; i32.add
        uleb(u64::from(i), &mut body);
        body.push(0x6a);
    }
    body.extend_from_slice(&[0x1a, 0x41, 0x00, 0x0b]); // drop; i32.const 0; end

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 1, 0x7f], &mut module);
    section(3, &[1, 0], &mut module);
    section(5, &[1, 0, 1], &mut module);
    let mut exports = vec![2, 6];
    exports.extend_from_slice(b"memory\x02\x00\x03run\x00\x00");
    section(7, &exports, &mut module);
    let mut code = vec![1];
    uleb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);
    module
}

/// Watches for `spec`'s result, then submits it.
async fn submit<'w>(env: &TestEnv, waiter: &'w ResultWaiter, spec: &JobSpec) -> Watch<'w> {
    let id = dtee_schemas::job_id(spec).expect("job id");
    let watch = waiter.watch_fresh(&id).await.expect("watch");
    env.client.submit(spec).await.expect("submit");
    watch
}

/// The result and when it came.
async fn answered(watch: Watch<'_>) -> (JobResult, Instant) {
    let result = watch.result(RESULT_TIMEOUT).await.expect("result");
    (result, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_compile_is_cut_at_its_deadline_and_does_not_hold_up_other_jobs() {
    let env = TestEnv::new("compile-limit").await;
    // Two deliveries in flight at most: two slow kernels fill the worker's prefetch.
    let worker = env
        .start_worker_with(|config| {
            config.prefetch = 2;
            config.compile.timeout = COMPILE_TIMEOUT;
        })
        .await;
    let mut slow = Vec::new();
    for salt in 0..2 {
        let bytes = slow_to_compile(500, 15_000, salt);
        let (digest, _) = env
            .client
            .put_blob(&bytes)
            .await
            .expect("storing the kernel");
        slow.push(wasm_job(digest, "run"));
    }
    let echo = env.put_kernel("echo").await;
    let mut cheap = wasm_job(echo, "echo");
    cheap.buffers = vec![inline_input("in", b"tenant b"), output("out", 64)];

    let waiter = env.client.waiter().await.expect("waiter");
    let started = Instant::now();
    let first = submit(&env, &waiter, &slow[0]).await;
    let second = submit(&env, &waiter, &slow[1]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cheap_submitted = Instant::now();
    let cheap = submit(&env, &waiter, &cheap).await;
    let ((first, first_at), (second, second_at), (cheap, cheap_at)) =
        tokio::join!(answered(first), answered(second), answered(cheap));
    waiter.close().await;

    let cheap_wait = cheap_at - cheap_submitted;
    let (first_took, second_took) = (first_at - started, second_at - started);
    eprintln!("cheap job answered after {cheap_wait:?}; slow kernels failed after {first_took:?} and {second_took:?}");
    assert!(cheap.error.is_none(), "{:?}", cheap.error);
    // Two slow kernels fill the prefetch, so the cheap job waits for the first to be answered,
    // and then for the one compile slot, which the second holds until its deadline: at most
    // two compile deadlines, plus a margin for a loaded test machine (the unbounded compiler
    // made it wait 41 s here).
    assert!(
        cheap_wait < 2 * COMPILE_TIMEOUT + Duration::from_secs(4),
        "{cheap_wait:?}"
    );
    for (result, took) in [(&first, first_took), (&second, second_took)] {
        assert_eq!(
            result.error_code(),
            Some(ErrorCode::KernelCompileLimitExceeded),
            "{:?}",
            result.error
        );
        // One compile slot (half of 2 kernel slots): the second waits for the first.
        assert!(
            took < 2 * COMPILE_TIMEOUT + Duration::from_secs(3),
            "{took:?}"
        );
    }

    // The worker keeps the failure for the digest and the tenant that met it: the same kernel
    // is not compiled again for that tenant.
    let mut again_spec = slow[0].clone();
    again_spec.nonce = Some("again".to_owned());
    let fetched = Stats::get(&worker.stats.kernel_bytes_fetched);
    let again = env.run(&again_spec).await;
    assert_eq!(
        again.error_code(),
        Some(ErrorCode::KernelCompileLimitExceeded)
    );
    // Answered from what the worker kept: the kernel was not even fetched again, let alone
    // compiled.
    assert_eq!(Stats::get(&worker.stats.kernel_bytes_fetched), fetched);
    // Nor is the refusal written where another tenant waiting on the same stateless job would
    // read it (the shared failure slot `<ns>:failure:<id>`), for the first run or the kept one.
    let mut redis = env.client.redis();
    for spec in [&slow[0], &slow[1], &again_spec] {
        let id = dtee_schemas::job_id(spec).unwrap();
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(env.namespace.failure_key(&id))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            stored.is_none(),
            "a compile refusal was cached for every tenant"
        );
    }

    // Not for another tenant: whether a compile meets the deadline depends on the worker's
    // load, which the first tenant may have caused, so the second compiles the kernel itself
    // (here it is slow whoever compiles it, so it fails again).
    let other = env.tenant_client("dtee-test-compile-other").await;
    let mut theirs = slow[0].clone();
    theirs.nonce = Some("another tenant".to_owned());
    let theirs = dtee_tests::run_as(&other, &theirs).await;
    assert_eq!(
        theirs.error_code(),
        Some(ErrorCode::KernelCompileLimitExceeded)
    );
    assert!(
        Stats::get(&worker.stats.kernel_bytes_fetched) > fetched,
        "the kernel was fetched and compiled again for another tenant"
    );
    other.close().await;

    worker.shutdown().await.expect("shutdown");
    env.cleanup().await;
}

/// `bytes` (a WebAssembly module) with a custom section naming `n` at its end: the same code
/// under another digest.
fn renamed_module(mut bytes: Vec<u8>, n: u32) -> Vec<u8> {
    let name = b"dtee-test";
    let payload = n.to_le_bytes();
    let mut section = Vec::new();
    uleb(name.len() as u64, &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    bytes.push(0); // a custom section
    uleb(section.len() as u64, &mut bytes);
    bytes.extend_from_slice(&section);
    bytes
}

/// The module cache is shared fairly: a tenant that streams new kernels through a worker evicts
/// its own compiled kernels once it holds more than another tenant, not the other tenant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_stream_of_kernels_leaves_a_tenants_compiled_kernel() {
    let env = TestEnv::new("compile-fair-cache").await;
    let worker = env
        .start_worker_with(|config| config.module_cache_size = 4)
        .await;
    let mut mine = wasm_job(env.put_kernel("echo").await, "noop");
    mine.nonce = Some("first".to_owned());
    let first = env.run(&mine).await;
    assert!(first.succeeded(), "{:?}", first.error);

    // Another tenant runs twelve kernels the worker has not seen, three times its cache.
    let flood = env.tenant_client("dtee-test-cache-flood").await;
    for n in 0..12 {
        let bytes = renamed_module(dtee_tests::kernel("echo"), n);
        let (digest, _) = flood.put_blob(&bytes).await.expect("storing a kernel");
        let result = dtee_tests::run_as(&flood, &wasm_job(digest, "noop")).await;
        assert!(result.succeeded(), "kernel {n}: {:?}", result.error);
    }
    flood.close().await;

    // The first tenant's kernel is still compiled: not even fetched again.
    let fetched = Stats::get(&worker.stats.kernel_bytes_fetched);
    mine.nonce = Some("again".to_owned());
    let again = env.run(&mine).await;
    assert!(again.succeeded(), "{:?}", again.error);
    assert_eq!(
        Stats::get(&worker.stats.kernel_bytes_fetched),
        fetched,
        "another tenant's stream of kernels flushed this tenant's compiled kernel"
    );
    worker.shutdown().await.expect("shutdown");
    env.cleanup().await;
}
