//! Unit tests of short runs ([`WasmBackend::run_short`]) and of the engine's instance pool.

use super::tests::{invocation, kernel, prepared};
use super::*;
use crate::backend::Slot;
use dtee_schemas::result::EffectiveLimits;

const LIMITS: EffectiveLimits = EffectiveLimits {
    timeout_ms: 10_000,
    memory_bytes: 1 << 26,
    fuel: 1 << 40,
    output_bytes: 1 << 20,
};

/// Bounded by fuel and memory; the deadline is far, so that a loaded machine (a thread
/// descheduled for milliseconds) cannot hand a run on: the deadline's own test sets it short.
const SHORT: ShortRun = ShortRun {
    fuel: 100_000,
    memory_bytes: 4 << 20,
    timeout_ms: 10_000,
};

/// `entry` of the committed kernel `name`, run short within `short` and `limits`.
fn short(
    name: &str,
    entry: &str,
    limits: EffectiveLimits,
    short: ShortRun,
) -> Option<Result<Completed, KernelError>> {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let prepared = prepared(&backend, name);
    let invocation = invocation(entry, vec![], limits);
    let ran = backend.run_short(&prepared, &invocation, short);
    if let Some(Ok(completed)) = &ran {
        // A short run that finishes is the run: the same fuel as a run with the job's limits.
        let full = backend.run(&prepared, &invocation).unwrap();
        assert_eq!(completed.usage.fuel_consumed, full.usage.fuel_consumed);
        assert_eq!(completed.written, full.written);
    }
    ran
}

#[test]
fn a_short_kernel_finishes_in_its_short_run() {
    let completed = short("echo", "noop", LIMITS, SHORT).unwrap().unwrap();
    assert!(completed.usage.fuel_consumed > 0);
    assert!(completed.usage.fuel_consumed < SHORT.fuel);
}

#[test]
fn a_kernel_past_the_short_fuel_is_handed_on_unless_its_own_fuel_ran_out() {
    assert!(short("spin", "spin", LIMITS, SHORT).is_none());
    let own = EffectiveLimits {
        fuel: SHORT.fuel / 2,
        ..LIMITS
    };
    let error = short("spin", "spin", own, SHORT).unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::FuelExhausted);
}

#[test]
fn a_kernel_past_the_short_memory_is_handed_on_unless_its_own_limit_was_reached() {
    assert!(short("membomb", "bomb", LIMITS, SHORT).is_none());
    let own = EffectiveLimits {
        memory_bytes: 2 << 20,
        ..LIMITS
    };
    let error = short("membomb", "bomb", own, SHORT).unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::MemoryLimitExceeded);
}

#[test]
fn a_kernel_past_the_short_deadline_is_handed_on_unless_its_own_deadline_passed() {
    let unmetered = ShortRun {
        fuel: u64::MAX,
        timeout_ms: 2,
        ..SHORT
    };
    assert!(short("spin", "spin", LIMITS, unmetered).is_none());
    let own = EffectiveLimits {
        timeout_ms: 1,
        ..LIMITS
    };
    let error = short("spin", "spin", own, unmetered).unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::ExecutionTimeout);
}

/// `(module (memory 1) (memory 1) (export "memory" (memory 0)))`
const TWO_MEMORIES: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01, // two memories of one page
    0x07, 0x0a, 0x01, 0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // export
];

#[test]
fn the_compiler_childs_artefacts_load_into_the_pool_unless_a_kernel_needs_more_than_a_slot() {
    // The compiler child makes its engine without a pool; the worker loads what it made into
    // an engine with one.
    let child = engine::new_engine(None, dtee_schemas::job::WasmProfile::Deterministic).unwrap();
    let pooled = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let echo = child.precompile_module(&kernel("echo")).unwrap();
    compile::load(&pooled.engine, &echo).unwrap();
    let two = child.precompile_module(TWO_MEMORIES).unwrap();
    let error = compile::load(&pooled.engine, &two).unwrap_err();
    assert!(format!("{error:#}").contains("memor"), "{error:#}");
}

#[test]
fn a_pool_slot_holds_nothing_of_the_run_before() {
    // One kernel slot: each run reuses the slot the last one left warm (whichever kernel it
    // was). echo leaves 64 KiB of 0xab in its second page; peek writes out that page as it
    // finds it.
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let run = |name: &str, entry: &str, slots: Vec<Slot>| {
        let invocation = invocation(entry, slots, LIMITS);
        backend.run(&prepared(&backend, name), &invocation).unwrap()
    };
    let out = || Slot::Output {
        name: "out".to_owned(),
        capacity: 1 << 16,
    };
    let secret = vec![0xab_u8; 1 << 16];
    for _ in 0..3 {
        let input = Slot::Input {
            name: "in".to_owned(),
            data: secret.clone().into(),
        };
        let echoed = run("echo", "echo", vec![input, out()]);
        assert_eq!(echoed.written[1].as_deref(), Some(secret.as_slice()));
        let peeked = run("peek", "peek", vec![out()]);
        let seen = peeked.written[0].as_deref().unwrap();
        assert_eq!(seen.len(), 1 << 16);
        assert!(seen.iter().all(|byte| *byte == 0), "peek saw echo's bytes");
    }
}
