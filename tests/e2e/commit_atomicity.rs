//! A state commit writes all of a job's bindings or none: everything that can refuse it (the
//! versions, the key types, every value's resulting size) is checked before the first write,
//! because Redis does not roll back a script that fails half-way. A refused commit answers the
//! job at once and acks it; it is never retried. A job that may write state commits even when
//! its run wrote nothing, so that its answer is recorded as the applied one.

use std::time::{Duration, Instant};

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, state, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::state::{Commit, CommitEntry, StateStore, WriteOp};
use dtee_worker::stats::Stats;
use dtee_worker::WorkerHandle;

/// A `tee` job: `item` set into `first` (write_only) and appended to `second` (append_only).
async fn tee_job(env: &TestEnv, first: &str, second: &str, item: &[u8]) -> JobSpec {
    let mut spec = wasm_job(env.put_kernel("tee").await, "tee");
    spec.buffers = vec![
        inline_input("item", item),
        state("first", first, AccessMode::WriteOnly, true),
        state("second", second, AccessMode::AppendOnly, true),
    ];
    spec
}

/// Submits the job and waits a short while for its answer (a worker that retries the commit
/// for ever gives none).
async fn run_briefly(env: &TestEnv, spec: &JobSpec) -> Option<JobResult> {
    let waiter = env.client.waiter().await.expect("waiter");
    let id = dtee_schemas::job_id(spec).expect("job id");
    let watch = waiter.watch_fresh(&id).await.expect("watch");
    env.client.submit(spec).await.expect("submit");
    let result = watch.result(Duration::from_secs(15)).await.ok();
    waiter.close().await;
    result
}

/// The worker answered once and acked, retrying nothing, and the queue is empty.
async fn assert_answered_once(env: &TestEnv, worker: &WorkerHandle) {
    assert_eq!(Stats::get(&worker.stats.retried), 0, "no transient retry");
    assert_eq!(
        Stats::get(&worker.stats.commits),
        1,
        "only the seeding job committed"
    );
    assert_eq!(
        env.queue_depth("wasm").await,
        0,
        "nothing left in the queue"
    );
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_past_the_value_limit_fails_final_and_writes_nothing() {
    let env = TestEnv::new("commit-too-large").await;
    let worker = env
        .start_worker_with(|c| c.max_state_value_bytes = 1024)
        .await;
    let tenant = env.client.tenant().to_owned();
    let first = format!("{tenant}/{{g}}/{}/first", env.namespace);
    let second = format!("{tenant}/{{g}}/{}/second", env.namespace);
    let (first_key, second_key) = (
        StateKey::parse(&first).unwrap(),
        StateKey::parse(&second).unwrap(),
    );

    // 1000 bytes in `second` (fits), then a job that sets 100 bytes in `first` (fits) and
    // appends 100 to `second` (1100 > 1024).
    let mut seed = wasm_job(env.put_kernel("append").await, "append");
    seed.buffers = vec![
        inline_input("item", &[7u8; 1000]),
        state("log", &second, AccessMode::AppendOnly, true),
    ];
    assert!(env.run(&seed).await.succeeded());
    let spec = tee_job(&env, &first, &second, &[1u8; 100]).await;
    let started = Instant::now();
    let result = run_briefly(&env, &spec).await;
    let elapsed = started.elapsed();

    assert_eq!(
        env.client.state_get(&first_key).await.unwrap(),
        (None, 0),
        "the first binding was not written"
    );
    assert_eq!(
        env.client.state_get(&second_key).await.unwrap(),
        (Some(vec![7u8; 1000]), 1),
        "the second binding is unchanged"
    );
    let result = result.expect("the job is answered");
    let error = result.error.expect("the job failed");
    assert_eq!(
        error.code,
        ErrorCode::StateValueTooLarge,
        "{}",
        error.message
    );
    assert!(error.code.is_final());
    assert!(error.message.contains("1100"), "{}", error.message);
    assert_answered_once(&env, &worker).await;
    println!("too-large commit answered in {elapsed:?}, nothing written");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_the_commit_before_any_write() {
    let env = TestEnv::new("commit-wrong-type").await;
    let worker = env.start_worker().await;
    let tenant = env.client.tenant().to_owned();
    let first = format!("{tenant}/{{g}}/{}/first", env.namespace);
    let second = format!("{tenant}/{{g}}/{}/second", env.namespace);
    let first_key = StateKey::parse(&first).unwrap();
    let second_key = StateKey::parse(&second).unwrap();

    // Something other than the worker left a list under `second`: APPEND would fail there,
    // after `first` was written, if the script checked nothing first.
    let mut redis = env.client.redis();
    let _: i64 = redis::cmd("RPUSH")
        .arg(second_key.value_key(&env.namespace))
        .arg("not a string")
        .query_async(&mut redis)
        .await
        .unwrap();
    // A job that commits once makes the "commits == 1" count below hold for both tests.
    let mut seed = wasm_job(env.put_kernel("append").await, "append");
    let third = format!("{tenant}/{{g}}/{}/third", env.namespace);
    seed.buffers = vec![
        inline_input("item", b"x"),
        state("log", &third, AccessMode::AppendOnly, true),
    ];
    assert!(env.run(&seed).await.succeeded());

    let spec = tee_job(&env, &first, &second, b"hello").await;
    let result = run_briefly(&env, &spec).await;
    let (value, version) = env.client.state_get(&first_key).await.unwrap();
    assert_eq!(
        (value, version),
        (None, 0),
        "partial commit: the first binding was written {version} times"
    );
    let result = result.expect("the job is answered");
    let error = result.error.expect("the job failed");
    assert_eq!(error.code, ErrorCode::InternalError, "{}", error.message);
    // The snapshot finds the list before the kernel runs (state_snapshot.rs).
    let list_key = second_key.value_key(&env.namespace);
    assert!(error.message.contains(&list_key), "{}", error.message);
    assert_answered_once(&env, &worker).await;

    // Should the list appear between a job's snapshot and its commit, the commit script
    // refuses before its first write: called here directly, with the versions the snapshot
    // would have seen.
    let store = StateStore::new(env.client.redis(), env.namespace.clone());
    // Sets `first`, then appends to `second` (seen at `second_version`): the commit a job
    // with both bindings makes.
    let commit = |second: &StateKey, second_version: u64, job: &'static [u8]| {
        let entries = [
            CommitEntry {
                key: first_key.clone(),
                seen_version: 0,
                op: WriteOp::Set(b"hello".to_vec()),
            },
            CommitEntry {
                key: second.clone(),
                seen_version: second_version,
                op: WriteOp::Append(b"hello".to_vec()),
            },
        ];
        let (store, tag) = (&store, first_key.hash_tag());
        async move {
            store
                .commit(
                    &tag,
                    &Digest::of(job),
                    &entries,
                    b"result",
                    Duration::from_secs(60),
                    None,
                    1 << 20,
                )
                .await
                .expect("commit script")
        }
    };
    let answer = commit(&second_key, 0, b"a commit between snapshot and list").await;
    assert_eq!(answer, Commit::WrongType(list_key));
    assert_eq!(
        env.client.state_get(&first_key).await.unwrap(),
        (None, 0),
        "the commit wrote nothing"
    );

    // A version of digits that INCR refuses ('05') is refused the same way, before the first
    // write (a check of digits alone let the commit write `first` and then fail at the INCR).
    let fourth = format!("{tenant}/{{g}}/{}/fourth", env.namespace);
    let fourth_key = StateKey::parse(&fourth).unwrap();
    let _: () = redis::cmd("SET")
        .arg(fourth_key.version_key(&env.namespace))
        .arg("05")
        .query_async(&mut redis)
        .await
        .unwrap();
    let answer = commit(&fourth_key, 5, b"a commit over a version INCR refuses").await;
    assert_eq!(
        answer,
        Commit::WrongType(fourth_key.version_key(&env.namespace))
    );
    assert_eq!(
        env.client.state_get(&first_key).await.unwrap(),
        (None, 0),
        "the commit wrote nothing"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_writes_nothing_still_records_the_job_as_applied() {
    // Two executions of one job may overlap (a duplicate publish, a redelivery while the first
    // still runs). A run of a job that may write state, but that wrote nothing, used to publish
    // its answer without the applied record, so the other execution could still commit writes
    // later: one id, two answers. The result's expiry shows the record: the applied record
    // outlives the cached result, and a resubmission is answered from it.
    let env = TestEnv::new("commit-no-write").await;
    let worker = env
        .start_worker_with(|c| c.result_ttl = Duration::from_secs(1))
        .await;
    let tenant = env.client.tenant().to_owned();
    let balance = format!("{tenant}/{{g}}/{}/balance", env.namespace);
    let balance_key = StateKey::parse(&balance).unwrap();
    // `echo` copies `in` to `out` and leaves the read_write binding alone.
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        inline_input("in", b"looked"),
        dtee_submitter::builder::output("out", 16),
        state("balance", &balance, AccessMode::ReadWrite, true),
    ];
    let id = dtee_schemas::job_id(&spec).unwrap();
    let first = env.run(&spec).await;
    assert!(first.succeeded(), "{:?}", first.error);
    assert!(first.state.as_ref().unwrap().written.is_empty());
    assert_eq!(
        Stats::get(&worker.stats.commits),
        1,
        "a commit that writes nothing"
    );
    let started = Instant::now();
    while env.client.cached_result(&id).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the result expires"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The state moves on; the same job is submitted again.
    env.client.state_put(&balance_key, b"25").await.unwrap();
    let second = env.run(&spec).await;
    assert_eq!(second, first, "the answer recorded the first time");
    assert_eq!(Stats::get(&worker.stats.executed), 1, "run once");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_is_not_final_gives_way_to_a_commit_recorded_meanwhile() {
    gives_way_to_a_recorded_commit("commit-failure-gives-way", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_found_by_a_failure_is_read_in_a_result_slot() {
    // The same, with a recorded result of 1.5 MiB: the failing execution reads it as a repeat
    // of the job would, in a result slot (counted in `result_bytes_peak`), not unbounded.
    gives_way_to_a_recorded_commit("commit-failure-gives-way-large", 3 << 19).await;
}

/// Another execution's result for job `id`, as it would record it (a stand-in: a real result of
/// an echo job, re-addressed to `id`), with an output of `large` bytes when `large` > 0; and its
/// serialized body.
async fn recorded_elsewhere(env: &TestEnv, id: &Digest, large: usize) -> (JobResult, Vec<u8>) {
    let mut stand_in = wasm_job(env.put_kernel("echo").await, "echo");
    stand_in.buffers = vec![
        inline_input("in", b"committed elsewhere"),
        dtee_submitter::builder::output("out", 32),
    ];
    let mut recorded = env.run(&stand_in).await;
    assert!(recorded.succeeded());
    recorded.job_id = id.clone();
    if large > 0 {
        let data = vec![7u8; large];
        recorded.outputs[0].size = large as u64;
        recorded.outputs[0].digest = Digest::of(&data);
        recorded.outputs[0].data = dtee_schemas::job::encode_base64(&data);
    }
    let body = serde_json::to_vec(&recorded).unwrap();
    (recorded, body)
}

/// A job whose execution fails for a reason that is not final while another execution's commit
/// is recorded meanwhile: the recorded result is the answer. With `large` > 0, the recorded
/// result's output is `large` bytes (a stand-in for another execution's large output).
async fn gives_way_to_a_recorded_commit(test: &str, large: usize) {
    // Another execution of the job (a delivery orphaned by a lost connection, say) commits its
    // writes after this one's look-up of earlier answers and crashes before caching its
    // result; this execution then fails for a reason that is not final. The state is applied,
    // so the failure must not be the answer. The test hook holds the failure for three
    // seconds, in which the test writes the applied record as the other execution would (a
    // stand-in: its body is another job's real result, re-addressed to this job).
    let env = TestEnv::new(test).await;
    let worker = env
        .start_worker_with(|c| c.test_hook = Some(dtee_worker::config::TestHook::SlowFailure))
        .await;
    let tenant = env.client.tenant().to_owned();
    let account = format!("{tenant}/{{g}}/{}/account", env.namespace);
    // Spins past its 300 ms deadline: execution_timeout, which is not final.
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    spec.buffers = vec![state("account", &account, AccessMode::ReadWrite, true)];
    spec.limits.fuel = Some(1_000_000_000_000);
    spec.limits.timeout_ms = Some(300);
    let id = dtee_schemas::job_id(&spec).unwrap();
    let (recorded, body) = recorded_elsewhere(&env, &id, large).await;
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();
    let timeout = ErrorCode::ALL
        .iter()
        .position(|code| *code == ErrorCode::ExecutionTimeout)
        .unwrap();
    dtee_tests::eventually(|| Stats::get(&worker.stats.run_errors_by_code[timeout]) == 1).await;
    let applied = dtee_schemas::state::applied_key(
        &env.namespace,
        &StateKey::parse(&account).unwrap().hash_tag(),
        &id,
    );
    let _: () = redis::cmd("SET")
        .arg(&applied)
        .arg(&body)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();

    let answer = watch.result(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        answer, recorded,
        "the recorded result, not execution_timeout"
    );
    assert_eq!(env.client.cached_result(&id).await.unwrap(), Some(recorded));
    let failure: Option<Vec<u8>> = redis::cmd("GET")
        .arg(env.namespace.failure_key(&id))
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    assert!(failure.is_none(), "no failure recorded");
    let peak = Stats::get(&worker.stats.result_bytes_peak);
    if large > 0 {
        assert!(
            peak >= body.len() as u64,
            "the recorded result ({} bytes) was not read in a result slot (peak {peak})",
            body.len()
        );
    } else {
        assert_eq!(peak, 0, "no result of this test needs a result slot");
    }
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A final failure of a state job claims the job's applied record; when another execution's
/// commit was recorded meanwhile, that record is the answer, and a large one (1.5 MiB) is read
/// in a result slot (`result_bytes_peak`), not answered whole by the claim (`SET NX GET`, as
/// before) outside any slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_failure_reads_a_large_recorded_commit_in_a_result_slot() {
    let env = TestEnv::new("claim-large").await;
    let worker = env.start_worker().await;
    let tenant = env.client.tenant().to_owned();
    let account = format!("{tenant}/{{g}}/{}/account", env.namespace);
    // Spins until its fuel runs out (seconds): fuel_exhausted, which is final.
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    spec.buffers = vec![state("account", &account, AccessMode::ReadWrite, true)];
    spec.limits.fuel = Some(4_000_000_000);
    spec.limits.timeout_ms = Some(120_000);
    let id = dtee_schemas::job_id(&spec).unwrap();
    let (recorded, body) = recorded_elsewhere(&env, &id, 3 << 19).await;
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    let executed = Stats::get(&worker.stats.executed);
    env.client.submit(&spec).await.unwrap();
    dtee_tests::eventually(|| Stats::get(&worker.stats.executed) > executed).await;
    let applied = dtee_schemas::state::applied_key(
        &env.namespace,
        &StateKey::parse(&account).unwrap().hash_tag(),
        &id,
    );
    let _: () = redis::cmd("SET")
        .arg(&applied)
        .arg(&body)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let answer = watch.result(Duration::from_secs(60)).await.unwrap();
    assert_eq!(answer, recorded, "the recorded result, not fuel_exhausted");
    let peak = Stats::get(&worker.stats.result_bytes_peak);
    assert!(
        peak >= body.len() as u64,
        "the recorded result ({} bytes) was not read in a result slot (peak {peak})",
        body.len()
    );
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A job whose own result is over 1 MiB holds a result slot; when it finds a result cached by
/// another run of the same id while caching its own, it reads that one (over 1 MiB too) in a
/// result slot after giving its own back. On a worker with one kernel slot (so one result
/// slot), waiting for a second slot while holding the first would wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_adopts_a_large_cached_one_on_a_worker_with_one_result_slot() {
    use dtee_schemas::job::ScalarType;
    use dtee_submitter::builder::{blob_input, output, param};
    let env = TestEnv::new("adopt-large").await;
    let worker = env.start_worker_with(|c| c.concurrency = 1).await;
    // matmul, 512 x 1024 times 1024 x 512: a 1 MiB output, a moment of compute.
    let (m, n, k) = (512usize, 512usize, 1024usize);
    let ones = vec![0u8; m * k * 4];
    let (a, _) = env.client.put_blob(&ones).await.unwrap();
    let (b, _) = env.client.put_blob(&vec![0u8; k * n * 4]).await.unwrap();
    let mut spec = wasm_job(env.put_kernel("matmul").await, "matmul");
    spec.buffers = vec![
        blob_input("a", a),
        blob_input("b", b),
        output("c", (m * n * 4) as u64),
    ];
    spec.params = vec![
        param("m", ScalarType::U32, m as f64),
        param("n", ScalarType::U32, n as f64),
        param("k", ScalarType::U32, k as f64),
    ];
    spec.limits.timeout_ms = Some(60_000);
    let id = dtee_schemas::job_id(&spec).unwrap();
    let (recorded, body) = recorded_elsewhere(&env, &id, 3 << 19).await;

    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    let executed = Stats::get(&worker.stats.executed);
    env.client.submit(&spec).await.unwrap();
    dtee_tests::eventually(|| Stats::get(&worker.stats.executed) > executed).await;
    let _: () = redis::cmd("SET")
        .arg(env.namespace.result_key(&id))
        .arg(&body)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let answer = watch.result(Duration::from_secs(60)).await.unwrap();
    assert_eq!(answer, recorded, "the result cached first");
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
