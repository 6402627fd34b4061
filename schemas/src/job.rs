//! The job spec, `dtee.job/v1` (DESIGN §3).
//!
//! A job names a kernel by digest, its buffers (inputs, bound state, outputs), scalar
//! parameters, GPU launch geometry, resource limits and attestation requirements. Parsing with
//! serde checks the shape; [`JobSpec::validate`] checks everything serde cannot (names, ranges,
//! base64, combinations). The job id is the digest of the spec's canonical JSON
//! ([`crate::canonical`]).

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::state::StateKey;

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
}

/// Kernel binary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KernelFormat {
    /// A WebAssembly module (binary format), run on the CPU in Wasmtime.
    Wasm,
    /// An AMD GPU code object, run through HIP.
    Hsaco,
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
}

impl Buffer {
    /// The buffer's name.
    pub fn name(&self) -> &str {
        match self {
            Buffer::Input { name, .. }
            | Buffer::Output { name, .. }
            | Buffer::State { name, .. } => name,
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

/// Why a parsed job is not acceptable: the field at fault, as a path into the spec
/// (`buffers[2].inline`, `params[0].value`, `limits.fuel`), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// Path of the offending field in the spec.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Where an input's bytes come from, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Bytes carried in the job (`inline`, decoded).
    Inline(Arc<[u8]>),
    /// A stored blob, by digest (`blob`).
    Blob(Digest),
}

/// A buffer after validation: everything the spec encodes is decoded and parsed once, so that
/// nothing downstream checks it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedBuffer {
    /// An input, with its bytes or the digest of its blob.
    Input {
        /// Buffer name.
        name: String,
        /// Where the bytes are.
        source: InputSource,
    },
    /// An output of at most `size` bytes (at least 1).
    Output {
        /// Buffer name.
        name: String,
        /// Capacity in bytes.
        size: u64,
    },
    /// Bound state, with its key parsed.
    State {
        /// Buffer name.
        name: String,
        /// The parsed key.
        key: StateKey,
        /// How the kernel may use it.
        mode: AccessMode,
        /// Whether the key may be absent.
        may_be_absent: bool,
        /// Largest value the kernel may write (at least 1), if the job caps it.
        max_size: Option<u64>,
    },
}

impl CheckedBuffer {
    /// The buffer's name.
    pub fn name(&self) -> &str {
        match self {
            CheckedBuffer::Input { name, .. }
            | CheckedBuffer::Output { name, .. }
            | CheckedBuffer::State { name, .. } => name,
        }
    }
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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

impl JobSpec {
    /// Checks what serde cannot: names, exactly-one-of fields, value ranges, base64, state keys,
    /// and that the launch geometry fits the format. Limits against the worker's maximums are
    /// the worker's business. Returns the buffers with everything decoded and parsed.
    pub fn validate(&self) -> Result<Vec<CheckedBuffer>, ValidationError> {
        self.validate_kernel()?;
        let buffers = self.validate_buffers()?;
        self.validate_params()?;
        let limits = &self.limits;
        for (field, value) in [
            ("timeout_ms", limits.timeout_ms),
            ("memory_bytes", limits.memory_bytes),
            ("fuel", limits.fuel),
            ("output_bytes", limits.output_bytes),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("limits.{field}"), "must be at least 1"));
            }
        }
        if self.nonce.as_ref().is_some_and(|nonce| nonce.len() > 256) {
            return Err(invalid("nonce", "must be at most 256 bytes"));
        }
        Ok(buffers)
    }

    fn validate_kernel(&self) -> Result<(), ValidationError> {
        let kernel = &self.kernel;
        if kernel.entry.is_empty() || kernel.entry.len() > 128 {
            return Err(invalid("kernel.entry", "must be 1 to 128 characters"));
        }
        if !is_valid_target(&kernel.target) {
            return Err(invalid(
                "kernel.target",
                format!(
                    "{:?} is not a valid target (lowercase letters, digits, '.', '_', '-'; at most 64)",
                    kernel.target
                ),
            ));
        }
        match (kernel.format, &self.launch) {
            (KernelFormat::Wasm, Some(_)) => Err(invalid(
                "launch",
                "launch geometry applies to GPU kernels only, not wasm",
            )),
            (KernelFormat::Hsaco, None) => {
                Err(invalid("launch", "an hsaco kernel needs launch geometry"))
            }
            (KernelFormat::Hsaco, Some(launch))
                if launch.grid.contains(&0) || launch.block.contains(&0) =>
            {
                Err(invalid(
                    "launch",
                    "grid and block dimensions must be at least 1",
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_buffers(&self) -> Result<Vec<CheckedBuffer>, ValidationError> {
        let mut names = HashSet::new();
        let mut state_tag: Option<String> = None;
        let mut checked = Vec::with_capacity(self.buffers.len());
        for (idx, buffer) in self.buffers.iter().enumerate() {
            let name = buffer.name();
            let field = |sub: &str| format!("buffers[{idx}].{sub}");
            if !is_name(name) {
                return Err(invalid(field("name"), format!(
                    "{name:?} is not a valid name (a letter or '_', then letters, digits, '_', '.', '-'; at most 64)"
                )));
            }
            if !names.insert(name) {
                return Err(invalid(
                    field("name"),
                    format!("buffer name {name:?} is used twice"),
                ));
            }
            checked.push(match buffer {
                Buffer::Input { inline, blob, .. } => {
                    let source = match (inline, blob) {
                        (Some(text), None) => {
                            InputSource::Inline(decode_base64(text).map_err(|error| {
                                invalid(field("inline"), format!("not valid base64: {error}"))
                            })?.into())
                        }
                        (None, Some(digest)) => InputSource::Blob(digest.clone()),
                        _ => {
                            return Err(invalid(
                                field("inline"),
                                format!("input {name:?} needs exactly one of inline or blob"),
                            ))
                        }
                    };
                    CheckedBuffer::Input {
                        name: name.to_owned(),
                        source,
                    }
                }
                Buffer::Output { size, .. } => {
                    if *size == 0 {
                        return Err(invalid(field("size"), "must be at least 1"));
                    }
                    CheckedBuffer::Output {
                        name: name.to_owned(),
                        size: *size,
                    }
                }
                Buffer::State {
                    key,
                    mode,
                    may_be_absent,
                    max_size,
                    ..
                } => {
                    let key = StateKey::parse(key)
                        .map_err(|error| invalid(field("key"), error.to_string()))?;
                    match &state_tag {
                        None => state_tag = Some(key.hash_tag()),
                        Some(tag) if *tag != key.hash_tag() => {
                            return Err(invalid(field("key"), format!(
                                "every state key of a job must have the same tenant and hash group (one commit, one Redis Cluster slot); {key} does not match {tag:?}"
                            )));
                        }
                        Some(_) => {}
                    }
                    if *max_size == Some(0) {
                        return Err(invalid(field("max_size"), "must be at least 1"));
                    }
                    CheckedBuffer::State {
                        name: name.to_owned(),
                        key,
                        mode: *mode,
                        may_be_absent: *may_be_absent,
                        max_size: *max_size,
                    }
                }
            });
        }
        Ok(checked)
    }

    fn validate_params(&self) -> Result<(), ValidationError> {
        let mut param_names = HashSet::new();
        for (idx, param) in self.params.iter().enumerate() {
            if !is_name(&param.name) {
                return Err(invalid(
                    format!("params[{idx}].name"),
                    format!("{:?} is not a valid name", param.name),
                ));
            }
            if !param_names.insert(param.name.as_str()) {
                return Err(invalid(
                    format!("params[{idx}].name"),
                    format!("parameter name {:?} is used twice", param.name),
                ));
            }
            check_scalar(param).map_err(|why| invalid(format!("params[{idx}].value"), why))?;
        }
        Ok(())
    }
}

fn check_scalar(param: &Param) -> Result<(), String> {
    let value = param.value;
    if !value.is_finite() {
        return Err("value must be finite".into());
    }
    let integral = value.fract() == 0.0;
    let (low, high) = match param.ty {
        ScalarType::F64 => return Ok(()),
        ScalarType::F32 => {
            return if value.abs() <= f32::MAX as f64 {
                Ok(())
            } else {
                Err(format!("{value} is out of range for f32"))
            };
        }
        ScalarType::I32 => (i32::MIN as f64, i32::MAX as f64),
        ScalarType::U32 => (0.0, u32::MAX as f64),
        ScalarType::I64 | ScalarType::U64 => {
            let bound = crate::canonical::MAX_SAFE_INTEGER as f64;
            (
                if param.ty == ScalarType::U64 {
                    0.0
                } else {
                    -bound
                },
                bound,
            )
        }
    };
    if !integral {
        return Err(format!("{value} is not an integer"));
    }
    if value < low || value > high {
        return Err(format!("{value} is out of range for {:?}", param.ty).to_lowercase());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

    fn base() -> serde_json::Value {
        json!({
            "schema": "dtee.job/v1",
            "kernel": {
                "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "format": "wasm", "entry": "run", "target": "wasm"
            },
            "buffers": [
                {"kind": "input", "name": "x", "inline": "AAAA"},
                {"kind": "output", "name": "out", "size": 16}
            ],
            "params": [{"name": "n", "type": "u32", "value": 4}]
        })
    }

    fn parse(value: serde_json::Value) -> Result<JobSpec, String> {
        let spec: JobSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_good_job_parses_and_validates() {
        parse(base()).unwrap();
    }

    #[test]
    fn bad_jobs_are_refused_with_a_reason() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "unknown top-level field",
                Box::new(|v| v["extra"] = json!(1)),
            ),
            (
                "unknown buffer field",
                Box::new(|v| v["buffers"][0]["colour"] = json!("red")),
            ),
            (
                "wrong schema",
                Box::new(|v| v["schema"] = json!("dtee.job/v2")),
            ),
            (
                "bad base64",
                Box::new(|v| v["buffers"][0]["inline"] = json!("!!!")),
            ),
            (
                "both inline and blob",
                Box::new(|v| {
                    v["buffers"][0]["blob"] = v["kernel"]["digest"].clone();
                }),
            ),
            (
                "neither inline nor blob",
                Box::new(|v| {
                    v["buffers"][0].as_object_mut().unwrap().remove("inline");
                }),
            ),
            (
                "duplicate buffer",
                Box::new(|v| v["buffers"][1]["name"] = json!("x")),
            ),
            (
                "zero output",
                Box::new(|v| v["buffers"][1]["size"] = json!(0)),
            ),
            (
                "negative limit",
                Box::new(|v| v["limits"] = json!({"fuel": -1})),
            ),
            (
                "zero limit",
                Box::new(|v| v["limits"] = json!({"timeout_ms": 0})),
            ),
            (
                "fractional u32",
                Box::new(|v| v["params"][0]["value"] = json!(1.5)),
            ),
            (
                "negative u32",
                Box::new(|v| v["params"][0]["value"] = json!(-1)),
            ),
            (
                "bad digest",
                Box::new(|v| v["kernel"]["digest"] = json!("sha256:abc")),
            ),
            (
                "bad target",
                Box::new(|v| v["kernel"]["target"] = json!("WASM!")),
            ),
            (
                "launch on wasm",
                Box::new(|v| v["launch"] = json!({"grid": [1,1,1], "block": [1,1,1]})),
            ),
            (
                "bad buffer name",
                Box::new(|v| v["buffers"][0]["name"] = json!("1x")),
            ),
            (
                "unknown kind",
                Box::new(|v| v["buffers"][0]["kind"] = json!("secret")),
            ),
        ];
        for (what, mutate) in cases {
            let mut value = base();
            mutate(&mut value);
            assert!(parse(value).is_err(), "{what}: accepted");
        }
    }

    #[test]
    fn a_validation_error_names_the_field_at_fault() {
        let field_of = |mutate: Mutation| {
            let mut value = base();
            mutate(&mut value);
            let spec: JobSpec = serde_json::from_value(value).unwrap();
            spec.validate().unwrap_err().field
        };
        assert_eq!(
            field_of(Box::new(|v| v["buffers"][0]["inline"] = json!("!!!"))),
            "buffers[0].inline"
        );
        assert_eq!(
            field_of(Box::new(|v| v["buffers"][1]["name"] = json!("x"))),
            "buffers[1].name"
        );
        assert_eq!(
            field_of(Box::new(|v| v["params"][0]["value"] = json!(-1))),
            "params[0].value"
        );
        assert_eq!(
            field_of(Box::new(|v| v["limits"] = json!({"fuel": 0}))),
            "limits.fuel"
        );
        assert_eq!(
            field_of(Box::new(|v| v["kernel"]["entry"] = json!(""))),
            "kernel.entry"
        );
    }

    #[test]
    fn validation_decodes_inputs_and_parses_state_keys_once() {
        let mut value = base();
        value["buffers"][1] =
            json!({"kind": "state", "name": "s", "key": "alice/counter", "mode": "read_write"});
        let spec: JobSpec = serde_json::from_value(value).unwrap();
        let buffers = spec.validate().unwrap();
        assert_eq!(
            buffers[0],
            CheckedBuffer::Input {
                name: "x".into(),
                source: InputSource::Inline(Arc::from(vec![0u8, 0, 0])),
            }
        );
        match &buffers[1] {
            CheckedBuffer::State { key, mode, .. } => {
                assert_eq!(key.tenant(), "alice");
                assert_eq!(*mode, AccessMode::ReadWrite);
            }
            other => panic!("not a state buffer: {other:?}"),
        }
    }
}
