//! The path of one job through a worker: parse, deduplicate, fetch, execute, cache, publish,
//! ack. [`failure`](crate::failure) decides what each error means.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dtee_schemas::job::{decode_base64, encode_base64, Buffer, KernelFormat, PlatformRequirement};
use dtee_schemas::result::{
    EffectiveLimits, Execution, JobError, JobStatus, OutputData, ResourceUsage, ResultSchema,
};
use dtee_schemas::{Digest, ErrorCode, JobResult, ParsedJob};
use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::backend::wasm::WasmBackend;
use crate::backend::{Completed, Invocation, KernelError, ParamValue, Slot};
use crate::broker::ResultPublisher;
use crate::config::Config;
use crate::failure::Transient;
use crate::stats::Stats;
use crate::store::Store;

/// What every job task shares.
#[derive(Debug)]
pub struct Context {
    /// The worker's configuration.
    pub config: Config,
    /// Redis.
    pub store: Store,
    /// Result publishing with confirms.
    pub publisher: ResultPublisher,
    /// The WebAssembly backend.
    pub wasm: Arc<WasmBackend>,
    /// Kernel slots: at most `concurrency` kernels run at once.
    pub kernel_slots: Semaphore,
    /// Counters.
    pub stats: Arc<Stats>,
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
    if body.len() > ctx.config.max_job_bytes {
        let id = fallback_id(delivery);
        let message = format!(
            "the job is {} bytes; this worker accepts at most {}",
            body.len(),
            ctx.config.max_job_bytes
        );
        return Ok(failed_outcome(
            ctx,
            id,
            CachePolicy::Never,
            ErrorCode::InvalidJob,
            message,
            None,
            None,
            started_at,
        ));
    }
    let parsed = match dtee_schemas::parse_job(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            let id = fallback_id(delivery);
            return Ok(failed_outcome(
                ctx,
                id,
                CachePolicy::Never,
                ErrorCode::InvalidJob,
                error.to_string(),
                None,
                None,
                started_at,
            ));
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
        let succeeded = serde_json::from_slice::<JobResult>(&cached)
            .map(|r| r.succeeded())
            .unwrap_or(false);
        return Ok(Outcome {
            job_id: parsed.id,
            body: cached,
            cache: CachePolicy::Never,
            from_cache: true,
            succeeded,
        });
    }
    let id = parsed.id.clone();
    match run(ctx, &parsed).await? {
        Ok((completed, limits, attempts)) => Ok(succeeded_outcome(
            ctx, &parsed, completed, limits, attempts, started_at,
        )),
        Err(refusal) => {
            let cache = if refusal.error.code.is_final() {
                CachePolicy::Final
            } else {
                CachePolicy::Failure
            };
            Ok(failed_outcome(
                ctx,
                id,
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

type RunOutput = Result<(Completed, EffectiveLimits, u32), Refusal>;

async fn run(ctx: &Context, parsed: &ParsedJob) -> Result<RunOutput, Transient> {
    let spec = &parsed.spec;
    let fail = |code, message: String| {
        Ok(Err(Refusal {
            error: KernelError::before_run(code, message),
            limits: None,
            ran: false,
        }))
    };
    if !ctx.config.targets.contains(&spec.kernel.target) {
        return fail(
            ErrorCode::UnsupportedTarget,
            format!(
                "this worker serves {:?}, not target {:?}",
                ctx.config.targets, spec.kernel.target
            ),
        );
    }
    if spec.kernel.format != KernelFormat::Wasm {
        return fail(
            ErrorCode::UnsupportedTarget,
            format!("target {:?} runs wasm kernels only", spec.kernel.target),
        );
    }
    let limits = match resolve_limits(&ctx.config, spec) {
        Ok(limits) => limits,
        Err(message) => return fail(ErrorCode::ExcessiveResourceRequirements, message),
    };
    let refuse = |code, message: String| {
        Ok(Err(Refusal {
            error: KernelError::before_run(code, message),
            limits: Some(limits),
            ran: false,
        }))
    };
    if let Some(requirement) = &spec.attestation {
        if requirement.platform != PlatformRequirement::Any {
            return refuse(
                ErrorCode::AttestationUnsatisfiable,
                format!("this worker has no {:?} attestation", requirement.platform),
            );
        }
    }
    if spec
        .buffers
        .iter()
        .any(|buffer| matches!(buffer, Buffer::State { .. }))
    {
        return refuse(
            ErrorCode::InvalidJob,
            "state bindings are not supported by this worker version".to_owned(),
        );
    }

    // The kernel: from the module cache, or from Redis by digest (checked) and compiled.
    let digest = &spec.kernel.digest;
    let prepared = match ctx.wasm.cached(digest) {
        Some(prepared) => prepared,
        None => {
            let Some(bytes) = ctx.store.blob(digest).await.map_err(Transient::redis)? else {
                return refuse(
                    ErrorCode::KernelNotFound,
                    format!("no blob is stored under {digest}"),
                );
            };
            if bytes.len() > ctx.config.max_kernel_bytes {
                return refuse(
                    ErrorCode::KernelInvalid,
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
            tokio::task::spawn_blocking(move || wasm.prepare(&digest, &bytes))
                .await
                .map_err(|error| Transient::internal(format!("compiling the kernel: {error}")))?
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

    // The buffers.
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
            Buffer::Output { name, size } => Slot::Output {
                name: name.clone(),
                capacity: *size,
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
                capacity: max_size.unwrap_or(limits.output_bytes),
            },
        });
    }
    let invocation = Invocation {
        entry: spec.kernel.entry.clone(),
        slots,
        params: spec
            .params
            .iter()
            .map(|param| ParamValue {
                name: param.name.clone(),
                ty: param.ty,
                value: param.value,
            })
            .collect(),
        limits,
    };

    let _permit = ctx
        .kernel_slots
        .acquire()
        .await
        .map_err(|_| Transient::internal("kernel slots closed".to_owned()))?;
    Stats::bump(&ctx.stats.executed);
    let wasm = Arc::clone(&ctx.wasm);
    let outcome = tokio::task::spawn_blocking(move || wasm.run(&prepared, &invocation))
        .await
        .map_err(|error| Transient::internal(format!("running the kernel: {error}")))?;
    Ok(match outcome {
        Ok(completed) => Ok((completed, limits, 1)),
        Err(error) => Err(Refusal {
            error,
            limits: Some(limits),
            ran: true,
        }),
    })
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
        state: None,
        limits: Some(limits),
        resources: Some(completed.usage),
        execution: Some(execution(ctx, started_at, attempts)),
        attestation: None,
    };
    Outcome {
        job_id: parsed.id.clone(),
        body: serde_json::to_vec(&result).expect("a result serializes"),
        cache: CachePolicy::Final,
        from_cache: false,
        succeeded: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn failed_outcome(
    ctx: &Context,
    job_id: Digest,
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
    Outcome {
        job_id,
        body: serde_json::to_vec(&result).expect("a result serializes"),
        cache,
        from_cache: false,
        succeeded: false,
    }
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
            ctx.store
                .cache_failure(&outcome.job_id, &outcome.body, ctx.config.failure_ttl)
                .await
                .map_err(Transient::redis)?;
        }
        CachePolicy::Final => {
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
                    outcome.body = existing;
                    outcome.from_cache = true;
                }
            }
        }
    }
    ctx.publisher
        .publish(&outcome.job_id, &outcome.body, outcome.from_cache)
        .await
        .map_err(Transient::publish)?;
    Stats::bump(if outcome.succeeded {
        &ctx.stats.succeeded
    } else {
        &ctx.stats.failed
    });
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
