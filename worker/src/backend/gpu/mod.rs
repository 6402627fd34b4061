//! The GPU backend: one kernel format on the devices of one target, each through its own
//! supervised device host.
//!
//! - `targets.rs` — which target a device serves, and which devices serve a target;
//! - `checks.rs` — everything checked before the device host is asked (`ptx.rs` and `hsaco.rs`
//!   read what a kernel's entries declare);
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

mod checks;
pub mod device;
pub mod host;
mod hsaco;
mod pool;
pub mod protocol;
mod ptx;
mod targets;
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

use dtee_schemas::job::KernelFormat;
use dtee_schemas::result::ResourceUsage;
use dtee_schemas::run::GpuDevice;
use dtee_schemas::{Digest, ErrorCode};

use self::checks::check_arguments;
pub use self::checks::check_kernel_bytes;
use self::device::DriverKind;
use self::host::{DeviceHost, HostError};
pub use self::pool::Device;
use self::pool::Pool;
use self::protocol::{DeviceInfo, Request, ScalarArg};
#[cfg(feature = "test-hooks")]
pub use self::targets::stand_in_devices;
pub use self::targets::{
    driver_for_target, format_of, is_gpu_target, serving_groups, target_of, ServingGroup,
};
use self::transfer::{buffer_specs, host_answer, match_outputs, refuse};
use super::{Backend, Completed, Invocation, KernelError, PrepareError, Prepared};
use crate::fair::FairSlots;

/// Kernels kept per target (their bytes; the host keeps the loaded modules), at most this many
/// and at most [`CACHE_BYTES`] of them: a kernel may be 64 MiB (`DTEE_MAX_KERNEL_BYTES`). Shared
/// fairly by tenants (`fair_cache`): one that streams new kernels evicts its own.
const CACHE_ENTRIES: usize = 256;
/// The most bytes of kernels kept per target.
const CACHE_BYTES: usize = 256 << 20;

/// Checked kernels (or why each was refused) by digest.
type KernelCache = crate::fair_cache::FairCache<Arc<Prepared<GpuKernel>>>;

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
    /// One job per device may hold more than a little input or state read ahead of its run
    /// (`job::reads`).
    pub(crate) data_slots: Arc<FairSlots>,
    /// Checked kernels by digest.
    cache: Mutex<KernelCache>,
}

impl GpuBackend {
    /// Starts a device host for each of `ordinals` (devices of `kind` that serve one target)
    /// and learns each device from its host. `program` is the worker's executable (a host is
    /// `program __dtee-device-host`). A device whose host does not start is left out, with a
    /// warning; no device at all is an error that gives every reason.
    /// With `share_host`, a host runs the jobs of different tenants one after the other
    /// ([`DeviceHost::new`]).
    pub fn start(
        kind: DriverKind,
        ordinals: &[u32],
        program: std::path::PathBuf,
        share_host: bool,
    ) -> Result<GpuBackend, String> {
        let mut devices = Vec::with_capacity(ordinals.len());
        let mut reasons = Vec::new();
        for &ordinal in ordinals {
            let host = DeviceHost::new(kind, ordinal, program.clone(), share_host);
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
            data_slots: FairSlots::new(pool.devices().len()),
            pool,
            cache: Mutex::new(KernelCache::new(CACHE_ENTRIES, CACHE_BYTES)),
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
}

impl Backend for GpuBackend {
    type Kernel = GpuKernel;

    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn format(&self) -> KernelFormat {
        self.format
    }

    fn cached(&self, tenant: &str, digest: &Digest) -> Option<Arc<Prepared<GpuKernel>>> {
        self.cache.lock().expect("cache lock").get(tenant, digest)
    }

    fn prepare(
        &self,
        tenant: &str,
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
        let size = prepared
            .as_ref()
            .as_ref()
            .map_or(0, |kernel| kernel.bytes.len());
        self.cache.lock().expect("cache lock").insert(
            tenant,
            digest.clone(),
            Arc::clone(&prepared),
            size,
        );
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
            // Modules are kept per tenant: whatever a module holds on the device between jobs
            // is never another tenant's.
            kernel_digest: format!("{}/{}", invocation.tenant, kernel.digest),
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
            let wall_time_us = started.elapsed().as_micros() as u64;
            // If this job's kernel ended the host, this job starts the next one (not timed).
            lease.device().host.restart_if_due();
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
            break (lease, answer, wall_time_us);
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
