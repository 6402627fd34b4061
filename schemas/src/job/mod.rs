//! The job spec, `dtee.job/v1` (DESIGN §3).
//!
//! A job names a kernel by digest, its buffers (inputs, bound state, outputs), scalar
//! parameters, GPU launch geometry, resource limits and attestation requirements. Parsing with
//! serde checks the shape; [`JobSpec::validate`] checks everything serde cannot (names, ranges,
//! base64, combinations). The job id is the digest of the spec's canonical JSON
//! ([`crate::canonical`]).

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

mod checked;
mod validate;

pub use checked::{CheckedBuffer, InputSource};
pub use validate::ValidationError;

/// The schema tag of a job spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum JobSchema {
    /// Version 1.
    #[default]
    #[serde(rename = "dtee.job/v1")]
    V1,
}

/// A kernel job. The job id is `sha256:` + hex SHA-256 of this object in canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dtee.job/v1")]
pub struct JobSpec {
    /// Always `"dtee.job/v1"`.
    pub schema: JobSchema,
    /// The code to run.
    pub kernel: KernelRef,
    /// The buffers the kernel sees, in order (GPU kernels receive them as arguments in this
    /// order, before the scalar parameters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffers: Vec<Buffer>,
    /// Scalar parameters, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Launch geometry; GPU kernels only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// Resource limits; absent fields take the worker's defaults.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// What the attestation of the result must show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationRequirement>,
    /// Free text that makes otherwise identical work a new job (and so a new execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub nonce: Option<String>,
}

/// Which kernel to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelRef {
    /// Digest of the kernel binary, stored as a blob.
    pub digest: Digest,
    /// Binary format.
    pub format: KernelFormat,
    /// Exported function to call.
    #[schemars(length(min = 1, max = 128))]
    pub entry: String,
    /// Routing target, and so the queue: `wasm`, `hip.gfx90a`, ...
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$"))]
    pub target: String,
    /// How a WebAssembly kernel is run (absent: `deterministic`). GPU kernels take none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<WasmProfile>,
}

/// How a WebAssembly kernel is run: what the job trades between reproducibility and speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WasmProfile {
    /// Fuel is metered (`limits.fuel`, `resources.fuel_consumed`) and every float operation's
    /// NaN result is canonicalised: the same result bytes on every host. The default.
    #[default]
    Deterministic,
    /// The wall-clock deadline only: no fuel is metered, and NaN bit patterns are what the
    /// host CPU makes (results can differ between CPU architectures in the bits of NaN values,
    /// and in what a kernel computes from them). Tight float loops run up to 1.5 times faster.
    Fast,
}

impl WasmProfile {
    /// The profile's name in jobs (`deterministic`, `fast`).
    pub fn as_str(self) -> &'static str {
        match self {
            WasmProfile::Deterministic => "deterministic",
            WasmProfile::Fast => "fast",
        }
    }

    /// The profile named `name` (`deterministic`, `fast`), if any.
    pub fn from_name(name: &str) -> Option<WasmProfile> {
        [WasmProfile::Deterministic, WasmProfile::Fast]
            .into_iter()
            .find(|profile| profile.as_str() == name)
    }
}

/// Kernel binary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KernelFormat {
    /// A WebAssembly module (binary format), run on the CPU in Wasmtime.
    Wasm,
    /// An AMD GPU code object for one gfx architecture, run through HIP (targets
    /// `hip.<gfx arch>`, e.g. `hip.gfx90a`).
    Hsaco,
    /// NVIDIA PTX assembly, loaded with the CUDA driver's JIT (target `cuda`).
    Ptx,
}

impl KernelFormat {
    /// Whether kernels of this format run on a GPU (and so need launch geometry).
    pub fn is_gpu(self) -> bool {
        matches!(self, KernelFormat::Hsaco | KernelFormat::Ptx)
    }

    /// The format's name in jobs (`wasm`, `hsaco`, `ptx`).
    pub fn as_str(self) -> &'static str {
        match self {
            KernelFormat::Wasm => "wasm",
            KernelFormat::Hsaco => "hsaco",
            KernelFormat::Ptx => "ptx",
        }
    }
}

/// One buffer the kernel sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Buffer {
    /// Bytes given by the submitter: exactly one of `inline` (base64) or `blob` (a digest).
    Input {
        /// Buffer name, unique in the job.
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"))]
        name: String,
        /// The bytes, base64 (standard alphabet, padded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(extend("contentEncoding" = "base64"))]
        inline: Option<String>,
        /// Digest of a stored blob holding the bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blob: Option<Digest>,
    },
    /// Bytes the kernel produces, up to `size` (exactly `size` for GPU kernels).
    Output {
        /// Buffer name, unique in the job.
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"))]
        name: String,
        /// Capacity in bytes.
        #[schemars(range(min = 1))]
        size: u64,
    },
    /// A Redis key bound to the kernel with an access mode. Its key is relative to the tenant's
    /// namespace (see PROTOCOL.md).
    State {
        /// Buffer name, unique in the job.
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"))]
        name: String,
        /// State key inside the tenant's namespace.
        #[schemars(length(min = 1, max = 256))]
        key: String,
        /// How the kernel may use it.
        mode: AccessMode,
        /// Whether the key may be absent (it then reads as empty).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        may_be_absent: bool,
        /// Largest value the kernel may write, in bytes (`write_only`, `read_write`,
        /// `append_only`); defaults to the job's output limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 1))]
        max_size: Option<u64>,
    },
    /// A secret of the job's tenant, released by the secret keeper to the worker for this job
    /// only; the kernel reads it as an input (PROTOCOL.md §12).
    Secret {
        /// Buffer name, unique in the job.
        #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"))]
        name: String,
        /// `<tenant>/<secret name>`: a secret of the job's own tenant.
        #[schemars(length(min = 3, max = 193))]
        secret: String,
        /// The version (from 1): the job id pins the value it runs with.
        #[schemars(range(min = 1))]
        version: u64,
    },
}

impl Buffer {
    /// The buffer's name.
    pub fn name(&self) -> &str {
        match self {
            Buffer::Input { name, .. }
            | Buffer::Output { name, .. }
            | Buffer::State { name, .. }
            | Buffer::Secret { name, .. } => name,
        }
    }
}

/// Access modes of bound state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// Read the value; never written.
    ReadOnly,
    /// Replace the value; the old value is not read.
    WriteOnly,
    /// Read, then replace; the commit fails if the value changed since it was read.
    ReadWrite,
    /// Append bytes to the value; the old value is not read.
    AppendOnly,
}

impl AccessMode {
    /// Whether the kernel may write the value (every mode but `read_only`).
    pub fn is_writable(self) -> bool {
        self != AccessMode::ReadOnly
    }

    /// Whether the kernel sees the current value (`read_only`, `read_write`).
    pub fn is_readable(self) -> bool {
        matches!(self, AccessMode::ReadOnly | AccessMode::ReadWrite)
    }
}

/// A scalar parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// Parameter name, unique in the job.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"))]
    pub name: String,
    /// Scalar type.
    #[serde(rename = "type")]
    pub ty: ScalarType,
    /// The value; integers must be integral and in range of their type (and within ±2^53).
    pub value: f64,
}

/// Scalar types of parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScalarType {
    /// 32-bit signed integer.
    I32,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit signed integer.
    I64,
    /// 64-bit unsigned integer.
    U64,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

/// GPU launch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// Grid dimensions in blocks.
    #[schemars(inner(range(min = 1)))]
    pub grid: [u32; 3],
    /// Block dimensions in threads.
    #[schemars(inner(range(min = 1)))]
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    #[serde(default)]
    pub shared_mem_bytes: u32,
}

/// Resource limits asked for by a job. Absent fields take the worker's defaults; a value above
/// the worker's maximum fails the job with `excessive_resource_requirements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit for the kernel run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Memory limit in bytes (WebAssembly linear memory, GPU device allocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub memory_bytes: Option<u64>,
    /// WebAssembly fuel (roughly one unit per instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
    /// Total bytes of all outputs and state writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub output_bytes: Option<u64>,
}

impl Limits {
    /// Whether no limit is given.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// Attestation requirements of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequirement {
    /// The platform that must have run the job.
    pub platform: PlatformRequirement,
}

/// Platforms a job can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformRequirement {
    /// Any worker, including software identities.
    Any,
    /// A TPM 2.0 quote.
    Tpm,
    /// An AMD SEV-SNP report.
    Snp,
    /// TPM or SEV-SNP.
    AnyHardware,
}

/// Whether `target` is a valid routing target (`^[a-z0-9][a-z0-9._-]{0,63}$`).
pub fn is_valid_target(target: &str) -> bool {
    let mut bytes = target.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && target.len() <= 64
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Decodes standard, padded base64 as used by `inline` inputs and result outputs.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Encodes bytes as standard, padded base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
