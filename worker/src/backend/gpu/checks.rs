//! Everything checked before the device host is asked for anything: the kernel's bytes look
//! like its format, the launch fits the target's devices, the device allocations and the bytes
//! copied back fit the job's limits and the devices, and the arguments are exactly what the
//! kernel's entry declares (`ptx.rs`, `hsaco.rs`).

use dtee_schemas::job::{KernelFormat, Launch, ScalarType};
use dtee_schemas::result::EffectiveLimits;
use dtee_schemas::ErrorCode;

use super::protocol::BufferSpec;
use super::transfer::refuse;
use super::{GpuBackend, GpuKernel};
use crate::backend::{Invocation, KernelError};

impl GpuBackend {
    /// The launch geometry and shared memory against the target's devices.
    pub(super) fn check_launch(&self, launch: &Launch) -> Result<(), String> {
        // u128: three u32 dimensions cannot overflow it.
        let threads: u128 = launch.block.iter().map(|&d| u128::from(d)).product();
        if threads > u128::from(self.limits.max_threads_per_block) {
            return Err(format!(
                "the launch asks for {threads} threads per block; {} allows {}",
                self.limits.device.name, self.limits.max_threads_per_block
            ));
        }
        for (axis, (grid, max)) in launch.grid.iter().zip(self.limits.max_grid).enumerate() {
            if *grid > max {
                return Err(format!(
                    "grid dimension {axis} is {grid}; {} allows {max}",
                    self.limits.device.name
                ));
            }
        }
        if launch.shared_mem_bytes > self.limits.max_shared_bytes_per_block {
            return Err(format!(
                "the launch asks for {} bytes of shared memory per block; {} allows {}",
                launch.shared_mem_bytes,
                self.limits.device.name,
                self.limits.max_shared_bytes_per_block
            ));
        }
        Ok(())
    }

    /// Everything the device would allocate and copy back, checked against the job's limits
    /// and the device before anything is allocated; returns the bytes copied back.
    pub(super) fn check_sizes(
        &self,
        buffers: &[(BufferSpec, &[u8])],
        limits: EffectiveLimits,
    ) -> Result<u64, KernelError> {
        let device_bytes = buffers
            .iter()
            .try_fold(0u64, |sum, (spec, _)| sum.checked_add(spec.device_bytes))
            .unwrap_or(u64::MAX);
        if device_bytes > limits.memory_bytes {
            return Err(refuse(
                ErrorCode::MemoryLimitExceeded,
                format!(
                    "the job's device buffers need {device_bytes} bytes; its memory limit is {}",
                    limits.memory_bytes
                ),
            ));
        }
        if device_bytes > self.limits.memory_bytes {
            return Err(refuse(
                ErrorCode::ExcessiveResourceRequirements,
                format!(
                    "the job's device buffers need {device_bytes} bytes; {} has {}",
                    self.limits.device.name, self.limits.memory_bytes
                ),
            ));
        }
        let copied_back: u64 = buffers
            .iter()
            .filter(|(spec, _)| spec.copy_out)
            .map(|(spec, _)| spec.device_bytes)
            .sum();
        if copied_back > limits.output_bytes {
            return Err(refuse(
                ErrorCode::OutputLimitExceeded,
                format!(
                    "a GPU kernel's writable buffers are copied back whole: {copied_back} bytes, over the output limit of {}",
                    limits.output_bytes
                ),
            ));
        }
        Ok(copied_back)
    }
}

/// Refuses a launch whose arguments differ from the parameters the kernel's entry declares:
/// one 64-bit device pointer per buffer, then each scalar at its type's width (the driver would
/// otherwise read past the arguments the host passes; `ptx.rs`, `hsaco.rs`).
pub(super) fn check_arguments(kernel: &GpuKernel, invocation: &Invocation) -> Result<(), String> {
    let Some(entries) = &kernel.entries else {
        return Ok(());
    };
    let declared = entries
        .get(&invocation.entry)
        .ok_or_else(|| format!("the kernel has no entry {:?}", invocation.entry))?;
    let passed: Vec<u64> = invocation
        .slots
        .iter()
        .map(|_| 8)
        .chain(invocation.params.iter().map(|param| match param.ty {
            ScalarType::I32 | ScalarType::U32 | ScalarType::F32 => 4,
            ScalarType::I64 | ScalarType::U64 | ScalarType::F64 => 8,
        }))
        .collect();
    if *declared != passed {
        return Err(format!(
            "entry {:?} declares parameters of {declared:?} bytes; the job passes {passed:?} ({} buffers as 8-byte device pointers, then its scalars)",
            invocation.entry,
            invocation.slots.len()
        ));
    }
    Ok(())
}

/// A cheap check that `bytes` can be a kernel of `format` (the driver checks the rest when it
/// loads it, under the job's deadline).
pub fn check_kernel_bytes(format: KernelFormat, bytes: &[u8]) -> Result<(), String> {
    match format {
        KernelFormat::Ptx => {
            let text =
                std::str::from_utf8(bytes).map_err(|_| "PTX must be text (UTF-8)".to_owned())?;
            if text.contains('\0') {
                return Err("PTX must not contain NUL bytes".to_owned());
            }
            if !text.contains(".version") || !text.contains(".entry") {
                return Err("not PTX: no .version or no .entry directive".to_owned());
            }
            Ok(())
        }
        KernelFormat::Hsaco => {
            // An ELF object for AMDGPU (e_machine 224).
            if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
                return Err("not an AMD GPU code object: no ELF header".to_owned());
            }
            if u16::from_le_bytes([bytes[18], bytes[19]]) != 224 {
                return Err("an ELF object, but not for AMDGPU (e_machine 224)".to_owned());
            }
            Ok(())
        }
        KernelFormat::Wasm => Err("not a GPU format".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::ptx;
    use crate::backend::Slot;
    use dtee_schemas::result::EffectiveLimits;
    use dtee_schemas::Digest;
    use std::sync::Arc;

    #[test]
    fn the_committed_kernels_pass_the_format_checks() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        let ptx = std::fs::read(root.join("ptx/saxpy.ptx")).unwrap();
        check_kernel_bytes(KernelFormat::Ptx, &ptx).unwrap();
        let hsaco = std::fs::read(root.join("hsaco/saxpy.gfx90a.hsaco")).unwrap();
        check_kernel_bytes(KernelFormat::Hsaco, &hsaco).unwrap();
        assert!(check_kernel_bytes(KernelFormat::Ptx, &hsaco).is_err());
        assert!(check_kernel_bytes(KernelFormat::Hsaco, &ptx).is_err());
        assert!(check_kernel_bytes(
            KernelFormat::Hsaco,
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0"
        )
        .is_err());
    }

    #[test]
    fn a_launch_must_pass_exactly_the_parameters_the_ptx_entry_declares() {
        use crate::backend::ParamValue;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        let bytes = std::fs::read(root.join("ptx/saxpy.ptx")).unwrap();
        let kernel = GpuKernel {
            digest: Digest::of(&bytes),
            entries: Some(Arc::new(
                ptx::entries(std::str::from_utf8(&bytes).unwrap()).unwrap(),
            )),
            bytes: Arc::from(bytes),
        };
        let buffer = |name: &str| Slot::Output {
            name: name.into(),
            capacity: 16,
        };
        let param = |ty| ParamValue {
            name: "p".into(),
            ty,
            value: 1.0,
        };
        let mut invocation = Invocation {
            entry: "saxpy".into(),
            slots: vec![buffer("x"), buffer("y"), buffer("out")],
            params: vec![param(ScalarType::F32), param(ScalarType::U32)],
            limits: EffectiveLimits {
                timeout_ms: 1000,
                memory_bytes: 1 << 20,
                fuel: 1,
                output_bytes: 1 << 20,
            },
            launch: None,
            tenant: "tenant".to_owned(),
        };
        check_arguments(&kernel, &invocation).unwrap();
        // One scalar short: the driver would read a pointer the host never passed.
        invocation.params.pop();
        assert!(check_arguments(&kernel, &invocation)
            .unwrap_err()
            .contains("declares parameters"));
        // A 64-bit scalar where the entry declares 32 bits.
        invocation.params.push(param(ScalarType::U64));
        assert!(check_arguments(&kernel, &invocation).is_err());
        invocation.params[1] = param(ScalarType::U32);
        invocation.slots.pop();
        assert!(check_arguments(&kernel, &invocation).is_err());
        invocation.entry = "nothing".into();
        assert!(check_arguments(&kernel, &invocation)
            .unwrap_err()
            .contains("no entry"));
    }
}
