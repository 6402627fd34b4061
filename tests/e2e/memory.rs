//! What jobs that wait hold in memory. A worker takes up to `DTEE_PREFETCH` deliveries of each
//! queue while its kernel slots are busy; a job reads more than 1 MiB of input blobs, or of
//! state values, only once it holds a data slot (one per kernel slot), so a burst of large jobs
//! waiting for a slot does not make the worker read all of their data at once.

use dtee_schemas::job::AccessMode;
use dtee_schemas::state::StateKey;
use dtee_schemas::JobSpec;
use dtee_submitter::builder::{blob_input, output, state, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;
use sha2::Digest as _;

/// 3 MiB: more than a job reads without a data slot.
const LARGE: usize = 3 << 20;
const MIB: usize = 1 << 20;

/// Three echo jobs of 2 MiB each (bytes `fill`, `fill + 1`, `fill + 2`): results of about
/// 2.7 MiB, over what a result holds without a result slot.
fn large_echo_jobs(echo: &dtee_schemas::Digest, fill: u8) -> Vec<JobSpec> {
    (0..3u8)
        .map(|index| {
            let mut spec = wasm_job(echo.clone(), "echo");
            spec.buffers = vec![
                dtee_submitter::builder::inline_input("in", &vec![fill + index; 2 * MIB]),
                output("out", 2 * MIB as u64),
            ];
            spec
        })
        .collect()
}

/// The worker held one of those results at a time, not several.
fn assert_one_result_held_at_a_time(worker: &dtee_worker::WorkerHandle) {
    let peak = Stats::get(&worker.stats.result_bytes_peak);
    assert!(
        peak > 2 * MIB as u64 && peak < 4 * MIB as u64,
        "one result of about 2.7 MiB held at a time, not three: peak {peak} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_for_a_kernel_slot_read_large_inputs_and_state_one_at_a_time() {
    let env = TestEnv::new("held-data").await;
    let tenant = env.client.tenant().to_owned();
    let worker = env.start_worker_with(|config| config.concurrency = 1).await;

    // The only kernel slot is held by a kernel that spins until its deadline.
    let mut spin = wasm_job(env.put_kernel("spin").await, "spin");
    spin.limits.fuel = Some(1_000_000_000_000);
    spin.limits.timeout_ms = Some(2_000);
    spin.nonce = Some("held-data".to_owned());

    // Meanwhile five jobs arrive, each reading 3 MiB of its own: three as a blob input, two as
    // a read-only state value.
    let sha256 = env.put_kernel("sha256").await;
    let mut jobs: Vec<(JobSpec, Vec<u8>)> = Vec::new();
    for index in 0..5u8 {
        let data = vec![index.wrapping_mul(37).wrapping_add(1); LARGE];
        let mut spec = wasm_job(sha256.clone(), "sha256");
        let input = if index < 3 {
            let (digest, _) = env.client.put_blob(&data).await.unwrap();
            blob_input("data", digest)
        } else {
            let key = format!("{tenant}/held/{}/{index}", env.namespace);
            env.client
                .state_put(&StateKey::parse(&key).unwrap(), &data)
                .await
                .unwrap();
            state("data", &key, AccessMode::ReadOnly, false)
        };
        spec.buffers = vec![input, output("digest", 32)];
        jobs.push((spec, data));
    }

    let spinning = env.run(&spin);
    let rest = async {
        dtee_tests::eventually(|| Stats::get(&worker.stats.executed) >= 1).await;
        futures_util::future::join_all(jobs.iter().map(|(spec, _)| env.run(spec))).await
    };
    let (spun, results) = tokio::join!(spinning, rest);
    assert_eq!(
        spun.error_code(),
        Some(dtee_schemas::ErrorCode::ExecutionTimeout),
        "{:?}",
        spun.error
    );
    for ((_, data), result) in jobs.iter().zip(&results) {
        assert!(result.succeeded(), "{:?}", result.error);
        assert_eq!(
            result.output("digest").unwrap().bytes().unwrap(),
            sha2::Sha256::digest(data).to_vec()
        );
    }
    // All five were delivered while the spin ran (prefetch 16), and each read its 3 MiB; but
    // only the one holding the data slot had read it before the kernel slot was free.
    let peak = Stats::get(&worker.stats.data_bytes_peak);
    assert!(
        peak >= LARGE as u64,
        "the bytes read are counted: peak {peak}"
    );
    assert!(
        peak < 2 * LARGE as u64,
        "one job's data at a time, not the burst's: peak {peak} bytes"
    );
    assert_eq!(
        worker
            .stats
            .data_bytes_held
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "what finished jobs read is released"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Between what a job reads on its own (1 MiB) and the worker's bound, state is read in a data
/// slot and the job runs; over the bound it is refused with the bound it broke, unread, as
/// before data slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_beyond_a_jobs_own_share_is_read_in_a_slot_and_over_the_bound_refused() {
    let env = TestEnv::new("held-state").await;
    let tenant = env.client.tenant().to_owned();
    let worker = env
        .start_worker_with(|config| config.max_input_bytes = 2 * MIB)
        .await;
    let sha256 = env.put_kernel("sha256").await;
    let job = |key: &str| {
        let mut spec = wasm_job(sha256.clone(), "sha256");
        spec.buffers = vec![
            state("data", key, AccessMode::ReadOnly, false),
            output("digest", 32),
        ];
        spec
    };
    let (middle, over) = (
        format!("{tenant}/held/{}/middle", env.namespace),
        format!("{tenant}/held/{}/over", env.namespace),
    );
    let data = vec![5u8; MIB + MIB / 2];
    for (key, value) in [(&middle, data.clone()), (&over, vec![6u8; 3 * MIB])] {
        env.client
            .state_put(&StateKey::parse(key).unwrap(), &value)
            .await
            .unwrap();
    }
    let ran = env.run(&job(&middle)).await;
    assert!(ran.succeeded(), "{:?}", ran.error);
    assert_eq!(
        ran.output("digest").unwrap().bytes().unwrap(),
        sha2::Sha256::digest(&data).to_vec()
    );
    let refused = env.run(&job(&over)).await;
    let error = refused.error.expect("refused");
    assert_eq!(
        error.code,
        dtee_schemas::ErrorCode::ExcessiveResourceRequirements
    );
    assert!(
        error.message.contains("total 3145728 bytes") && error.message.contains("at most 2097152"),
        "{}",
        error.message
    );
    assert_eq!(Stats::get(&worker.stats.executed), 1, "only the first ran");
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Results over 1 MiB wait for the broker in a result slot (one per kernel slot): finished
/// results cannot pile up behind a broker that takes them slowly. Here the broker refuses every
/// result (a queue bound to them that rejects publishes), so each is sent five times over about
/// 7 s; between resends a result holds no slot and no copy (it is read again from the cache),
/// so three such jobs on one kernel slot take about 7 s, not 21, and no more than one result
/// is held at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_wait_for_the_broker_one_slot_at_a_time() {
    let env = TestEnv::new("held-results").await;
    let worker = env.start_worker_with(|config| config.concurrency = 1).await;
    let refusing = env.refuse_results("#").await;
    let echo = env.put_kernel("echo").await;
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for spec in large_echo_jobs(&echo, 1) {
        ids.push(env.client.submit(&spec).await.unwrap());
    }
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 3).await;
    let took = started.elapsed();
    assert_eq!(Stats::get(&worker.stats.results_refused), 3);
    for id in &ids {
        let cached = env.client.cached_result(id).await.unwrap().expect("cached");
        assert!(cached.succeeded(), "{:?}", cached.error);
    }
    assert_one_result_held_at_a_time(&worker);
    // The last result is dropped just after its ack is counted.
    dtee_tests::eventually(|| Stats::get(&worker.stats.result_bytes_held) == 0).await;
    assert!(
        took < std::time::Duration::from_secs(15),
        "refused results take turns between resends instead of holding the slot: {took:?}"
    );
    let _ = refusing.close(200, "done".into()).await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// With a broker slow to take results (a test hook waits a second before each publication),
/// large results are held one result slot at a time: the next large result's run keeps its
/// kernel slot until the slot frees, so no more finished results wait than there are slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_holds_one_large_result_per_result_slot() {
    let env = TestEnv::new("slow-results").await;
    let worker = env
        .start_worker_with(|config| {
            config.concurrency = 1;
            config.test_hook = Some(dtee_worker::config::TestHook::SlowPublish);
        })
        .await;
    let echo = env.put_kernel("echo").await;
    let jobs = large_echo_jobs(&echo, 1);
    let results = futures_util::future::join_all(jobs.iter().map(|spec| env.run(spec))).await;
    for result in &results {
        assert!(result.succeeded(), "{:?}", result.error);
    }
    assert_one_result_held_at_a_time(&worker);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Repeats of jobs whose large results are cached read those results in a result slot too: the
/// prior look-up reads at most 1 MiB of a cached result, and a larger one is read whole only
/// once the repeat holds a result slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_of_large_cached_results_read_them_one_slot_at_a_time() {
    let env = TestEnv::new("cached-results").await;
    let echo = env.put_kernel("echo").await;
    let jobs = large_echo_jobs(&echo, 7);
    let first = env.start_worker().await;
    let originals = futures_util::future::join_all(jobs.iter().map(|spec| env.run(spec))).await;
    first.shutdown().await.unwrap();
    // A worker slow to publish answers the three repeats from the cache.
    let worker = env
        .start_worker_with(|config| {
            config.concurrency = 1;
            config.test_hook = Some(dtee_worker::config::TestHook::SlowPublish);
        })
        .await;
    let repeats = futures_util::future::join_all(jobs.iter().map(|spec| env.run(spec))).await;
    for (original, repeat) in originals.iter().zip(&repeats) {
        assert!(original.succeeded(), "{:?}", original.error);
        assert_eq!(original, repeat, "the cached answer");
    }
    // (The client read each answer from the cache; the worker answers the submissions too.)
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 3).await;
    assert_eq!(Stats::get(&worker.stats.deduplicated), 3);
    assert_eq!(Stats::get(&worker.stats.executed), 0);
    assert_one_result_held_at_a_time(&worker);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A job message over `DTEE_MAX_JOB_BYTES` is refused by the size RabbitMQ announced for it
/// without the worker holding its body: the consumer channel drops it as it arrives, so the
/// worker process's peak resident memory grows by far less than the message (before, the
/// whole body was read first, and the peak grew by at least its size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_job_is_refused_without_the_worker_holding_it() {
    use std::process::{Command, Stdio};
    // Under RabbitMQ 3.x's max_message_size (128 MiB; 4.x defaults to 16 MiB and would refuse
    // the publish).
    const BODY: usize = 48 << 20;
    let env = TestEnv::new("oversized-held").await;
    // The topology first (the worker process declares it too, but not before the job below).
    env.start_worker().await.shutdown().await.unwrap();
    let worker = Command::new(dtee_tests::binary("dtee-worker"))
        .env("DTEE_NAMESPACE", env.namespace.as_str())
        .env("DTEE_AMQP_URL", dtee_tests::amqp_url())
        .env("DTEE_REDIS_URL", dtee_tests::redis_url())
        .env("DTEE_ATTESTATION", "software")
        .env("DTEE_CONCURRENCY", "1")
        .env("DTEE_MAX_JOB_BYTES", "65536")
        .env("DTEE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dtee-worker");
    let worker = dtee_tests::Reaped::new(worker);
    // Serving, and warm: one ordinary job first.
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![
        dtee_submitter::builder::inline_input("in", b"warm"),
        output("out", 64),
    ];
    assert!(env.run(&spec).await.succeeded());
    dtee_tests::reset_peak_resident(worker.id());
    let before = dtee_tests::peak_resident_bytes(worker.id());

    let message_id = dtee_schemas::Digest::of(b"an oversized message");
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&message_id).await.unwrap();
    env.client
        .publish_job(&vec![b' '; BODY], message_id.as_str(), "wasm")
        .await
        .unwrap();
    let result = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        Some(dtee_schemas::ErrorCode::InvalidJob)
    );
    let message = &result.error.as_ref().unwrap().message;
    assert!(
        message.contains(&format!("the job is {BODY} bytes")),
        "{message}"
    );
    let grew = dtee_tests::peak_resident_bytes(worker.id()).saturating_sub(before);
    assert!(
        grew < (BODY / 4) as u64,
        "the worker's peak memory grew by {grew} bytes for a {BODY}-byte message it refused"
    );
    waiter.close().await;
    drop(worker);
    env.cleanup().await;
}
