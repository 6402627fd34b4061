//! A state job's snapshot is read in the same round trip as its prior answers (result cache,
//! revocation, applied record), and survives Redis forgetting its scripts (a restart, a
//! failover, `SCRIPT FLUSH`) without a retry. It bounds what it reads, and a key of the wrong
//! type fails the job without stopping its cached answer.

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, ErrorCode, JobSpec};
use dtee_submitter::builder::{state, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;

/// An `increment` job on `key` (read_write).
fn increment(kernel: &Digest, key: &str, nonce: &str, may_be_absent: bool) -> JobSpec {
    let mut spec = wasm_job(kernel.clone(), "increment");
    spec.buffers = vec![state("counter", key, AccessMode::ReadWrite, may_be_absent)];
    spec.nonce = Some(nonce.to_owned());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_read_with_the_prior_answers_survives_a_script_flush() {
    let env = TestEnv::new("snapshot-flush").await;
    let worker = env.start_worker().await;
    let kernel = env.put_kernel("increment").await;
    let counter = format!("{}/snapshot/{}/counter", env.client.tenant(), env.namespace);
    let first = env.run(&increment(&kernel, &counter, "1", true)).await;
    assert!(first.succeeded(), "{:?}", first.error);

    // Redis forgets every script (other tests' workers load theirs again on their next call).
    let mut redis = env.client.redis();
    let flushed: String = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .expect("SCRIPT FLUSH");
    assert_eq!(flushed, "OK");

    // The snapshot sent with the prior answers meets NOSCRIPT; the worker sends the two again
    // one after the other in the same attempt (without that, every attempt would fail the same
    // way and the job would never be answered).
    let second = env.run(&increment(&kernel, &counter, "2", true)).await;
    assert!(second.succeeded(), "{:?}", second.error);
    assert_eq!(second.state.as_ref().unwrap().read[0].version, 1);
    let (value, version) = env
        .client
        .state_get(&StateKey::parse(&counter).unwrap())
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some(&2u64.to_le_bytes()[..]));
    assert_eq!(version, 2);
    assert_eq!(Stats::get(&worker.stats.retried), 0, "no transient retry");
    assert_eq!(Stats::get(&worker.stats.executed), 2, "each job ran once");

    // A key that must exist and does not is still refused, from the snapshot read up front.
    let absent = format!("{}/snapshot/{}/absent", env.client.tenant(), env.namespace);
    let refused = env.run(&increment(&kernel, &absent, "3", false)).await;
    assert_eq!(
        refused.error.as_ref().map(|e| e.code),
        Some(ErrorCode::StateBindingNotFound),
        "{:?}",
        refused.error
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_state_values_over_the_input_bound_are_refused_before_any_is_read() {
    let env = TestEnv::new("snapshot-bound").await;
    let worker = env.start_worker_with(|c| c.max_input_bytes = 1024).await;
    let kernel = env.put_kernel("increment").await;
    let tenant = env.client.tenant().to_owned();
    let big = format!("{tenant}/snapshot/{}/big", env.namespace);
    env.client
        .state_put(&StateKey::parse(&big).unwrap(), &[7u8; 1025])
        .await
        .unwrap();
    let refused = env.run(&increment(&kernel, &big, "1", false)).await;
    let error = refused.error.expect("refused");
    assert_eq!(error.code, ErrorCode::ExcessiveResourceRequirements);
    assert!(error.message.contains("1025 bytes"), "{}", error.message);
    assert_eq!(Stats::get(&worker.stats.executed), 0, "nothing ran");

    // At the bound, the value is read and the kernel runs (the increment kernel answers 2: its
    // counter must be 0 or 8 bytes).
    let exact = format!("{tenant}/snapshot/{}/exact", env.namespace);
    env.client
        .state_put(&StateKey::parse(&exact).unwrap(), &[7u8; 1024])
        .await
        .unwrap();
    let ran = env.run(&increment(&kernel, &exact, "1", false)).await;
    assert_eq!(
        ran.error.as_ref().map(|e| e.code),
        Some(ErrorCode::KernelFailed),
        "{:?}",
        ran.error
    );
    assert_eq!(Stats::get(&worker.stats.executed), 1);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_key_of_the_wrong_type_fails_the_job_but_not_its_cached_answer() {
    let env = TestEnv::new("snapshot-type").await;
    let worker = env.start_worker().await;
    let kernel = env.put_kernel("increment").await;
    let tenant = env.client.tenant().to_owned();
    let job = |path: &str, nonce: &str| {
        let key = format!("{tenant}/snapshot/{}/{path}", env.namespace);
        increment(&kernel, &key, nonce, true)
    };
    let first = env.run(&job("counter", "1")).await;
    assert!(first.succeeded(), "{:?}", first.error);

    // Someone turns the value into a hash, and another key's version into a word.
    let mut redis = env.client.redis();
    let counter = StateKey::parse(&format!("{tenant}/snapshot/{}/counter", env.namespace)).unwrap();
    let other = StateKey::parse(&format!("{tenant}/snapshot/{}/other", env.namespace)).unwrap();
    let value_key = counter.value_key(&env.namespace);
    let version_key = other.version_key(&env.namespace);
    redis::pipe()
        .del(&value_key)
        .hset(&value_key, "field", "x")
        .set(&version_key, "seven")
        .query_async::<()>(&mut redis)
        .await
        .expect("writes");

    // The job already answered is answered again from the cache: its snapshot is not needed.
    let again = env.run(&job("counter", "1")).await;
    assert!(again.succeeded(), "{:?}", again.error);
    assert_eq!(
        Stats::get(&worker.stats.executed),
        1,
        "answered from the cache"
    );

    // New jobs fail at once with the key named, instead of retrying a failing read.
    for (path, key) in [("counter", &value_key), ("other", &version_key)] {
        let failed = env.run(&job(path, "2")).await;
        let error = failed.error.expect("failed");
        assert_eq!(error.code, ErrorCode::InternalError);
        assert!(error.message.contains(key.as_str()), "{}", error.message);
    }
    assert_eq!(Stats::get(&worker.stats.executed), 1, "nothing else ran");
    assert_eq!(Stats::get(&worker.stats.retried), 0, "no transient retry");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
