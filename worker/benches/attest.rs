//! The cost of attesting one result: `Attestor::attest` serializes an execution statement,
//! canonicalizes it (RFC 8785) and signs it (Ed25519, in a DSSE envelope). Software provider:
//! TPM and SEV-SNP evidence is produced at start-up and on refresh, not per result, so the
//! per-result cost is the same on every platform.
//!
//! ```text
//! cargo bench -p dtee-worker --bench attest
//! ```
//!
//! Times each call separately and prints the median and the 90th percentile. A plain binary
//! (`harness = false`): no benchmarking framework, and `cargo clippy --all-targets` builds it.

use std::time::{Duration, Instant};

use dtee_schemas::attestation::execution::{
    ExecutionStatement, NamedDigest, OutputDigest, EXECUTION_SCHEMA,
};
use dtee_schemas::job::{KernelFormat, KernelRef};
use dtee_schemas::result::{
    EffectiveLimits, JobStatus, ResourceUsage, StateRead, StateReport, StateWritten,
};
use dtee_schemas::Digest;
use dtee_worker::attestation::{Attestor, SoftwareProvider};

/// Calls timed after the warm-up.
const ITERATIONS: usize = 5_000;
/// Calls made first and not timed (caches, allocator, CPU frequency).
const WARM_UP: usize = 200;

fn main() {
    let attestor = Attestor::start(
        "bench-worker",
        Digest::of(b"bench-measurement"),
        Box::new(SoftwareProvider {
            measurement: Digest::of(b"bench-measurement"),
        }),
    )
    .expect("a software attestor starts");
    let statement = statement(&attestor);
    let payload = serde_json::to_value(&statement)
        .map(|value| dtee_schemas::canonical::to_canonical_vec(&value))
        .expect("the statement serializes")
        .expect("the statement has a canonical form");

    let mut per_call = Vec::with_capacity(ITERATIONS);
    for call in 0..WARM_UP + ITERATIONS {
        // The statement is moved into `attest`: clone it outside the timed span.
        let statement = statement.clone();
        let started = Instant::now();
        std::hint::black_box(attestor.attest(statement));
        if call >= WARM_UP {
            per_call.push(started.elapsed());
        }
    }
    per_call.sort();

    println!(
        "attest: median {:.1} us, p90 {:.1} us per call over {ITERATIONS} calls \
         (canonical statement of {} bytes, software provider)",
        micros(percentile(&per_call, 50)),
        micros(percentile(&per_call, 90)),
        payload.len(),
    );
    if cfg!(debug_assertions) {
        println!(
            "note: built without optimizations (debug assertions on); the default bench profile \
             gives representative figures"
        );
    }
}

/// The `p`th percentile of sorted durations (nearest rank).
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// A statement the size of a typical successful job's: a kernel, two inputs, one state key
/// read and written, one output, limits and resources.
fn statement(attestor: &Attestor) -> ExecutionStatement {
    ExecutionStatement {
        schema: EXECUTION_SCHEMA.to_owned(),
        job_id: Digest::of(b"job"),
        kernel: Some(KernelRef {
            digest: Digest::of(b"kernel"),
            format: KernelFormat::Wasm,
            entry: "increment".to_owned(),
            target: "wasm".to_owned(),
            profile: None,
        }),
        nonce: Some("7f3c2a9e0b1d4c5f".to_owned()),
        secrets: Vec::new(),
        inputs: ["a", "b"]
            .into_iter()
            .map(|name| NamedDigest {
                name: name.to_owned(),
                digest: Digest::of(name.as_bytes()),
            })
            .collect(),
        state: Some(StateReport {
            read: vec![StateRead {
                name: "counter".to_owned(),
                key: "counters/17".to_owned(),
                version: 41,
                digest: Digest::of(b"41"),
            }],
            written: vec![StateWritten {
                name: "counter".to_owned(),
                key: "counters/17".to_owned(),
                version: 42,
                digest: Digest::of(b"42"),
            }],
        }),
        outputs: vec![OutputDigest {
            name: "out".to_owned(),
            size: 4096,
            digest: Digest::of(b"out"),
        }],
        limits: Some(EffectiveLimits {
            timeout_ms: 10_000,
            memory_bytes: 64 << 20,
            fuel: 1 << 32,
            output_bytes: 1 << 20,
        }),
        resources: Some(ResourceUsage {
            fuel_consumed: 123_456,
            peak_memory_bytes: 2 << 16,
            wall_time_us: 180,
            output_bytes: 4096,
            ..ResourceUsage::default()
        }),
        status: JobStatus::Succeeded,
        error_code: None,
        execution_id: "0123456789abcdef0123456789abcdef".to_owned(),
        started_at_unix_ms: 1_760_000_000_000,
        finished_at_unix_ms: 1_760_000_000_004,
        worker: attestor.worker_ref(),
        tcb: attestor.tcb(),
    }
}
