//! Prior answers read after a short run (`DTEE_LATE_ANSWERS`, worker/src/job/late.rs): a
//! short stateless job runs first and its cached result and revocation are read in the round
//! trip that caches its result; either one found there is still the answer.

use std::time::Duration;

use dtee_schemas::job::ScalarType;
use dtee_schemas::{ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, output, param, wasm_job};
use dtee_submitter::{Client, PreparedJob};
use dtee_tests::{f32_bytes, TestEnv};
use dtee_worker::stats::Stats;

/// The result cached under `id`, if any.
async fn cached(env: &TestEnv, id: &dtee_schemas::Digest) -> Option<JobResult> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(env.namespace.result_key(id))
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    bytes.map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

/// Submits `spec` as `client`'s tenant and waits for the result a worker publishes for it,
/// reading nothing from Redis first: the answer is what the worker sent.
async fn published(client: &Client, spec: &JobSpec) -> JobResult {
    let waiter = client.waiter().await.unwrap();
    let job = PreparedJob::new(spec).unwrap();
    let watch = waiter.watch_reply_only(job.id()).await.unwrap();
    client
        .submit_prepared(&job, Some(waiter.reply_to()))
        .await
        .unwrap();
    let result = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    waiter.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_reads_its_cached_result_and_revocation_after_running() {
    let env = TestEnv::new("late").await;
    let worker = env.start_worker().await;
    let alice = env.tenant_client("dtee-test-late-alice").await;
    let bob = env.tenant_client("dtee-test-late-bob").await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"hello late"), output("out", 16)];
    let stat = |counter: &std::sync::atomic::AtomicU64| Stats::get(counter);
    let answered = |n: u64| {
        let stats = std::sync::Arc::clone(&worker.stats);
        dtee_tests::eventually(move || Stats::get(&stats.acked) == n)
    };

    // The first job compiles the kernel: it reads its prior answers first, as usual.
    spec.nonce = Some("first".to_owned());
    assert!(published(&alice, &spec).await.succeeded());
    answered(1).await;
    assert_eq!(stat(&worker.stats.settled_late), 0, "compiled first");

    // The next runs first, then caches its result in the round trip that reads its answers.
    spec.nonce = Some("second".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    let second = published(&alice, &spec).await;
    assert!(second.succeeded(), "{:?}", second.error);
    assert_eq!(
        second.output("out").unwrap().bytes().unwrap(),
        b"hello late"
    );
    answered(2).await;
    assert_eq!(stat(&worker.stats.settled_late), 1);
    assert_eq!(
        cached(&env, &id).await.as_ref(),
        Some(&second),
        "cached as published"
    );

    // Delivered again: the kernel runs, and the worker publishes the cached result, not this
    // run's; so it does when the tenant has revoked the job since (the cache comes first).
    let again = published(&alice, &spec).await;
    assert_eq!(again, second, "the cached result, execution id included");
    answered(3).await;
    assert_eq!(stat(&worker.stats.settled_late), 2);
    assert_eq!(stat(&worker.stats.executed), 3, "it ran, and was discarded");
    assert_eq!(stat(&worker.stats.deduplicated), 1);
    alice.cancel(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(published(&alice, &spec).await, second);
    answered(4).await;
    assert_eq!(stat(&worker.stats.settled_late), 3);
    assert_eq!(stat(&worker.stats.deduplicated), 2);

    // Bob's revocation of Alice's job does nothing...
    spec.nonce = Some("bob cancels alice's job".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    bob.cancel(&id, Duration::from_secs(60)).await.unwrap();
    let result = published(&alice, &spec).await;
    assert!(
        result.succeeded(),
        "bob's cancel decided alice's job: {:?}",
        result.error
    );
    answered(5).await;
    assert_eq!(stat(&worker.stats.settled_late), 4);
    assert_eq!(cached(&env, &id).await.as_ref(), Some(&result));

    // ...Alice's own answers `cancelled`, and nothing is cached (a stateless job's `cancelled`
    // never is, and the run's result is not either), so Bob's identical job then runs.
    spec.nonce = Some("alice cancels her own".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    alice.cancel(&id, Duration::from_secs(60)).await.unwrap();
    let result = published(&alice, &spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::Cancelled));
    answered(6).await;
    assert_eq!(stat(&worker.stats.settled_late), 5);
    assert_eq!(cached(&env, &id).await, None, "nothing cached");
    let result = published(&bob, &spec).await;
    assert!(
        result.succeeded(),
        "alice's cancel decided bob's job: {:?}",
        result.error
    );
    answered(7).await;
    assert_eq!(stat(&worker.stats.settled_late), 6);
    assert_eq!(cached(&env, &id).await.as_ref(), Some(&result));

    // A result key of another type (an operator's mistake) fails the job, caching nothing.
    spec.nonce = Some("foreign".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(env.namespace.result_key(&id))
        .arg("field")
        .arg("value")
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let result = published(&alice, &spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::InternalError));
    answered(8).await;
    assert_eq!(
        stat(&worker.stats.settled_late),
        7,
        "answered by the late read"
    );
    let kind: String = redis::cmd("TYPE")
        .arg(env.namespace.result_key(&id))
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    assert_eq!(kind, "hash", "left as it was");

    alice.close().await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A kernel that outgrows its short run is not run further before its prior answers are read:
/// a revoked job whose short run reached the budget is answered `cancelled` without the long
/// run, and the kernel takes the usual order from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_outgrows_its_short_run_reads_its_answers_before_running_on() {
    let env = TestEnv::new("late-long").await;
    let worker = env
        .start_worker_with(|config| config.short_run_fuel = 50_000)
        .await;
    let saxpy = env.put_kernel("saxpy").await;
    let job = |floats: usize, nonce: &str| {
        let mut spec = wasm_job(saxpy.clone(), "saxpy");
        let x: Vec<f32> = (0..floats).map(|i| i as f32).collect();
        spec.buffers = vec![
            inline_input("x", &f32_bytes(&x)),
            inline_input("y", &f32_bytes(&x)),
            output("out", (floats * 4) as u64),
        ];
        spec.params = vec![param("a", ScalarType::F32, 2.0)];
        spec.nonce = Some(nonce.to_owned());
        spec
    };

    // Short: compiled by the first job, settled late by the second.
    assert!(env.run(&job(16, "compile")).await.succeeded());
    assert!(env.run(&job(16, "short")).await.succeeded());
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 2).await;
    assert_eq!(Stats::get(&worker.stats.settled_late), 1);
    assert_eq!(Stats::get(&worker.stats.executed), 2);

    // 64 Ki elements (512 KiB of inputs, within a short run's 1 MiB) need more than 50,000
    // units of fuel: the short run stops, the revocation is read, and the job never runs on.
    let long = job(64 * 1024, "long");
    let id = dtee_schemas::job_id(&long).unwrap();
    env.client
        .cancel(&id, Duration::from_secs(60))
        .await
        .unwrap();
    let result = env.run(&long).await;
    assert_eq!(result.error_code(), Some(ErrorCode::Cancelled));
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 3).await;
    // A short run stopped at its budget is not a run of its own (it counts with the run that
    // follows it, and none did).
    assert_eq!(Stats::get(&worker.stats.executed), 2, "never ran on");
    assert_eq!(
        Stats::get(&worker.stats.settled_late),
        1,
        "not settled late"
    );

    // The kernel is now long for this tenant: even a small job takes the usual order.
    let result = env.run(&job(16, "after")).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let result = env.run(&job(64 * 1024, "long, not cancelled")).await;
    assert!(result.succeeded(), "{:?}", result.error);
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 5).await;
    assert_eq!(Stats::get(&worker.stats.settled_late), 1);
    assert_eq!(Stats::get(&worker.stats.executed), 4);

    // What outgrows a short run is remembered by tenant: Bob's small job is settled late (the
    // module is compiled already), and his long one runs a short run that stops, then the
    // usual order runs it to the end on a blocking thread, which counts as one run.
    let bob = env.tenant_client("dtee-test-late-long-bob").await;
    let result = dtee_tests::run_as(&bob, &job(16, "bob's short job")).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let result = dtee_tests::run_as(&bob, &job(64 * 1024, "bob's long job")).await;
    assert!(result.succeeded(), "{:?}", result.error);
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 7).await;
    assert_eq!(Stats::get(&worker.stats.settled_late), 2, "bob's short job");
    assert_eq!(Stats::get(&worker.stats.executed), 6, "one run each");
    bob.close().await;

    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// With `DTEE_LATE_ANSWERS` off, a repeat of a short job is answered from the cache without
/// running (the order every job takes when it is not eligible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_late_answers_off_a_repeat_never_runs() {
    let env = TestEnv::new("late-off").await;
    let worker = env
        .start_worker_with(|config| config.late_answers = false)
        .await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"strict"), output("out", 8)];
    let first = env.run(&spec).await;
    let second = env.run(&spec).await;
    assert_eq!(first, second);
    spec.nonce = Some("another".to_owned());
    assert!(env.run(&spec).await.succeeded());
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 3).await;
    assert_eq!(
        Stats::get(&worker.stats.executed),
        2,
        "the repeat did not run"
    );
    assert_eq!(Stats::get(&worker.stats.deduplicated), 1);
    assert_eq!(Stats::get(&worker.stats.settled_late), 0);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A late script that Redis refuses (here an ACL without write access to the job's result key;
/// a full or read-only Redis refuses it up front too) sends the job the usual order, which
/// answers a cached job with reads alone: never `internal_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_sends_the_job_the_usual_order() {
    let env = TestEnv::new("late-refused").await;
    let echo = env.put_kernel("echo").await;
    let job = |nonce: &str| {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![inline_input("in", b"refused"), output("out", 8)];
        spec.nonce = Some(nonce.to_owned());
        spec
    };
    let (first, cached_job) = (job("first"), job("cached"));
    let first_id = dtee_schemas::job_id(&first).unwrap();

    // The second job's result is cached by a worker that may write it.
    let full = env.start_worker().await;
    let cached_result = published(&env.client, &cached_job).await;
    assert!(cached_result.succeeded(), "{:?}", cached_result.error);
    full.shutdown().await.unwrap();

    // A Redis user that may read every key and write only the registry, blobs (whose scripts
    // Redis checks as writes) and the first job's result. (A script's keys are checked before
    // it runs, so the late script is refused whole here, as a full or read-only Redis refuses
    // it.)
    let user = format!("dtee-test-late-{:08x}", rand::random::<u32>());
    let ns = env.namespace.as_str();
    let mut admin = env.client.redis();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">dtee-test-late")
        .arg("resetkeys")
        .arg("%R~*")
        .arg(format!("%RW~{ns}:worker:*"))
        .arg(format!("%RW~{ns}:blob:*"))
        .arg(format!("%RW~{}", env.namespace.result_key(&first_id)))
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let base = dtee_tests::redis_url();
    assert!(!base.contains('@'), "the test adds its own credentials");
    let url = base.replacen("://", &format!("://{user}:dtee-test-late@"), 1);
    let worker = env.start_worker_with(|config| config.redis_url = url).await;

    // The first job compiles the kernel and caches its result (the usual order).
    assert!(published(&env.client, &first).await.succeeded());
    // The second runs first; its script's write is refused; the usual order then finds the
    // cached result.
    let again = published(&env.client, &cached_job).await;
    assert_eq!(
        again, cached_result,
        "the cached result, not internal_error"
    );
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 2).await;
    assert_eq!(Stats::get(&worker.stats.settled_late), 0);
    assert_eq!(Stats::get(&worker.stats.deduplicated), 1);
    assert_eq!(
        Stats::get(&worker.stats.executed),
        2,
        "it ran, and was discarded"
    );

    worker.shutdown().await.unwrap();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    env.cleanup().await;
}
