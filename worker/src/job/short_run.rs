//! A short first run of a WebAssembly kernel on the job's own task.
//!
//! Most kernels finish in microseconds, and handing each to a blocking thread and back costs
//! more than running it (two thread wake-ups per job: measured, 50 µs of worker CPU per trivial
//! job). So a kernel first runs where the job's task is, within a [`ShortRun`] budget: a little
//! fuel, a few MiB of linear memory, one or two epoch ticks. A kernel that reaches one of those
//! (and not its own limit) is run again, from the start, on a blocking thread, with its own
//! limits, and its kernel is remembered, for its tenant, as one that goes there directly. A
//! kernel sees nothing but its buffers and parameters, so the second run does what the first
//! would have done; the first run's work is lost, at most the budget.
//!
//! What a short run can hold an async thread for is bounded before it starts: the job's inputs
//! and state are at most [`SHORT_RUN_BYTES`] (they are copied in), the memory bound bounds what
//! one bulk memory instruction or host call touches, the epoch deadline (checked at function
//! entries and loop heads) and the host's own deadline check (at every host call) bound the
//! time, and in the `deterministic` profile the fuel bounds instructions and host primitives
//! too. The `fast` profile meters no fuel: there the deadlines alone bound it.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use dtee_schemas::job::WasmProfile;
use dtee_schemas::{Digest, ErrorCode};

use super::admit::Admitted;
use super::Context;
use crate::backend::wasm::ShortRun;
use crate::backend::{AnyKernel, Completed, Invocation, KernelError, Runner, Slot};
use crate::hooks::{self, TestHook};

/// Inputs and state a job may bring to a short run, in bytes.
pub(crate) const SHORT_RUN_BYTES: usize = 1 << 20;
/// Linear memory of a short run, in bytes.
const SHORT_RUN_MEMORY_BYTES: u64 = 4 << 20;
/// Wall-clock limit of a short run, milliseconds (the epoch ticks every 2 ms, so 2 to 4 ms).
const SHORT_RUN_TIMEOUT_MS: u64 = 2;
/// Kernels a tenant has that are remembered as too long for a short run. A tenant that reaches
/// this many has every kernel run on a blocking thread from then on: a short run holds one of
/// the async runtime's threads for up to a few milliseconds, and a tenant with endless new
/// long kernels (or one module's many exports) must not keep doing that to everyone's jobs.
const MAX_LONG_KERNELS_PER_TENANT: usize = 64;
/// Tenants with kernels remembered; every set starts again past this many.
const MAX_TENANTS: usize = 4096;

/// A kernel as a short run knows it: digest, entry and profile (a kernel that is long in one
/// profile may be short in the other).
type KernelKey = (Digest, String, WasmProfile);

/// Kernels, by tenant, whose short run reached its budget.
#[derive(Debug, Default)]
pub(crate) struct LongKernels(Mutex<HashMap<String, HashSet<KernelKey>>>);

impl LongKernels {
    fn kernel(job: &Admitted) -> KernelKey {
        let kernel = &job.parsed.spec.kernel;
        (
            kernel.digest.clone(),
            kernel.entry.clone(),
            kernel.profile.unwrap_or_default(),
        )
    }

    pub(super) fn contains(&self, job: &Admitted) -> bool {
        self.has(&job.tenant, || Self::kernel(job))
    }

    fn insert(&self, job: &Admitted) {
        self.remember(&job.tenant, Self::kernel(job));
    }

    /// Whether `tenant` has `kernel` remembered, or so many long kernels that every one of its
    /// kernels counts as long; the key is made only for a tenant that has any (most have none),
    /// so the common case allocates nothing.
    fn has(&self, tenant: &str, kernel: impl FnOnce() -> KernelKey) -> bool {
        let long = self.0.lock().expect("long kernels lock");
        long.get(tenant).is_some_and(|kernels| {
            kernels.len() >= MAX_LONG_KERNELS_PER_TENANT || kernels.contains(&kernel())
        })
    }

    fn remember(&self, tenant: &str, kernel: KernelKey) {
        let mut long = self.0.lock().expect("long kernels lock");
        if !long.contains_key(tenant) && long.len() >= MAX_TENANTS {
            long.clear();
        }
        let kernels = long.entry(tenant.to_owned()).or_default();
        if kernels.len() < MAX_LONG_KERNELS_PER_TENANT {
            kernels.insert(kernel);
        }
    }
}

/// Runs a WebAssembly job's kernel here if it is short; `None` when it is to run on a blocking
/// thread (not WebAssembly, short runs off, too many input bytes, known to be long, or it just
/// reached the budget).
pub(crate) fn try_short(
    ctx: &Context,
    job: &Admitted,
    runner: &Runner,
    kernel: &AnyKernel,
    invocation: &Invocation,
) -> Option<Result<Completed, KernelError>> {
    let (Runner::Wasm(backend), AnyKernel::Wasm(prepared)) = (runner, kernel) else {
        return None;
    };
    let fuel = ctx.config.short_run_fuel;
    if fuel == 0
        || slot_bytes(&invocation.slots) > SHORT_RUN_BYTES
        || ctx.long_kernels.contains(job)
    {
        return None;
    }
    let short = ShortRun {
        fuel,
        memory_bytes: SHORT_RUN_MEMORY_BYTES,
        timeout_ms: SHORT_RUN_TIMEOUT_MS,
    };
    let panic_hook = hooks::active(&ctx.config, TestHook::PanicInKernel);
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        assert!(!panic_hook, "dtee-test-hook: panic-in-kernel");
        backend.run_short(prepared, invocation, short)
    }));
    match ran {
        Ok(Some(done)) => Some(done),
        Ok(None) => {
            ctx.long_kernels.insert(job);
            None
        }
        Err(_) => Some(Err(panicked(job))),
    }
}

/// The answer to a run that panicked (a bug in the worker or in Wasmtime): `internal_error`,
/// not final, so that a resubmission runs it again, instead of a retry for ever.
pub(crate) fn panicked(job: &Admitted) -> KernelError {
    tracing::error!(job_id = %job.id(), "the kernel's run panicked; answering internal_error");
    KernelError {
        code: ErrorCode::InternalError,
        message:
            "the worker failed while running the kernel (a panic); this is a bug in the worker"
                .to_owned(),
        usage: Default::default(),
        device: None,
    }
}

/// The bytes a run copies in before the kernel starts: inputs and state values.
fn slot_bytes(slots: &[Slot]) -> usize {
    slots
        .iter()
        .map(|slot| match slot {
            Slot::Input { data, .. } => data.len(),
            Slot::State { current, .. } => current.len(),
            Slot::Output { .. } => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(n: usize) -> KernelKey {
        (
            Digest::of(&n.to_le_bytes()),
            "run".to_owned(),
            WasmProfile::Deterministic,
        )
    }

    #[test]
    fn one_tenants_long_kernels_never_push_out_anothers() {
        let long = LongKernels::default();
        long.remember("alice", kernel(0));
        for n in 0..3 * MAX_LONG_KERNELS_PER_TENANT {
            long.remember("mallory", kernel(n + 1));
        }
        assert!(long.has("alice", || kernel(0)));
        assert!(!long.has("alice", || kernel(1)), "per tenant");
        let fast = || (kernel(0).0, kernel(0).1, WasmProfile::Fast);
        assert!(!long.has("alice", fast), "per profile");
        // A tenant with that many long kernels gets no more short runs, for any kernel.
        assert!(long.has("mallory", || kernel(1 << 20)));
        assert!(long.has("mallory", fast));
        let sets = long.0.lock().unwrap();
        assert_eq!(sets["mallory"].len(), MAX_LONG_KERNELS_PER_TENANT);
    }
}
