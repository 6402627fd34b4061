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
    let mut null_nonce = good.clone();
    null_nonce["nonce"] = serde_json::Value::Null;
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"schema":"dtee.job/v1","schema":"dtee.job/v1"}"#.to_vec(),
        serde_json::to_vec(&unknown_field).unwrap(),
        serde_json::to_vec(&wrong_version).unwrap(),
        serde_json::to_vec(&bad_digest).unwrap(),
        serde_json::to_vec(&missing_kernel).unwrap(),
        // PROTOCOL.md §2: null is refused, not read as absent.
        serde_json::to_vec(&null_nonce).unwrap(),
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
        let message = result.error.unwrap().message;
        assert!(!message.is_empty());
        if idx == bodies.len() - 1 {
            assert!(message.contains("nonce is null"), "{message}");
        }
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

/// One hostile message: how to build its body, and the code it must get.
struct Hostile {
    what: &'static str,
    body: Vec<u8>,
    expected: ErrorCode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_five_hostile_jobs_get_their_codes_and_the_worker_survives() {
    use serde_json::{json, Value};
    let env = TestEnv::new("hostile-table").await;
    const MAX_JOB_BYTES: usize = 64 * 1024;
    let worker = env
        .start_worker_with(|c| c.max_job_bytes = MAX_JOB_BYTES)
        .await;
    let echo = env.put_kernel("echo").await;
    let tenant = env.client.tenant().to_owned();
    let digests = [
        ("spin", env.put_kernel("spin").await),
        ("recurse", env.put_kernel("recurse").await),
        ("membomb", env.put_kernel("membomb").await),
        ("flood", env.put_kernel("flood").await),
        ("badimport", env.put_kernel("badimport").await),
        ("trap", env.put_kernel("trap").await),
        ("fail", env.put_kernel("fail").await),
    ];
    let kernel = |name: &str| {
        digests
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .to_string()
    };
    let (junk, _) = env
        .client
        .put_blob(b"\x00asm but not really")
        .await
        .unwrap();
    let claimed = Digest::of(b"claimed kernel");
    let _: () = redis::cmd("SET")
        .arg(env.namespace.blob_key(&claimed))
        .arg(dtee_tests::kernel("echo"))
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let base = |entry: &str, digest: &str| {
        json!({
            "schema": "dtee.job/v1",
            "kernel": {"digest": digest, "format": "wasm", "entry": entry, "target": "wasm"},
            "buffers": [{"kind": "input", "name": "in", "inline": "aGk="}, {"kind": "output", "name": "out", "size": 64}]
        })
    };
    let echo_job = || base("echo", echo.as_str());
    let with = |mut value: Value, change: &dyn Fn(&mut Value)| {
        change(&mut value);
        serde_json::to_vec(&value).unwrap()
    };
    let cases = vec![
        Hostile {
            what: "invalid JSON",
            body: b"{\"schema\": ".to_vec(),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "empty body",
            body: vec![],
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "not an object",
            body: b"[1,2,3]".to_vec(),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "binary garbage",
            body: vec![0xff, 0xfe, 0x00, 0x13, 0x37],
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "wrong schema version",
            body: with(echo_job(), &|v| v["schema"] = json!("dtee.job/v2")),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "unknown field",
            body: with(echo_job(), &|v| v["priority"] = json!(9)),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "unknown buffer field",
            body: with(echo_job(), &|v| {
                v["buffers"][0]["path"] = json!("/etc/passwd")
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            // A job that is valid in every other way (it would succeed): only the worker's
            // DTEE_MAX_JOB_BYTES (64 KiB here) refuses it.
            what: "oversized message",
            body: with(echo_job(), &|v| {
                use base64::Engine as _;
                v["buffers"][0]["inline"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 80 * 1024]));
                v["buffers"][1]["size"] = json!(80 * 1024);
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "fuel asked of the fast profile, which meters none",
            body: with(echo_job(), &|v| {
                v["kernel"]["profile"] = json!("fast");
                v["limits"] = json!({"fuel": 1000});
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "bad base64",
            body: with(echo_job(), &|v| v["buffers"][0]["inline"] = json!("@@@")),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "malformed kernel digest",
            body: with(echo_job(), &|v| v["kernel"]["digest"] = json!("sha256:XYZ")),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "malformed blob digest",
            body: with(echo_job(), &|v| {
                v["buffers"][0] = json!({"kind": "input", "name": "in", "blob": "md5:00"})
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "duplicate JSON keys",
            body: br#"{"schema":"dtee.job/v1","schema":"dtee.job/v1"}"#.to_vec(),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "integer beyond 2^53",
            body: with(echo_job(), &|v| {
                v["limits"] = json!({"fuel": 9007199254740993u64})
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "zero limit",
            body: with(echo_job(), &|v| v["limits"] = json!({"timeout_ms": 0})),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "negative limit",
            body: with(echo_job(), &|v| v["limits"] = json!({"memory_bytes": -1})),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "huge limit",
            body: with(echo_job(), &|v| {
                v["limits"] = json!({"fuel": 9007199254740992u64})
            }),
            expected: ErrorCode::ExcessiveResourceRequirements,
        },
        Hostile {
            what: "duplicate buffer names",
            body: with(echo_job(), &|v| v["buffers"][1]["name"] = json!("in")),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "parameter out of range",
            body: with(echo_job(), &|v| {
                v["params"] = json!([{"name": "n", "type": "u32", "value": -5}])
            }),
            expected: ErrorCode::InvalidJob,
        },
        Hostile {
            what: "missing blob input",
            body: with(
                echo_job(),
                &|v| v["buffers"][0] = json!({"kind": "input", "name": "in", "blob": Digest::of(b"absent").to_string()}),
            ),
            expected: ErrorCode::InputNotFound,
        },
        Hostile {
            what: "missing kernel",
            body: serde_json::to_vec(&base("echo", Digest::of(b"no kernel").as_str())).unwrap(),
            expected: ErrorCode::KernelNotFound,
        },
        Hostile {
            what: "kernel hash mismatch",
            body: serde_json::to_vec(&base("echo", claimed.as_str())).unwrap(),
            expected: ErrorCode::KernelHashMismatch,
        },
        Hostile {
            what: "bytes that are not WebAssembly",
            body: serde_json::to_vec(&base("run", junk.as_str())).unwrap(),
            expected: ErrorCode::KernelInvalid,
        },
        Hostile {
            what: "unknown import",
            body: serde_json::to_vec(&base("run", &kernel("badimport"))).unwrap(),
            expected: ErrorCode::KernelLinkFailed,
        },
        Hostile {
            what: "missing entry point",
            body: serde_json::to_vec(&base("does_not_exist", echo.as_str())).unwrap(),
            expected: ErrorCode::KernelLinkFailed,
        },
        Hostile {
            what: "infinite loop (fuel)",
            body: with(base("spin", &kernel("spin")), &|v| {
                v["limits"] = json!({"fuel": 1000000})
            }),
            expected: ErrorCode::FuelExhausted,
        },
        Hostile {
            what: "infinite loop (clock)",
            body: with(base("spin", &kernel("spin")), &|v| {
                v["limits"] = json!({"fuel": 1000000000000u64, "timeout_ms": 200})
            }),
            expected: ErrorCode::ExecutionTimeout,
        },
        Hostile {
            what: "deep recursion",
            body: serde_json::to_vec(&base("deep", &kernel("recurse"))).unwrap(),
            expected: ErrorCode::KernelTrapped,
        },
        Hostile {
            what: "memory bomb",
            body: with(base("bomb", &kernel("membomb")), &|v| {
                v["limits"] = json!({"memory_bytes": 8388608})
            }),
            expected: ErrorCode::MemoryLimitExceeded,
        },
        Hostile {
            what: "oversized output",
            body: with(base("flood", &kernel("flood")), &|v| {
                v["limits"] = json!({"output_bytes": 1048576})
            }),
            expected: ErrorCode::OutputLimitExceeded,
        },
        Hostile {
            what: "trap",
            body: serde_json::to_vec(&base("boom", &kernel("trap"))).unwrap(),
            expected: ErrorCode::KernelTrapped,
        },
        Hostile {
            what: "non-zero status",
            body: serde_json::to_vec(&base("fail", &kernel("fail"))).unwrap(),
            expected: ErrorCode::KernelFailed,
        },
        Hostile {
            what: "state key outside the tenant",
            body: with(
                echo_job(),
                &|v| v["buffers"][0] = json!({"kind": "state", "name": "in", "key": "someone-else/secrets", "mode": "read_only"}),
            ),
            expected: ErrorCode::StateAccessDenied,
        },
        Hostile {
            what: "absent state that must exist",
            body: with(
                echo_job(),
                &|v| v["buffers"][0] = json!({"kind": "state", "name": "in", "key": format!("{tenant}/absent"), "mode": "read_only"}),
            ),
            expected: ErrorCode::StateBindingNotFound,
        },
        Hostile {
            what: "launch geometry on wasm",
            body: with(echo_job(), &|v| {
                v["launch"] = json!({"grid": [1, 1, 1], "block": [1, 1, 1]})
            }),
            expected: ErrorCode::InvalidJob,
        },
    ];
    assert!(cases.len() >= 25);
    let waiter = env.client.waiter().await.unwrap();
    for (idx, case) in cases.iter().enumerate() {
        // Parseable jobs are answered under their own id, others (and messages refused for
        // their size before they are parsed) under the message id.
        let message_id = Digest::of(format!("hostile {idx}").as_bytes());
        let id = dtee_schemas::parse_job(&case.body)
            .ok()
            .filter(|_| case.body.len() <= MAX_JOB_BYTES)
            .map_or(message_id.clone(), |parsed| parsed.id);
        let watch = waiter.watch_fresh(&id).await.unwrap();
        env.client
            .publish_job(&case.body, message_id.as_str(), "wasm")
            .await
            .unwrap();
        let result = watch.result(RESULT_TIMEOUT).await.unwrap();
        assert_eq!(
            result.error_code(),
            Some(case.expected),
            "{}: {:?}",
            case.what,
            result.error
        );
        if case.body.len() > MAX_JOB_BYTES {
            // Refused by the size the broker announced: the worker kept none of its body.
            let message = &result.error.as_ref().unwrap().message;
            assert!(
                message.contains(&format!("the job is {} bytes", case.body.len())),
                "{}: {message}",
                case.what
            );
        }
    }
    waiter.close().await;
    // Still serving.
    let mut spec = wasm_job(echo, "echo");
    spec.buffers = vec![inline_input("in", b"after the storm"), output("out", 64)];
    assert_eq!(
        env.run(&spec).await.output("out").unwrap().bytes().unwrap(),
        b"after the storm"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
