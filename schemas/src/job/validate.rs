//! [`JobSpec::validate`]: everything serde cannot check, each error naming the field at fault,
//! and the buffers handed back decoded and parsed ([`CheckedBuffer`]).

use std::collections::HashSet;

use super::checked::{check_secret, CheckedBuffer, InputSource};
use super::{
    decode_base64, is_valid_target, AccessMode, Buffer, JobSpec, Param, ScalarType, WasmProfile,
};
use crate::state::StateKey;

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

pub(super) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        problem: problem.into(),
    }
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Threads per block that every supported GPU allows (NVIDIA and AMD alike).
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;

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
        match (kernel.format.is_gpu(), kernel.profile) {
            (true, Some(_)) => {
                return Err(invalid(
                    "kernel.profile",
                    "applies to wasm kernels only: a GPU kernel is not metered or canonicalised",
                ))
            }
            (false, Some(WasmProfile::Fast)) if self.limits.fuel.is_some() => {
                return Err(invalid(
                    "limits.fuel",
                    "the fast profile meters no fuel: leave limits.fuel out, or use the deterministic profile",
                ))
            }
            _ => {}
        }
        match (kernel.format.is_gpu(), &self.launch) {
            (false, Some(_)) => Err(invalid(
                "launch",
                "launch geometry applies to GPU kernels only, not wasm",
            )),
            (true, None) => Err(invalid(
                "launch",
                format!("a {} kernel needs launch geometry", kernel.format.as_str()),
            )),
            (true, Some(launch)) if launch.grid.contains(&0) || launch.block.contains(&0) => {
                Err(invalid(
                    "launch",
                    "grid and block dimensions must be at least 1",
                ))
            }
            (true, Some(launch))
                // u128: three u32 dimensions cannot overflow it.
                if launch.block.iter().map(|&d| u128::from(d)).product::<u128>()
                    > u128::from(MAX_THREADS_PER_BLOCK) =>
            {
                Err(invalid(
                    "launch.block",
                    format!("at most {MAX_THREADS_PER_BLOCK} threads per block (the product of the block dimensions)"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_buffers(&self) -> Result<Vec<CheckedBuffer>, ValidationError> {
        let mut names = HashSet::new();
        let mut state_tag: Option<String> = None;
        // Each state key once: a commit checks each binding's resulting size and bumps its
        // version on its own, so two bindings of one key could together pass what neither
        // checks (two appends), and Redis would fail the commit half-way.
        let mut state_keys: std::collections::HashMap<StateKey, usize> =
            std::collections::HashMap::new();
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
                    if let Some(first) = state_keys.insert(key.clone(), idx) {
                        return Err(invalid(
                            field("key"),
                            format!("state key {key} is bound twice (buffers[{first}] and buffers[{idx}]): bind each key once"),
                        ));
                    }
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
                    if self.kernel.format.is_gpu() {
                        if *mode == AccessMode::AppendOnly {
                            return Err(invalid(field("mode"), format!(
                                "a GPU kernel cannot append to state: its buffers are fixed-size device allocations (bind {name:?} as read_write with max_size instead)"
                            )));
                        }
                        if mode.is_writable() && max_size.is_none() {
                            return Err(invalid(field("max_size"), format!(
                                "a GPU kernel's writable state {name:?} needs max_size: the size of its device buffer, which is also the length of the value written back"
                            )));
                        }
                    }
                    CheckedBuffer::State {
                        name: name.to_owned(),
                        key,
                        mode: *mode,
                        may_be_absent: *may_be_absent,
                        max_size: *max_size,
                    }
                }
                Buffer::Secret {
                    secret, version, ..
                } => check_secret(name, secret, *version, field)?,
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
mod tests;
