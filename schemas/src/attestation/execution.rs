//! The execution attestation: a DSSE envelope whose payload, [`ExecutionStatement`], binds what
//! ran, on what, under which limits, with what result, on which attested worker.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::dsse::Envelope;
use super::evidence::WorkerIdentity;
use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::job::KernelRef;
use crate::run::{EffectiveLimits, JobStatus, ResourceUsage, StateReport};

/// The statement's schema tag.
pub const EXECUTION_SCHEMA: &str = "dtee.execution/v1";

/// The attestation carried in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attestation {
    /// The signed statement.
    pub envelope: Envelope,
    /// The signing worker's identity and evidence, so the result verifies offline.
    pub identity: WorkerIdentity,
}

/// What a worker attests about one execution. Serialized in canonical JSON as the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "dtee.execution/v1")]
pub struct ExecutionStatement {
    /// Always `dtee.execution/v1`.
    pub schema: String,
    /// The job.
    pub job_id: Digest,
    /// The kernel (absent when the message could not be parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelRef>,
    /// The job's nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Digest of each input buffer's bytes.
    pub inputs: Vec<NamedDigest>,
    /// Each secret the job names: buffer, secret and version, never the value or its digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretUse>,
    /// Bound state read and written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateReport>,
    /// Each output's size and digest.
    pub outputs: Vec<OutputDigest>,
    /// Limits enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EffectiveLimits>,
    /// Resources used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceUsage>,
    /// The outcome.
    pub status: JobStatus,
    /// The error code of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// This execution's id.
    pub execution_id: String,
    /// Unix milliseconds when processing started.
    pub started_at_unix_ms: u64,
    /// Unix milliseconds when processing ended.
    pub finished_at_unix_ms: u64,
    /// The worker.
    pub worker: WorkerRef,
    /// What the platform protected during this execution.
    pub tcb: Tcb,
}

/// A secret a job used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretUse {
    /// Buffer name.
    pub name: String,
    /// `<tenant>/<secret name>`.
    pub secret: String,
    /// The version released.
    pub version: u64,
}

/// A named digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NamedDigest {
    /// Buffer name.
    pub name: String,
    /// Digest of its bytes.
    pub digest: Digest,
}

/// An output's size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputDigest {
    /// Buffer name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Digest of the bytes.
    pub digest: Digest,
}

/// The worker as the statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRef {
    /// Worker id.
    pub worker_id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Measurement of the worker binary and configuration.
    pub measurement: Digest,
    /// `software`, `tpm` or `snp`.
    pub platform: String,
    /// Digest of the evidence's canonical JSON.
    pub evidence_digest: Digest,
    /// When that evidence was produced, Unix milliseconds.
    pub evidence_created_at_unix_ms: u64,
}

/// Honest flags about what was inside the trusted computing base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tcb {
    /// A hardware root of trust vouches for the worker key (TPM or SEV-SNP).
    pub hardware_rooted: bool,
    /// Guest memory is encrypted and integrity-protected against the host (SEV-SNP).
    pub memory_protected: bool,
    /// The accelerator that ran the kernel is inside the trusted boundary. Always false:
    /// neither an SEV-SNP report nor a TPM quote covers a discrete GPU (HIP or CUDA).
    pub gpu_in_tcb: bool,
    /// The backend that ran the kernel (`wasm`, `cuda`, `hip`).
    pub backend: String,
    /// The GPU that ran the kernel, for GPU backends (outside the trusted boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::run::GpuDevice>,
}
