//! The result, `dtee.result/v1`: exactly one terminal result per job (DESIGN §7).
//!
//! Clients should ignore fields they do not know: result types do not deny unknown fields, so
//! newer workers can add information without breaking older clients.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Digest, ErrorCode};

/// The schema tag of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ResultSchema {
    /// Version 1.
    #[default]
    #[serde(rename = "dtee.result/v1")]
    V1,
}

/// The terminal result of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "dtee.result/v1")]
pub struct JobResult {
    /// Always `"dtee.result/v1"`.
    pub schema: ResultSchema,
    /// The job this result answers.
    pub job_id: Digest,
    /// Whether the job succeeded.
    pub status: JobStatus,
    /// Why it failed; present exactly when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The outputs, in the job's buffer order; empty when the job failed.
    #[serde(default)]
    pub outputs: Vec<OutputData>,
    /// Bound state read and written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateReport>,
    /// The limits that were enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EffectiveLimits>,
    /// The resources the run used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceUsage>,
    /// Which worker ran it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// The signed execution attestation and the worker's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::attestation::execution::Attestation>,
}

impl JobResult {
    /// Whether the job succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == JobStatus::Succeeded
    }

    /// The error code of a failed result.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|error| error.code)
    }

    /// The output with this name.
    pub fn output(&self, name: &str) -> Option<&OutputData> {
        self.outputs.iter().find(|output| output.name == name)
    }
}

/// Terminal states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// The kernel ran to completion and its effects were committed.
    Succeeded,
    /// The job failed; see `error`.
    Failed,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    /// Stable code to branch on.
    pub code: ErrorCode,
    /// Human-readable detail; not stable.
    pub message: String,
}

/// One output buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputData {
    /// The output buffer's name.
    pub name: String,
    /// Bytes written.
    pub size: u64,
    /// Digest of the bytes.
    pub digest: Digest,
    /// The bytes, base64 (standard alphabet, padded).
    #[schemars(extend("contentEncoding" = "base64"))]
    pub data: String,
}

impl OutputData {
    /// The decoded bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        crate::job::decode_base64(&self.data)
    }
}

/// Bound state read and written by the job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct StateReport {
    /// Keys read, with the version and digest seen.
    #[serde(default)]
    pub read: Vec<StateRead>,
    /// Keys written, with the version and digest after the commit.
    #[serde(default)]
    pub written: Vec<StateWritten>,
}

/// A key read by the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateRead {
    /// Buffer name.
    pub name: String,
    /// Key inside the tenant's namespace.
    pub key: String,
    /// Version read; 0 when the key was absent.
    pub version: u64,
    /// Digest of the bytes read (of the empty string when absent).
    pub digest: Digest,
}

/// A key written by the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateWritten {
    /// Buffer name.
    pub name: String,
    /// Key inside the tenant's namespace.
    pub key: String,
    /// Version after the commit.
    pub version: u64,
    /// Digest of the bytes this job wrote: the new value (`write_only`, `read_write`), or the
    /// bytes appended (`append_only`).
    pub digest: Digest,
}

/// The limits enforced for a run, after the worker's defaults were applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EffectiveLimits {
    /// Wall-clock limit, milliseconds.
    pub timeout_ms: u64,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
    /// Fuel.
    pub fuel: u64,
    /// Output limit, bytes.
    pub output_bytes: u64,
}

/// Resources used by the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ResourceUsage {
    /// Fuel consumed. For a run stopped by its wall-clock deadline this is a lower bound:
    /// Wasmtime flushes its fuel counter at calls, not at the epoch interrupt.
    pub fuel_consumed: u64,
    /// Largest linear memory size reached, bytes.
    pub peak_memory_bytes: u64,
    /// Kernel wall-clock time, microseconds (instantiation and the entry call).
    pub wall_time_us: u64,
    /// Total output bytes written.
    pub output_bytes: u64,
}

/// Who ran the job, when, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Execution {
    /// Unique id of this execution. A result republished from the cache keeps the id of the
    /// execution that produced it.
    pub execution_id: String,
    /// The worker's id.
    pub worker_id: String,
    /// The backend: `wasm` or `hip`.
    pub backend: String,
    /// Unix time in milliseconds when the worker started processing the job.
    pub started_at_unix_ms: u64,
    /// Unix time in milliseconds when processing ended.
    pub finished_at_unix_ms: u64,
    /// How many times the kernel ran (more than 1 after state conflicts).
    pub attempts: u32,
}
