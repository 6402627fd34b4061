//! Each limit yields its own error code, the worker goes on serving, and limits above the
//! worker's maximums are refused rather than lowered.

use dtee_schemas::job::Limits;
use dtee_schemas::{ErrorCode, JobSpec};
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;

async fn echo_job(env: &TestEnv, nonce: &str) -> JobSpec {
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", nonce.as_bytes()), output("out", 64)];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_has_its_own_code_and_the_worker_keeps_serving() {
    let env = TestEnv::new("limits").await;
    let worker = env.start_worker().await;

    let cases: Vec<(&str, &str, Limits, ErrorCode)> = vec![
        (
            "spin",
            "spin",
            Limits {
                fuel: Some(5_000_000),
                timeout_ms: Some(60_000),
                ..Limits::default()
            },
            ErrorCode::FuelExhausted,
        ),
        // Enough fuel to spin for minutes: only the wall clock stops it.
        (
            "spin",
            "spin",
            Limits {
                fuel: Some(1_000_000_000_000),
                timeout_ms: Some(300),
                ..Limits::default()
            },
            ErrorCode::ExecutionTimeout,
        ),
        (
            "membomb",
            "bomb",
            Limits {
                memory_bytes: Some(4 << 20),
                ..Limits::default()
            },
            ErrorCode::MemoryLimitExceeded,
        ),
        (
            "flood",
            "flood",
            Limits {
                output_bytes: Some(1 << 20),
                ..Limits::default()
            },
            ErrorCode::OutputLimitExceeded,
        ),
    ];
    for (kernel, entry, limits, expected) in cases {
        let mut spec = wasm_job(env.put_kernel(kernel).await, entry);
        if kernel == "flood" {
            spec.buffers = vec![output("out", 64 << 20)];
        }
        spec.limits = limits;
        let result = env.run(&spec).await;
        assert_eq!(
            result.error_code(),
            Some(expected),
            "{kernel}: {:?}",
            result.error
        );
        let resources = result
            .resources
            .expect("resources of a failed run are reported");
        match expected {
            ErrorCode::FuelExhausted => assert_eq!(resources.fuel_consumed, 5_000_000),
            ErrorCode::ExecutionTimeout => {
                assert!(resources.wall_time_us >= 300_000, "{resources:?}")
            }
            ErrorCode::MemoryLimitExceeded => {
                assert!(resources.peak_memory_bytes <= 4 << 20, "{resources:?}")
            }
            ErrorCode::OutputLimitExceeded => {
                assert!(resources.output_bytes <= 1 << 20, "{resources:?}")
            }
            _ => unreachable!(),
        }
        // The next job on the same worker succeeds.
        let ok = env
            .run(&echo_job(&env, &format!("after {kernel} {expected}")).await)
            .await;
        assert!(ok.succeeded(), "after {expected}: {:?}", ok.error);
    }

    // An output written past its own declared size is an output limit too.
    let mut spec = wasm_job(env.put_kernel("flood").await, "flood");
    spec.buffers = vec![output("out", 100_000)];
    let result = env.run(&spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::OutputLimitExceeded));
    assert_eq!(Stats::get(&worker.stats.executed), 5 + 4);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_the_maximums_are_refused_not_lowered() {
    let env = TestEnv::new("excessive").await;
    let worker = env
        .start_worker_with(|config| {
            config.max_limits.fuel = 1_000_000;
            config.default_limits.fuel = 1_000_000;
            config.max_limits.timeout_ms = 1_000;
            config.default_limits.timeout_ms = 1_000;
        })
        .await;
    for limits in [
        Limits {
            fuel: Some(1_000_001),
            ..Limits::default()
        },
        Limits {
            timeout_ms: Some(1_001),
            ..Limits::default()
        },
        Limits {
            memory_bytes: Some(u64::MAX >> 12),
            ..Limits::default()
        },
        Limits {
            output_bytes: Some(1 << 40),
            ..Limits::default()
        },
    ] {
        let mut spec = echo_job(&env, "excessive").await;
        spec.limits = limits;
        let result = env.run(&spec).await;
        assert_eq!(
            result.error_code(),
            Some(ErrorCode::ExcessiveResourceRequirements),
            "{limits:?}"
        );
    }
    assert_eq!(Stats::get(&worker.stats.executed), 0, "nothing ran");
    // At the maximum is fine, and the effective limits are reported.
    let mut spec = echo_job(&env, "at the maximum").await;
    spec.limits = Limits {
        fuel: Some(1_000_000),
        ..Limits::default()
    };
    let result = env.run(&spec).await;
    assert!(result.succeeded());
    assert_eq!(result.limits.unwrap().fuel, 1_000_000);
    assert_eq!(result.limits.unwrap().timeout_ms, 1_000);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A job listing more buffers than the worker accepts is refused without its state being read:
/// its prior answers are read in one round trip with the snapshot of every state binding it
/// lists, so counting afterwards would let a message of 16 MiB make Redis read hundreds of
/// thousands of keys first. Seen from outside: a job binding a key of the wrong type (a list),
/// which the snapshot reports as `internal_error`, is answered
/// `excessive_resource_requirements`; and answers that already exist still stand (a cached
/// success is published, whatever this worker's maximums).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_buffers_are_refused_without_reading_their_state() {
    use dtee_schemas::job::AccessMode;
    use dtee_schemas::state::StateKey;
    use dtee_submitter::builder::state;
    let env = TestEnv::new("counted").await;
    let tenant = env.client.tenant().to_owned();
    let mut spec = echo_job(&env, "counted").await;
    for index in 0..3 {
        let key = format!("{tenant}/counted/{}/{index}", env.namespace);
        spec.buffers.push(state(
            &format!("s{index}"),
            &key,
            AccessMode::ReadOnly,
            true,
        ));
    }
    let worker = env.start_worker().await;
    let first = env.run(&spec).await;
    assert!(first.succeeded(), "{:?}", first.error);
    worker.shutdown().await.unwrap();

    // The same five buffers, one of them a list the snapshot would refuse.
    let list = format!("{tenant}/counted/{}/list", env.namespace);
    let _: i64 = redis::cmd("RPUSH")
        .arg(StateKey::parse(&list).unwrap().value_key(&env.namespace))
        .arg("not a string")
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let mut fresh = spec.clone();
    fresh.buffers[2] = state("s0", &list, AccessMode::ReadOnly, true);
    let worker = env.start_worker_with(|config| config.max_buffers = 4).await;
    let refused = env.run(&fresh).await;
    assert_eq!(
        refused.error_code(),
        Some(ErrorCode::ExcessiveResourceRequirements),
        "{:?}",
        refused.error
    );
    let message = refused.error.unwrap().message;
    assert!(
        message.contains("lists 5 buffers; this worker accepts at most 4"),
        "{message}"
    );
    // The job answered before keeps its answer here too.
    let again = env.run(&spec).await;
    assert!(
        again.succeeded(),
        "the cached answer stands: {:?}",
        again.error
    );
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 2).await;
    assert_eq!(Stats::get(&worker.stats.deduplicated), 1);
    assert_eq!(Stats::get(&worker.stats.executed), 0);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A wall-clock timeout is not cached as the job's answer: how far a kernel gets before its
/// deadline depends on how loaded the worker is, which another tenant may cause, so the same
/// job submitted again runs again (fuel, the deterministic bound, is cached: `jobs.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_not_cached_as_the_answer() {
    let env = TestEnv::new("timeout-again").await;
    let worker = env.start_worker().await;
    let mut spec = wasm_job(env.put_kernel("spin").await, "spin");
    spec.limits.fuel = Some(1_000_000_000_000);
    spec.limits.timeout_ms = Some(200);
    for run in 1..=2 {
        let result = env.run(&spec).await;
        assert_eq!(result.error_code(), Some(ErrorCode::ExecutionTimeout));
        assert!(
            env.client
                .cached_result(&result.job_id)
                .await
                .unwrap()
                .is_none(),
            "not in the result cache"
        );
        assert_eq!(Stats::get(&worker.stats.executed), run, "run {run} ran");
    }
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A read_write binding's `max_size` bounds the value the job leaves, not only where it writes:
/// a value already longer than `max_size` cannot be written back (or copied) whole after a
/// one-byte write at offset 0 (`output_limit_exceeded`, the value unchanged). Before, the write
/// passed (its end was within `max_size`), the worker copied the whole value uncharged, and the
/// commit stored 1 MiB under a binding of 16 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_value_longer_than_its_max_size_is_not_written_back() {
    use dtee_schemas::job::{AccessMode, Buffer};
    use dtee_schemas::state::StateKey;
    let env = TestEnv::new("limits-rw-size").await;
    let worker = env.start_worker().await;
    let tenant = env.client.tenant().to_owned();
    let big = format!("{tenant}/{}/big", env.namespace);
    let key = StateKey::parse(&big).unwrap();
    let value = vec![7u8; 1 << 20];
    env.client.state_put(&key, &value).await.unwrap();
    let mut spec = wasm_job(env.put_kernel("tee").await, "tee");
    let mut first = dtee_submitter::builder::state("first", &big, AccessMode::ReadWrite, false);
    if let Buffer::State { max_size, .. } = &mut first {
        *max_size = Some(16);
    }
    spec.buffers = vec![inline_input("item", b"x"), first, output("second", 16)];
    let result = env.run(&spec).await;
    assert_eq!(
        result.error_code(),
        Some(ErrorCode::OutputLimitExceeded),
        "{:?}",
        result.error
    );
    let (stored, version) = env.client.state_get(&key).await.unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(value.as_slice()),
        "the value is unchanged"
    );
    assert_eq!(version, 1);

    // A value within max_size is rewritten in place as before.
    let short_name = format!("{tenant}/{}/short", env.namespace);
    let short = StateKey::parse(&short_name).unwrap();
    env.client.state_put(&short, b"0123").await.unwrap();
    let mut first =
        dtee_submitter::builder::state("first", &short_name, AccessMode::ReadWrite, false);
    if let Buffer::State { max_size, .. } = &mut first {
        *max_size = Some(16);
    }
    spec.buffers = vec![inline_input("item", b"x"), first, output("second", 16)];
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    let (stored, _) = env.client.state_get(&short).await.unwrap();
    assert_eq!(stored.as_deref(), Some(b"x123".as_slice()));
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
