//! AMD GPUs through the HIP runtime (hip-sys links `libamdhip64`): code objects (`.hsaco`) for
//! the device's gfx architecture, buffers as device allocations, the launch timed with events.
//! Runs only inside a device host (`device.rs`).
//!
//! hip-sys declares every HIP function as returning its `hipError_t` enum, and a code outside
//! that enum (a newer runtime's, or garbage) would be undefined behaviour in Rust. So the few
//! functions used here are declared again with an `i32` result, and codes are compared as
//! numbers; hip-sys provides the link to `libamdhip64` and the attribute numbering. Tested here
//! only without a device (no AMD GPU on these machines): every call then answers
//! `hipErrorNoDevice`, which this module reports as "no AMD GPU".

// FFI to the GPU driver: every unsafe block says what it relies on.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::time::Instant;

use dtee_schemas::run::GpuDevice;
use hip_sys::hiprt::hipDeviceAttribute_t as Attribute;

use super::device::{Driver, Failed, Ran};
use super::protocol::{DeviceInfo, FailureKind, Request};

type Module = *mut c_void;
type Function = *mut c_void;
type Event = *mut c_void;

#[allow(non_snake_case)]
extern "C" {
    fn hipInit(flags: u32) -> i32;
    fn hipGetDeviceCount(count: *mut i32) -> i32;
    fn hipSetDevice(device: i32) -> i32;
    fn hipDeviceGetName(name: *mut c_char, len: i32, device: i32) -> i32;
    fn hipDeviceTotalMem(bytes: *mut usize, device: i32) -> i32;
    fn hipDeviceGetAttribute(value: *mut i32, attribute: i32, device: i32) -> i32;
    fn hipGetDeviceProperties(properties: *mut u8, device: i32) -> i32;
    fn hipDriverGetVersion(version: *mut i32) -> i32;
    fn hipGetErrorName(error: i32) -> *const c_char;
    fn hipModuleLoadData(module: *mut Module, image: *const c_void) -> i32;
    fn hipModuleUnload(module: Module) -> i32;
    fn hipModuleGetFunction(function: *mut Function, module: Module, name: *const c_char) -> i32;
    fn hipMalloc(pointer: *mut *mut c_void, size: usize) -> i32;
    fn hipFree(pointer: *mut c_void) -> i32;
    fn hipMemset(pointer: *mut c_void, value: i32, size: usize) -> i32;
    fn hipMemcpyHtoD(dst: *mut c_void, src: *const c_void, size: usize) -> i32;
    fn hipMemcpyDtoH(dst: *mut c_void, src: *mut c_void, size: usize) -> i32;
    fn hipModuleLaunchKernel(
        function: Function,
        grid_x: u32,
        grid_y: u32,
        grid_z: u32,
        block_x: u32,
        block_y: u32,
        block_z: u32,
        shared_bytes: u32,
        stream: *mut c_void,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> i32;
    fn hipDeviceSynchronize() -> i32;
    fn hipEventCreate(event: *mut Event) -> i32;
    fn hipEventRecord(event: Event, stream: *mut c_void) -> i32;
    fn hipEventElapsedTime(ms: *mut f32, start: Event, end: Event) -> i32;
    fn hipEventDestroy(event: Event) -> i32;
}

const HIP_SUCCESS: i32 = 0;
const HIP_ERROR_NO_DEVICE: i32 = 100;
const HIP_ERROR_INVALID_DEVICE: i32 = 101;
const HIP_ERROR_OUT_OF_MEMORY: i32 = 2;
const HIP_ERROR_INVALID_IMAGE: i32 = 200;
const HIP_ERROR_NO_BINARY_FOR_GPU: i32 = 209;
const HIP_ERROR_NOT_FOUND: i32 = 500;
const HIP_ERROR_ILLEGAL_ADDRESS: i32 = 700;
const HIP_ERROR_LAUNCH_FAILURE: i32 = 719;

fn name_of(code: i32) -> String {
    // SAFETY: hipGetErrorName returns a static string for any code (or null).
    let name = unsafe { hipGetErrorName(code) };
    if name.is_null() {
        return format!("hip error {code}");
    }
    // SAFETY: a NUL-terminated static string.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    format!("{name} ({code})")
}

fn check(code: i32, what: &str) -> Result<(), String> {
    match code {
        HIP_SUCCESS => Ok(()),
        HIP_ERROR_NO_DEVICE | HIP_ERROR_INVALID_DEVICE => {
            Err(format!("{what}: no AMD GPU ({})", name_of(code)))
        }
        other => Err(format!("{what}: {}", name_of(other))),
    }
}

fn failed(kind: FailureKind, code: i32, what: &str) -> Failed {
    let sticky = matches!(code, HIP_ERROR_ILLEGAL_ADDRESS | HIP_ERROR_LAUNCH_FAILURE);
    let kind = match code {
        _ if sticky => FailureKind::KernelFault,
        HIP_ERROR_OUT_OF_MEMORY => FailureKind::OutOfMemory,
        HIP_ERROR_INVALID_IMAGE | HIP_ERROR_NO_BINARY_FOR_GPU => FailureKind::KernelInvalid,
        HIP_ERROR_NOT_FOUND if kind == FailureKind::EntryMissing => FailureKind::EntryMissing,
        _ => kind,
    };
    Failed {
        kind,
        message: format!("{what}: {}", name_of(code)),
        sticky,
    }
}

/// A failure once the kernel was launched (waiting for it, copying back): whatever the code,
/// the context may be unusable now, so the host exits and a fresh one takes the next job, as
/// the CUDA driver's `failed_after_launch` does. The kernel's faults stay the kernel's.
fn failed_after_launch(code: i32, what: &str) -> Failed {
    Failed {
        sticky: true,
        ..failed(FailureKind::Device, code, what)
    }
}

/// Two events, destroyed when dropped (the error paths included).
struct Events([Event; 2]);

impl Drop for Events {
    fn drop(&mut self) {
        for event in self.0 {
            if !event.is_null() {
                // SAFETY: created by hipEventCreate and destroyed only here.
                let _ = unsafe { hipEventDestroy(event) };
            }
        }
    }
}

fn attribute(attribute: Attribute, device: i32) -> Result<i32, String> {
    let mut value = 0;
    // SAFETY: writes one int.
    check(
        unsafe { hipDeviceGetAttribute(&mut value, attribute as i32, device) },
        "reading a device attribute",
    )?;
    Ok(value)
}

fn device_info(device: i32) -> Result<DeviceInfo, String> {
    let mut name = [0 as c_char; 256];
    // SAFETY: the buffer holds 256 bytes.
    check(
        unsafe { hipDeviceGetName(name.as_mut_ptr(), 256, device) },
        "reading the device name",
    )?;
    // SAFETY: NUL-terminated within the buffer (zeroed, and HIP writes at most len - 1).
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut memory = 0usize;
    // SAFETY: writes one size_t.
    check(
        unsafe { hipDeviceTotalMem(&mut memory, device) },
        "reading the device memory",
    )?;
    // The architecture is only in hipDeviceProp_t; read it into a buffer twice the size of
    // hip-sys's struct (in case this runtime's is larger) and take gcnArchName at hip-sys's
    // offset, checked to look like one.
    let size = std::mem::size_of::<hip_sys::hiprt::hipDeviceProp_t>();
    let offset = std::mem::offset_of!(hip_sys::hiprt::hipDeviceProp_t, gcnArchName);
    let mut properties = vec![0u8; size * 2];
    // SAFETY: the buffer is larger than the struct the runtime writes.
    check(
        unsafe { hipGetDeviceProperties(properties.as_mut_ptr(), device) },
        "reading the device properties",
    )?;
    let arch = CStr::from_bytes_until_nul(&properties[offset..offset + 256])
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `gfx90a:sramecc+:xnack-` names the target id; the code object is built for `gfx90a`.
    let arch = arch.split(':').next().unwrap_or("").to_owned();
    if !arch.starts_with("gfx") {
        return Err(format!(
            "could not read the device's gfx architecture (got {arch:?})"
        ));
    }
    let mut version = 0;
    // SAFETY: writes one int.
    check(
        unsafe { hipDriverGetVersion(&mut version) },
        "reading the driver version",
    )?;
    Ok(DeviceInfo {
        device: GpuDevice {
            vendor: "amd".to_owned(),
            name,
            arch,
            driver: format!("hip {version}"),
            ordinal: u32::try_from(device).ok(),
        },
        memory_bytes: memory as u64,
        max_threads_per_block: attribute(Attribute::hipDeviceAttributeMaxThreadsPerBlock, device)?
            as u32,
        max_shared_bytes_per_block: attribute(
            Attribute::hipDeviceAttributeMaxSharedMemoryPerBlock,
            device,
        )? as u32,
        max_grid: [
            attribute(Attribute::hipDeviceAttributeMaxGridDimX, device)? as u32,
            attribute(Attribute::hipDeviceAttributeMaxGridDimY, device)? as u32,
            attribute(Attribute::hipDeviceAttributeMaxGridDimZ, device)? as u32,
        ],
    })
}

/// The HIP devices of this machine.
pub fn probe() -> Result<Vec<DeviceInfo>, String> {
    // SAFETY: initialises the runtime.
    check(unsafe { hipInit(0) }, "initialising HIP")?;
    let mut count = 0;
    // SAFETY: writes one int.
    check(
        unsafe { hipGetDeviceCount(&mut count) },
        "counting HIP devices",
    )?;
    if count == 0 {
        return Err("the HIP runtime sees no device".to_owned());
    }
    (0..count).map(device_info).collect()
}

/// One HIP device, current on this thread.
pub struct Hip {
    info: DeviceInfo,
    modules: HashMap<String, Module>,
}

/// Opens device `ordinal`.
pub fn open(ordinal: u32) -> Result<Hip, String> {
    let device = i32::try_from(ordinal).map_err(|e| e.to_string())?;
    // SAFETY: initialises the runtime.
    check(unsafe { hipInit(0) }, "initialising HIP")?;
    let info = device_info(device)?;
    // SAFETY: a device that exists.
    check(unsafe { hipSetDevice(device) }, "selecting the device")?;
    Ok(Hip {
        info,
        modules: HashMap::new(),
    })
}

struct Allocations(Vec<*mut c_void>);

impl Drop for Allocations {
    fn drop(&mut self) {
        for pointer in &self.0 {
            // SAFETY: allocated by hipMalloc and not freed elsewhere.
            let _ = unsafe { hipFree(*pointer) };
        }
    }
}

impl Driver for Hip {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn run(&mut self, request: &Request, kernel: &[u8], inputs: &[Vec<u8>]) -> Result<Ran, Failed> {
        let module = match self.modules.get(&request.kernel_digest) {
            Some(module) => *module,
            None => {
                let mut module: Module = std::ptr::null_mut();
                // SAFETY: the code object's bytes, alive for the call.
                let code = unsafe { hipModuleLoadData(&mut module, kernel.as_ptr().cast()) };
                if code != HIP_SUCCESS {
                    return Err(failed(
                        FailureKind::KernelInvalid,
                        code,
                        "loading the code object",
                    ));
                }
                // At most 64 modules kept, as the CUDA driver does: each holds device memory
                // (no more than its code object's bytes: hsaco.rs refuses writable and
                // zero-filled segments).
                if self.modules.len() >= 64 {
                    for (_, old) in self.modules.drain() {
                        // SAFETY: loaded above and no longer used.
                        let _ = unsafe { hipModuleUnload(old) };
                    }
                }
                self.modules.insert(request.kernel_digest.clone(), module);
                module
            }
        };
        let entry = request.entry_c_string()?;
        let mut function: Function = std::ptr::null_mut();
        // SAFETY: a loaded module and a NUL-terminated name.
        let code = unsafe { hipModuleGetFunction(&mut function, module, entry.as_ptr()) };
        if code != HIP_SUCCESS {
            return Err(failed(
                FailureKind::EntryMissing,
                code,
                "finding the entry point",
            ));
        }
        let mut ran = Ran::default();
        let mut allocations = Allocations(Vec::new());
        let copy_started = Instant::now();
        for (spec, bytes) in request.buffers.iter().zip(inputs) {
            let mut pointer = std::ptr::null_mut();
            // SAFETY: allocation, zeroing and a copy of `bytes.len()` ≤ `device_bytes`.
            unsafe {
                let code = hipMalloc(&mut pointer, spec.device_bytes as usize);
                if code != HIP_SUCCESS {
                    return Err(failed(FailureKind::OutOfMemory, code, "allocating"));
                }
                allocations.0.push(pointer);
                let code = hipMemset(pointer, 0, spec.device_bytes as usize);
                if code != HIP_SUCCESS {
                    return Err(failed(FailureKind::Device, code, "zeroing"));
                }
                if !bytes.is_empty() {
                    let code = hipMemcpyHtoD(pointer, bytes.as_ptr().cast(), bytes.len());
                    if code != HIP_SUCCESS {
                        return Err(failed(FailureKind::Device, code, "copying in"));
                    }
                }
            }
            ran.device_bytes += spec.device_bytes;
            ran.copied_bytes += bytes.len() as u64;
        }
        let mut copy_time = copy_started.elapsed();
        let mut pointers = allocations.0.clone();
        let mut scalars = request.scalar_slots();
        let mut arguments: Vec<*mut c_void> = pointers
            .iter_mut()
            .map(|p| (p as *mut *mut c_void).cast::<c_void>())
            .chain(scalars.iter_mut().map(|s| s.as_mut_ptr().cast::<c_void>()))
            .collect();
        let launch = &request.launch;
        let mut events = Events([std::ptr::null_mut(), std::ptr::null_mut()]);
        // SAFETY: the function takes the buffers' pointers and the scalars (the job ABI); the
        // argument storage outlives the synchronisation.
        unsafe {
            for event in &mut events.0 {
                let code = hipEventCreate(event);
                if code != HIP_SUCCESS {
                    return Err(failed(FailureKind::Device, code, "creating an event"));
                }
            }
            let [start, end] = events.0;
            let _ = hipEventRecord(start, std::ptr::null_mut());
            let code = hipModuleLaunchKernel(
                function,
                launch.grid[0],
                launch.grid[1],
                launch.grid[2],
                launch.block[0],
                launch.block[1],
                launch.block[2],
                launch.shared_mem_bytes,
                std::ptr::null_mut(),
                arguments.as_mut_ptr(),
                std::ptr::null_mut(),
            );
            if code != HIP_SUCCESS {
                return Err(failed(FailureKind::LaunchRefused, code, "launching"));
            }
            let _ = hipEventRecord(end, std::ptr::null_mut());
            let code = hipDeviceSynchronize();
            if code != HIP_SUCCESS {
                return Err(failed_after_launch(code, "running the kernel"));
            }
            let mut elapsed_ms = 0f32;
            let _ = hipEventElapsedTime(&mut elapsed_ms, start, end);
            ran.kernel_time_us = (f64::from(elapsed_ms) * 1000.0) as u64;
        }
        drop(events);
        let copy_back = Instant::now();
        for (spec, pointer) in request.buffers.iter().zip(&allocations.0) {
            if !spec.copy_out {
                continue;
            }
            let mut bytes = vec![0u8; spec.device_bytes as usize];
            // SAFETY: the allocation holds `device_bytes`.
            let code = unsafe { hipMemcpyDtoH(bytes.as_mut_ptr().cast(), *pointer, bytes.len()) };
            if code != HIP_SUCCESS {
                return Err(failed_after_launch(code, "copying back"));
            }
            ran.copied_bytes += bytes.len() as u64;
            ran.outputs.push(bytes);
        }
        copy_time += copy_back.elapsed();
        ran.copy_time_us = copy_time.as_micros() as u64;
        Ok(ran)
    }
}
