//! The GPU workload of `dtee-loadtest jobs --workload vadd`: each job adds two vectors of
//! `--gpu-elements` f32 with kernels/ptx/vadd.ptx on `--gpu-target` (`cuda` on an NVIDIA
//! machine; `stand-in` against a worker built with the `test-hooks` feature, whose stand-in
//! device host adds them on the CPU: it measures the GPU job path and the device host, not a
//! GPU). Every output is checked.

use std::path::{Path, PathBuf};

use anyhow::bail;
use dtee_schemas::job::{KernelFormat, Launch, ScalarType};
use dtee_schemas::{Digest, JobResult, JobSpec};
use dtee_submitter::builder::{inline_input, output, param, wasm_job};

/// Threads per block of the launch.
const BLOCK: u32 = 256;

/// kernels/ptx/vadd.ptx, next to the wasm kernels' folder of `wasm_kernel`.
pub fn kernel_path(wasm_kernel: &Path) -> PathBuf {
    let kernels = wasm_kernel
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("kernels"));
    kernels.join("ptx").join("vadd.ptx")
}

/// The two inputs of job `idx`: a[i] = i + idx and b[i] = i / 2, exact in f32.
fn inputs(elements: u32, idx: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..elements).map(|i| (i as usize + idx % 4096) as f32);
    let b = (0..elements).map(|i| i as f32 / 2.0);
    (a.collect(), b.collect())
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Job `idx`: `out = a + b` on `target`.
pub fn job(kernel: &Digest, target: &str, elements: u32, idx: usize) -> JobSpec {
    let (a, b) = inputs(elements, idx);
    let mut spec = wasm_job(kernel.clone(), "vadd");
    spec.kernel.format = KernelFormat::Ptx;
    spec.kernel.target = target.to_owned();
    spec.launch = Some(Launch {
        grid: [elements.div_ceil(BLOCK).max(1), 1, 1],
        block: [BLOCK, 1, 1],
        shared_mem_bytes: 0,
    });
    spec.buffers = vec![
        inline_input("a", &bytes(&a)),
        inline_input("b", &bytes(&b)),
        output("out", 4 * u64::from(elements)),
    ];
    spec.params = vec![param("n", ScalarType::U32, f64::from(elements))];
    spec
}

/// Fails when a succeeded job's output is not a + b.
pub fn check(result: &JobResult, elements: u32, idx: usize) -> anyhow::Result<()> {
    if !result.succeeded() {
        return Ok(());
    }
    let (a, b) = inputs(elements, idx);
    let expected: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
    let out = result
        .output("out")
        .map(|o| o.bytes())
        .transpose()?
        .unwrap_or_default();
    if out != bytes(&expected) {
        bail!("job {idx}: the kernel's output is not a + b");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_launches_enough_threads_and_names_its_target() {
        let spec = job(&Digest::of(b"ptx"), "stand-in", 1000, 3);
        spec.validate().unwrap();
        assert_eq!(spec.launch.unwrap().grid, [4, 1, 1]);
        assert_eq!(spec.kernel.target, "stand-in");
        assert_eq!(
            kernel_path(Path::new("kernels/wasm/noop.wasm")),
            Path::new("kernels/ptx/vadd.ptx")
        );
    }
}
