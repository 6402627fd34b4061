//! Bad kernels and bad messages get their error codes; invalid messages are acked, not
//! redelivered forever.

use dtee_schemas::{Digest, ErrorCode};
use dtee_submitter::builder::{blob_input, inline_input, output, wasm_job};
use dtee_tests::{TestEnv, RESULT_TIMEOUT};
use dtee_worker::stats::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_problems_have_their_codes() {
    let env = TestEnv::new("kernels").await;
    let worker = env.start_worker().await;
    let mut redis = env.client.redis();

    // A kernel that was never stored.
    let missing = Digest::of(b"never stored");
    let result = env.run(&wasm_job(missing, "run")).await;
    assert_eq!(result.error_code(), Some(ErrorCode::KernelNotFound));

    // Bytes stored under a digest they do not hash to.
    let claimed = Digest::of(b"the kernel the submitter meant");
    let _: () = redis::cmd("SET")
        .arg(env.namespace.blob_key(&claimed))
        .arg(dtee_tests::kernel("echo"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let result = env.run(&wasm_job(claimed, "noop")).await;
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::KernelHashMismatch),
        "{:?}",
        result.error
    );

    // Not WebAssembly at all.
    let (junk, _) = env.client.put_blob(b"#!/bin/sh\nrm -rf /\n").await.unwrap();
    assert_eq!(
        env.run(&wasm_job(junk, "run")).await.error_code(),
        Some(ErrorCode::KernelInvalid)
    );

    // An import the host does not provide; a missing entry point.
    let bad_import = env.put_kernel("badimport").await;
    assert_eq!(
        env.run(&wasm_job(bad_import, "run")).await.error_code(),
        Some(ErrorCode::KernelLinkFailed)
    );
    let echo = env.put_kernel("echo").await;
    assert_eq!(
        env.run(&wasm_job(echo.clone(), "nope")).await.error_code(),
        Some(ErrorCode::KernelLinkFailed)
    );

    // A trap, unbounded recursion, and a non-zero status.
    let trap = env.put_kernel("trap").await;
    assert_eq!(
        env.run(&wasm_job(trap, "boom")).await.error_code(),
        Some(ErrorCode::KernelTrapped)
    );
    let recurse = env.put_kernel("recurse").await;
    let result = env.run(&wasm_job(recurse, "deep")).await;
    assert_eq!(result.error_code(), Some(ErrorCode::KernelTrapped));
    assert!(
        result.error.unwrap().message.contains("stack"),
        "stack overflow is named"
    );
    let fail = env.put_kernel("fail").await;
    let result = env.run(&wasm_job(fail, "fail")).await;
    assert_eq!(result.error_code(), Some(ErrorCode::KernelFailed));
    assert!(result.error.unwrap().message.contains('7'));

    // A blob input that is missing.
    let mut spec = wasm_job(echo.clone(), "echo");
    spec.buffers = vec![
        blob_input("in", Digest::of(b"no such input")),
        output("out", 8),
    ];
    assert_eq!(
        env.run(&spec).await.error_code(),
        Some(ErrorCode::InputNotFound)
    );

    // After all that, a normal job.
    let mut spec = wasm_job(echo, "echo");
    spec.buffers = vec![inline_input("in", b"still here"), output("out", 64)];
    let result = env.run(&spec).await;
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap(),
        b"still here"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_fail_as_invalid_job_and_are_acked() {
    let env = TestEnv::new("invalid").await;
    let worker = env.start_worker().await;
    let echo = env.put_kernel("echo").await;
    let good = serde_json::to_value(wasm_job(echo, "echo")).unwrap();
    let mut unknown_field = good.clone();
    unknown_field["colour"] = "red".into();
    let mut wrong_version = good.clone();
    wrong_version["schema"] = "dtee.job/v9".into();
    let mut bad_digest = good.clone();
    bad_digest["kernel"]["digest"] = "sha256:1234".into();
    let mut missing_kernel = good.clone();
    missing_kernel.as_object_mut().unwrap().remove("kernel");
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"schema":"dtee.job/v1","schema":"dtee.job/v1"}"#.to_vec(),
        serde_json::to_vec(&unknown_field).unwrap(),
        serde_json::to_vec(&wrong_version).unwrap(),
        serde_json::to_vec(&bad_digest).unwrap(),
        serde_json::to_vec(&missing_kernel).unwrap(),
    ];
    let waiter = env.client.waiter().await.unwrap();
    for (idx, body) in bodies.iter().enumerate() {
        // The submitter waits on the message id it sent; the worker answers under it.
        let message_id = Digest::of(format!("invalid message {idx}").as_bytes());
        let watch = waiter.watch(&message_id).await.unwrap();
        env.client
            .publish_job(body, message_id.as_str(), "wasm")
            .await
            .unwrap();
        let result = watch.result(RESULT_TIMEOUT).await.unwrap();
        assert_eq!(result.job_id, message_id);
        assert_eq!(
            result.error_code(),
            Some(ErrorCode::InvalidJob),
            "body {idx}"
        );
        assert!(!result.error.unwrap().message.is_empty());
    }
    waiter.close().await;
    // Every delivery was acked exactly once: after a graceful stop nothing is left or
    // returned to the queue, and nothing was redelivered.
    let stats = std::sync::Arc::clone(&worker.stats);
    worker.shutdown().await.unwrap();
    assert_eq!(Stats::get(&stats.received), bodies.len() as u64);
    assert_eq!(Stats::get(&stats.acked), bodies.len() as u64);
    assert_eq!(env.queue_depth("wasm").await, 0);
    // Invalid jobs are never cached under the id they claimed.
    let cached = env
        .client
        .cached_result(&Digest::of(b"invalid message 0"))
        .await
        .unwrap();
    assert!(cached.is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_may_not_recur_is_not_cached_as_the_answer() {
    let env = TestEnv::new("not-final").await;
    let worker = env.start_worker().await;
    let echo_bytes = dtee_tests::kernel("echo");
    let mut spec = wasm_job(Digest::of(&echo_bytes), "echo");
    spec.buffers = vec![inline_input("in", b"late kernel"), output("out", 64)];

    // Submitted before its kernel is stored: kernel_not_found, which is not final.
    let first = env.run(&spec).await;
    assert_eq!(first.error_code(), Some(ErrorCode::KernelNotFound));
    assert!(!ErrorCode::KernelNotFound.is_final());
    assert!(
        env.client
            .cached_result(&first.job_id)
            .await
            .unwrap()
            .is_none(),
        "not in the result cache"
    );
    // A plain wait (say `dtee wait` after `dtee submit`) still finds that answer.
    let waiter = env.client.waiter().await.unwrap();
    let found = waiter.wait(&first.job_id, RESULT_TIMEOUT).await.unwrap();
    assert_eq!(found.error_code(), Some(ErrorCode::KernelNotFound));
    waiter.close().await;

    // Once the kernel is stored, the same job runs and its success is cached.
    env.client.put_blob(&echo_bytes).await.unwrap();
    let second = env.run(&spec).await;
    assert_eq!(second.job_id, first.job_id);
    assert!(second.succeeded(), "{:?}", second.error);
    assert_eq!(
        second.output("out").unwrap().bytes().unwrap(),
        b"late kernel"
    );
    assert_eq!(
        env.client.cached_result(&first.job_id).await.unwrap(),
        Some(second)
    );
    assert_eq!(Stats::get(&worker.stats.executed), 1);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_answered_cancelled_without_running() {
    let env = TestEnv::new("cancel").await;
    // Declare the queue, then stop: the job waits in the queue while it is cancelled.
    env.start_worker().await.shutdown().await.unwrap();
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"never"), output("out", 8)];
    let waiter = env.client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();
    env.client
        .cancel(&id, std::time::Duration::from_secs(60))
        .await
        .unwrap();

    // A worker started afterwards (the revocation lives in Redis, not in any worker).
    let worker = env.start_worker().await;
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(result.error_code(), Some(ErrorCode::Cancelled));
    assert_eq!(Stats::get(&worker.stats.executed), 0, "not run");
    waiter.close().await;
    // A job answered before its cancellation keeps its answer.
    spec.nonce = Some("done first".to_owned());
    let done = env.run(&spec).await;
    assert!(done.succeeded());
    env.client
        .cancel(&done.job_id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(env.run(&spec).await, done);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
