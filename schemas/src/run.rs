//! What one run of a job did: its status, the state it read and wrote, the limits it ran under
//! and the resources it used. The result ([`crate::result`]) and the execution statement the
//! worker signs ([`crate::attestation::execution`]) both report these, and a verifier checks that
//! they agree.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Terminal states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// The kernel ran to completion and its effects were committed.
    Succeeded,
    /// The job failed; see `error`.
    Failed,
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
    /// GPU kernels: device memory allocated for the job's buffers, bytes (absent: 0, a CPU
    /// kernel).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_memory_bytes: u64,
    /// GPU kernels: the kernel's own run time on the device (device events), microseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kernel_time_us: u64,
    /// GPU kernels: bytes copied to the device and back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub copied_bytes: u64,
    /// GPU kernels: time spent copying to the device and back, microseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub copy_time_us: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The GPU that ran a kernel, as its driver names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuDevice {
    /// `nvidia` or `amd` (or `stand-in` in the test suite's device host).
    pub vendor: String,
    /// The device's name, e.g. `NVIDIA H200`.
    pub name: String,
    /// Its architecture: `sm_90`, `gfx90a`, ...
    pub arch: String,
    /// The driver and its version, e.g. `cuda 13000`.
    pub driver: String,
    /// Which of the worker machine's devices it is: the driver's ordinal, as
    /// `CUDA_VISIBLE_DEVICES` or `HIP_VISIBLE_DEVICES` left the devices visible to the worker
    /// (tells identical GPUs of one machine apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): wall-clock time as the
/// protocol records it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
