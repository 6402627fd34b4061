//! Which target a GPU serves and which devices serve a target: `cuda` for NVIDIA,
//! `hip.<gfx arch>` for AMD, `stand-in` for the test suite's stand-in.

use dtee_schemas::job::KernelFormat;

use super::device::DriverKind;
use super::protocol::DeviceInfo;

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
    super::stand_in::probe(count)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::tests::sample_info;

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
}
