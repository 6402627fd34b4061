//! What the worker and a device host say to each other over the host's standard input and
//! output: frames of a 4-byte little-endian header length, a JSON header, then the payloads the
//! header lists, back to back. One request, one response; the host serves one job at a time.

use std::io::{self, Read, Write};

use dtee_schemas::job::{Launch, ScalarType};
use dtee_schemas::run::GpuDevice;
use serde::{Deserialize, Serialize};

/// Largest JSON header either side accepts.
const MAX_HEADER_BYTES: u32 = 1 << 20;

/// One buffer of a request, in job order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BufferSpec {
    /// Bytes to allocate on the device (at least the payload's length).
    pub device_bytes: u64,
    /// Length of the payload copied in (the rest of the allocation is zeroed).
    pub copy_in: u64,
    /// Whether the buffer's `device_bytes` are copied back.
    pub copy_out: bool,
}

/// A scalar parameter, by value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalarArg {
    /// Its type.
    pub ty: ScalarType,
    /// Its value, as the job gave it (checked to fit the type).
    pub value: f64,
}

impl ScalarArg {
    /// The argument's bytes as the kernel receives them (little-endian, its type's width).
    pub fn bytes(&self) -> Vec<u8> {
        match self.ty {
            ScalarType::I32 => (self.value as i32).to_le_bytes().to_vec(),
            ScalarType::U32 => (self.value as u32).to_le_bytes().to_vec(),
            ScalarType::I64 => (self.value as i64).to_le_bytes().to_vec(),
            ScalarType::U64 => (self.value as u64).to_le_bytes().to_vec(),
            ScalarType::F32 => (self.value as f32).to_le_bytes().to_vec(),
            ScalarType::F64 => self.value.to_le_bytes().to_vec(),
        }
    }
}

/// A job for the device host. The kernel's bytes are the first payload, then each buffer's
/// `copy_in` bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The key the host keeps the loaded module under: `<tenant>/<kernel digest>`, so that no
    /// loaded module (nor anything it holds on the device) is shared between tenants.
    pub kernel_digest: String,
    /// Length of the kernel payload.
    pub kernel_bytes: u64,
    /// The entry point.
    pub entry: String,
    /// Launch geometry.
    pub launch: Launch,
    /// Buffers, in job order (the kernel's first arguments).
    pub buffers: Vec<BufferSpec>,
    /// Scalars, in job order (the arguments after the buffers).
    pub params: Vec<ScalarArg>,
}

impl Request {
    /// Each scalar's bytes in an 8-byte slot, in job order: the storage a driver passes the
    /// kernel's scalar arguments from, by address.
    pub fn scalar_slots(&self) -> Vec<[u8; 8]> {
        self.params
            .iter()
            .map(|param| {
                let mut slot = [0u8; 8];
                let bytes = param.bytes();
                slot[..bytes.len()].copy_from_slice(&bytes);
                slot
            })
            .collect()
    }

    /// The entry point as a C string, or the failure of an entry with a NUL byte.
    pub fn entry_c_string(&self) -> Result<std::ffi::CString, super::device::Failed> {
        std::ffi::CString::new(self.entry.as_str()).map_err(|_| super::device::Failed {
            kind: FailureKind::EntryMissing,
            message: "the entry point contains a NUL byte".to_owned(),
            sticky: false,
        })
    }
}

/// Why a run failed, as the host saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The module did not load (invalid code object or PTX, or one for another device).
    KernelInvalid,
    /// The entry point is not in the module.
    EntryMissing,
    /// The kernel faulted on the device (an illegal address or instruction): the kernel's
    /// fault. The context is unusable: the host exits after answering.
    KernelFault,
    /// The launch was refused (geometry or resources beyond the device's).
    LaunchRefused,
    /// The device ran out of memory.
    OutOfMemory,
    /// Anything else: the device or driver failed.
    Device,
}

/// The host's answer. On success the payloads are the `copy_out` buffers' bytes, in job order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// `None` on success.
    pub failure: Option<(FailureKind, String)>,
    /// Whether the host's context is unusable now (it exits after this answer).
    pub sticky: bool,
    /// Device memory allocated, bytes.
    pub device_bytes: u64,
    /// Kernel time on the device, microseconds.
    pub kernel_time_us: u64,
    /// Bytes copied in and out.
    pub copied_bytes: u64,
    /// Time spent copying, microseconds.
    pub copy_time_us: u64,
    /// Lengths of the payloads that follow.
    pub payloads: Vec<u64>,
}

/// A request or a response with the number that pairs them: the host answers each request
/// under its number, and the worker takes no answer but one to the request it sent last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Numbered<T> {
    /// The request's number, counted by the worker from 1 for each host.
    pub id: u64,
    /// The request or response.
    pub body: T,
}

/// What a device host says first, once, when it starts: the device it drives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The device, or why there is none.
    pub device: Result<DeviceInfo, String>,
}

/// A device and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Vendor, name, architecture, driver.
    pub device: GpuDevice,
    /// Total device memory, bytes.
    pub memory_bytes: u64,
    /// Most threads in one block.
    pub max_threads_per_block: u32,
    /// Most shared memory one block may use, bytes.
    pub max_shared_bytes_per_block: u32,
    /// Largest grid, per dimension.
    pub max_grid: [u32; 3],
}

/// Writes one frame: `header`, then `payloads`.
pub fn write_frame<T: Serialize>(
    out: &mut impl Write,
    header: &T,
    payloads: &[&[u8]],
) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&header)?;
    for payload in payloads {
        out.write_all(payload)?;
    }
    out.flush()
}

/// Reads one frame's header; `Ok(None)` at a clean end of stream.
pub fn read_header<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_le_bytes(length);
    if length > MAX_HEADER_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame header of {length} bytes"),
        ));
    }
    let mut header = vec![0u8; length as usize];
    input.read_exact(&mut header)?;
    serde_json::from_slice(&header)
        .map(Some)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Reads a payload of `length` bytes.
pub fn read_payload(input: &mut impl Read, length: u64) -> io::Result<Vec<u8>> {
    let mut payload = vec![0u8; usize::try_from(length).map_err(io::Error::other)?];
    input.read_exact(&mut payload)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back() {
        let request = Request {
            kernel_digest: "sha256:00".into(),
            kernel_bytes: 3,
            entry: "vadd".into(),
            launch: Launch {
                grid: [1, 1, 1],
                block: [32, 1, 1],
                shared_mem_bytes: 0,
            },
            buffers: vec![BufferSpec {
                device_bytes: 8,
                copy_in: 2,
                copy_out: true,
            }],
            params: vec![ScalarArg {
                ty: ScalarType::U32,
                value: 7.0,
            }],
        };
        let mut bytes = Vec::new();
        let numbered = Numbered {
            id: 7,
            body: &request,
        };
        write_frame(&mut bytes, &numbered, &[b"abc", b"xy"]).unwrap();
        let mut reader = &bytes[..];
        let back: Numbered<Request> = read_header(&mut reader).unwrap().unwrap();
        assert_eq!(back.id, 7);
        let back = back.body;
        assert_eq!(back.entry, "vadd");
        assert_eq!(read_payload(&mut reader, 3).unwrap(), b"abc");
        assert_eq!(read_payload(&mut reader, 2).unwrap(), b"xy");
        assert!(read_header::<Numbered<Request>>(&mut reader)
            .unwrap()
            .is_none());
        assert_eq!(back.params[0].bytes(), 7u32.to_le_bytes());
    }
}
