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
