//! The two wasm profiles: `deterministic` (fuel, canonical NaNs) and `fast` (neither).

use super::tests::{hash_slots, invocation, kernel, LIMITS};
use super::*;
use crate::backend::Slot;
use dtee_schemas::result::EffectiveLimits;

fn backend(profile: WasmProfile) -> WasmBackend {
    WasmBackend::with_profile(profile, 4, usize::MAX, CompileSettings::in_process(), 1).unwrap()
}

/// Runs `entry` of the committed kernel `name` under `profile`.
fn run(
    profile: WasmProfile,
    name: &str,
    entry: &str,
    slots: Vec<Slot>,
    limits: EffectiveLimits,
) -> Result<Completed, KernelError> {
    let backend = backend(profile);
    let bytes = kernel(name);
    let prepared = backend.prepare("t", &Digest::of(&bytes), &bytes).unwrap();
    let prepared = prepared.as_ref().as_ref().expect("the kernel compiles");
    backend.run(prepared, &invocation(entry, slots, limits))
}

fn nan_bits(profile: WasmProfile) -> u32 {
    let out = vec![Slot::Output {
        name: "out".to_owned(),
        capacity: 4,
    }];
    let done = run(profile, "nan", "nan", out, LIMITS).unwrap();
    let bytes: [u8; 4] = done.written[0].as_deref().unwrap().try_into().unwrap();
    u32::from_le_bytes(bytes)
}

#[test]
fn the_deterministic_profile_canonicalises_nan_and_the_fast_one_keeps_the_hosts() {
    assert_eq!(nan_bits(WasmProfile::Deterministic), 0x7fc0_0000);
    let fast = nan_bits(WasmProfile::Fast);
    assert!(f32::from_bits(fast).is_nan(), "{fast:#x}");
    // x86-64's divss makes the "real indefinite" NaN, sign bit set; other CPUs may make the
    // canonical one, so only x86-64 tells the profiles apart here.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(fast, 0xffc0_0000);
}

#[test]
fn the_fast_profile_meters_no_fuel_and_stops_at_the_deadline() {
    // One unit of fuel: the deterministic profile stops at once, the fast one at its deadline.
    let limits = EffectiveLimits {
        timeout_ms: 30,
        fuel: 1,
        ..LIMITS
    };
    let metered = run(WasmProfile::Deterministic, "spin", "spin", vec![], limits).unwrap_err();
    assert_eq!(metered.code, ErrorCode::FuelExhausted);
    let fast = run(WasmProfile::Fast, "spin", "spin", vec![], limits).unwrap_err();
    assert_eq!(fast.code, ErrorCode::ExecutionTimeout, "{}", fast.message);
    assert!(fast.usage.wall_time_us >= 30_000, "{:?}", fast.usage);
    assert_eq!(fast.usage.fuel_consumed, 0);
}

#[test]
fn a_host_primitive_charges_fuel_in_the_deterministic_profile_only() {
    // One unit of fuel: not enough for the host's SHA-256 of 100 KB when fuel is metered, and
    // nothing to a profile that meters none.
    let slots = || hash_slots(&[7u8; 100_000]);
    let limits = EffectiveLimits { fuel: 1, ..LIMITS };
    let metered = run(
        WasmProfile::Deterministic,
        "sha256_host",
        "sha256",
        slots(),
        limits,
    );
    assert_eq!(metered.unwrap_err().code, ErrorCode::FuelExhausted);
    let fast = run(WasmProfile::Fast, "sha256_host", "sha256", slots(), limits).unwrap();
    assert_eq!(fast.written[1].as_ref().map(Vec::len), Some(32));
}

#[test]
fn both_profiles_compute_the_same_bytes_and_host_primitives_work_unmetered() {
    use sha2::Digest as _;
    let data: Vec<u8> = (0..100_000u32).map(|i| (31 * i + 7) as u8).collect();
    let expected = sha2::Sha256::digest(&data).to_vec();
    for name in ["sha256", "sha256_host"] {
        let mut fuel = Vec::new();
        for profile in [WasmProfile::Deterministic, WasmProfile::Fast] {
            let done = run(profile, name, "sha256", hash_slots(&data), LIMITS).unwrap();
            assert_eq!(
                done.written[1].as_deref(),
                Some(expected.as_slice()),
                "{name} {profile:?}"
            );
            fuel.push(done.usage.fuel_consumed);
        }
        assert!(fuel[0] > 0, "{name}: {fuel:?}");
    }
}

#[test]
fn a_profile_compiles_in_its_own_engine_and_refuses_the_others_artefact() {
    // The compiler child builds for the profile it is told; an artefact of one profile does
    // not load into the other's engine (Wasmtime checks the engine's settings).
    let fast_child = engine::new_engine(None, WasmProfile::Fast).unwrap();
    let echo = fast_child.precompile_module(&kernel("echo")).unwrap();
    compile::load(&backend(WasmProfile::Fast).engine, &echo).unwrap();
    assert!(compile::load(&backend(WasmProfile::Deterministic).engine, &echo).is_err());
}

#[test]
fn host_calls_in_a_straight_line_stop_at_the_deadline_in_both_profiles() {
    // 200 host SHA-256 calls of 1 MiB each, with no loop head between them for Wasmtime's
    // epoch check: the host's own deadline check stops the run. Without it, it would run to
    // the end (hundreds of ms) and succeed.
    let limits = EffectiveLimits {
        timeout_ms: 20,
        ..LIMITS
    };
    for profile in [WasmProfile::Deterministic, WasmProfile::Fast] {
        let error = run(profile, "straight", "straight", vec![], limits).unwrap_err();
        assert_eq!(
            error.code,
            ErrorCode::ExecutionTimeout,
            "{profile:?}: {}",
            error.message
        );
        assert!(
            error.usage.wall_time_us >= 20_000,
            "{profile:?}: {:?}",
            error.usage
        );
    }
}
