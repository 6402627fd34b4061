//! The path of one job through a worker: parse, deduplicate, fetch, execute, cache, publish,
//! ack. [`failure`](crate::failure) decides what each error means.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dtee_schemas::attestation::execution::{
    ExecutionStatement, NamedDigest, OutputDigest, EXECUTION_SCHEMA,
};
use dtee_schemas::job::{decode_base64, encode_base64, AccessMode, Buffer, KernelFormat};
use dtee_schemas::result::{
    EffectiveLimits, Execution, JobError, JobStatus, OutputData, ResourceUsage, ResultSchema,
};
use dtee_schemas::result::{StateRead, StateReport, StateWritten};
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, ErrorCode, JobResult, ParsedJob};
use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::attestation::Attestor;
use crate::backend::wasm::WasmBackend;
use crate::backend::{Completed, Invocation, KernelError, ParamValue, Slot};
use crate::broker::ResultPublisher;
use crate::config::Config;
use crate::config::TestHook;
use crate::failure::{Backoff, Transient};
use crate::state::{Commit, CommitEntry, StateStore, WriteOp};
use crate::stats::Stats;
use crate::store::Store;

/// What every job task shares.
#[derive(Debug)]
pub struct Context {
    /// The worker's configuration.
    pub config: Config,
    /// Redis: blobs and the result cache.
    pub store: Store,
    /// Redis: bound state.
    pub state: StateStore,
    /// Result publishing with confirms; replaced when the worker reconnects.
    pub publisher: std::sync::RwLock<ResultPublisher>,
    /// The WebAssembly backend.
    pub wasm: Arc<WasmBackend>,
    /// Kernel slots: at most `concurrency` kernels run at once.
    pub kernel_slots: Semaphore,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The worker's key, identity and attestation provider.
    pub attestor: Arc<Attestor>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Notified when a publication finds the result channel closed while the consumer channel
    /// may still be up: the consumer loop then opens a new session, so that the retries of
    /// the job tasks do not fail on the dead channel for ever.
    pub session_broken: tokio::sync::Notify,
}

/// Where a result is cached before it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Not at all: the id is not the job's own (an unparseable message's claimed id).
    Never,
    /// In the result cache, first result wins: a success or a final failure.
    Final,
    /// In the short-lived failure slot, replacing what is there: a failure that may not
    /// recur when the job is resubmitted.
    Failure,
}

/// A result ready to go out.
#[derive(Debug)]
pub struct Outcome {
    /// The id the result is published under.
    pub job_id: Digest,
    /// The serialized result.
    pub body: Vec<u8>,
    /// Where to cache it.
    pub cache: CachePolicy,
    /// Whether it came from the cache.
    pub from_cache: bool,
    /// Whether it is a success.
    pub succeeded: bool,
    /// For a final failure of a job that binds writable state: the hash tag of its bound keys.
    /// The failure is recorded in the job's applied record before it is cached, so that it and
    /// a commit by another execution of the same job (say one orphaned by a lost connection)
    /// cannot both happen: whichever comes first is the job's answer.
    pub claim: Option<String>,
}

/// Whether a serialized result is a success.
fn is_success(body: &[u8]) -> bool {
    serde_json::from_slice::<JobResult>(body).is_ok_and(|r| r.succeeded())
}

/// The hash tag of a job's writable state keys, if it binds any.
fn writable_hash_tag(spec: &dtee_schemas::JobSpec) -> Option<String> {
    spec.buffers.iter().find_map(|buffer| match buffer {
        Buffer::State { key, mode, .. } if *mode != AccessMode::ReadOnly => {
            StateKey::parse(key).ok().map(|key| key.hash_tag())
        }
        _ => None,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides the result for one delivery. Errors are transient: the caller retries.
pub async fn evaluate(ctx: &Context, delivery: &Delivery) -> Result<Outcome, Transient> {
    let started_at = unix_ms();
    let body = &delivery.data;
    let refuse_message = |code, message: String, cache| {
        let id = fallback_id(delivery);
        Ok(failed_outcome(
            ctx, id, None, cache, code, message, None, None, started_at,
        ))
    };
    if body.len() > ctx.config.max_job_bytes {
        let message = format!(
            "the job is {} bytes; this worker accepts at most {}",
            body.len(),
            ctx.config.max_job_bytes
        );
        return refuse_message(ErrorCode::InvalidJob, message, CachePolicy::Never);
    }
    let parsed = match dtee_schemas::parse_job(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            return refuse_message(ErrorCode::InvalidJob, error.to_string(), CachePolicy::Never)
        }
    };
    // Who may do what is decided before anything is read, the result cache included: a
    // cached result must not answer another tenant's forged copy of a job.
    let bindings =
        tenant_of(ctx, delivery).and_then(|tenant| bindings_of(&parsed.spec, tenant.as_deref()));
    let bindings = match bindings {
        Ok(bindings) => bindings,
        Err(message) => {
            return Ok(failed_outcome(
                ctx,
                parsed.id,
                Some(&parsed.spec),
                CachePolicy::Never,
                ErrorCode::StateAccessDenied,
                message,
                None,
                None,
                started_at,
            ))
        }
    };
    if let Some(cached) = ctx
        .store
        .cached_result(&parsed.id)
        .await
        .map_err(Transient::redis)?
    {
        Stats::bump(&ctx.stats.deduplicated);
        debug!(job_id = %parsed.id, "answered from the result cache");
        return Ok(Outcome {
            job_id: parsed.id,
            succeeded: is_success(&cached),
            body: cached,
            cache: CachePolicy::Never,
            from_cache: true,
            claim: None,
        });
    }
    // A redelivery of a job whose writes were committed (a crash before its result was cached)
    // is answered with the result recorded at the commit, before anything else is decided:
    // its effects happened, whatever a revocation or this worker's limits now say.
    if let Some(first) = applied_result(ctx, &parsed.id, &bindings).await? {
        return Ok(first);
    }
    if ctx
        .store
        .is_revoked(&parsed.id)
        .await
        .map_err(Transient::redis)?
    {
        return Ok(failed_outcome(
            ctx,
            parsed.id.clone(),
            Some(&parsed.spec),
            CachePolicy::Final,
            ErrorCode::Cancelled,
            "the job was cancelled before it ran".to_owned(),
            None,
            None,
            started_at,
        ));
    }
    let id = parsed.id.clone();
    match run(ctx, &parsed, &bindings, started_at).await? {
        Ok(success) => Ok(success),
        Err(refusal) => {
            let cache = if refusal.error.code.is_final() {
                CachePolicy::Final
            } else {
                CachePolicy::Failure
            };
            Ok(failed_outcome(
                ctx,
                id,
                Some(&parsed.spec),
                cache,
                refusal.error.code,
                refusal.error.message,
                refusal.limits,
                refusal.ran.then_some(refusal.error.usage),
                started_at,
            ))
        }
    }
}

/// Answers a job that the broker dead-lettered after its delivery limit (it kept killing or
/// stalling workers): the terminal result is `dead_lettered`, with the delivery history, unless
/// a final result was cached meanwhile.
pub async fn evaluate_dead_letter(
    ctx: &Context,
    delivery: &Delivery,
) -> Result<Outcome, Transient> {
    let started_at = unix_ms();
    let parsed = dtee_schemas::parse_job(&delivery.data).ok();
    let id = parsed
        .as_ref()
        .map_or_else(|| fallback_id(delivery), |parsed| parsed.id.clone());
    // A job whose state writes were committed before the crashes that dead-lettered it is
    // answered with the result recorded at the commit: its effects happened.
    if let Some(tag) = parsed
        .as_ref()
        .and_then(|parsed| writable_hash_tag(&parsed.spec))
    {
        if let Some(first) = applied_outcome(ctx, &tag, &id).await? {
            return Ok(first);
        }
    }
    if parsed.is_some() {
        if let Some(cached) = ctx
            .store
            .cached_result(&id)
            .await
            .map_err(Transient::redis)?
        {
            return Ok(Outcome {
                job_id: id,
                succeeded: is_success(&cached),
                body: cached,
                cache: CachePolicy::Never,
                from_cache: true,
                claim: None,
            });
        }
    }
    let message = format!(
        "the job was dead-lettered after its delivery limit: {}",
        delivery_history(delivery)
    );
    Stats::bump(&ctx.stats.dead_lettered);
    let cache = if parsed.is_some() {
        CachePolicy::Final
    } else {
        CachePolicy::Never
    };
    Ok(failed_outcome(
        ctx,
        id,
        parsed.as_ref().map(|parsed| &parsed.spec),
        cache,
        ErrorCode::DeadLettered,
        message,
        None,
        None,
        started_at,
    ))
}

/// The delivery history RabbitMQ records on a dead-lettered message (`x-death`,
/// `x-delivery-count`), in words.
fn delivery_history(delivery: &Delivery) -> String {
    use lapin::types::AMQPValue;
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return "no delivery history recorded".to_owned();
    };
    let text = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::Timestamp(t)) => t.to_string(),
        Some(other) => format!("{other:?}"),
        None => "?".to_owned(),
    };
    let mut parts = Vec::new();
    if let Some(count) = headers.inner().get("x-delivery-count") {
        parts.push(format!(
            "delivered {} times without an answer",
            text(Some(count))
        ));
    }
    if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") {
        for death in deaths.as_slice() {
            if let AMQPValue::FieldTable(death) = death {
                let field = |name: &str| text(death.inner().get(name));
                parts.push(format!(
                    "queue {} dead-lettered it ({}), {} time(s)",
                    field("queue"),
                    field("reason"),
                    field("count")
                ));
            }
        }
    }
    if parts.is_empty() {
        "no delivery history recorded".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The result recorded when this job's state writes were committed, if they were.
async fn applied_result(
    ctx: &Context,
    id: &Digest,
    bindings: &[Binding],
) -> Result<Option<Outcome>, Transient> {
    let Some(writable) = bindings.iter().find(|b| b.mode != AccessMode::ReadOnly) else {
        return Ok(None);
    };
    let first = applied_outcome(ctx, &writable.key.hash_tag(), id).await?;
    if first.is_some() {
        Stats::bump(&ctx.stats.already_applied);
    }
    Ok(first)
}

/// The job's applied record under `hash_tag`, as the outcome to cache and publish.
async fn applied_outcome(
    ctx: &Context,
    hash_tag: &str,
    id: &Digest,
) -> Result<Option<Outcome>, Transient> {
    let first = ctx
        .state
        .applied(hash_tag, id)
        .await
        .map_err(Transient::redis)?;
    Ok(first.map(|first| Outcome {
        job_id: id.clone(),
        succeeded: is_success(&first),
        body: first,
        cache: CachePolicy::Final,
        from_cache: true,
        claim: None,
    }))
}

/// The tenant of a delivery: the worker's single tenant if it has one, else the AMQP
/// `user_id`, which RabbitMQ checked against the publishing connection's user.
fn tenant_of(ctx: &Context, delivery: &Delivery) -> Result<Option<String>, String> {
    if let Some(tenant) = &ctx.config.single_tenant {
        return Ok(Some(tenant.clone()));
    }
    match delivery.properties.user_id() {
        Some(user) if dtee_schemas::state::is_valid_tenant(user.as_str()) => Ok(Some(user.as_str().to_owned())),
        Some(user) => Err(format!("user_id {:?} cannot name a tenant", user.as_str())),
        None => Err("the message has no user_id property, so its tenant is unknown (publish with user_id, or run the worker in single-tenant mode)".to_owned()),
    }
}

/// A state buffer of the job.
#[derive(Debug, Clone)]
struct Binding {
    /// Index in the job's buffers.
    buffer: usize,
    name: String,
    key: StateKey,
    mode: AccessMode,
    may_be_absent: bool,
}

/// The job's state bindings, each checked to lie in the tenant's namespace.
fn bindings_of(spec: &dtee_schemas::JobSpec, tenant: Option<&str>) -> Result<Vec<Binding>, String> {
    let mut bindings = Vec::new();
    for (buffer, entry) in spec.buffers.iter().enumerate() {
        let Buffer::State {
            name,
            key,
            mode,
            may_be_absent,
            ..
        } = entry
        else {
            continue;
        };
        let key = StateKey::parse(key).map_err(|error| error.to_string())?;
        if Some(key.tenant()) != tenant {
            return Err(format!(
                "buffer {name:?} binds {key}, outside the namespace of tenant {:?}",
                tenant.unwrap_or("(none)")
            ));
        }
        bindings.push(Binding {
            buffer,
            name: name.clone(),
            key,
            mode: *mode,
            may_be_absent: *may_be_absent,
        });
    }
    Ok(bindings)
}

/// The id to answer under when the job itself cannot be parsed: its `message_id` if that is a
/// digest, else the digest of the raw bytes.
fn fallback_id(delivery: &Delivery) -> Digest {
    delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().parse().ok())
        .unwrap_or_else(|| Digest::of(&delivery.data))
}

/// Why a job did not complete.
struct Refusal {
    error: KernelError,
    /// The limits, once resolved.
    limits: Option<EffectiveLimits>,
    /// Whether the kernel ran (and so `error.usage` means something).
    ran: bool,
}

impl Refusal {
    fn before_run(code: ErrorCode, message: String, limits: Option<EffectiveLimits>) -> Refusal {
        Refusal {
            error: KernelError::before_run(code, message),
            limits,
            ran: false,
        }
    }
}

/// The kernel, compiled and linked, from the module cache or from Redis by digest.
async fn kernel_of(
    ctx: &Context,
    digest: &Digest,
) -> Result<Result<Arc<crate::backend::wasm::Prepared>, Refusal>, Transient> {
    if let Some(prepared) = ctx.wasm.cached(digest) {
        return Ok(Ok(prepared));
    }
    let refuse = |code, message| Ok(Err(Refusal::before_run(code, message, None)));
    let Some(bytes) = ctx.store.blob(digest).await.map_err(Transient::redis)? else {
        return refuse(
            ErrorCode::KernelNotFound,
            format!("no blob is stored under {digest}"),
        );
    };
    if bytes.len() > ctx.config.max_kernel_bytes {
        // A worker setting, not a property of the kernel: not final.
        return refuse(
            ErrorCode::ExcessiveResourceRequirements,
            format!(
                "the kernel is {} bytes; this worker accepts at most {}",
                bytes.len(),
                ctx.config.max_kernel_bytes
            ),
        );
    }
    if !digest.matches(&bytes) {
        return refuse(
            ErrorCode::KernelHashMismatch,
            format!(
                "the bytes stored under {digest} hash to {}",
                Digest::of(&bytes)
            ),
        );
    }
    let wasm = Arc::clone(&ctx.wasm);
    let digest = digest.clone();
    let prepared = tokio::task::spawn_blocking(move || wasm.prepare(&digest, &bytes))
        .await
        .map_err(|error| Transient::internal(format!("compiling the kernel: {error}")))?;
    Ok(Ok(prepared))
}

type RunOutput = Result<Outcome, Refusal>;

async fn run(
    ctx: &Context,
    parsed: &ParsedJob,
    bindings: &[Binding],
    started_at: u64,
) -> Result<RunOutput, Transient> {
    let spec = &parsed.spec;
    if !ctx.config.targets.contains(&spec.kernel.target) {
        return Ok(Err(Refusal::before_run(
            ErrorCode::UnsupportedTarget,
            format!(
                "this worker serves {:?}, not target {:?}",
                ctx.config.targets, spec.kernel.target
            ),
            None,
        )));
    }
    if spec.kernel.format != KernelFormat::Wasm {
        return Ok(Err(Refusal::before_run(
            ErrorCode::UnsupportedTarget,
            format!("target {:?} runs wasm kernels only", spec.kernel.target),
            None,
        )));
    }
    let limits = match resolve_limits(&ctx.config, spec) {
        Ok(limits) => limits,
        Err(message) => {
            return Ok(Err(Refusal::before_run(
                ErrorCode::ExcessiveResourceRequirements,
                message,
                None,
            )))
        }
    };
    let refuse = |code, message: String| Ok(Err(Refusal::before_run(code, message, Some(limits))));
    if let Some(requirement) = &spec.attestation {
        if !ctx.attestor.satisfies(requirement.platform) {
            return refuse(
                ErrorCode::AttestationUnsatisfiable,
                format!(
                    "the job requires {:?} attestation; this worker attests with {}",
                    requirement.platform,
                    ctx.attestor.platform()
                ),
            );
        }
    }

    let prepared = match kernel_of(ctx, &spec.kernel.digest).await? {
        Ok(prepared) => prepared,
        Err(mut refusal) => {
            refusal.limits = Some(limits);
            return Ok(Err(refusal));
        }
    };
    let prepared = match prepared.as_ref() {
        Ok(prepared) => prepared.clone(),
        Err(error) => {
            return Ok(Err(Refusal {
                error: error.clone(),
                limits: Some(limits),
                ran: false,
            }))
        }
    };

    // Inputs, fetched once: they are content-addressed and cannot change between attempts.
    let blob_digests: Vec<&Digest> = spec
        .buffers
        .iter()
        .filter_map(|buffer| match buffer {
            Buffer::Input {
                blob: Some(digest), ..
            } => Some(digest),
            _ => None,
        })
        .collect();
    let mut blobs = ctx
        .store
        .blobs(&blob_digests)
        .await
        .map_err(Transient::redis)?
        .into_iter();
    let mut slots = Vec::with_capacity(spec.buffers.len());
    for buffer in &spec.buffers {
        slots.push(match buffer {
            Buffer::Input {
                name,
                inline: Some(text),
                ..
            } => Slot::Input {
                name: name.clone(),
                data: decode_base64(text).expect("validated by parse_job").into(),
            },
            Buffer::Input {
                name,
                blob: Some(digest),
                ..
            } => {
                let Some(bytes) = blobs.next().flatten() else {
                    return refuse(
                        ErrorCode::InputNotFound,
                        format!("input {name:?}: no blob is stored under {digest}"),
                    );
                };
                if !digest.matches(&bytes) {
                    return refuse(
                        ErrorCode::InputNotFound,
                        format!(
                            "input {name:?}: the bytes stored under {digest} hash to {}",
                            Digest::of(&bytes)
                        ),
                    );
                }
                Slot::Input {
                    name: name.clone(),
                    data: bytes.into(),
                }
            }
            Buffer::Input { name, .. } => {
                unreachable!("input {name} validated to have inline or blob")
            }
            // The output limit also caps what any one buffer can hold.
            Buffer::Output { name, size } => Slot::Output {
                name: name.clone(),
                capacity: (*size).min(limits.output_bytes),
            },
            Buffer::State {
                name,
                mode,
                max_size,
                ..
            } => Slot::State {
                name: name.clone(),
                mode: *mode,
                current: Arc::from(Vec::new()),
                capacity: max_size
                    .unwrap_or(limits.output_bytes)
                    .min(limits.output_bytes),
            },
        });
    }
    let params: Vec<ParamValue> = spec
        .params
        .iter()
        .map(|param| ParamValue {
            name: param.name.clone(),
            ty: param.ty,
            value: param.value,
        })
        .collect();

    // Snapshot, run, commit; a conflict re-runs against fresh state, a bounded number of times.
    let hash_tag = bindings.first().map(|binding| binding.key.hash_tag());
    let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
    for attempt in 1..=ctx.config.state_max_attempts {
        let seen = if bindings.is_empty() {
            Vec::new()
        } else {
            let keys: Vec<(&StateKey, bool)> = bindings
                .iter()
                .map(|b| {
                    (
                        &b.key,
                        matches!(b.mode, AccessMode::ReadOnly | AccessMode::ReadWrite),
                    )
                })
                .collect();
            let read_started = Instant::now();
            let seen = ctx.state.snapshot(&keys).await.map_err(Transient::redis)?;
            ctx.metrics
                .state_read
                .record(read_started.elapsed().as_secs_f64());
            seen
        };
        for (binding, seen) in bindings.iter().zip(&seen) {
            if !seen.exists && !binding.may_be_absent {
                return refuse(
                    ErrorCode::StateBindingNotFound,
                    format!(
                        "state key {} (buffer {:?}) does not exist and may_be_absent is false",
                        binding.key, binding.name
                    ),
                );
            }
            if let Slot::State { current, .. } = &mut slots[binding.buffer] {
                *current = Arc::from(seen.value.clone().unwrap_or_default());
            }
        }
        let invocation = Invocation {
            entry: spec.kernel.entry.clone(),
            slots: slots.clone(),
            params: params.clone(),
            limits,
        };
        let completed = {
            let _permit = ctx
                .kernel_slots
                .acquire()
                .await
                .map_err(|_| Transient::internal("kernel slots closed".to_owned()))?;
            Stats::bump(&ctx.stats.executed);
            let wasm = Arc::clone(&ctx.wasm);
            let prepared = prepared.clone();
            let kernel_started = Instant::now();
            let panic_hook = ctx.config.test_hook == Some(TestHook::PanicInKernel);
            let completed = match tokio::task::spawn_blocking(move || {
                assert!(!panic_hook, "dtee-test-hook: panic-in-kernel");
                wasm.run(&prepared, &invocation)
            })
            .await
            {
                Ok(completed) => completed,
                // A panic while running this job (a bug in the worker or in Wasmtime) would
                // most likely recur on every retry: the job is answered `internal_error` (not
                // final, so a resubmission runs it again) instead of being retried for ever.
                Err(error) if error.is_panic() => {
                    tracing::error!(job_id = %parsed.id, "the kernel's thread panicked; answering internal_error");
                    Err(KernelError {
                        code: ErrorCode::InternalError,
                        message: "the worker failed while running the kernel (a panic); this is a bug in the worker".to_owned(),
                        usage: ResourceUsage::default(),
                    })
                }
                Err(error) => {
                    return Err(Transient::internal(format!("running the kernel: {error}")))
                }
            };
            ctx.metrics
                .kernel
                .record(kernel_started.elapsed().as_secs_f64());
            completed
        };
        let completed = match completed {
            Ok(completed) => completed,
            Err(error) => {
                ctx.stats.count_run_error(error.code);
                return Ok(Err(Refusal {
                    error,
                    limits: Some(limits),
                    ran: true,
                }));
            }
        };

        // What the commit writes, and what the result reports.
        let mut report = StateReport::default();
        let mut entries = Vec::with_capacity(bindings.len());
        for (binding, seen) in bindings.iter().zip(&seen) {
            if let Some(value) = &seen.value {
                report.read.push(StateRead {
                    name: binding.name.clone(),
                    key: binding.key.to_string(),
                    version: seen.version,
                    digest: Digest::of(value),
                });
            }
            let written = completed.written[binding.buffer].clone();
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
        let writes = !report.written.is_empty();
        let state = (!bindings.is_empty()).then_some(report);
        let usage = completed.usage;
        let outcome = succeeded_outcome(ctx, parsed, completed, limits, attempt, state, started_at);
        // A result the broker would refuse could never be published: refuse it here, before
        // anything is committed, instead of retrying its publication for ever.
        if outcome.body.len() > ctx.config.max_result_bytes {
            return Ok(Err(Refusal {
                error: KernelError {
                    code: ErrorCode::OutputLimitExceeded,
                    message: format!(
                        "the result would be {} bytes; this worker publishes at most {} (DTEE_MAX_RESULT_BYTES)",
                        outcome.body.len(),
                        ctx.config.max_result_bytes
                    ),
                    usage,
                },
                limits: Some(limits),
                ran: true,
            }));
        }
        if !writes {
            return Ok(Ok(outcome));
        }
        let hash_tag = hash_tag.as_deref().expect("writes imply bindings");
        let commit_started = Instant::now();
        let commit = ctx
            .state
            .commit(
                hash_tag,
                &parsed.id,
                &entries,
                &outcome.body,
                ctx.config.applied_ttl,
            )
            .await
            .map_err(Transient::redis)?;
        ctx.metrics
            .state_commit
            .record(commit_started.elapsed().as_secs_f64());
        ctx.stats.commit_micros.fetch_add(
            commit_started.elapsed().as_micros() as u64,
            Ordering::Relaxed,
        );
        match commit {
            Commit::Committed => {
                Stats::bump(&ctx.stats.commits);
                if ctx.config.test_hook == Some(TestHook::PauseAfterCommit) {
                    eprintln!("dtee-test-hook: paused after commit of {}", parsed.id);
                    std::future::pending::<()>().await;
                }
                return Ok(Ok(outcome));
            }
            Commit::AlreadyApplied(first) => {
                // A redelivery after a crash between commit and ack: nothing is applied again,
                // and the result recorded the first time is the answer.
                Stats::bump(&ctx.stats.already_applied);
                return Ok(Ok(Outcome {
                    job_id: parsed.id.clone(),
                    succeeded: is_success(&first),
                    body: first,
                    cache: CachePolicy::Final,
                    from_cache: true,
                    claim: None,
                }));
            }
            Commit::Conflict(key) => {
                Stats::bump(&ctx.stats.conflicts);
                debug!(job_id = %parsed.id, %key, attempt, "state conflict; running again on fresh state");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    refuse(
        ErrorCode::StateConflict,
        format!(
            "the bound state kept changing; gave up after {} attempts",
            ctx.config.state_max_attempts
        ),
    )
}

/// The job's limits with the worker's defaults filled in, or why they exceed its maximums.
pub fn resolve_limits(
    config: &Config,
    spec: &dtee_schemas::JobSpec,
) -> Result<EffectiveLimits, String> {
    let (asked, defaults, max) = (&spec.limits, &config.default_limits, &config.max_limits);
    let pick = |name: &str, asked: Option<u64>, default: u64, max: u64| match asked {
        Some(value) if value > max => Err(format!(
            "limits.{name} = {value} exceeds this worker's maximum of {max}"
        )),
        Some(value) => Ok(value),
        None => Ok(default),
    };
    Ok(EffectiveLimits {
        timeout_ms: pick(
            "timeout_ms",
            asked.timeout_ms,
            defaults.timeout_ms,
            max.timeout_ms,
        )?,
        memory_bytes: pick(
            "memory_bytes",
            asked.memory_bytes,
            defaults.memory_bytes,
            max.memory_bytes,
        )?,
        fuel: pick("fuel", asked.fuel, defaults.fuel, max.fuel)?,
        output_bytes: pick(
            "output_bytes",
            asked.output_bytes,
            defaults.output_bytes,
            max.output_bytes,
        )?,
    })
}

fn execution(ctx: &Context, started_at: u64, attempts: u32) -> Execution {
    Execution {
        execution_id: format!("{:032x}", rand::random::<u128>()),
        worker_id: ctx.config.worker_id.clone(),
        backend: "wasm".to_owned(),
        started_at_unix_ms: started_at,
        finished_at_unix_ms: unix_ms(),
        attempts,
    }
}

fn succeeded_outcome(
    ctx: &Context,
    parsed: &ParsedJob,
    completed: Completed,
    limits: EffectiveLimits,
    attempts: u32,
    state: Option<StateReport>,
    started_at: u64,
) -> Outcome {
    let outputs = parsed
        .spec
        .buffers
        .iter()
        .zip(completed.written)
        .filter_map(|(buffer, written)| match buffer {
            Buffer::Output { name, .. } => {
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
        .collect();
    let result = JobResult {
        schema: ResultSchema::V1,
        job_id: parsed.id.clone(),
        status: JobStatus::Succeeded,
        error: None,
        outputs,
        state,
        limits: Some(limits),
        resources: Some(completed.usage),
        execution: Some(execution(ctx, started_at, attempts)),
        attestation: None,
    };
    Outcome {
        job_id: parsed.id.clone(),
        body: seal(ctx, result, Some(&parsed.spec)),
        cache: CachePolicy::Final,
        from_cache: false,
        succeeded: true,
        claim: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn failed_outcome(
    ctx: &Context,
    job_id: Digest,
    spec: Option<&dtee_schemas::JobSpec>,
    cache: CachePolicy,
    code: ErrorCode,
    message: String,
    limits: Option<EffectiveLimits>,
    resources: Option<ResourceUsage>,
    started_at: u64,
) -> Outcome {
    debug!(%job_id, %code, %message, "job failed");
    let result = JobResult {
        schema: ResultSchema::V1,
        job_id: job_id.clone(),
        status: JobStatus::Failed,
        error: Some(JobError { code, message }),
        outputs: Vec::new(),
        state: None,
        limits,
        resources,
        execution: Some(execution(ctx, started_at, u32::from(resources.is_some()))),
        attestation: None,
    };
    let claim = match cache {
        CachePolicy::Final => spec.and_then(writable_hash_tag),
        CachePolicy::Never | CachePolicy::Failure => None,
    };
    Outcome {
        job_id,
        body: seal(ctx, result, spec),
        cache,
        from_cache: false,
        succeeded: false,
        claim,
    }
}

/// Signs the result's execution statement, attaches the attestation, and serializes.
fn seal(ctx: &Context, mut result: JobResult, spec: Option<&dtee_schemas::JobSpec>) -> Vec<u8> {
    let execution = result
        .execution
        .clone()
        .expect("every result built here has an execution");
    let inputs = spec
        .map(|spec| {
            spec.buffers
                .iter()
                .filter_map(|buffer| match buffer {
                    Buffer::Input {
                        name,
                        inline: Some(text),
                        ..
                    } => Some(NamedDigest {
                        name: name.clone(),
                        digest: Digest::of(&decode_base64(text).unwrap_or_default()),
                    }),
                    Buffer::Input {
                        name,
                        blob: Some(digest),
                        ..
                    } => Some(NamedDigest {
                        name: name.clone(),
                        digest: digest.clone(),
                    }),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let statement = ExecutionStatement {
        schema: EXECUTION_SCHEMA.to_owned(),
        job_id: result.job_id.clone(),
        kernel: spec.map(|spec| spec.kernel.clone()),
        nonce: spec.and_then(|spec| spec.nonce.clone()),
        inputs,
        state: result.state.clone(),
        outputs: result
            .outputs
            .iter()
            .map(|output| OutputDigest {
                name: output.name.clone(),
                size: output.size,
                digest: output.digest.clone(),
            })
            .collect(),
        limits: result.limits,
        resources: result.resources,
        status: result.status,
        error_code: result.error_code(),
        execution_id: execution.execution_id,
        started_at_unix_ms: execution.started_at_unix_ms,
        finished_at_unix_ms: execution.finished_at_unix_ms,
        worker: ctx.attestor.worker_ref(),
        tcb: ctx.attestor.tcb(),
    };
    result.attestation = Some(ctx.attestor.attest(statement));
    serde_json::to_vec(&result).expect("a result serializes")
}

/// Caches (first result wins), publishes with a confirm, and only then acks.
pub async fn deliver(
    ctx: &Context,
    delivery: &Delivery,
    mut outcome: Outcome,
) -> Result<(), Transient> {
    match outcome.cache {
        CachePolicy::Never => {}
        CachePolicy::Failure => {
            // A final result cached meanwhile (another delivery of the same job succeeded)
            // wins over this failure.
            if let Some(existing) = ctx
                .store
                .cached_result(&outcome.job_id)
                .await
                .map_err(Transient::redis)?
            {
                outcome.succeeded = is_success(&existing);
                outcome.body = existing;
                outcome.from_cache = true;
            } else {
                ctx.store
                    .cache_failure(&outcome.job_id, &outcome.body, ctx.config.failure_ttl)
                    .await
                    .map_err(Transient::redis)?;
            }
        }
        CachePolicy::Final => {
            if let Some(tag) = &outcome.claim {
                if let Some(applied) = ctx
                    .state
                    .claim_applied(tag, &outcome.job_id, &outcome.body, ctx.config.applied_ttl)
                    .await
                    .map_err(Transient::redis)?
                {
                    // Another execution committed this job's writes first: its result stands.
                    outcome.succeeded = is_success(&applied);
                    outcome.body = applied;
                    outcome.from_cache = true;
                }
            }
            let stored = ctx
                .store
                .cache_result(&outcome.job_id, &outcome.body, ctx.config.result_ttl)
                .await
                .map_err(Transient::redis)?;
            if !stored {
                // Another execution of the same job cached first; publish that one, so every
                // result published for a job id is the same.
                if let Some(existing) = ctx
                    .store
                    .cached_result(&outcome.job_id)
                    .await
                    .map_err(Transient::redis)?
                {
                    outcome.succeeded = is_success(&existing);
                    outcome.body = existing;
                    outcome.from_cache = true;
                }
            }
        }
    }
    let publisher = ctx.publisher.read().expect("publisher lock").clone();
    let publish_started = Instant::now();
    if let Err(error) = publisher
        .publish(&outcome.job_id, &outcome.body, outcome.from_cache)
        .await
    {
        if !publisher.is_open() {
            ctx.session_broken.notify_one();
        }
        return Err(Transient::publish(error));
    }
    ctx.metrics
        .publish
        .record(publish_started.elapsed().as_secs_f64());
    if outcome.succeeded {
        Stats::bump(&ctx.stats.succeeded);
    } else {
        Stats::bump(&ctx.stats.failed);
        let code = serde_json::from_slice::<JobResult>(&outcome.body)
            .ok()
            .and_then(|r| r.error_code());
        if let Some(code) = code {
            ctx.stats.count_failure(code);
        }
    }
    if let Err(error) = delivery
        .acker
        .ack(lapin::options::BasicAckOptions::default())
        .await
    {
        // The result is out and cached: a redelivery will be answered from the cache.
        warn!(job_id = %outcome.job_id, %error, "ack failed; the job will be redelivered and answered from the cache");
    } else {
        Stats::bump(&ctx.stats.acked);
    }
    Ok(())
}
