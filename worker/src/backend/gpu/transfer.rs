//! What crosses between a GPU job and the device host: the device buffer of each slot, the
//! host's answer as a kernel failure or outputs, and the copied-back buffers matched to their
//! slots.

use dtee_schemas::job::AccessMode;
use dtee_schemas::result::ResourceUsage;
use dtee_schemas::ErrorCode;

use super::host::HostError;
use super::protocol::{BufferSpec, FailureKind, Response};
use crate::backend::{KernelError, Slot};

/// A failure before or without a run.
pub(super) fn refuse(code: ErrorCode, message: impl Into<String>) -> KernelError {
    KernelError {
        code,
        message: message.into(),
        usage: ResourceUsage::default(),
        device: None,
    }
}

/// The device buffer of each slot: what is allocated, copied in and copied back.
pub(super) fn buffer_specs(slots: &[Slot]) -> Result<Vec<(BufferSpec, &[u8])>, KernelError> {
    slots
        .iter()
        .map(|slot| match slot {
            Slot::Input { data, .. } => Ok((
                BufferSpec {
                    device_bytes: (data.len() as u64).max(1),
                    copy_in: data.len() as u64,
                    copy_out: false,
                },
                &data[..],
            )),
            Slot::Output { capacity, .. } => Ok((
                BufferSpec {
                    device_bytes: *capacity,
                    copy_in: 0,
                    copy_out: true,
                },
                &[][..],
            )),
            Slot::State {
                name,
                mode,
                current,
                capacity,
            } => {
                let read: &[u8] = if mode.is_readable() { current } else { &[] };
                match mode {
                    AccessMode::ReadOnly => Ok((
                        BufferSpec {
                            device_bytes: (read.len() as u64).max(1),
                            copy_in: read.len() as u64,
                            copy_out: false,
                        },
                        read,
                    )),
                    AccessMode::AppendOnly => Err(refuse(
                        ErrorCode::InvalidJob,
                        format!("state {name:?}: a GPU kernel cannot append"),
                    )),
                    AccessMode::WriteOnly | AccessMode::ReadWrite => {
                        if read.len() as u64 > *capacity {
                            return Err(refuse(
                                ErrorCode::OutputLimitExceeded,
                                format!(
                                    "state {name:?} holds {} bytes, more than its device buffer of {capacity} (its max_size)",
                                    read.len()
                                ),
                            ));
                        }
                        Ok((
                            BufferSpec {
                                device_bytes: (*capacity).max(1),
                                copy_in: read.len() as u64,
                                copy_out: true,
                            },
                            read,
                        ))
                    }
                }
            }
        })
        .collect()
}
/// The device host's answer as the kernel's response and copied-back buffers, or the failure
/// it reports.
pub(super) fn host_answer(
    answer: Result<(Response, Vec<Vec<u8>>), HostError>,
    wall_time_us: u64,
) -> Result<(Response, Vec<Vec<u8>>), KernelError> {
    let usage = ResourceUsage {
        wall_time_us,
        ..ResourceUsage::default()
    };
    let (response, outputs) = answer.map_err(|error| KernelError {
        code: match error {
            HostError::Timeout(_) => ErrorCode::ExecutionTimeout,
            HostError::Died(_) | HostError::Unavailable(_) => ErrorCode::DeviceFailed,
        },
        message: error.to_string(),
        usage,
        device: None,
    })?;
    if let Some((kind, message)) = response.failure {
        return Err(KernelError {
            code: match kind {
                FailureKind::KernelInvalid => ErrorCode::KernelInvalid,
                FailureKind::EntryMissing => ErrorCode::KernelLinkFailed,
                FailureKind::KernelFault => ErrorCode::KernelTrapped,
                FailureKind::LaunchRefused => ErrorCode::ExcessiveResourceRequirements,
                FailureKind::OutOfMemory | FailureKind::Device => ErrorCode::DeviceFailed,
            },
            message,
            usage,
            device: None,
        });
    }
    Ok((response, outputs))
}

/// The copied-back buffers matched to the slots that asked for them (`None` for the others).
pub(super) fn match_outputs(
    buffers: &[(BufferSpec, &[u8])],
    outputs: Vec<Vec<u8>>,
) -> Result<Vec<Option<Vec<u8>>>, KernelError> {
    let mut outputs = outputs.into_iter();
    let mut written = Vec::with_capacity(buffers.len());
    for (spec, _) in buffers {
        written.push(if spec.copy_out {
            let bytes = outputs.next().ok_or_else(|| {
                refuse(
                    ErrorCode::DeviceFailed,
                    "the device host answered fewer buffers than were copied back",
                )
            })?;
            if bytes.len() as u64 != spec.device_bytes {
                return Err(refuse(
                    ErrorCode::DeviceFailed,
                    "the device host answered a buffer of the wrong length",
                ));
            }
            Some(bytes)
        } else {
            None
        });
    }
    Ok(written)
}
