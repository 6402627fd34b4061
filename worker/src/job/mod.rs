//! The path of one job through a worker, one stage per file, in the order a job meets them:
//!
//! 1. [`admit`] — size, strict parsing, the tenant and its state bindings; nothing is read
//!    before this. Hands on an [`Admitted`] job: inputs decoded or named by digest, state keys
//!    parsed and checked against the tenant.
//! 2. [`prior`] — answers that exist before running (the state snapshot, read with them, only
//!    once the job's buffers and parameters are counted: [`plan::counted`]): the result cache,
//!    the applied record of a committed job, a revocation. A short stateless job reads them
//!    after a short run instead, in the round trip that caches its result: [`late`].
//! 3. [`plan`] — what this worker will run it with: target, format, resolved limits, the
//!    attestation requirement. Hands on a [`plan::Plan`].
//! 4. [`fetch`] — the compiled kernel and the input blobs, as backend slots.
//! 5. [`execute`] — snapshot, run, commit; a conflict re-runs on fresh state.
//! 6. [`outcome`] — the result, signed and serialized once, and where it is cached.
//! 7. [`deliver`] — cache, publish with a confirm, then ack.
//!
//! [`dead_letter`] answers the jobs the broker dead-lettered. [`crate::failure`] decides what
//! each error means; a stage stops the path with a [`Halt`].

mod admit;
mod dead_letter;
mod deliver;
pub(crate) use deliver::ack_unanswered;
pub(crate) mod execute;
mod fetch;
mod late;
pub(crate) mod outcome;
pub(crate) mod plan;
mod prior;
pub(crate) mod reads;
mod short_run;
pub(crate) mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use tokio::sync::watch;

use crate::fair::FairSlots;
use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;
use tracing::{debug, error, warn, Instrument};

pub(crate) use self::admit::Admitted;
pub(crate) use self::outcome::{Failure, Outcome};
use crate::attestation::Attestor;
use crate::backend::wasm::WasmBackend;
use crate::broker::acks::Acks;
use crate::broker::publisher::ResultPublisher;
use crate::config::Config;
use crate::failure::{Backoff, Chain, Transient};
use crate::state::StateStore;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// What every job task shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// The worker's configuration.
    pub config: Config,
    /// Redis: blobs and the result cache.
    pub store: Store,
    /// Redis: bound state.
    pub state: StateStore,
    /// Result publishing with confirms; replaced when the worker reconnects.
    pub publisher: std::sync::RwLock<ResultPublisher>,
    /// The WebAssembly backend for the `deterministic` profile (the default).
    pub wasm: Arc<WasmBackend>,
    /// The WebAssembly backend for the `fast` profile.
    pub wasm_fast: Arc<WasmBackend>,
    /// The GPU backends, by target (each with every device that serves the target).
    pub gpus: std::collections::HashMap<String, Arc<crate::backend::gpu::GpuBackend>>,
    /// Kernel slots: at most `concurrency` kernels run at once, shared fairly by tenant.
    pub kernel_slots: Arc<FairSlots>,
    /// Compile slots: at most `compile.concurrency` kernels compile at once, shared fairly.
    pub compile_slots: Arc<FairSlots>,
    /// Data slots of the wasm backend: at most `concurrency` jobs hold more than a little input
    /// or state read ahead of their run (`reads`).
    pub data_slots: Arc<FairSlots>,
    /// Result slots: results over 1 MiB wait for the broker in one (`reads`); one per kernel
    /// slot and GPU device.
    pub result_slots: Arc<FairSlots>,
    /// Counters and histograms.
    pub telemetry: Telemetry,
    /// The worker's key, identity and attestation provider.
    pub attestor: Arc<Attestor>,
    /// Hot input blobs, by digest.
    pub blob_cache: crate::blob_cache::BlobCache,
    /// The secret keeper, for jobs that name secrets.
    pub secrets: crate::secrets::SecretLink,
    /// One delivery of a job id at a time on this worker (`turns`).
    pub turns: turns::Turns,
    /// Compile limits met, by tenant and digest (`fetch`).
    pub compile_refusals: fetch::CompileRefusals,
    /// Kernels too long for a short run on the job's task (`short_run`).
    pub long_kernels: short_run::LongKernels,
    /// Notified when a publication finds the result channel closed while the consumer channel
    /// may still be up: the consumer loop then opens a new session, so that the retries of
    /// the job tasks do not fail on the dead channel for ever.
    pub session_broken: tokio::sync::Notify,
}

/// A kernel compiled by the worker's backend.
pub(crate) type Kernel = crate::backend::AnyKernel;

/// Why the path of a job stopped before its last stage.
#[derive(Debug)]
pub(crate) enum Halt {
    /// The answer is known: publish it.
    Answer(Outcome),
    /// The job fails with a stable code.
    Fail(Failure),
    /// Something outside the job failed: retry the whole attempt later.
    Retry(Transient),
    /// A job run ahead of its prior answers ([`late`]) takes the usual order after all: its
    /// kernel did not finish in a short run, or its answers could not be read or settled.
    /// Never leaves [`run`].
    UsualOrder,
}

impl From<Transient> for Halt {
    fn from(error: Transient) -> Halt {
        Halt::Retry(error)
    }
}

impl From<redis::RedisError> for Halt {
    fn from(error: redis::RedisError) -> Halt {
        Halt::Retry(Transient::Redis(error))
    }
}

impl From<Failure> for Halt {
    fn from(failure: Failure) -> Halt {
        Halt::Fail(failure)
    }
}

/// Processes one delivery, retrying transient failures with backoff until it is answered or
/// the worker stops (then the delivery returns to the queue).
pub(crate) async fn handle(
    ctx: Arc<Context>,
    delivery: Delivery,
    acks: Acks,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::debug_span!("job", message_id = ?delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()));
    async move {
        let received = Instant::now();
        let _in_flight = ctx.telemetry.in_flight();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            // A panic here is a bug in the job path (a kernel's panic is caught where it runs
            // and answered): the delivery goes back to the queue, so that its delivery limit
            // dead-letters a job that keeps doing it, instead of holding one of the channel's
            // prefetch credits and blocking batched acks for as long as the channel lives.
            let attempted = AssertUnwindSafe(attempt(&ctx, &delivery, &acks))
                .catch_unwind()
                .await;
            let Ok(attempted) = attempted else {
                error!("the job path panicked; returning the delivery to the queue");
                ctx.telemetry.retrying();
                return_to_queue(&delivery, &acks).await;
                return;
            };
            match attempted {
                Ok(()) => {
                    ctx.telemetry.job_answered(received.elapsed());
                    return;
                }
                Err(error) => {
                    // The delivery's channel is gone (a lost session): the broker has put it
                    // back in its queue, for this worker's next session or another worker, so
                    // retrying here would only hold a task and count in flight for nothing.
                    if delivery.acker.poisoned() {
                        debug!(error = %Chain(&error), "transient failure after the delivery's channel closed: the broker redelivers it");
                        return;
                    }
                    ctx.telemetry.retrying();
                    let delay = backoff.next_delay();
                    warn!(error = %Chain(&error), retry_in_ms = delay.as_millis() as u64, "transient failure; will retry");
                    if *shutdown.borrow() {
                        debug!("shutting down: returning the job to the queue");
                        return_to_queue(&delivery, &acks).await;
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Returns a delivery to its queue (a nack with requeue) and settles its tag.
async fn return_to_queue(delivery: &Delivery, acks: &Acks) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(requeue).await {
        warn!(%error, "returning a delivery to the queue failed; it returns when the channel closes");
    }
    acks.settled(delivery.delivery_tag);
}

/// One attempt: decide the outcome, then deliver it.
async fn attempt(ctx: &Context, delivery: &Delivery, acks: &Acks) -> Result<(), Transient> {
    if delivery.exchange.as_str() == ctx.config.namespace.dead_letter_exchange() {
        return match dead_letter::evaluate(ctx, delivery).await? {
            Some(outcome) => deliver::deliver(ctx, delivery, acks, outcome).await,
            None => {
                deliver::ack_unanswered(ctx, delivery, acks);
                Ok(())
            }
        };
    }
    let job = match admit::admit_message(ctx, delivery) {
        Ok(job) => job,
        Err(refused) => return deliver::deliver(ctx, delivery, acks, refused).await,
    };
    if crate::hooks::active(&ctx.config, crate::hooks::TestHook::PanicInJob)
        && job.parsed.spec.nonce.as_deref() == Some("dtee-test-panic")
    {
        panic!("dtee-test-hook: panic-in-job");
    }
    // Held until the outcome is cached, so that another delivery of the tenant's id on this
    // worker is answered from the cache instead of running again (`turns`).
    let turn = ctx.turns.take(&job.tenant, job.id()).await;
    let outcome = evaluate(ctx, &job).await?;
    deliver::deliver_after_turn(ctx, delivery, acks, outcome, turn).await
}

/// Decides the result of one admitted job. Errors are transient: the caller retries.
async fn evaluate(ctx: &Context, job: &Admitted) -> Result<Outcome, Transient> {
    match run(ctx, job).await {
        Ok(outcome) | Err(Halt::Answer(outcome)) => Ok(outcome),
        Err(Halt::Fail(failure)) => Ok(outcome::failed(ctx, job, failure)),
        Err(Halt::Retry(error)) => Err(error),
        Err(Halt::UsualOrder) => unreachable!("run() takes the usual order after a late run"),
    }
}

/// The stages after admission, top to bottom.
async fn run(ctx: &Context, job: &Admitted) -> Result<Outcome, Halt> {
    // Counted before the state snapshot is read (it reads every binding the job lists), but
    // after the answers that already exist, which stand whatever this worker's limits say.
    let counted = plan::counted(ctx, job);
    if counted.is_ok() && late::may(ctx, job) {
        if let Some((plan, kernel)) = late::planned(ctx, job) {
            match late::run(ctx, job, plan, kernel).await {
                Err(Halt::UsualOrder) => {}
                answered => return answered,
            }
        }
    }
    // What the job reads ahead of its run, and its data slot once it reads much.
    let mut reads = reads::Reads::new(ctx, &job.tenant);
    let first_snapshot = prior::answer(ctx, job, counted.is_ok(), &mut reads).await?;
    counted?;
    let plan = plan::plan(ctx, job)?;
    reads.runs_on(ctx, &plan.runner);
    let inputs = fetch::measure_inputs(ctx, job, &plan).await?;
    let kernel = fetch::kernel(ctx, job, &plan).await?;
    // Held (and zeroed when dropped) until the run is over.
    let secrets = ctx
        .secrets
        .release(&ctx.attestor, &job.tenant, job.id(), &job.secrets())
        .await
        .map_err(|halt| match halt {
            Halt::Fail(failure) => Halt::Fail(failure.with_limits(plan.limits)),
            other => other,
        })?;
    let slots = fetch::slots(ctx, job, &plan, inputs, &secrets, &mut reads).await?;
    execute::execute(ctx, job, &plan, kernel, slots, first_snapshot, &mut reads).await
}
