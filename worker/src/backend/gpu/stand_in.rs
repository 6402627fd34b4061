//! A STAND-IN device, for the test suite only (cargo feature `test-hooks`): no GPU is involved.
//! It lets the tests drive the real device-host supervisor (deadlines, kills, restarts, crashes)
//! and the real GPU job path (sizes, copies, results, state) through the real worker and
//! RabbitMQ on machines without a GPU. The "kernel" is chosen by the job's entry point:
//!
//! - `copy`: copies buffer 0's bytes into buffer 1 (up to buffer 1's size);
//! - `print`: writes buffer 0's bytes to standard output, as a kernel's `printf` reaches it
//!   through the driver, then copies as `copy` does;
//! - `fill`: fills every copied-back buffer with its index plus the first parameter (u32);
//! - `vadd`: adds buffers 0 and 1 as f32 into buffer 2, for the first parameter's n elements
//!   (the load generator's GPU workload);
//! - `pid`: writes the host's process id (u32, little-endian) at the start of every
//!   copied-back buffer (which host ran the job);
//! - `nap`: sleeps for the first parameter's milliseconds (at most a minute), then copies
//!   nothing (a kernel that takes a while);
//! - `sleep`: never returns (a kernel that spins: the worker's watchdog must kill the host);
//! - `crash`: the host aborts (a driver that dies);
//! - `fault`: answers a kernel fault with a sticky context, as CUDA does after an illegal
//!   address.
//!
//! Every result says `vendor: stand-in`, so that none can pass for a GPU's. There is one
//! stand-in device, or as many as the worker's `stand_in_devices` (a test setting) says.

use std::time::Instant;

use dtee_schemas::run::GpuDevice;

use super::device::{Driver, Failed, Ran};
use super::protocol::{DeviceInfo, FailureKind, Request};

/// The most stand-in devices a worker can be given (`Config::stand_in_devices`).
pub const MAX_DEVICES: u32 = 16;

/// `count` stand-in devices (what the worker's test configuration asks for).
pub fn probe(count: u32) -> Vec<DeviceInfo> {
    (0..count.clamp(1, MAX_DEVICES)).map(info).collect()
}

/// Stand-in device `ordinal`.
pub fn info(ordinal: u32) -> DeviceInfo {
    DeviceInfo {
        device: GpuDevice {
            vendor: "stand-in".to_owned(),
            name: format!("dtee stand-in device {ordinal} (no GPU; for tests)"),
            arch: "stand-in".to_owned(),
            driver: "stand-in 1".to_owned(),
            ordinal: Some(ordinal),
        },
        memory_bytes: 1 << 30,
        max_threads_per_block: 1024,
        max_shared_bytes_per_block: 48 << 10,
        max_grid: [65_535, 65_535, 65_535],
    }
}

/// The stand-in "driver".
pub struct StandIn {
    info: DeviceInfo,
}

/// Opens stand-in device `ordinal`.
pub fn open(ordinal: u32) -> Result<StandIn, String> {
    if ordinal >= MAX_DEVICES {
        return Err(format!(
            "the stand-in has at most {MAX_DEVICES} devices; there is no device {ordinal}"
        ));
    }
    Ok(StandIn {
        info: info(ordinal),
    })
}

impl Driver for StandIn {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    #[allow(unsafe_code)]
    fn run(&mut self, request: &Request, kernel: &[u8], inputs: &[Vec<u8>]) -> Result<Ran, Failed> {
        let started = Instant::now();
        if kernel.is_empty() {
            return Err(Failed {
                kind: FailureKind::KernelInvalid,
                message: "empty kernel".to_owned(),
                sticky: false,
            });
        }
        let mut buffers: Vec<Vec<u8>> = request
            .buffers
            .iter()
            .zip(inputs.iter().cloned())
            .map(|(spec, mut bytes)| {
                bytes.resize(spec.device_bytes as usize, 0);
                bytes
            })
            .collect();
        match request.entry.as_str() {
            "print" | "copy" => {
                if request.entry == "print" {
                    if let Some(bytes) = buffers.first() {
                        // SAFETY: writes initialised bytes to descriptor 1.
                        unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
                    }
                }
                if buffers.len() >= 2 {
                    let n = buffers[0].len().min(buffers[1].len());
                    let (source, target) = buffers.split_at_mut(1);
                    target[0][..n].copy_from_slice(&source[0][..n]);
                }
            }
            "fill" => {
                let base = request.params.first().map_or(0, |p| p.value as u32);
                for (index, buffer) in buffers.iter_mut().enumerate() {
                    buffer.fill((base as usize + index) as u8);
                }
            }
            // out[i] = a[i] + b[i] over f32, for the first parameter's n elements (the
            // load generator's GPU workload, measured through the device host).
            "vadd" => {
                let n = request.params.first().map_or(0.0, |p| p.value) as usize;
                if buffers.len() >= 3 {
                    let (ab, out) = buffers.split_at_mut(2);
                    let f32_at = |bytes: &[u8], i: usize| {
                        bytes
                            .get(4 * i..4 * i + 4)
                            .map_or(0.0, |b| f32::from_le_bytes(b.try_into().unwrap()))
                    };
                    let limit = n.min(out[0].len() / 4);
                    for i in 0..limit {
                        let sum = f32_at(&ab[0], i) + f32_at(&ab[1], i);
                        out[0][4 * i..4 * i + 4].copy_from_slice(&sum.to_le_bytes());
                    }
                }
            }
            "pid" => {
                let pid = std::process::id().to_le_bytes();
                for (spec, buffer) in request.buffers.iter().zip(buffers.iter_mut()) {
                    if spec.copy_out && buffer.len() >= pid.len() {
                        buffer[..pid.len()].copy_from_slice(&pid);
                    }
                }
            }
            "nap" => {
                let ms = request
                    .params
                    .first()
                    .map_or(0.0, |p| p.value)
                    .clamp(0.0, 60_000.0) as u64;
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            "sleep" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            "crash" => std::process::abort(),
            "fault" => {
                return Err(Failed {
                    kind: FailureKind::KernelFault,
                    message: "stand-in: an illegal memory access (as CUDA_ERROR_ILLEGAL_ADDRESS)"
                        .to_owned(),
                    sticky: true,
                })
            }
            other => {
                return Err(Failed {
                    kind: FailureKind::EntryMissing,
                    message: format!("the stand-in has no kernel {other:?}"),
                    sticky: false,
                })
            }
        }
        let device_bytes = request.buffers.iter().map(|b| b.device_bytes).sum();
        let outputs: Vec<Vec<u8>> = request
            .buffers
            .iter()
            .zip(buffers)
            .filter(|(spec, _)| spec.copy_out)
            .map(|(_, bytes)| bytes)
            .collect();
        let copied = request.buffers.iter().map(|b| b.copy_in).sum::<u64>()
            + outputs.iter().map(|o| o.len() as u64).sum::<u64>();
        Ok(Ran {
            outputs,
            device_bytes,
            kernel_time_us: started.elapsed().as_micros() as u64,
            copied_bytes: copied,
            copy_time_us: 0,
        })
    }
}
