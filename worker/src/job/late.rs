//! Prior answers read after a short run, in the round trip that caches its result.
//!
//! A job's prior answers ([`super::prior`]: its cached result, then its tenant's revocation)
//! are read before it runs, and its result is cached after: two Redis round trips on the path
//! of every job. For a job whose run costs less than a round trip, the order is turned round:
//! the kernel runs first, and one script then reads both answers and, when neither is there,
//! caches the result, atomically ([`crate::store::Store::late`]). A cached result or a
//! revocation found then is the answer, as it would have been before the run, and the run is
//! discarded: nothing of it is published or cached, and it had no effect anywhere else.
//!
//! That holds only for a job with no effect but its result, and whose run is known to be
//! cheap, so a job goes this way only when all of these hold ([`may`], then [`planned`]):
//!
//! - it binds no state (nothing to snapshot or commit) and names no secrets (nothing released
//!   to a job that may be cancelled);
//! - it runs in WebAssembly, its kernel is compiled in this worker already (no compilation for
//!   a job whose answer may exist) and has not been found too long for a short run for this
//!   tenant, and short runs are on (`DTEE_SHORT_RUN_FUEL`);
//! - its inputs are all inline and total at most [`SHORT_RUN_BYTES`] (no blob read);
//! - Redis is one node (on a cluster the two keys lie in different slots, which one script
//!   cannot touch) and `DTEE_LATE_ANSWERS` is on (the default).
//!
//! The run is a short run only ([`super::plan::Plan::short_only`]): should it reach the
//! short-run budget, the path stops before running it again and the job takes the usual order,
//! so that no more than a short run's budget is ever spent ahead of the prior answers. So does
//! a job whose answers cannot be read afterwards (Redis refuses a script that may write while
//! it is out of memory, where the usual order may still answer with reads alone). A failure
//! decided before or by the run (a kernel that traps, say) is an outcome like any other: the
//! answers are read before it is published. The short run waits for a kernel slot as any run
//! does, so a cached or cancelled job settled late is answered once its tenant's turn for a
//! slot comes, not at once.

use dtee_schemas::job::{CheckedBuffer, InputSource};
use dtee_schemas::ErrorCode;
use tracing::{debug, warn};

use super::admit::Admitted;
use super::outcome::{self, CachePolicy, Failure, Outcome};
use super::plan::Plan;
use super::reads::{Reads, SMALL_READ_BYTES};
use super::short_run::SHORT_RUN_BYTES;
use super::{execute, fetch, plan, Context, Halt, Kernel};
use crate::backend::Runner;
use crate::store::Late;

/// Whether `job` may take the late order, by what is known without planning it: the checks
/// that cost nothing, before [`planned`].
pub(crate) fn may(ctx: &Context, job: &Admitted) -> bool {
    ctx.config.late_answers
        && ctx.config.short_run_fuel > 0
        && job.bindings.is_empty()
        && job.secrets().is_empty()
        && !ctx.store.is_cluster()
        && inline_bytes(job).is_some_and(|bytes| bytes <= SHORT_RUN_BYTES)
}

/// The plan of a job that [`may`] take the late order, and its kernel, if it takes it: it runs
/// in WebAssembly, its kernel is compiled here (taken from the cache now: nothing compiles for
/// a job whose answer may exist) and not known to outgrow a short run for its tenant.
pub(crate) fn planned(ctx: &Context, job: &Admitted) -> Option<(Plan, Kernel)> {
    let plan = plan::plan(ctx, job).ok()?;
    if !matches!(plan.runner, Runner::Wasm(_)) || ctx.long_kernels.contains(job) {
        return None;
    }
    let kernel = plan
        .runner
        .cached(&job.tenant, &job.parsed.spec.kernel.digest)?
        .ok()?;
    Some((plan, kernel))
}

/// The total of the job's inputs if every one is inline.
fn inline_bytes(job: &Admitted) -> Option<usize> {
    let mut total = 0usize;
    for buffer in &job.parsed.buffers {
        match buffer {
            CheckedBuffer::Input {
                source: InputSource::Inline(bytes),
                ..
            } => total = total.saturating_add(bytes.len()),
            CheckedBuffer::Input { .. } => return None,
            _ => {}
        }
    }
    Some(total)
}

/// Runs a job that takes the late order in a short run, then settles its outcome against the
/// prior answers. `Err(Halt::UsualOrder)` when the kernel did not finish in the short run, or
/// the answers could not be read: the caller takes the usual order.
pub(crate) async fn run(
    ctx: &Context,
    job: &Admitted,
    mut plan: Plan,
    kernel: Kernel,
) -> Result<Outcome, Halt> {
    plan.short_only = true;
    let ran = async {
        let mut reads = Reads::new(ctx, &job.tenant);
        reads.runs_on(ctx, &plan.runner);
        let inputs = fetch::measure_inputs(ctx, job, &plan).await?;
        let secrets = crate::secrets::SecretValues::default();
        let slots = fetch::slots(ctx, job, &plan, inputs, &secrets, &mut reads).await?;
        execute::execute(ctx, job, &plan, kernel, slots, None, &mut reads).await
    }
    .await;
    let outcome = match ran {
        Ok(outcome) => outcome,
        Err(Halt::Fail(failure)) => outcome::failed(ctx, job, failure),
        Err(other) => return Err(other),
    };
    settle(ctx, job, outcome).await
}

/// Reads the prior answers and, when neither is there, caches `outcome` if its policy caches it
/// in the result cache: the answer is whichever comes first in the order of [`super::prior`].
async fn settle(ctx: &Context, job: &Admitted, outcome: Outcome) -> Result<Outcome, Halt> {
    let id = job.id();
    // A stateless job's outcome claims no applied record: `Final` is the result cache alone.
    let store = matches!(outcome.cache, CachePolicy::Final) && outcome.claim.is_none();
    let result = store.then_some((outcome.body.as_slice(), ctx.config.result_ttl));
    let late = match ctx
        .store
        .late(&job.tenant, id, result, SMALL_READ_BYTES)
        .await
    {
        Ok(late) => late,
        // Nothing was cached: Redis refuses the whole script while it refuses writes (out of
        // memory, a replica), its one write is the last thing it does, and a refused write
        // (an ACL without it) stops it there. The usual order may still answer with reads
        // alone; should the reply alone have been lost, it finds the result cached and
        // answers with it.
        Err(error) => {
            warn!(job_id = %id, %error, "the answers after a short run could not be read or settled; taking the usual order");
            return Err(Halt::UsualOrder);
        }
    };
    let settled = answer(ctx, job, outcome, late).await;
    // Counted when the answers read late decided it.
    if matches!(settled, Ok(_) | Err(Halt::Fail(_))) {
        ctx.telemetry.settled_late();
    }
    settled
}

/// The answer `late` gives, `outcome` being the run's.
async fn answer(
    ctx: &Context,
    job: &Admitted,
    mut outcome: Outcome,
    late: Late,
) -> Result<Outcome, Halt> {
    let id = job.id();
    match late {
        Late::Stored => {
            outcome.cache = CachePolicy::Cached;
            Ok(outcome)
        }
        Late::Nothing => Ok(outcome),
        Late::Cached(stored) => {
            // This run is not the answer: its result slot goes before a large cached result
            // takes one (a task never waits for a second slot while it holds one).
            drop(outcome);
            let key = ctx.store.result_key(id);
            // Gone since the script saw it (its lifetime ended): the usual order, as if it had
            // never been there.
            let Some((body, held)) =
                super::reads::larger_in_slot(ctx, &job.tenant, stored, &key).await?
            else {
                return Err(Halt::UsualOrder);
            };
            ctx.telemetry.answered_from_cache();
            debug!(job_id = %id, "answered from the result cache after a short run");
            let mut cached = Outcome::cached(id.clone(), body, CachePolicy::Never);
            cached.held = held;
            Ok(cached)
        }
        Late::Revoked => Err(Halt::Fail(Failure::new(
            ErrorCode::Cancelled,
            "the job was cancelled before it was answered",
        ))),
        Late::Foreign => Err(super::prior::foreign_result(id)),
    }
}
