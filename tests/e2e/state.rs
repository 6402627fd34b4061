//! Bound state: access modes, lost updates, exactly-once effect across a crash, append order,
//! tenant isolation.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::Duration;

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, ErrorCode, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, output, state, wasm_job};
use dtee_tests::{TestEnv, RESULT_TIMEOUT};
use dtee_worker::stats::Stats;

fn counter_value(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

async fn increment_job(env: &TestEnv, key: &str, nonce: &str) -> JobSpec {
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    spec.buffers = vec![state("counter", key, AccessMode::ReadWrite, true)];
    spec.nonce = Some(nonce.to_owned());
    spec
}

/// Submits all jobs with a subscription to every result, and returns one result per job.
async fn run_all(env: &TestEnv, specs: &[JobSpec]) -> HashMap<Digest, JobResult> {
    let waiter = env.client.waiter().await.unwrap();
    let mut results = waiter.subscribe_all().await.unwrap();
    let mut expected = std::collections::HashSet::new();
    for spec in specs {
        expected.insert(env.client.submit(spec).await.unwrap());
    }
    let mut seen = HashMap::new();
    while seen.len() < expected.len() {
        let (result, _) = tokio::time::timeout(Duration::from_secs(180), results.recv())
            .await
            .expect("results keep coming")
            .expect("subscription open");
        if expected.contains(&result.job_id) {
            seen.insert(result.job_id.clone(), result);
        }
    }
    waiter.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_access_mode_and_absent_keys() {
    let env = TestEnv::new("modes").await;
    let worker = env.start_worker().await;
    let tenant = env.client.tenant().to_owned();
    let counter = format!("{tenant}/modes/{}/counter", env.namespace);

    // read_write on an absent key that may be absent: it reads as empty, the kernel writes 1.
    let first = env.run(&increment_job(&env, &counter, "1").await).await;
    assert!(first.succeeded(), "{:?}", first.error);
    let report = first.state.clone().expect("state report");
    assert_eq!(
        (report.read[0].version, report.read[0].digest.clone()),
        (0, Digest::of(b""))
    );
    assert_eq!(report.written[0].version, 1);
    assert_eq!(report.written[0].digest, Digest::of(&1u64.to_le_bytes()));
    let key = StateKey::parse(&counter).unwrap();
    let (value, version) = env.client.state_get(&key).await.unwrap();
    assert_eq!((counter_value(&value.unwrap()), version), (1, 1));
    // Again: reads version 1, writes version 2.
    let second = env.run(&increment_job(&env, &counter, "2").await).await;
    let report = second.state.unwrap();
    assert_eq!(report.read[0].version, 1);
    assert_eq!(report.read[0].digest, Digest::of(&1u64.to_le_bytes()));
    assert_eq!(report.written[0].version, 2);

    // An absent key that must exist: state_binding_not_found, and nothing runs.
    let executed = Stats::get(&worker.stats.executed);
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    spec.buffers = vec![state(
        "counter",
        &format!("{tenant}/modes/{}/missing", env.namespace),
        AccessMode::ReadWrite,
        false,
    )];
    let result = env.run(&spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::StateBindingNotFound));
    assert_eq!(
        Stats::get(&worker.stats.executed),
        executed,
        "nothing executed"
    );

    // read_only: the kernel sees the value; nothing is written, the version stays.
    let doc = format!("{tenant}/modes/{}/doc", env.namespace);
    let doc_key = StateKey::parse(&doc).unwrap();
    assert_eq!(
        env.client
            .state_put(&doc_key, b"the document")
            .await
            .unwrap(),
        1
    );
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        state("in", &doc, AccessMode::ReadOnly, false),
        output("out", 64),
    ];
    let result = env.run(&spec).await;
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap(),
        b"the document"
    );
    let report = result.state.unwrap();
    assert_eq!((report.read.len(), report.written.len()), (1, 0));
    assert_eq!(report.read[0].version, 1);
    assert_eq!(env.client.state_get(&doc_key).await.unwrap().1, 1);

    // write_only: replaces the value without reading it.
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        inline_input("in", b"replaced"),
        state("out", &doc, AccessMode::WriteOnly, false),
    ];
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let report = result.state.unwrap();
    assert!(report.read.is_empty());
    assert_eq!(
        (report.written[0].version, report.written[0].digest.clone()),
        (2, Digest::of(b"replaced"))
    );
    assert_eq!(
        env.client.state_get(&doc_key).await.unwrap(),
        (Some(b"replaced".to_vec()), 2)
    );

    // append_only: adds to the end.
    let log = format!("{tenant}/modes/{}/log", env.namespace);
    for item in [&b"one,"[..], b"two,"] {
        let mut spec = wasm_job(env.put_kernel("append").await, "append");
        spec.buffers = vec![
            inline_input("item", item),
            state("log", &log, AccessMode::AppendOnly, true),
        ];
        let result = env.run(&spec).await;
        assert_eq!(result.state.unwrap().written[0].digest, Digest::of(item));
    }
    assert_eq!(
        env.client
            .state_get(&StateKey::parse(&log).unwrap())
            .await
            .unwrap(),
        (Some(b"one,two,".to_vec()), 2)
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_increments_from_two_workers_lose_no_update() {
    const JOBS: usize = 1000;
    let env = TestEnv::new("lost-updates").await;
    // 1000 jobs on one key from 4 kernel slots: a job can lose many commits in a row on a
    // loaded machine. The bound is what is configurable; this test is about lost updates.
    let first = env.start_worker_with(|c| c.state_max_attempts = 1000).await;
    let second = env.start_worker_with(|c| c.state_max_attempts = 1000).await;
    let counter = format!("{}/counters/{}", env.client.tenant(), env.namespace);
    let mut specs = Vec::with_capacity(JOBS);
    for idx in 0..JOBS {
        specs.push(increment_job(&env, &counter, &idx.to_string()).await);
    }
    let results = run_all(&env, &specs).await;
    let failures: Vec<_> = results.values().filter_map(|r| r.error.clone()).collect();
    assert!(
        failures.is_empty(),
        "every increment succeeded; failures: {failures:?}"
    );
    let (value, version) = env
        .client
        .state_get(&StateKey::parse(&counter).unwrap())
        .await
        .unwrap();
    assert_eq!(
        counter_value(&value.unwrap()),
        JOBS as u64,
        "no lost update"
    );
    assert_eq!(version, JOBS as u64);
    // Every version from 1 to JOBS was written by exactly one job.
    let mut versions: Vec<u64> = results
        .values()
        .map(|r| r.state.as_ref().unwrap().written[0].version)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=JOBS as u64).collect::<Vec<_>>());
    let conflicts = Stats::get(&first.stats.conflicts) + Stats::get(&second.stats.conflicts);
    let commits = Stats::get(&first.stats.commits) + Stats::get(&second.stats.commits);
    let executed = Stats::get(&first.stats.executed) + Stats::get(&second.stats.executed);
    assert_eq!(commits, JOBS as u64);
    assert_eq!(
        executed,
        JOBS as u64 + conflicts,
        "each conflict re-ran the kernel once"
    );
    println!(
        "lost-update test: {JOBS} increments, 2 workers x 2 kernel slots, {conflicts} conflicts retried, final value {JOBS}"
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_keep_the_exact_sequence() {
    const JOBS: u64 = 300;
    let env = TestEnv::new("appends").await;
    let first = env.start_worker().await;
    let second = env.start_worker().await;
    let log = format!("{}/logs/{}", env.client.tenant(), env.namespace);
    let kernel = env.put_kernel("append").await;
    let specs: Vec<JobSpec> = (0..JOBS)
        .map(|idx| {
            let mut spec = wasm_job(kernel.clone(), "append");
            spec.buffers = vec![
                inline_input("item", &idx.to_le_bytes()),
                state("log", &log, AccessMode::AppendOnly, true),
            ];
            spec
        })
        .collect();
    let results = run_all(&env, &specs).await;
    let (value, version) = env
        .client
        .state_get(&StateKey::parse(&log).unwrap())
        .await
        .unwrap();
    let value = value.unwrap();
    assert_eq!(version, JOBS);
    assert_eq!(value.len() as u64, JOBS * 8, "every append landed once");
    // The record at position v-1 is the one appended by the job that wrote version v.
    for result in results.values() {
        let written = &result.state.as_ref().unwrap().written[0];
        let position = (written.version - 1) as usize * 8;
        assert_eq!(
            Digest::of(&value[position..position + 8]),
            written.digest,
            "version {}",
            written.version
        );
    }
    let mut items: Vec<u64> = value.chunks(8).map(counter_value).collect();
    items.sort_unstable();
    assert_eq!(items, (0..JOBS).collect::<Vec<_>>());
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_ack_applies_once_and_answers_the_first_result() {
    let env = TestEnv::new("crash").await;
    // Declare the topology, so the job can be queued before the crashing worker starts.
    env.start_worker_with(|c| c.prefetch = 1)
        .await
        .shutdown()
        .await
        .unwrap();
    let counter = format!("{}/crash/{}", env.client.tenant(), env.namespace);
    let spec = increment_job(&env, &counter, "once").await;
    let waiter = env.client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    env.client.submit(&spec).await.unwrap();

    // A worker process that stops right after its commit; then SIGKILL.
    let mut crashing = std::process::Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_TEST_HOOK", "pause-after-commit")
        .env("DTEE_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting dtee-worker");
    let stderr = crashing.stderr.take().unwrap();
    let paused = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("dtee-test-hook: paused after commit"))
    });
    let paused = tokio::time::timeout(Duration::from_secs(60), paused)
        .await
        .expect("the hook fired")
        .unwrap();
    assert!(paused, "the worker reached the hook");
    crashing.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix.
    crashing.wait().unwrap();

    // The commit happened once; nothing was published or acked.
    let key = StateKey::parse(&counter).unwrap();
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (Some(1u64.to_le_bytes().to_vec()), 1)
    );
    let recorded: Vec<u8> = redis::cmd("GET")
        .arg(dtee_schemas::state::applied_key(
            &env.namespace,
            &key.hash_tag(),
            &id,
        ))
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    // On one Redis node the commit cached the result in the same step; on a Redis Cluster the
    // result is cached after the commit, which the worker did not live to do.
    let result_key = env.namespace.result_key(&id);
    let cached: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&result_key)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    if dtee_net::redis_conn::is_cluster_url(&dtee_tests::redis_url()) {
        assert_eq!(cached, None, "a cluster's commit caches nothing");
    } else {
        assert_eq!(
            cached,
            Some(recorded.clone()),
            "the commit cached its result"
        );
    }
    // Where the result was not cached, or left the cache since, the applied record answers:
    // the cached copy is removed here to take that path on one node too.
    let _: () = redis::cmd("DEL")
        .arg(&result_key)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();

    // The redelivered job runs on a new worker: the commit says "already applied".
    let worker = env.start_worker().await;
    let result = watch.result(RESULT_TIMEOUT).await.unwrap();
    assert!(result.succeeded());
    assert_eq!(
        serde_json::to_vec(&result).unwrap(),
        recorded,
        "the submitter gets the result recorded at the commit"
    );
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (Some(1u64.to_le_bytes().to_vec()), 1),
        "not applied twice"
    );
    assert_eq!(Stats::get(&worker.stats.already_applied), 1);
    assert_eq!(Stats::get(&worker.stats.commits), 0);
    waiter.close().await;
    worker.shutdown().await.unwrap();
    assert_eq!(env.queue_depth("wasm").await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_user_id_cannot_be_forged() {
    let env = TestEnv::new("tenants").await;
    let worker = env.start_worker().await;
    let alice = env.tenant_client("dtee-test-alice").await;
    let bob = env.tenant_client("dtee-test-bob").await;
    assert_eq!(alice.tenant(), "dtee-test-alice");
    let kernel = env.put_kernel("increment").await;
    let alice_key = format!("dtee-test-alice/{}/counter", env.namespace);

    let mut spec = wasm_job(kernel.clone(), "increment");
    spec.buffers = vec![state("counter", &alice_key, AccessMode::ReadWrite, true)];
    assert!(
        dtee_tests::run_as(&alice, &spec).await.succeeded(),
        "alice binds her own key"
    );

    // Bob binds Alice's key: refused before anything is read.
    spec.nonce = Some("bob's attempt".to_owned());
    let result = dtee_tests::run_as(&bob, &spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::StateAccessDenied));
    let key = StateKey::parse(&alice_key).unwrap();
    assert_eq!(
        env.client.state_get(&key).await.unwrap().1,
        1,
        "alice's counter untouched"
    );
    // Bob resubmitting Alice's own job: the worker refuses it rather than answer from her
    // cached result. (Watch what is published: a client that can read Redis can read the
    // cache itself; see the trust model in the README.)
    spec.nonce = None;
    let waiter = bob.waiter().await.unwrap();
    let mut published = waiter.subscribe_all().await.unwrap();
    bob.submit(&spec).await.unwrap();
    let (result, cached) = tokio::time::timeout(RESULT_TIMEOUT, published.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.job_id, dtee_schemas::job_id(&spec).unwrap());
    assert_eq!(result.error_code(), Some(ErrorCode::StateAccessDenied));
    assert!(!cached);
    waiter.close().await;

    // Bob claiming to be Alice: RabbitMQ itself refuses the message.
    let body = serde_json::to_vec(&spec).unwrap();
    let forged = bob
        .publish_job_as(&body, "sha256:forged", "wasm", Some("dtee-test-alice"))
        .await;
    assert!(forged.is_err(), "RabbitMQ accepted a forged user_id");

    // No user_id at all: the tenant is unknown, and the worker is not single-tenant. The job
    // parses, so the refusal is published under its own id.
    let waiter = env.client.waiter().await.unwrap();
    let mut published = waiter.subscribe_all().await.unwrap();
    let canonical =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    env.client
        .publish_job_as(&canonical, "anonymous", "wasm", None)
        .await
        .unwrap();
    let (result, _) = tokio::time::timeout(RESULT_TIMEOUT, published.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.job_id, dtee_schemas::job_id(&spec).unwrap());
    assert_eq!(result.error_code(), Some(ErrorCode::StateAccessDenied));
    assert!(result.error.unwrap().message.contains("user_id"));
    waiter.close().await;
    assert_eq!(env.client.state_get(&key).await.unwrap().1, 1);

    alice.close().await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_tenant_worker_serves_jobs_without_user_id() {
    let env = TestEnv::new("single-tenant").await;
    let worker = env
        .start_worker_with(|c| c.single_tenant = Some("solo".to_owned()))
        .await;
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    spec.buffers = vec![state(
        "counter",
        &format!("solo/{}/c", env.namespace),
        AccessMode::ReadWrite,
        true,
    )];
    let id = dtee_schemas::job_id(&spec).unwrap();
    // Answered under the anonymous prefix (`_.<job id>`), which no tenant's waiter binds.
    let waiter = env.client.waiter().await.unwrap();
    let mut published = waiter.subscribe_all().await.unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    env.client
        .publish_job_as(&body, id.as_str(), "wasm", None)
        .await
        .unwrap();
    let (result, _) = tokio::time::timeout(RESULT_TIMEOUT, published.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.job_id, id);
    assert!(result.succeeded());
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_failure_and_a_commit_of_the_same_job_cannot_both_happen() {
    // Two executions of one job race (one orphaned by a lost connection, one redelivered): one
    // commits its writes, the other ends in a final failure (cancelled, timed out, dead-lettered).
    // The failure claims the job's applied record before it is cached, so whichever comes first
    // is the answer and the other defers to it.
    use dtee_worker::state::Stored;
    use dtee_worker::state::{Commit, CommitEntry, StateStore, WriteOp};
    let env = TestEnv::new("claim").await;
    let store = StateStore::new(env.client.redis(), env.namespace.clone());
    let tenant = env.client.tenant().to_owned();
    let ttl = Duration::from_secs(60);
    // Commits `b"written"` to `key` (seen at version 0) for `job`, recording `b"success"`.
    async fn commit_written(store: &StateStore, key: &StateKey, job: &Digest) -> Commit {
        let entry = CommitEntry {
            key: key.clone(),
            seen_version: 0,
            op: WriteOp::Set(b"written".to_vec()),
        };
        let ttl = Duration::from_secs(60);
        store
            .commit(
                &key.hash_tag(),
                job,
                &[entry],
                b"success",
                ttl,
                None,
                1 << 29,
            )
            .await
            .unwrap()
    }

    // The failure first: the later commit writes nothing and answers with the failure.
    let key = StateKey::parse(&format!("{tenant}/claim/{}/a", env.namespace)).unwrap();
    let job = Digest::of(b"job a");
    let claimed = store
        .claim_applied(&key.hash_tag(), &job, b"failure", ttl)
        .await
        .unwrap();
    assert!(claimed, "the first claim records the failure");
    let commit = commit_written(&store, &key, &job).await;
    assert_eq!(
        commit,
        Commit::AlreadyApplied(Stored::Whole(b"failure".to_vec()))
    );
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (None, 0),
        "nothing was written"
    );

    // The commit first: the failure's claim returns the committed result instead.
    let key = StateKey::parse(&format!("{tenant}/claim/{}/b", env.namespace)).unwrap();
    let job = Digest::of(b"job b");
    let commit = commit_written(&store, &key, &job).await;
    assert_eq!(commit, Commit::Committed { cached: false });
    let claimed = store
        .claim_applied(&key.hash_tag(), &job, b"failure", ttl)
        .await
        .unwrap();
    assert!(!claimed, "the commit's record stands");
    assert_eq!(
        store.applied(&key.hash_tag(), &job).await.unwrap(),
        Some(b"success".to_vec())
    );
    assert_eq!(
        env.client.state_get(&key).await.unwrap(),
        (Some(b"written".to_vec()), 1)
    );

    // A record over 1 MiB is not read by the commit (nor answered whole by the claim): the
    // worker reads it in a result slot.
    let key = StateKey::parse(&format!("{tenant}/claim/{}/c", env.namespace)).unwrap();
    let job = Digest::of(b"job c");
    let large = vec![b'r'; (1 << 20) + 1];
    assert!(store
        .claim_applied(&key.hash_tag(), &job, &large, ttl)
        .await
        .unwrap());
    let commit = commit_written(&store, &key, &job).await;
    assert_eq!(commit, Commit::AlreadyApplied(Stored::Larger));
    let exactly = vec![b'r'; 1 << 20];
    let job = Digest::of(b"job d");
    assert!(store
        .claim_applied(&key.hash_tag(), &job, &exactly, ttl)
        .await
        .unwrap());
    let commit = commit_written(&store, &key, &job).await;
    assert_eq!(commit, Commit::AlreadyApplied(Stored::Whole(exactly)));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_state_job_claims_its_applied_record() {
    // Through the worker: a revoked job that binds writable state is answered `cancelled`, and
    // that answer is recorded as the job's applied result, so a copy of the job still running
    // elsewhere could not commit afterwards.
    let env = TestEnv::new("cancel-claim").await;
    let worker = env.start_worker().await;
    let tenant = env.client.tenant().to_owned();
    let key = format!("{tenant}/cancel-claim/{}", env.namespace);
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    spec.buffers = vec![state("counter", &key, AccessMode::ReadWrite, true)];
    let id = dtee_schemas::job_id(&spec).unwrap();
    env.client
        .cancel(&id, Duration::from_secs(60))
        .await
        .unwrap();
    let result = env.run(&spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::Cancelled));
    let parsed = StateKey::parse(&key).unwrap();
    let store = dtee_worker::state::StateStore::new(env.client.redis(), env.namespace.clone());
    let recorded = store
        .applied(&parsed.hash_tag(), &id)
        .await
        .unwrap()
        .expect("the failure is recorded as applied");
    let recorded: JobResult = serde_json::from_slice(&recorded).unwrap();
    assert_eq!(recorded.error_code(), Some(ErrorCode::Cancelled));
    assert_eq!(env.client.state_get(&parsed).await.unwrap(), (None, 0));
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
