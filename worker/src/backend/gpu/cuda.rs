//! NVIDIA GPUs through the CUDA driver API (cudarc, `libcuda` loaded at run time): PTX loaded
//! with the driver's JIT, buffers as device allocations, the launch timed with device events.
//! Runs only inside a device host (`device.rs`): after a fault the context is unusable until
//! the process exits, which the host then does.

// FFI to the GPU driver: every unsafe block says what it relies on.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::time::Instant;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{result, DriverError};
use dtee_schemas::run::GpuDevice;

use super::device::{Driver, Failed, Ran};
use super::protocol::{DeviceInfo, FailureKind, Request};

fn describe(error: DriverError) -> String {
    let name = error
        .error_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", error.0));
    let text = error
        .error_string()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}: {text}")
}

/// Errors after which the context is unusable (the kernel's fault).
fn is_sticky_fault(code: CUresult) -> bool {
    matches!(
        code,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_ASSERT
    )
}

fn failed(kind: FailureKind, error: DriverError, what: &str) -> Failed {
    let sticky = is_sticky_fault(error.0);
    Failed {
        kind: if sticky {
            FailureKind::KernelFault
        } else {
            kind
        },
        message: format!("{what}: {}", describe(error)),
        sticky,
    }
}

/// A failure once the kernel was launched (waiting for it, timing it, copying back): whatever
/// the error, the context may be unusable now, so the host exits and a fresh one takes the
/// next job. The kernel's faults stay the kernel's; other errors are the device's.
fn failed_after_launch(error: DriverError, what: &str) -> Failed {
    Failed {
        sticky: true,
        ..failed(FailureKind::Device, error, what)
    }
}

/// Events, destroyed when dropped (also on the error paths).
struct Events(Vec<sys::CUevent>);

impl Events {
    fn create(&mut self) -> Result<sys::CUevent, Failed> {
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|error| failed(FailureKind::Device, error, "creating an event"))?;
        self.0.push(event);
        Ok(event)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for event in &self.0 {
            // SAFETY: created by `event::create` and not destroyed elsewhere.
            let _ = unsafe { result::event::destroy(*event) };
        }
    }
}

/// Whether libcuda can be loaded (cudarc panics on first use otherwise).
fn present() -> bool {
    // SAFETY: only tries to load the library.
    unsafe { sys::is_culib_present() }
}

fn attribute(device: sys::CUdevice, attribute: sys::CUdevice_attribute) -> Result<i32, String> {
    // SAFETY: a valid device from `device::get`.
    unsafe { result::device::get_attribute(device, attribute) }.map_err(describe)
}

fn device_info(ordinal: i32) -> Result<DeviceInfo, String> {
    use sys::CUdevice_attribute as A;
    let device = result::device::get(ordinal).map_err(describe)?;
    let name = result::device::get_name(device).map_err(describe)?;
    // SAFETY: a valid device.
    let memory = unsafe { result::device::total_mem(device) }.map_err(describe)?;
    let major = attribute(device, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(device, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(describe)?;
    let grid = [
        attribute(device, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
        attribute(device, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
        attribute(device, A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?,
    ];
    Ok(DeviceInfo {
        device: GpuDevice {
            vendor: "nvidia".to_owned(),
            name,
            arch: format!("sm_{major}{minor}"),
            driver: format!("cuda {version}"),
            ordinal: u32::try_from(ordinal).ok(),
        },
        memory_bytes: memory as u64,
        max_threads_per_block: attribute(device, A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?
            as u32,
        max_shared_bytes_per_block: attribute(
            device,
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK,
        )? as u32,
        max_grid: grid.map(|d| d as u32),
    })
}

/// The CUDA devices of this machine.
pub fn probe() -> Result<Vec<DeviceInfo>, String> {
    if !present() {
        return Err("libcuda is not installed (no NVIDIA driver on this machine)".to_owned());
    }
    result::init().map_err(describe)?;
    let count = result::device::get_count().map_err(describe)?;
    if count == 0 {
        return Err("the CUDA driver sees no device".to_owned());
    }
    (0..count).map(device_info).collect()
}

/// One CUDA device with its primary context current on this thread.
pub struct Cuda {
    info: DeviceInfo,
    modules: HashMap<String, sys::CUmodule>,
}

/// Opens device `ordinal`.
pub fn open(ordinal: u32) -> Result<Cuda, String> {
    if !present() {
        return Err("libcuda is not installed (no NVIDIA driver on this machine)".to_owned());
    }
    result::init().map_err(describe)?;
    let ordinal = i32::try_from(ordinal).map_err(|e| e.to_string())?;
    let info = device_info(ordinal)?;
    let device = result::device::get(ordinal).map_err(describe)?;
    // SAFETY: a valid device; the context stays current on this (the host's only) thread.
    unsafe {
        let context = result::primary_ctx::retain(device).map_err(describe)?;
        result::ctx::set_current(context).map_err(describe)?;
    }
    Ok(Cuda {
        info,
        modules: HashMap::new(),
    })
}

/// Device allocations with their sizes, zeroed and freed when dropped: what one tenant's job
/// left in device memory is gone before the next job allocates.
struct Allocations(Vec<(sys::CUdeviceptr, usize)>);

impl Drop for Allocations {
    fn drop(&mut self) {
        for (pointer, bytes) in &self.0 {
            // SAFETY: allocated by `malloc_sync` with `bytes` and not freed elsewhere.
            unsafe {
                let _ = result::memset_d8_sync(*pointer, 0, *bytes);
                let _ = result::free_sync(*pointer);
            }
        }
    }
}

impl Cuda {
    fn module(&mut self, request: &Request, kernel: &[u8]) -> Result<sys::CUmodule, Failed> {
        if let Some(module) = self.modules.get(&request.kernel_digest) {
            return Ok(*module);
        }
        let mut image = kernel.to_vec();
        image.push(0); // PTX is passed as a NUL-terminated string
                       // SAFETY: a NUL-terminated PTX image, alive for the call.
        let module = unsafe { result::module::load_data(image.as_ptr().cast::<c_void>()) }
            .map_err(|error| {
                // The driver's own trouble is not the kernel's fault (not a final answer).
                let kind = match error.0 {
                    CUresult::CUDA_ERROR_OUT_OF_MEMORY => FailureKind::OutOfMemory,
                    // As is a PTX newer than this driver reads: another worker's driver may.
                    CUresult::CUDA_ERROR_JIT_COMPILER_NOT_FOUND
                    | CUresult::CUDA_ERROR_JIT_COMPILATION_DISABLED
                    | CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => FailureKind::Device,
                    _ => FailureKind::KernelInvalid,
                };
                failed(kind, error, "loading the PTX")
            })?;
        if self.modules.len() >= 64 {
            for (_, old) in self.modules.drain() {
                // SAFETY: loaded above and no longer used.
                let _ = unsafe { result::module::unload(old) };
            }
        }
        self.modules.insert(request.kernel_digest.clone(), module);
        Ok(module)
    }
}

impl Driver for Cuda {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn run(&mut self, request: &Request, kernel: &[u8], inputs: &[Vec<u8>]) -> Result<Ran, Failed> {
        let module = self.module(request, kernel)?;
        let entry = request.entry_c_string()?;
        // SAFETY: a loaded module.
        let function = unsafe { result::module::get_function(module, entry) }.map_err(|error| {
            failed(
                FailureKind::EntryMissing,
                error,
                &format!("finding entry {:?}", request.entry),
            )
        })?;
        let mut ran = Ran::default();
        let mut allocations = Allocations(Vec::with_capacity(request.buffers.len()));
        // Copy time counts the copies only, not allocating and zeroing.
        let mut copy_time = std::time::Duration::ZERO;
        for (spec, bytes) in request.buffers.iter().zip(inputs) {
            // SAFETY: plain allocations, zeroed, then filled from host memory of the right size.
            unsafe {
                let pointer = result::malloc_sync(spec.device_bytes as usize).map_err(|error| {
                    failed(FailureKind::OutOfMemory, error, "allocating device memory")
                })?;
                allocations.0.push((pointer, spec.device_bytes as usize));
                result::memset_d8_sync(pointer, 0, spec.device_bytes as usize)
                    .map_err(|error| failed(FailureKind::Device, error, "zeroing"))?;
                if !bytes.is_empty() {
                    let copy_started = Instant::now();
                    result::memcpy_htod_sync(pointer, bytes)
                        .map_err(|error| failed(FailureKind::Device, error, "copying in"))?;
                    copy_time += copy_started.elapsed();
                }
            }
            ran.device_bytes += spec.device_bytes;
            ran.copied_bytes += bytes.len() as u64;
        }
        // The kernel's arguments: each buffer's device pointer, then each scalar, by address
        // (their number and sizes were checked against the PTX entry by the worker).
        let mut pointers: Vec<sys::CUdeviceptr> =
            allocations.0.iter().map(|(pointer, _)| *pointer).collect();
        let mut scalars = request.scalar_slots();
        let mut arguments: Vec<*mut c_void> = pointers
            .iter_mut()
            .map(|p| (p as *mut sys::CUdeviceptr).cast::<c_void>())
            .chain(scalars.iter_mut().map(|s| s.as_mut_ptr().cast::<c_void>()))
            .collect();
        let launch = &request.launch;
        let mut events = Events(Vec::with_capacity(2));
        let start = events.create()?;
        let end = events.create()?;
        let stream = std::ptr::null_mut();
        // SAFETY: the function takes exactly the buffers' pointers and the scalars, as the job
        // ABI says; the argument storage outlives the synchronisation below.
        unsafe {
            result::event::record(start, stream)
                .map_err(|error| failed(FailureKind::Device, error, "recording"))?;
            result::launch_kernel(
                function,
                (launch.grid[0], launch.grid[1], launch.grid[2]),
                (launch.block[0], launch.block[1], launch.block[2]),
                launch.shared_mem_bytes,
                stream,
                &mut arguments,
            )
            .map_err(|error| failed(FailureKind::LaunchRefused, error, "launching"))?;
            result::event::record(end, stream)
                .map_err(|error| failed_after_launch(error, "recording"))?;
            result::ctx::synchronize()
                .map_err(|error| failed_after_launch(error, "running the kernel"))?;
            let elapsed_ms = result::event::elapsed(start, end)
                .map_err(|error| failed_after_launch(error, "timing"))?;
            ran.kernel_time_us = (f64::from(elapsed_ms) * 1000.0) as u64;
        }
        drop(events);
        let copy_back = Instant::now();
        for (spec, (pointer, _)) in request.buffers.iter().zip(&allocations.0) {
            if !spec.copy_out {
                continue;
            }
            let mut bytes = vec![0u8; spec.device_bytes as usize];
            // SAFETY: the allocation holds `device_bytes`.
            unsafe { result::memcpy_dtoh_sync(&mut bytes, *pointer) }
                .map_err(|error| failed_after_launch(error, "copying back"))?;
            ran.copied_bytes += bytes.len() as u64;
            ran.outputs.push(bytes);
        }
        copy_time += copy_back.elapsed();
        ran.copy_time_us = copy_time.as_micros() as u64;
        Ok(ran)
    }
}
