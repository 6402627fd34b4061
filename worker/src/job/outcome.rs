//! The result of a job: built here and only here, signed, serialized once, and tagged with
//! where it is cached. An outcome from cached bytes has one constructor ([`Outcome::cached`]),
//! and adopting a result cached by another execution one method ([`Outcome::adopt`]).

use dtee_schemas::attestation::execution::{
    ExecutionStatement, NamedDigest, OutputDigest, SecretUse, Tcb, EXECUTION_SCHEMA,
};
use dtee_schemas::job::{CheckedBuffer, InputSource};
use dtee_schemas::result::{
    EffectiveLimits, Execution, JobError, JobStatus, OutputData, ResourceUsage, ResultSchema,
    StateReport,
};
use dtee_schemas::run::GpuDevice;
use dtee_schemas::{Digest, ErrorCode, JobResult, ParsedJob};
use serde::Deserialize;
use tracing::debug;

use super::admit::{self, Admitted};
use super::Context;
use crate::backend::{Backend, KernelError};
use crate::clock::unix_ms;

/// Where a result is cached before it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CachePolicy {
    /// Not at all: the answer is about the message (an unparseable body, a refused tenant), or
    /// it came from the cache.
    Never,
    /// In the result cache, first result wins: a success or a final failure.
    Final,
    /// In the short-lived failure slot, replacing what is there: a failure that may not
    /// recur when the job is resubmitted.
    Failure,
    /// In the result cache already: a success or a final failure this execution cached when
    /// it read the job's prior answers after the run ([`super::late`]), or a success its
    /// commit cached with the state ([`super::execute`]).
    Cached,
}

/// Whether a result is a success, and the code of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Status `succeeded`.
    Succeeded,
    /// Status `failed`, with its code when the bytes name a known one.
    Failed(Option<ErrorCode>),
}

impl Verdict {
    /// The verdict of serialized result bytes, reading only `status` and `error.code`.
    pub(crate) fn of_bytes(body: &[u8]) -> Verdict {
        #[derive(Deserialize)]
        struct Head {
            status: JobStatus,
            #[serde(default)]
            error: Option<HeadError>,
        }
        #[derive(Deserialize)]
        struct HeadError {
            code: ErrorCode,
        }
        match serde_json::from_slice::<Head>(body) {
            Ok(Head {
                status: JobStatus::Succeeded,
                ..
            }) => Verdict::Succeeded,
            Ok(head) => Verdict::Failed(head.error.map(|error| error.code)),
            Err(_) => Verdict::Failed(None),
        }
    }
}

/// A result ready to go out.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The id the result is published under.
    pub job_id: Digest,
    /// The serialized result.
    pub body: Vec<u8>,
    /// Success or failure, read when the result was built or adopted.
    pub verdict: Verdict,
    /// Where to cache it.
    pub cache: CachePolicy,
    /// Whether it came from a cache (the result cache or an applied record).
    pub from_cache: bool,
    /// For a failure of a job that binds writable state: the hash tag of its bound keys. A
    /// final failure is recorded in the job's applied record before it is cached, so that it
    /// and a commit by another execution of the same job (say one orphaned by a lost
    /// connection) cannot both happen: whichever comes first is the job's answer. A failure
    /// that is not final gives way to a record already there.
    pub claim: Option<String>,
    /// For a result larger than [`super::reads::SMALL_READ_BYTES`]: its result slot, held until
    /// it is out (`super::reads::HeldResult`).
    pub held: Option<Box<super::reads::HeldResult>>,
}

impl Outcome {
    /// A result that was cached already (result cache, applied record), to publish as it is.
    pub fn cached(job_id: Digest, body: Vec<u8>, cache: CachePolicy) -> Outcome {
        Outcome {
            job_id,
            verdict: Verdict::of_bytes(&body),
            body,
            cache,
            from_cache: true,
            claim: None,
            held: None,
        }
    }

    /// Replaces this result with one another execution recorded first, so that every result
    /// published for a job id is the same.
    pub fn adopt(&mut self, body: Vec<u8>) {
        self.verdict = Verdict::of_bytes(&body);
        self.body = body;
        self.from_cache = true;
    }
}

/// Why a job failed, with what is known about its run.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
    /// The limits, once resolved.
    pub limits: Option<EffectiveLimits>,
    /// Resources used, when the kernel ran (boxed: most failures have none).
    pub resources: Option<Box<ResourceUsage>>,
    /// The GPU the kernel ran on, if one was chosen.
    pub device: Option<Box<GpuDevice>>,
}

impl Failure {
    /// A failure before the kernel ran.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            limits: None,
            resources: None,
            device: None,
        }
    }

    /// A kernel run that failed.
    pub fn ran(error: KernelError, limits: EffectiveLimits) -> Failure {
        Failure {
            code: error.code,
            message: error.message,
            limits: Some(limits),
            resources: Some(Box::new(error.usage)),
            device: error.device,
        }
    }

    /// The same failure, naming the GPU the kernel ran on.
    pub fn on_device(mut self, device: Option<GpuDevice>) -> Failure {
        self.device = device.map(Box::new);
        self
    }

    /// The same failure, with the limits that were resolved.
    pub fn with_limits(mut self, limits: EffectiveLimits) -> Failure {
        self.limits = Some(limits);
        self
    }
}

/// What a successful run produced.
#[derive(Debug)]
pub(crate) struct Success {
    /// The output buffers, in job order.
    pub outputs: Vec<OutputData>,
    /// Bound state read and written (when the job binds any).
    pub state: Option<StateReport>,
    /// The limits enforced.
    pub limits: EffectiveLimits,
    /// The resources used.
    pub resources: ResourceUsage,
    /// Runs it took (state conflicts run a job again).
    pub attempts: u32,
    /// The GPU it ran on (`None` on the CPU).
    pub device: Option<GpuDevice>,
}

/// The outcome of a successful run.
pub(crate) fn succeeded(ctx: &Context, job: &Admitted, success: Success) -> Outcome {
    let result = JobResult {
        schema: ResultSchema::V1,
        job_id: job.id().clone(),
        status: JobStatus::Succeeded,
        error: None,
        outputs: success.outputs,
        state: success.state,
        limits: Some(success.limits),
        resources: Some(success.resources),
        execution: None,
        attestation: None,
    };
    let execution = execution(
        ctx,
        Some(&job.parsed),
        job.started_at,
        success.attempts,
        success.device,
    );
    Outcome {
        job_id: job.id().clone(),
        body: seal(ctx, result, execution, Some(&job.parsed)),
        verdict: Verdict::Succeeded,
        cache: CachePolicy::Final,
        from_cache: false,
        claim: None,
        held: None,
    }
}

/// The outcome of an admitted job that failed: final failures are cached with the results
/// (and claim the applied record of a job that writes state), others in the failure slot.
pub(crate) fn failed(ctx: &Context, job: &Admitted, failure: Failure) -> Outcome {
    let cache = admit::cache_for(job, failure.code);
    failed_as(
        ctx,
        job.id().clone(),
        Some(&job.parsed),
        cache,
        failure,
        job.started_at,
    )
}

/// The outcome of a message refused at admission: never cached.
pub(crate) fn failed_unadmitted(
    ctx: &Context,
    id: Digest,
    parsed: Option<&ParsedJob>,
    failure: Failure,
    started_at: u64,
) -> Outcome {
    failed_as(ctx, id, parsed, CachePolicy::Never, failure, started_at)
}

/// The one failure builder.
pub(crate) fn failed_as(
    ctx: &Context,
    job_id: Digest,
    parsed: Option<&ParsedJob>,
    cache: CachePolicy,
    failure: Failure,
    started_at: u64,
) -> Outcome {
    debug!(%job_id, code = %failure.code, message = %failure.message, "job failed");
    let attempts = u32::from(failure.resources.is_some());
    let result = JobResult {
        schema: ResultSchema::V1,
        job_id: job_id.clone(),
        status: JobStatus::Failed,
        error: Some(JobError {
            code: failure.code,
            message: failure.message,
        }),
        outputs: Vec::new(),
        state: None,
        limits: failure.limits,
        resources: failure.resources.map(|usage| *usage),
        execution: None,
        attestation: None,
    };
    let execution = execution(
        ctx,
        parsed,
        started_at,
        attempts,
        failure.device.map(|d| *d),
    );
    let claim = match cache {
        CachePolicy::Final | CachePolicy::Failure => parsed.and_then(admit::writable_hash_tag),
        CachePolicy::Never | CachePolicy::Cached => None,
    };
    Outcome {
        job_id,
        body: seal(ctx, result, execution, parsed),
        verdict: Verdict::Failed(Some(failure.code)),
        cache,
        from_cache: false,
        claim,
        held: None,
    }
}

fn execution(
    ctx: &Context,
    parsed: Option<&ParsedJob>,
    started_at: u64,
    attempts: u32,
    device: Option<GpuDevice>,
) -> Execution {
    // The backend of the job's target: a GPU's, or the wasm engine (also for jobs refused
    // before a backend was chosen). The device is the one the kernel ran on; a GPU job that
    // never reached a device names its target's first.
    let gpu = parsed.and_then(|parsed| ctx.gpus.get(&parsed.spec.kernel.target));
    Execution {
        execution_id: format!("{:032x}", rand::random::<u128>()),
        worker_id: ctx.config.worker_id.clone(),
        backend: gpu
            .map_or_else(|| ctx.wasm.name(), |gpu| gpu.name())
            .to_owned(),
        device: gpu.map(|gpu| device.unwrap_or_else(|| gpu.device().clone())),
        started_at_unix_ms: started_at,
        finished_at_unix_ms: unix_ms(),
        attempts,
    }
}

/// The digest of each input buffer's bytes, as the statement names them.
fn input_digests(parsed: &ParsedJob) -> Vec<NamedDigest> {
    parsed
        .buffers
        .iter()
        .filter_map(|buffer| match buffer {
            CheckedBuffer::Input { name, source } => Some(NamedDigest {
                name: name.clone(),
                digest: match source {
                    InputSource::Inline(bytes) => Digest::of(bytes),
                    InputSource::Blob(digest) => digest.clone(),
                },
            }),
            _ => None,
        })
        .collect()
}

/// The secrets the job names, as the statement names them: never a value or its digest.
fn secret_uses(parsed: &ParsedJob) -> Vec<SecretUse> {
    parsed
        .buffers
        .iter()
        .filter_map(|buffer| match buffer {
            CheckedBuffer::Secret {
                name,
                tenant,
                secret,
            } => Some(SecretUse {
                name: name.clone(),
                secret: format!("{tenant}/{}", secret.name),
                version: secret.version,
            }),
            _ => None,
        })
        .collect()
}

/// Signs the result's execution statement, attaches the attestation, and serializes: the only
/// place a result is serialized.
fn seal(
    ctx: &Context,
    mut result: JobResult,
    execution: Execution,
    parsed: Option<&ParsedJob>,
) -> Vec<u8> {
    result.execution = Some(execution.clone());
    let statement = statement(&ctx.attestor, &result, execution, parsed);
    result.attestation = Some(ctx.attestor.attest(statement));
    serde_json::to_vec(&result).expect("a result serializes")
}

/// The execution statement of a result: what the worker signs.
pub(crate) fn statement(
    attestor: &crate::attestation::Attestor,
    result: &JobResult,
    execution: Execution,
    parsed: Option<&ParsedJob>,
) -> ExecutionStatement {
    ExecutionStatement {
        schema: EXECUTION_SCHEMA.to_owned(),
        job_id: result.job_id.clone(),
        kernel: parsed.map(|parsed| parsed.spec.kernel.clone()),
        nonce: parsed.and_then(|parsed| parsed.spec.nonce.clone()),
        inputs: parsed.map(input_digests).unwrap_or_default(),
        secrets: parsed.map(secret_uses).unwrap_or_default(),
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
        worker: attestor.worker_ref(),
        tcb: Tcb {
            backend: execution.backend,
            device: execution.device,
            ..attestor.tcb()
        },
    }
}
