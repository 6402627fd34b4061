//! The result, `dtee.result/v1`: exactly one terminal result per job (DESIGN §7).
//!
//! Clients should ignore fields they do not know: result types do not deny unknown fields, so
//! newer workers can add information without breaking older clients.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::attestation::execution::Attestation;
use crate::digest::Digest;
use crate::error::ErrorCode;

pub use crate::run::{
    EffectiveLimits, JobStatus, ResourceUsage, StateRead, StateReport, StateWritten,
};

/// The schema tag of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ResultSchema {
    /// Version 1.
    #[default]
    #[serde(rename = "dtee.result/v1")]
    V1,
}

/// What the result schema says beyond the struct: `outputs` is always written (serde defaults it
/// only to read results of older workers), and `error` is present exactly when `status` is
/// `failed` (PROTOCOL.md §6).
fn result_rules(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Array(required)) = schema.get_mut("required") {
        if !required.iter().any(|name| name == "outputs") {
            required.push("outputs".into());
        }
    }
    schema.insert(
        "if".to_owned(),
        serde_json::json!({"properties": {"status": {"const": "failed"}}}),
    );
    schema.insert(
        "then".to_owned(),
        serde_json::json!({"required": ["error"]}),
    );
    schema.insert(
        "else".to_owned(),
        serde_json::json!({"not": {"required": ["error"]}}),
    );
}

/// The terminal result of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "dtee.result/v1", transform = result_rules)]
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
    pub attestation: Option<Attestation>,
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

/// Who ran the job, when, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Execution {
    /// Unique id of this execution. A result republished from the cache keeps the id of the
    /// execution that produced it.
    pub execution_id: String,
    /// The worker's id.
    pub worker_id: String,
    /// The backend: `wasm`, `cuda` or `hip`.
    pub backend: String,
    /// The GPU that ran the kernel, for GPU backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::run::GpuDevice>,
    /// Unix time in milliseconds when the worker started processing the job.
    pub started_at_unix_ms: u64,
    /// Unix time in milliseconds when processing ended.
    pub finished_at_unix_ms: u64,
    /// How many times the kernel ran (more than 1 after state conflicts).
    pub attempts: u32,
}
