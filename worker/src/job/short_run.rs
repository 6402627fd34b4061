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
//! and state are at most [`SHORT_RUN_BYTES`] (they are copied in), the fuel bounds instructions
//! and host primitives (charged per byte), the memory bound bounds what one bulk memory
//! instruction touches, and the epoch deadline bounds the rest.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

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
/// Kernels remembered as too long for a short run; the set starts again when full.
const MAX_LONG_KERNELS: usize = 4096;

/// Kernels, by tenant, digest and entry, whose short run reached its budget.
#[derive(Debug, Default)]
pub(crate) struct LongKernels(Mutex<HashSet<(String, Digest, String)>>);

impl LongKernels {
    fn key(job: &Admitted) -> (String, Digest, String) {
        let kernel = &job.parsed.spec.kernel;
        (
            job.tenant.clone(),
            kernel.digest.clone(),
            kernel.entry.clone(),
        )
    }

    fn contains(&self, job: &Admitted) -> bool {
        self.0
            .lock()
            .expect("long kernels lock")
            .contains(&Self::key(job))
    }

    fn insert(&self, job: &Admitted) {
        let mut long = self.0.lock().expect("long kernels lock");
        if long.len() >= MAX_LONG_KERNELS {
            long.clear();
        }
        long.insert(Self::key(job));
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
