//! The GPU backend: one kernel format on the devices of one target, each through its own
//! supervised device host.
//!
//! - `pool.rs` — the devices of a target, one job at a time each;
//! - `protocol.rs` — the frames between the worker and a device host;
//! - `host.rs` — the supervisor: one host process per device, killed at the job's deadline and
//!   restarted, given up after repeated failures;
//! - `device.rs` — the host process itself and the [`device::Driver`] interface;
//! - `cuda.rs` (feature `cuda`, NVIDIA through the CUDA driver API with cudarc, `libcuda`
//!   loaded at run time), `hip.rs` (feature `hip`, AMD through the HIP runtime with hip-sys),
//!   `stand_in.rs` (feature `test-hooks`: no GPU, for the test suite only).
//!
//! Everything a job can make the device spend is checked here, from the job and the device's
//! limits, before the host is asked for anything: the sum of the device allocations against the
//! job's `memory_bytes` and the device's memory (`memory_limit_exceeded`,
//! `excessive_resource_requirements`), the bytes copied back against `output_bytes`
//! (`output_limit_exceeded`), the launch geometry and shared memory against the device's
//! limits (`excessive_resource_requirements`). Time is bounded by the host's deadline: loading
//! the module (the PTX JIT included), the copies and the kernel together get the job's
//! `timeout_ms` (`execution_timeout`; the host is killed).

pub mod device;
pub mod host;
mod hsaco;
mod pool;
pub mod protocol;
mod ptx;
mod transfer;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "hip")]
mod hip;
#[cfg(feature = "test-hooks")]
mod stand_in;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtee_schemas::job::{KernelFormat, Launch, ScalarType};
use dtee_schemas::result::{EffectiveLimits, ResourceUsage};
use dtee_schemas::run::GpuDevice;
use dtee_schemas::{Digest, ErrorCode};

use self::device::DriverKind;
use self::host::{DeviceHost, HostError};
pub use self::pool::Device;
use self::pool::Pool;
use self::protocol::{BufferSpec, DeviceInfo, Request, ScalarArg};
use self::transfer::{buffer_specs, host_answer, match_outputs, refuse};
use super::{Backend, Completed, Invocation, KernelError, PrepareError, Prepared};
use crate::fair::FairSlots;

/// Kernels kept per device (their bytes; the host keeps the loaded modules).
const CACHE_ENTRIES: usize = 256;

/// A GPU kernel: its bytes, checked to look like the format, kept by digest.
#[derive(Debug, Clone)]
pub struct GpuKernel {
    digest: Digest,
    bytes: Arc<[u8]>,
    /// Each entry point's parameter sizes (`ptx.rs`, `hsaco.rs`): a launch must match them.
    entries: Option<Arc<HashMap<String, Vec<u64>>>>,
}

/// The devices of one target, serving it with one kernel format.
#[derive(Debug)]
pub struct GpuBackend {
    kind: DriverKind,
    target: String,
    format: KernelFormat,
    /// The limits every device of the target meets.
    limits: DeviceInfo,
    pool: Pool,
    /// One job at a time per device, handed out fairly between tenants.
    pub(crate) slots: Arc<FairSlots>,
    cache: Mutex<HashMap<Digest, Arc<Prepared<GpuKernel>>>>,
}

/// The target a device serves: `cuda` for NVIDIA, `hip.<gfx arch>` for AMD, `stand-in` for the
/// test suite's stand-in.
pub fn target_of(kind: DriverKind, info: &DeviceInfo) -> String {
    match kind {
        DriverKind::Cuda => "cuda".to_owned(),
        DriverKind::Hip => format!("hip.{}", info.device.arch),
        DriverKind::StandIn => "stand-in".to_owned(),
    }
}

/// The kernel format a driver loads.
pub fn format_of(kind: DriverKind) -> KernelFormat {
    match kind {
        DriverKind::Cuda | DriverKind::StandIn => KernelFormat::Ptx,
        DriverKind::Hip => KernelFormat::Hsaco,
    }
}

/// Which devices serve which target: every device of a target, as long as they share one
/// architecture (a PTX for `sm_90` does not load on an `sm_80` device, and which device a job
/// gets must not decide its answer). Where a target's devices differ, the architecture with
/// the most devices serves it (the lowest ordinal breaks ties) and the others are returned as
/// left out, each with its architecture.
pub fn serving_groups(kind: DriverKind, devices: &[DeviceInfo]) -> Vec<ServingGroup> {
    let mut groups: Vec<ServingGroup> = Vec::new();
    for (ordinal, info) in devices.iter().enumerate() {
        let target = target_of(kind, info);
        let arch = &info.device.arch;
        let ordinal = ordinal as u32;
        match groups.iter_mut().find(|g| g.target == target) {
            Some(group) => group.candidates.push((ordinal, arch.clone())),
            None => groups.push(ServingGroup {
                target,
                ordinals: Vec::new(),
                left_out: Vec::new(),
                candidates: vec![(ordinal, arch.clone())],
            }),
        }
    }
    for group in &mut groups {
        let count = |arch: &str| group.candidates.iter().filter(|(_, a)| a == arch).count();
        let most = group
            .candidates
            .iter()
            .map(|(_, arch)| count(arch))
            .max()
            .unwrap_or(0);
        // The first device's architecture among those with the most devices.
        let best = group
            .candidates
            .iter()
            .find(|(_, arch)| count(arch) == most)
            .map(|(_, arch)| arch.clone())
            .unwrap_or_default();
        for (ordinal, arch) in std::mem::take(&mut group.candidates) {
            if arch == best {
                group.ordinals.push(ordinal);
            } else {
                group.left_out.push((ordinal, arch));
            }
        }
    }
    groups
}

/// The devices that serve one target ([`serving_groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingGroup {
    /// The target.
    pub target: String,
    /// The ordinals of the devices that serve it.
    pub ordinals: Vec<u32>,
    /// Devices of the target left out for another architecture: ordinal and architecture.
    pub left_out: Vec<(u32, String)>,
    candidates: Vec<(u32, String)>,
}

/// `count` stand-in devices, for a worker whose test configuration asks for more than one.
#[cfg(feature = "test-hooks")]
pub fn stand_in_devices(count: u32) -> Vec<DeviceInfo> {
    stand_in::probe(count)
}

/// Whether `target` names a GPU target (`cuda`, `hip.<arch>`, `stand-in`).
pub fn is_gpu_target(target: &str) -> bool {
    target == "cuda" || target.starts_with("hip.") || target == "stand-in"
}

/// The driver a GPU target needs.
pub fn driver_for_target(target: &str) -> Option<DriverKind> {
    if target == "cuda" {
        Some(DriverKind::Cuda)
    } else if target.starts_with("hip.") {
        Some(DriverKind::Hip)
    } else if target == "stand-in" {
        Some(DriverKind::StandIn)
    } else {
        None
    }
}

impl GpuBackend {
    /// Starts a device host for each of `ordinals` (devices of `kind` that serve one target)
    /// and learns each device from its host. `program` is the worker's executable (a host is
    /// `program __dtee-device-host`). A device whose host does not start is left out, with a
    /// warning; no device at all is an error that gives every reason.
    pub fn start(
        kind: DriverKind,
        ordinals: &[u32],
        program: std::path::PathBuf,
    ) -> Result<GpuBackend, String> {
        let mut devices = Vec::with_capacity(ordinals.len());
        let mut reasons = Vec::new();
        for &ordinal in ordinals {
            let host = DeviceHost::new(kind, ordinal, program.clone());
            match host.start() {
                Ok(info) => devices.push(Device {
                    ordinal,
                    info,
                    host,
                    retired: Default::default(),
                }),
                Err(error) => {
                    tracing::warn!(
                        driver = kind.name(),
                        ordinal,
                        "the device host did not start: {error}"
                    );
                    reasons.push(format!("device {ordinal}: {error}"));
                }
            }
        }
        let Some(first) = devices.first() else {
            return Err(if reasons.is_empty() {
                "no device was named".to_owned()
            } else {
                reasons.join("; ")
            });
        };
        let target = target_of(kind, &first.info);
        if let Some(other) = devices
            .iter()
            .find(|device| target_of(kind, &device.info) != target)
        {
            return Err(format!(
                "device {} serves {}, not {target}",
                other.ordinal,
                target_of(kind, &other.info)
            ));
        }
        let pool = Pool::new(devices);
        Ok(GpuBackend {
            kind,
            target,
            format: format_of(kind),
            limits: pool.limits(),
            slots: FairSlots::new(pool.devices().len()),
            pool,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The target these devices serve.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The first device: the one named where no job's device is known.
    pub fn device(&self) -> &GpuDevice {
        self.pool.first()
    }

    /// The devices, each with its ordinal and host.
    pub fn devices(&self) -> &[Device] {
        self.pool.devices()
    }

    /// The limits every device of the target meets (the smallest of each).
    pub fn info(&self) -> &DeviceInfo {
        &self.limits
    }

    /// Device host restarts so far, over every device.
    pub fn restarts(&self) -> u64 {
        self.pool
            .devices()
            .iter()
            .map(|device| device.host.restarts())
            .sum()
    }

    /// Why the target is not served, once every device of it was given up.
    pub fn failed(&self) -> Option<String> {
        self.pool.failed()
    }

    fn check_launch(&self, launch: &Launch) -> Result<(), String> {
        let threads: u64 = launch.block.iter().map(|&d| u64::from(d)).product();
        if threads > u64::from(self.limits.max_threads_per_block) {
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
}

impl Backend for GpuBackend {
    type Kernel = GpuKernel;

    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn format(&self) -> KernelFormat {
        self.format
    }

    fn cached(&self, digest: &Digest) -> Option<Arc<Prepared<GpuKernel>>> {
        self.cache.lock().expect("cache lock").get(digest).cloned()
    }

    fn prepare(
        &self,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Arc<Prepared<GpuKernel>>, PrepareError> {
        let checked = check_kernel_bytes(self.format, bytes).and_then(|()| {
            let entries = match (self.format, self.kind) {
                // The test suite's stand-in runs "kernels" named by entry point, whatever
                // the PTX holds.
                (_, DriverKind::StandIn) => None,
                // Checked to be UTF-8 text above.
                (KernelFormat::Ptx, _) => Some(Arc::new(ptx::entries(
                    std::str::from_utf8(bytes).unwrap_or_default(),
                )?)),
                (KernelFormat::Hsaco, _) => Some(Arc::new(hsaco::entries(bytes)?)),
                (KernelFormat::Wasm, _) => None,
            };
            Ok(GpuKernel {
                digest: digest.clone(),
                bytes: Arc::from(bytes),
                entries,
            })
        });
        let prepared = Arc::new(checked.map_err(|why| refuse(ErrorCode::KernelInvalid, why)));
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest.clone(), Arc::clone(&prepared));
        Ok(prepared)
    }

    fn run(&self, kernel: &GpuKernel, invocation: &Invocation) -> Result<Completed, KernelError> {
        let limits = invocation.limits;
        let Some(launch) = invocation.launch else {
            return Err(refuse(
                ErrorCode::InvalidJob,
                "a GPU kernel needs launch geometry",
            ));
        };
        self.check_launch(&launch)
            .map_err(|why| refuse(ErrorCode::ExcessiveResourceRequirements, why))?;
        let buffers = buffer_specs(&invocation.slots)?;
        check_arguments(kernel, invocation)
            .map_err(|why| refuse(ErrorCode::KernelLinkFailed, why))?;
        let copied_back = self.check_sizes(&buffers, limits)?;
        let request = Request {
            kernel_digest: kernel.digest.to_string(),
            kernel_bytes: kernel.bytes.len() as u64,
            entry: invocation.entry.clone(),
            launch,
            buffers: buffers.iter().map(|(spec, _)| spec.clone()).collect(),
            params: invocation
                .params
                .iter()
                .map(|param| ScalarArg {
                    ty: param.ty,
                    value: param.value,
                })
                .collect(),
        };
        let mut payloads: Vec<&[u8]> = vec![&kernel.bytes];
        payloads.extend(buffers.iter().map(|(_, bytes)| *bytes));
        let deadline = Duration::from_millis(limits.timeout_ms);
        let (lease, answer, wall_time_us) = loop {
            let lease = self.pool.checkout().map_err(|why| {
                refuse(
                    ErrorCode::DeviceFailed,
                    format!("every device of target {} was given up: {why}", self.target),
                )
            })?;
            let started = Instant::now();
            let answer = lease
                .device()
                .host
                .run(&request, &payloads, deadline, &invocation.tenant);
            // A device given up no longer has a job slot while others remain: its jobs wait
            // for theirs. (Once all are given up, jobs are answered `device_failed` at once and
            // the target's queues are no longer consumed.)
            let device = lease.device();
            if device.host.failed().is_some()
                && self.pool.failed().is_none()
                && !device
                    .retired
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                self.slots.retire();
            }
            // A device given up just now, before the job reached it (its host would not start
            // again): another device of the target takes the job, if one is left.
            if matches!(answer, Err(HostError::Unavailable(_)))
                && lease.device().host.failed().is_some()
                && self.pool.failed().is_none()
            {
                continue;
            }
            break (lease, answer, started.elapsed().as_micros() as u64);
        };
        let device = lease.device();
        let on_device = |mut error: KernelError| {
            error.device = Some(Box::new(device.info.device.clone()));
            error
        };
        let (response, outputs) = host_answer(answer, wall_time_us).map_err(on_device)?;
        let written = match_outputs(&buffers, outputs).map_err(on_device)?;
        Ok(Completed {
            written,
            usage: ResourceUsage {
                fuel_consumed: 0,
                peak_memory_bytes: response.device_bytes,
                wall_time_us,
                output_bytes: copied_back,
                device_memory_bytes: response.device_bytes,
                kernel_time_us: response.kernel_time_us,
                copied_bytes: response.copied_bytes,
                copy_time_us: response.copy_time_us,
            },
            device: Some(device.info.device.clone()),
        })
    }
}

impl GpuBackend {
    /// Everything the device would allocate and copy back, checked against the job's limits
    /// and the device before anything is allocated; returns the bytes copied back.
    fn check_sizes(
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
fn check_arguments(kernel: &GpuKernel, invocation: &Invocation) -> Result<(), String> {
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
    use crate::backend::Slot;
    use dtee_schemas::job::AccessMode;

    /// A device's limits for tests that start no host.
    pub(crate) fn sample_info() -> DeviceInfo {
        DeviceInfo {
            device: GpuDevice {
                vendor: "test".to_owned(),
                name: "a device for unit tests".to_owned(),
                arch: "sm_80".to_owned(),
                driver: "none".to_owned(),
                ordinal: Some(0),
            },
            memory_bytes: 1 << 30,
            max_threads_per_block: 1024,
            max_shared_bytes_per_block: 48 << 10,
            max_grid: [65_535; 3],
        }
    }

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

    #[test]
    fn a_target_is_served_by_devices_of_one_architecture() {
        let device = |arch: &str| {
            let mut info = sample_info();
            info.device.arch = arch.to_owned();
            info
        };
        let devices = [
            device("sm_80"),
            device("sm_90"),
            device("sm_90"),
            device("sm_80"),
            device("sm_90"),
        ];
        let groups = serving_groups(DriverKind::Cuda, &devices);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].target, "cuda");
        assert_eq!(groups[0].ordinals, [1, 2, 4]);
        assert_eq!(
            groups[0].left_out,
            [(0, "sm_80".to_owned()), (3, "sm_80".to_owned())]
        );
        // A tie goes to the first device's architecture.
        let tie = serving_groups(DriverKind::Cuda, &[device("sm_90"), device("sm_80")]);
        assert_eq!(tie[0].ordinals, [0]);
        // HIP targets name the architecture: each has its own group.
        let hip = serving_groups(DriverKind::Hip, &[device("gfx90a"), device("gfx1100")]);
        let targets: Vec<&str> = hip.iter().map(|g| g.target.as_str()).collect();
        assert_eq!(targets, ["hip.gfx90a", "hip.gfx1100"]);
    }

    #[test]
    fn device_buffers_follow_the_slots() {
        let slots = vec![
            Slot::Input {
                name: "x".into(),
                data: Arc::from(&b"abcd"[..]),
            },
            Slot::Output {
                name: "out".into(),
                capacity: 16,
            },
            Slot::State {
                name: "s".into(),
                mode: AccessMode::ReadWrite,
                current: Arc::from(&b"xy"[..]),
                capacity: 8,
            },
            Slot::State {
                name: "r".into(),
                mode: AccessMode::ReadOnly,
                current: Arc::from(&b""[..]),
                capacity: 8,
            },
        ];
        let specs = buffer_specs(&slots).unwrap();
        let summary: Vec<(u64, u64, bool)> = specs
            .iter()
            .map(|(s, _)| (s.device_bytes, s.copy_in, s.copy_out))
            .collect();
        assert_eq!(
            summary,
            [(4, 4, false), (16, 0, true), (8, 2, true), (1, 0, false)]
        );
        let too_long = vec![Slot::State {
            name: "s".into(),
            mode: AccessMode::ReadWrite,
            current: Arc::from(&b"0123456789"[..]),
            capacity: 8,
        }];
        assert_eq!(
            buffer_specs(&too_long).unwrap_err().code,
            ErrorCode::OutputLimitExceeded
        );
    }
}
