//! Running a job: snapshot the bound state, run the kernel in a kernel slot, and commit its
//! writes in one atomic, exactly-once step. A commit refused because the state changed since
//! the snapshot runs the job again on fresh state, a bounded number of times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dtee_schemas::job::{encode_base64, AccessMode, CheckedBuffer};
use dtee_schemas::result::{OutputData, ResourceUsage, StateRead, StateReport, StateWritten};
use dtee_schemas::run::GpuDevice;
use dtee_schemas::state::applied_key;
use dtee_schemas::{Digest, ErrorCode};
use tracing::debug;

use super::admit::Admitted;
use super::outcome::{self, CachePolicy, Failure, Outcome, Success};
use super::plan::Plan;
use super::reads::{larger_in_slot, HeldResult, Reads, SMALL_READ_BYTES};
use super::short_run;
use super::Kernel;
use super::{Context, Halt};
use crate::backend::{Completed, Invocation, KernelError, ParamValue, Runner, Slot};
use crate::failure::{Backoff, Transient};
use crate::fair::SlotPermit;
use crate::hooks::{self, TestHook};
use crate::state::{Commit, CommitEntry, Seen, Snapshot, WriteOp};

/// Runs the job to its outcome: a success (committed, if it writes state) or a failure.
pub(crate) async fn execute(
    ctx: &Context,
    job: &Admitted,
    plan: &Plan,
    kernel: Kernel,
    mut slots: Vec<Slot>,
    mut first_snapshot: Option<Vec<Seen>>,
    reads: &mut Reads<'_>,
) -> Result<Outcome, Halt> {
    let params = params_of(job);
    let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
    // The GPU the last run used, named by a failure after it.
    let mut last_device = None;
    for attempt in 1..=ctx.config.state_max_attempts {
        // The first attempt runs on the snapshot read with the job's prior answers (one round
        // trip fewer), a later one on a fresh snapshot.
        let seen = match first_snapshot.take() {
            Some(seen) => seen,
            None => snapshot(ctx, job, reads).await?,
        };
        fill_state(job, plan, &seen, &mut slots)?;
        let invocation = Invocation {
            entry: job.parsed.spec.kernel.entry.clone(),
            slots: slots.clone(),
            params: params.clone(),
            limits: plan.limits,
            launch: job.parsed.spec.launch,
            tenant: job.tenant.clone(),
        };
        let (completed, kernel_slot) = run_kernel(ctx, job, plan, &kernel, invocation).await?;
        // A run that wrote large outputs keeps its kernel slot until its result has a result
        // slot (`reads`); any other gives it back now.
        let written: usize = slots
            .iter()
            .zip(&completed.written)
            .filter(|(slot, _)| matches!(slot, Slot::Output { .. }))
            .filter_map(|(_, bytes)| bytes.as_ref().map(Vec::len))
            .sum();
        // (Half of it: a result carries its outputs in base64, a third larger.)
        let kernel_slot = (written as u64 > SMALL_READ_BYTES / 2).then_some(kernel_slot);
        let (entries, state) = writes(job, &seen, &completed);
        let writes_state = !state.written.is_empty();
        let usage = completed.usage;
        let device = completed.device.clone();
        last_device.clone_from(&device);
        let success = Success {
            outputs: outputs(job, completed),
            state: (!job.bindings.is_empty()).then_some(state),
            limits: plan.limits,
            resources: usage,
            attempts: attempt,
            device: device.clone(),
        };
        let outcome = outcome::succeeded(ctx, job, success);
        check_result_size(ctx, &outcome, plan, usage, &device)?;
        let Some(hash_tag) = job.bindings.first().map(|b| b.key.hash_tag()) else {
            return Ok(held(ctx, job, outcome, kernel_slot).await);
        };
        // A job that may write state commits even when this run wrote nothing: that commit
        // writes and checks nothing (the run stands at its snapshot) but records the job as
        // applied with this result, unless another execution of the job was recorded first.
        // Otherwise that other execution (a duplicate publish, a redelivery while this one
        // runs) could commit writes after this answer was published: one id, two answers.
        if !writes_state && job.writable_hash_tag().is_none() {
            return Ok(held(ctx, job, outcome, kernel_slot).await);
        }
        match commit(ctx, job, &hash_tag, &entries, &outcome).await? {
            Commit::Committed { cached } => {
                hooks::pause_after_commit(&ctx.config, job.id()).await;
                let mut outcome = outcome;
                if cached {
                    outcome.cache = CachePolicy::Cached;
                }
                return Ok(held(ctx, job, outcome, kernel_slot).await);
            }
            // A redelivery after a crash between commit and ack: nothing is applied again,
            // and the result recorded the first time is the answer.
            Commit::AlreadyApplied(first) => {
                let key = applied_key(&ctx.config.namespace, &hash_tag, job.id());
                let read = larger_in_slot(ctx, &job.tenant, first, &key)
                    .await
                    .map_err(Transient::from)?;
                // Gone already (its lifetime ended since the commit saw it): the whole job is
                // tried again, as after any transient failure (not a state conflict).
                let Some((first, slot)) = read else {
                    return Err(Transient::Redis(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "the job's applied record expired while it was read",
                    )))
                    .into());
                };
                let mut first = Outcome::cached(job.id().clone(), first, CachePolicy::Final);
                if slot.is_some() {
                    first.held = slot;
                    return Ok(first);
                }
                return Ok(held(ctx, job, first, kernel_slot).await);
            }
            Commit::Conflict(key) => {
                debug!(job_id = %job.id(), %key, attempt, "state conflict; running again on fresh state");
                drop(kernel_slot);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            refused => {
                return Err(Halt::Fail(refused_commit(
                    ctx, refused, plan, usage, device,
                )))
            }
        }
    }
    Err(Halt::Fail(
        Failure::new(
            ErrorCode::StateConflict,
            format!(
                "the bound state kept changing; gave up after {} attempts",
                ctx.config.state_max_attempts
            ),
        )
        .with_limits(plan.limits)
        .on_device(last_device),
    ))
}

/// The job's scalar parameters, in job order.
fn params_of(job: &Admitted) -> Vec<ParamValue> {
    job.parsed
        .spec
        .params
        .iter()
        .map(|param| ParamValue {
            name: param.name.clone(),
            ty: param.ty,
            value: param.value,
        })
        .collect()
}

/// Commits the run's writes with the result recorded beside them, atomically and at most once
/// per job id.
async fn commit(
    ctx: &Context,
    job: &Admitted,
    hash_tag: &str,
    entries: &[CommitEntry],
    outcome: &Outcome,
) -> Result<Commit, Transient> {
    let started = Instant::now();
    let commit = ctx
        .state
        .commit(
            hash_tag,
            job.id(),
            entries,
            &outcome.body,
            ctx.config.applied_ttl,
            // On one node the result is cached in the same step (a round trip fewer, and no
            // moment where the job is applied but its result not cached); on a cluster the
            // result key lies in another slot, and the result is cached after it.
            (!ctx.store.is_cluster()).then_some(ctx.config.result_ttl),
            ctx.config.max_state_value_bytes,
        )
        .await?;
    ctx.telemetry.state_committed(started.elapsed(), &commit);
    Ok(commit)
}

/// The failure of a commit the script refused before writing anything.
fn refused_commit(
    ctx: &Context,
    commit: Commit,
    plan: &Plan,
    usage: ResourceUsage,
    device: Option<GpuDevice>,
) -> Failure {
    let (code, message) = match commit {
        Commit::TooLarge { key, size } => (
            ErrorCode::StateValueTooLarge,
            format!(
                "state key {key} would hold {size} bytes; bound values hold at most {} (DTEE_MAX_STATE_VALUE_BYTES or Redis's proto-max-bulk-len); nothing was written",
                ctx.config.max_state_value_bytes
            ),
        ),
        Commit::WrongType(key) => (
            ErrorCode::InternalError,
            format!("redis key {key} holds a value the worker never writes (wrong type or not a version number); nothing was written"),
        ),
        other => (
            ErrorCode::InternalError,
            format!("unexpected commit answer {other:?}"),
        ),
    };
    Failure::ran(
        KernelError {
            code,
            message,
            usage,
            device: device.map(Box::new),
        },
        plan.limits,
    )
}

/// Reads the bound state in one atomic snapshot.
async fn snapshot(ctx: &Context, job: &Admitted, reads: &mut Reads<'_>) -> Result<Vec<Seen>, Halt> {
    if job.bindings.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let full = state_read_limit(ctx);
    let keys = job.snapshot_keys();
    if reads.large_state() {
        reads.take_slot().await;
    }
    let mut snapshot = ctx.state.snapshot(&keys, reads.state_limit(full)).await?;
    if matches!(snapshot, Snapshot::TooLarge(total) if total <= full) && !reads.holds_slot() {
        // More than a job reads on its own: read again once it holds a data slot.
        reads.found_large_state();
        reads.take_slot().await;
        snapshot = ctx.state.snapshot(&keys, full).await?;
    }
    ctx.telemetry.state_read(started.elapsed());
    let seen = seen_or_refused(ctx, snapshot)?;
    reads.read_state(&seen);
    Ok(seen)
}

/// The most bytes a job's readable state values may total: the same bound as its inputs
/// (`DTEE_MAX_INPUT_BYTES`), checked by the snapshot before it reads any value.
pub(crate) fn state_read_limit(ctx: &Context) -> u64 {
    ctx.config.max_input_bytes as u64
}

/// The keys the snapshot saw, or the job's refusal when its values total too many bytes.
pub(crate) fn seen_or_refused(ctx: &Context, snapshot: Snapshot) -> Result<Vec<Seen>, Halt> {
    match snapshot {
        Snapshot::Seen(seen) => Ok(seen),
        Snapshot::TooLarge(total) => Err(Halt::Fail(Failure::new(
            ErrorCode::ExcessiveResourceRequirements,
            format!(
                "the job's readable state values total {total} bytes; this worker reads at most {} (DTEE_MAX_INPUT_BYTES), and read none of them",
                state_read_limit(ctx)
            ),
        ))),
        Snapshot::WrongType(key) => Err(Halt::Fail(Failure::new(
            ErrorCode::InternalError,
            format!("redis key {key} holds a value the worker never writes (not a string); nothing was read"),
        ))),
    }
}

/// Puts each value the snapshot read in its slot; a key that must exist and does not fails
/// the job.
fn fill_state(job: &Admitted, plan: &Plan, seen: &[Seen], slots: &mut [Slot]) -> Result<(), Halt> {
    for (binding, seen) in job.bindings.iter().zip(seen) {
        if !seen.exists && !binding.may_be_absent {
            return Err(Halt::Fail(
                Failure::new(
                    ErrorCode::StateBindingNotFound,
                    format!(
                        "state key {} (buffer {:?}) does not exist and may_be_absent is false",
                        binding.key, binding.name
                    ),
                )
                .with_limits(plan.limits),
            ));
        }
        if let Some(Slot::State { current, .. }) = slots.get_mut(binding.buffer) {
            *current = Arc::from(seen.value.as_deref().unwrap_or_default());
        }
    }
    Ok(())
}

/// A result over 1 MiB takes a result slot while the run's kernel slot is still held, then the
/// kernel slot goes (`reads`).
async fn held(
    ctx: &Context,
    job: &Admitted,
    mut outcome: Outcome,
    kernel_slot: Option<SlotPermit>,
) -> Outcome {
    outcome.held = HeldResult::take(ctx, &job.tenant, outcome.body.len()).await;
    drop(kernel_slot);
    outcome
}

/// Runs the kernel once, in a kernel slot: a short run here, or on a blocking thread. Answers
/// the slot with what the kernel wrote.
async fn run_kernel(
    ctx: &Context,
    job: &Admitted,
    plan: &Plan,
    kernel: &Kernel,
    invocation: Invocation,
) -> Result<(Completed, SlotPermit), Halt> {
    // A GPU job waits for its device, not for a CPU kernel slot.
    let permit = match &plan.runner {
        Runner::Wasm(_) => ctx.kernel_slots.acquire(&job.tenant).await,
        Runner::Gpu(gpu) => gpu.slots.acquire(&job.tenant).await,
    };
    // A run counts once, however it ends: a short run stopped at its budget and run again (on
    // a blocking thread here, or in the usual order after a late one) is one run.
    if !plan.short_only {
        ctx.telemetry.kernel_started();
    }
    let started = Instant::now();
    let completed = match short_run::try_short(ctx, job, &plan.runner, kernel, &invocation) {
        Some(completed) => completed,
        None if plan.short_only => return Err(Halt::UsualOrder),
        None => run_blocking(ctx, job, plan, kernel, invocation).await?,
    };
    if plan.short_only {
        ctx.telemetry.kernel_started();
    }
    let error = completed.as_ref().err().map(|error| error.code);
    ctx.telemetry.kernel_stopped(started.elapsed(), error);
    completed
        .map(|completed| (completed, permit))
        .map_err(|error| Halt::Fail(Failure::ran(error, plan.limits)))
}

/// Runs the kernel on a blocking thread.
async fn run_blocking(
    ctx: &Context,
    job: &Admitted,
    plan: &Plan,
    kernel: &Kernel,
    invocation: Invocation,
) -> Result<Result<Completed, KernelError>, Halt> {
    let runner = plan.runner.clone();
    let kernel = kernel.clone();
    let panic_hook = hooks::active(&ctx.config, TestHook::PanicInKernel);
    match tokio::task::spawn_blocking(move || {
        assert!(!panic_hook, "dtee-test-hook: panic-in-kernel");
        runner.run(&kernel, &invocation)
    })
    .await
    {
        Ok(completed) => Ok(completed),
        // A panic while running this job would most likely recur on every retry.
        Err(error) if error.is_panic() => Ok(Err(short_run::panicked(job))),
        Err(source) => Err(Halt::Retry(Transient::TaskLost {
            what: "kernel",
            source,
        })),
    }
}

/// What the commit writes, and what the result reports of the state read and written.
fn writes(job: &Admitted, seen: &[Seen], completed: &Completed) -> (Vec<CommitEntry>, StateReport) {
    let mut report = StateReport::default();
    let mut entries = Vec::with_capacity(job.bindings.len());
    for (binding, seen) in job.bindings.iter().zip(seen) {
        if let Some(value) = &seen.value {
            report.read.push(StateRead {
                name: binding.name.clone(),
                key: binding.key.to_string(),
                version: seen.version,
                digest: Digest::of(value),
            });
        }
        let written = completed.written.get(binding.buffer).cloned().flatten();
        let op = match (binding.mode, written) {
            (AccessMode::ReadOnly, _) | (_, None) => WriteOp::None,
            (AccessMode::AppendOnly, Some(bytes)) => WriteOp::Append(bytes),
            (_, Some(bytes)) => WriteOp::Set(bytes),
        };
        if let WriteOp::Set(bytes) | WriteOp::Append(bytes) = &op {
            report.written.push(StateWritten {
                name: binding.name.clone(),
                key: binding.key.to_string(),
                version: seen.version + 1,
                digest: Digest::of(bytes),
            });
        }
        entries.push(CommitEntry {
            key: binding.key.clone(),
            seen_version: seen.version,
            op,
        });
    }
    (entries, report)
}

/// The output buffers the kernel wrote, in job order.
fn outputs(job: &Admitted, completed: Completed) -> Vec<OutputData> {
    output_data(&job.parsed.buffers, completed.written)
}

/// The output buffers' bytes as a result gives them, from what a run wrote for each buffer.
pub(crate) fn output_data(
    buffers: &[CheckedBuffer],
    written: Vec<Option<Vec<u8>>>,
) -> Vec<OutputData> {
    buffers
        .iter()
        .zip(written)
        .filter_map(|(buffer, written)| match buffer {
            CheckedBuffer::Output { name, .. } => {
                let bytes = written.unwrap_or_default();
                Some(OutputData {
                    name: name.clone(),
                    size: bytes.len() as u64,
                    digest: Digest::of(&bytes),
                    data: encode_base64(&bytes),
                })
            }
            _ => None,
        })
        .collect()
}

/// A result the broker would refuse could never be published: it is refused here, before
/// anything is committed, instead of retrying its publication for ever.
fn check_result_size(
    ctx: &Context,
    outcome: &Outcome,
    plan: &Plan,
    usage: ResourceUsage,
    device: &Option<GpuDevice>,
) -> Result<(), Failure> {
    if outcome.body.len() <= ctx.config.max_result_bytes {
        return Ok(());
    }
    let error = KernelError {
        code: ErrorCode::OutputLimitExceeded,
        message: format!(
            "the result would be {} bytes; this worker publishes at most {} (DTEE_MAX_RESULT_BYTES)",
            outcome.body.len(),
            ctx.config.max_result_bytes
        ),
        usage,
        device: device.clone().map(Box::new),
    };
    Err(Failure::ran(error, plan.limits))
}
