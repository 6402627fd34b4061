//! Unit tests of the WebAssembly backend with the committed kernels.

use super::*;
use crate::backend::Slot;
use dtee_schemas::result::EffectiveLimits;
use std::time::Duration;

pub(super) fn kernel(name: &str) -> Vec<u8> {
    let path = format!("{}/../kernels/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn run(name: &str, entry: &str, limits: EffectiveLimits) -> Result<Completed, KernelError> {
    run_with(name, entry, vec![], limits)
}

/// Compiles the committed kernel `name` on a fresh backend and runs `entry` with `slots`.
fn run_with(
    name: &str,
    entry: &str,
    slots: Vec<Slot>,
    limits: EffectiveLimits,
) -> Result<Completed, KernelError> {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    backend.run(&prepared(&backend, name), &invocation(entry, slots, limits))
}

/// The committed kernel `name`, compiled and linked by `backend`.
pub(super) fn prepared(backend: &WasmBackend, name: &str) -> InstancePre<HostState> {
    let bytes = kernel(name);
    let prepared = backend.prepare("t", &Digest::of(&bytes), &bytes).unwrap();
    match prepared.as_ref() {
        Ok(prepared) => prepared.clone(),
        Err(error) => panic!("{name} does not compile: {}", error.message),
    }
}

/// An invocation of `entry` with `slots`, no parameters.
pub(super) fn invocation(entry: &str, slots: Vec<Slot>, limits: EffectiveLimits) -> Invocation {
    Invocation {
        launch: None,
        entry: entry.to_owned(),
        slots,
        params: vec![],
        limits,
        tenant: "tenant".to_owned(),
    }
}

pub(super) const LIMITS: EffectiveLimits = EffectiveLimits {
    timeout_ms: 10_000,
    memory_bytes: 1 << 24,
    fuel: 1 << 40,
    output_bytes: 1 << 20,
};

#[test]
fn a_timed_out_kernel_stops_at_its_deadline() {
    let error = run(
        "spin",
        "spin",
        EffectiveLimits {
            timeout_ms: 50,
            ..LIMITS
        },
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::ExecutionTimeout);
    assert!(error.usage.wall_time_us >= 50_000, "{:?}", error.usage);
    assert!(error.usage.wall_time_us < 5_000_000, "{:?}", error.usage);
    // Wasmtime 48 does not flush its fuel counter before the epoch-deadline trap, so the
    // fuel of an interrupted run is only what was flushed at the last call: a lower bound
    // (documented on ResourceUsage::fuel_consumed).
    assert!(error.usage.fuel_consumed <= LIMITS.fuel);
}

#[test]
fn an_idle_ticker_parks_and_a_run_wakes_it_in_time_for_its_deadline() {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let spin = prepared(&backend, "spin");
    // Fifty idle ticks of 2 ms, and then some.
    let parked_by = Instant::now() + Duration::from_secs(5);
    while !backend.ticker.is_parked() {
        assert!(Instant::now() < parked_by, "the ticker never parked");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        // Fuel for seconds (spin burns a few billion units a second): stopped in time only by
        // its deadline, hence by a ticking epoch; without one it ends fuel_exhausted.
        let started = Instant::now();
        let error = backend
            .run(
                &spin,
                &invocation(
                    "spin",
                    vec![],
                    EffectiveLimits {
                        timeout_ms: 30,
                        fuel: 20_000_000_000,
                        ..LIMITS
                    },
                ),
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::ExecutionTimeout);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Parked again before the next run.
        let parked_by = Instant::now() + Duration::from_secs(5);
        while !backend.ticker.is_parked() {
            assert!(Instant::now() < parked_by, "the ticker never parked again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_module_without_memory_is_a_link_failure() {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    // (module (func (export "run") (result i32) i32.const 0))
    let bytes = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f,
        0x03, 0x02, 0x01, 0x00, 0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00, 0x0a, 0x06,
        0x01, 0x04, 0x00, 0x41, 0x00, 0x0b,
    ];
    let prepared = backend.prepare("t", &Digest::of(&bytes), &bytes).unwrap();
    assert_eq!(
        prepared.as_ref().as_ref().err().map(|e| e.code),
        Some(ErrorCode::KernelLinkFailed)
    );
}

#[test]
fn a_write_far_past_the_output_limit_traps_before_allocating() {
    // out has a huge declared size; the job's output limit is 1 MiB. flood writes 64 KiB
    // chunks until it hits the limit: it must stop at 1 MiB, not allocate the declared size.
    let slots = vec![Slot::Output {
        name: "out".to_owned(),
        capacity: 1 << 40,
    }];
    let limits = EffectiveLimits {
        output_bytes: 1 << 20,
        ..LIMITS
    };
    let error = run_with("flood", "flood", slots, limits).unwrap_err();
    assert_eq!(error.code, ErrorCode::OutputLimitExceeded);
    assert!(error.usage.output_bytes <= 1 << 20, "{:?}", error.usage);
}

/// Runs an entry of kernels/wasm/edges.wasm with outputs `a` and `b` (1 KiB each) and a
/// 1 KiB output limit.
fn run_edges(entry: &str) -> Result<Completed, KernelError> {
    let output = |name: &str| Slot::Output {
        name: name.to_owned(),
        capacity: 1024,
    };
    let limits = EffectiveLimits {
        output_bytes: 1024,
        ..LIMITS
    };
    run_with("edges", entry, vec![output("a"), output("b")], limits)
}

#[test]
fn shrinking_a_buffer_gives_no_output_bytes_back() {
    // 1024 bytes written to "a", "a" shrunk to 0, then 1 byte to "b": the output limit
    // counts each buffer at its largest, so the last write is past the 1024-byte limit.
    let error = run_edges("refill").unwrap_err();
    assert_eq!(
        error.code,
        ErrorCode::OutputLimitExceeded,
        "{}",
        error.message
    );
}

#[test]
fn a_name_pointer_past_linear_memory_traps() {
    // buffer_find(2^31, 4): the pointer is an address like any other, past memory.
    let error = run_edges("find_high").unwrap_err();
    assert_eq!(error.code, ErrorCode::KernelTrapped, "{}", error.message);
}

/// Prepares (or finds) and runs a kernel through the [`Backend`] trait alone.
fn run_through<B: Backend>(
    backend: &B,
    bytes: &[u8],
    invocation: &Invocation,
) -> Result<Completed, KernelError> {
    let digest = Digest::of(bytes);
    let prepared = backend
        .cached("t", &digest)
        .unwrap_or_else(|| backend.prepare("t", &digest, bytes).unwrap());
    assert!(backend.cached("t", &digest).is_some(), "prepare caches");
    backend.run(
        prepared.as_ref().as_ref().map_err(Clone::clone)?,
        invocation,
    )
}

#[test]
fn echo_through_the_backend_trait_copies_its_input() {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    assert_eq!(
        (backend.name(), backend.format()),
        ("wasm", KernelFormat::Wasm)
    );
    let bytes = kernel("echo");
    let data: Arc<[u8]> = Arc::from(&b"hello, kernel"[..]);
    let mut invocation = Invocation {
        launch: None,
        entry: "echo".to_owned(),
        slots: vec![
            Slot::Input {
                name: "in".to_owned(),
                data: Arc::clone(&data),
            },
            Slot::Output {
                name: "out".to_owned(),
                capacity: 64,
            },
        ],
        params: vec![],
        limits: LIMITS,
        tenant: "tenant".to_owned(),
    };
    let completed = run_through(&backend, &bytes, &invocation).unwrap();
    assert_eq!(completed.written, vec![None, Some(data.to_vec())]);
    assert_eq!(completed.usage.output_bytes, data.len() as u64);

    // "in" as an output: buffer_read answers DTEE_ERR_ACCESS and echo returns 3.
    invocation.slots[0] = Slot::Output {
        name: "in".to_owned(),
        capacity: 64,
    };
    let error = run_through(&backend, &bytes, &invocation).unwrap_err();
    assert_eq!(error.code, ErrorCode::KernelFailed);
    assert_eq!(error.message, "the kernel returned status 3");
}

#[test]
fn the_cache_keeps_a_deterministic_failure() {
    let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let digest = Digest::of(b"junk");
    let prepared = backend.prepare("t", &digest, b"junk").unwrap();
    assert_eq!(
        prepared.as_ref().as_ref().err().map(|e| e.code),
        Some(ErrorCode::KernelInvalid)
    );
    assert!(backend.cached("t", &digest).is_some());
    // Capacity 1: a second module evicts the first.
    backend
        .prepare("t", &Digest::of(b"other"), b"other")
        .unwrap();
    assert!(backend.cached("t", &digest).is_none());
}

#[test]
fn the_module_cache_is_bounded_in_bytes_of_compiled_modules() {
    let bytes = kernel("echo");
    let probe = WasmBackend::new(16, usize::MAX, CompileSettings::in_process(), 1).unwrap();
    let size = cached_size(
        &probe.prepare("t", &Digest::of(b"probe"), &bytes).unwrap(),
        bytes.len(),
    );
    assert!(size > bytes.len(), "a compiled module has an image: {size}");
    // Room for two and a half compiled copies (under different digests): a third evicts
    // the least recently used, although the count bound (16) is far away.
    let backend = WasmBackend::new(16, size * 5 / 2, CompileSettings::in_process(), 1).unwrap();
    let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
    assert!(backend.prepare("t", &a, &bytes).is_ok());
    assert!(backend.prepare("t", &b, &bytes).is_ok());
    assert!(
        backend.cached("t", &a).is_some(),
        "using a leaves b least recently used"
    );
    assert!(backend.prepare("t", &c, &bytes).is_ok());
    assert!(backend.cached("t", &b).is_none(), "b was evicted");
    assert!(backend.cached("t", &a).is_some() && backend.cached("t", &c).is_some());
    assert_eq!(backend.cache.lock().unwrap().bytes(), 2 * size);
    // A module larger than the whole budget runs but is not kept.
    let small = WasmBackend::new(16, size - 1, CompileSettings::in_process(), 1).unwrap();
    assert!(small.prepare("t", &a, &bytes).is_ok());
    assert!(small.cached("t", &a).is_none());
}

/// Runs the `sha256` entry of `name` over `data` (input "data", output "digest") with `fuel`.
fn run_hash(name: &str, data: &[u8], fuel: u64) -> Result<Completed, KernelError> {
    run_with(
        name,
        "sha256",
        hash_slots(data),
        EffectiveLimits { fuel, ..LIMITS },
    )
}

/// The buffers of the `sha256` entry: input "data", output "digest".
pub(super) fn hash_slots(data: &[u8]) -> Vec<Slot> {
    vec![
        Slot::Input {
            name: "data".to_owned(),
            data: data.into(),
        },
        Slot::Output {
            name: "digest".to_owned(),
            capacity: 32,
        },
    ]
}

#[test]
fn the_sha256_host_primitive_agrees_with_the_wasm_kernel_for_a_fiftieth_of_the_fuel() {
    use sha2::Digest as _;
    for len in [0usize, 1, 55, 64, 65_537, (1 << 20) + 7] {
        let data: Vec<u8> = (0..len).map(|i| (31 * i + 7) as u8).collect();
        let expected = sha2::Sha256::digest(&data).to_vec();
        let host = run_hash("sha256_host", &data, LIMITS.fuel).unwrap();
        let wasm = run_hash("sha256", &data, LIMITS.fuel).unwrap();
        assert_eq!(
            host.written[1].as_deref(),
            Some(expected.as_slice()),
            "{len} bytes"
        );
        assert_eq!(
            wasm.written[1].as_deref(),
            Some(expected.as_slice()),
            "{len} bytes"
        );
        // Charged per byte: at least the bytes hashed, and (for a real input) far less than
        // hashing them in WebAssembly (about 80 units per byte with the unrolled sha256.c).
        let (host_fuel, wasm_fuel) = (host.usage.fuel_consumed, wasm.usage.fuel_consumed);
        assert!(
            host_fuel >= len as u64 + abi::HOST_CALL_FUEL,
            "{len}: {host_fuel}"
        );
        if len >= 65_537 {
            assert!(
                host_fuel * 50 < wasm_fuel,
                "{len}: {host_fuel} vs {wasm_fuel}"
            );
        }
    }
}

#[test]
fn the_sha256_host_primitive_is_refused_without_the_fuel_for_it() {
    // 1 MiB needs 2^20 + 64 units for the hash alone: with 100,000 the call traps before
    // hashing anything.
    let data = vec![7u8; 1 << 20];
    let error = run_hash("sha256_host", &data, 100_000).unwrap_err();
    assert_eq!(error.code, ErrorCode::FuelExhausted, "{}", error.message);
}

#[test]
fn the_sha256_host_primitive_hashes_linear_memory_and_traps_outside_it() {
    use sha2::Digest as _;
    let done = run_edges("sha256_memory").unwrap();
    assert_eq!(
        done.written[0].as_deref(),
        Some(sha2::Sha256::digest(b"abc").as_slice())
    );
    let error = run_edges("sha256_high").unwrap_err();
    assert_eq!(error.code, ErrorCode::KernelTrapped, "{}", error.message);
}

/// Runs kernels/wasm/ed25519_verify.wasm: the verdict byte, and the fuel the run used.
fn run_verify(
    key: &[u8],
    message: &[u8],
    signature: &[u8],
    fuel: u64,
) -> Result<(u8, u64), KernelError> {
    let input = |name: &str, data: &[u8]| Slot::Input {
        name: name.to_owned(),
        data: data.into(),
    };
    let slots = vec![
        input("public_key", key),
        input("message", message),
        input("signature", signature),
        Slot::Output {
            name: "valid".to_owned(),
            capacity: 1,
        },
    ];
    let done = run_with(
        "ed25519_verify",
        "verify",
        slots,
        EffectiveLimits { fuel, ..LIMITS },
    )?;
    Ok((
        done.written[3].as_ref().unwrap()[0],
        done.usage.fuel_consumed,
    ))
}

#[test]
fn the_ed25519_host_primitive_verifies_by_the_strict_rule_and_charges_before_work() {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key().to_bytes();
    let message = b"a message signed outside the sandbox".repeat(100);
    let signature = key.sign(&message).to_bytes();
    let (valid, fuel) = run_verify(&public, &message, &signature, LIMITS.fuel).unwrap();
    assert_eq!(valid, 1);
    assert!(
        fuel >= abi::ED25519_VERIFY_FUEL + message.len() as u64,
        "{fuel}"
    );
    // A changed message, a changed signature, a key of small order: 0, not an error.
    let mut tampered = message.clone();
    tampered[0] ^= 1;
    assert_eq!(
        run_verify(&public, &tampered, &signature, LIMITS.fuel)
            .unwrap()
            .0,
        0
    );
    let mut forged = signature;
    forged[10] ^= 1;
    assert_eq!(
        run_verify(&public, &message, &forged, LIMITS.fuel)
            .unwrap()
            .0,
        0
    );
    let identity = {
        let mut point = [0u8; 32];
        point[0] = 1;
        point
    };
    assert_eq!(
        run_verify(&identity, &message, &signature, LIMITS.fuel)
            .unwrap()
            .0,
        0
    );
    // Too little fuel for the verification: fuel_exhausted, before any work.
    let error = run_verify(&public, &message, &signature, 50_000).unwrap_err();
    assert_eq!(error.code, ErrorCode::FuelExhausted, "{}", error.message);
}
