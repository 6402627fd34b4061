//! The devices of one target: every device a worker finds for a target gets its own device host
//! (`host.rs`), and a job runs on one idle device that has not been given up. The target's
//! limits are the smallest of its devices' limits, so a job the checks accept fits whichever
//! device it gets.

use std::sync::{Condvar, Mutex};

use dtee_schemas::run::GpuDevice;

use super::host::DeviceHost;
use super::protocol::DeviceInfo;

/// One device of a target and the supervisor of its host.
#[derive(Debug)]
pub struct Device {
    /// The driver's ordinal of the device (as `CUDA_VISIBLE_DEVICES` or `HIP_VISIBLE_DEVICES`
    /// left them visible to the worker).
    pub ordinal: u32,
    /// The device and its limits, as its host reported them.
    pub info: DeviceInfo,
    /// Its host's supervisor.
    pub host: DeviceHost,
    /// Set once the device's job slot was retired after it was given up.
    pub(super) retired: std::sync::atomic::AtomicBool,
}

/// The devices of one target, handed out one job at a time each.
#[derive(Debug)]
pub(super) struct Pool {
    devices: Vec<Device>,
    busy: Mutex<Vec<bool>>,
    freed: Condvar,
}

/// A device checked out for one job; idle again when dropped.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Lease<'_> {
    /// The device.
    pub fn device(&self) -> &Device {
        &self.pool.devices[self.index]
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut busy = self.pool.busy.lock().expect("pool lock");
        busy[self.index] = false;
        drop(busy);
        self.pool.freed.notify_all();
    }
}

impl Pool {
    /// A pool of `devices` (at least one).
    pub fn new(devices: Vec<Device>) -> Pool {
        assert!(!devices.is_empty(), "a pool has at least one device");
        Pool {
            busy: Mutex::new(vec![false; devices.len()]),
            devices,
            freed: Condvar::new(),
        }
    }

    /// The devices.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// An idle device that was not given up, waiting (blocking) for one to come free while any
    /// device is busy; or, when every device was given up, why.
    pub fn checkout(&self) -> Result<Lease<'_>, String> {
        let mut busy = self.busy.lock().expect("pool lock");
        loop {
            let mut reasons = Vec::new();
            let mut any_busy = false;
            for (index, device) in self.devices.iter().enumerate() {
                if busy[index] {
                    any_busy = true;
                } else if let Some(why) = device.host.failed() {
                    reasons.push(format!("device {}: {why}", device.ordinal));
                } else {
                    busy[index] = true;
                    return Ok(Lease { pool: self, index });
                }
            }
            if !any_busy {
                return Err(reasons.join("; "));
            }
            busy = self.freed.wait(busy).expect("pool lock");
        }
    }

    /// Why the target is not served: every device was given up. `None` while one is usable.
    pub fn failed(&self) -> Option<String> {
        let mut reasons = Vec::with_capacity(self.devices.len());
        for device in &self.devices {
            reasons.push(format!(
                "device {}: {}",
                device.ordinal,
                device.host.failed()?
            ));
        }
        Some(reasons.join("; "))
    }

    /// The limits every device of the pool meets: the smallest memory, threads per block,
    /// shared memory and grid; named after the first device.
    pub fn limits(&self) -> DeviceInfo {
        let mut limits = self.devices[0].info.clone();
        for device in &self.devices[1..] {
            let info = &device.info;
            limits.memory_bytes = limits.memory_bytes.min(info.memory_bytes);
            limits.max_threads_per_block =
                limits.max_threads_per_block.min(info.max_threads_per_block);
            limits.max_shared_bytes_per_block = limits
                .max_shared_bytes_per_block
                .min(info.max_shared_bytes_per_block);
            for (limit, other) in limits.max_grid.iter_mut().zip(info.max_grid) {
                *limit = (*limit).min(other);
            }
        }
        limits
    }

    /// The first device (the one named where no job's device is known).
    pub fn first(&self) -> &GpuDevice {
        &self.devices[0].info.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::device::DriverKind;
    use std::sync::Arc;
    use std::time::Duration;

    fn device(ordinal: u32, memory_bytes: u64, max_threads: u32) -> Device {
        let mut info = crate::backend::gpu::tests::sample_info();
        info.memory_bytes = memory_bytes;
        info.max_threads_per_block = max_threads;
        info.device.name = format!("device {ordinal}");
        Device {
            ordinal,
            info,
            // Never started: these tests do not run jobs.
            host: DeviceHost::new(DriverKind::StandIn, ordinal, "/nonexistent".into(), false),
            retired: Default::default(),
        }
    }

    #[test]
    fn the_limits_are_the_smallest_of_the_devices() {
        let pool = Pool::new(vec![device(0, 80 << 30, 1024), device(1, 40 << 30, 512)]);
        let limits = pool.limits();
        assert_eq!(limits.memory_bytes, 40 << 30);
        assert_eq!(limits.max_threads_per_block, 512);
        assert_eq!(limits.device.name, "device 0");
        assert_eq!(pool.first().name, "device 0");
    }

    #[test]
    fn each_job_gets_an_idle_device_and_waits_while_all_are_busy() {
        let pool = Arc::new(Pool::new(vec![device(0, 1, 1), device(1, 1, 1)]));
        let first = pool.checkout().unwrap();
        let second = pool.checkout().unwrap();
        assert_ne!(first.device().ordinal, second.device().ordinal);
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let lease = pool.checkout().unwrap();
                sender.send(lease.device().ordinal).unwrap();
            })
        };
        assert!(
            receiver.recv_timeout(Duration::from_millis(200)).is_err(),
            "a third job waits while both devices are busy"
        );
        let freed = second.device().ordinal;
        drop(second);
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(5)).unwrap(),
            freed
        );
        waiter.join().unwrap();
        drop(first);
        assert!(pool.failed().is_none());
    }
}
