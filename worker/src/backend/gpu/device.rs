//! The device host: `dtee-worker __dtee-device-host --driver <cuda|hip|stand-in> --device N`, a
//! child process of the worker that owns one GPU context and runs one job at a time. A GPU
//! kernel cannot be pre-empted and a fault leaves the context unusable until the process exits,
//! so the worker keeps the context in this process, kills it at a job's deadline and starts a
//! fresh one (`host.rs`).

use std::io::{self, BufReader, BufWriter};

use super::protocol::{self, DeviceInfo, FailureKind, Hello, Numbered, Request, Response};

/// The GPU drivers a device host can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// NVIDIA, through the CUDA driver API (cargo feature `cuda`).
    Cuda,
    /// AMD, through the HIP runtime (cargo feature `hip`).
    Hip,
    /// The test suite's stand-in: no GPU at all (cargo feature `test-hooks`).
    StandIn,
}

impl DriverKind {
    /// The driver's name: the backend's name in results (`cuda`, `hip`, `stand-in`).
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Cuda => "cuda",
            DriverKind::Hip => "hip",
            DriverKind::StandIn => "stand-in",
        }
    }

    /// Parses a driver name.
    pub fn parse(name: &str) -> Option<DriverKind> {
        match name {
            "cuda" => Some(DriverKind::Cuda),
            "hip" => Some(DriverKind::Hip),
            "stand-in" => Some(DriverKind::StandIn),
            _ => None,
        }
    }

    /// Whether this build has the driver.
    pub fn built(self) -> bool {
        match self {
            DriverKind::Cuda => cfg!(feature = "cuda"),
            DriverKind::Hip => cfg!(feature = "hip"),
            DriverKind::StandIn => cfg!(feature = "test-hooks"),
        }
    }
}

/// A kernel run that completed on the device.
#[derive(Debug, Default)]
pub struct Ran {
    /// The `copy_out` buffers' bytes, in job order.
    pub outputs: Vec<Vec<u8>>,
    /// Device memory allocated, bytes.
    pub device_bytes: u64,
    /// Kernel time, microseconds.
    pub kernel_time_us: u64,
    /// Bytes copied in and out.
    pub copied_bytes: u64,
    /// Copy time, microseconds.
    pub copy_time_us: u64,
}

/// A run that failed.
#[derive(Debug)]
pub struct Failed {
    /// What kind of failure.
    pub kind: FailureKind,
    /// For humans (the driver's error name and text).
    pub message: String,
    /// Whether the context is unusable now.
    pub sticky: bool,
}

/// One opened device.
pub trait Driver {
    /// The device.
    fn info(&self) -> &DeviceInfo;
    /// Runs a request: `kernel` is the code object or PTX, `inputs` each buffer's copy-in bytes
    /// (the host wipes them, and the outputs, once the job is answered).
    fn run(&mut self, request: &Request, kernel: &[u8], inputs: &[Vec<u8>]) -> Result<Ran, Failed>;
}

/// Opens device `ordinal` with `kind`.
pub fn open(kind: DriverKind, ordinal: u32) -> Result<Box<dyn Driver>, String> {
    if !kind.built() {
        return Err(format!(
            "this dtee-worker was built without the {} driver (cargo feature `{}`)",
            kind.name(),
            match kind {
                DriverKind::StandIn => "test-hooks",
                other => other.name(),
            }
        ));
    }
    match kind {
        #[cfg(feature = "cuda")]
        DriverKind::Cuda => super::cuda::open(ordinal).map(|d| Box::new(d) as Box<dyn Driver>),
        #[cfg(feature = "hip")]
        DriverKind::Hip => super::hip::open(ordinal).map(|d| Box::new(d) as Box<dyn Driver>),
        #[cfg(feature = "test-hooks")]
        DriverKind::StandIn => {
            super::stand_in::open(ordinal).map(|d| Box::new(d) as Box<dyn Driver>)
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = ordinal;
            unreachable!("checked by built()")
        }
    }
}

/// The devices `kind` finds on this machine, or why it finds none.
pub fn probe(kind: DriverKind) -> Result<Vec<DeviceInfo>, String> {
    if !kind.built() {
        return Err(format!("not built with the {} driver", kind.name()));
    }
    match kind {
        #[cfg(feature = "cuda")]
        DriverKind::Cuda => super::cuda::probe(),
        #[cfg(feature = "hip")]
        DriverKind::Hip => super::hip::probe(),
        #[cfg(feature = "test-hooks")]
        DriverKind::StandIn => Ok(super::stand_in::probe(1)),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked by built()"),
    }
}

/// The device host's main loop, on standard input and output: says hello (the device, or why
/// it could not be opened), then answers requests until its input closes. Exits after a sticky
/// failure: the context is unusable, and the worker starts a fresh host. Exits at once when
/// the worker that started it is gone.
pub fn serve(kind: DriverKind, ordinal: u32) -> io::Result<()> {
    exit_with_parent();
    no_core_dumps();
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = BufWriter::new(protocol_output()?);
    let mut driver = match open(kind, ordinal) {
        Ok(driver) => {
            let hello = Hello {
                device: Ok(driver.info().clone()),
            };
            protocol::write_frame(&mut output, &hello, &[])?;
            driver
        }
        Err(why) => {
            protocol::write_frame(&mut output, &Hello { device: Err(why) }, &[])?;
            return Ok(());
        }
    };
    while let Some(Numbered { id, body: request }) =
        protocol::read_header::<Numbered<Request>>(&mut input)?
    {
        // A job's bytes are wiped once it is answered, so that the next tenant's kernel finds
        // none of them in this process's memory (a GPU with unified addressing may read it).
        let kernel = Wiped(vec![protocol::read_payload(
            &mut input,
            request.kernel_bytes,
        )?]);
        let mut inputs = Wiped(Vec::with_capacity(request.buffers.len()));
        for buffer in &request.buffers {
            inputs
                .0
                .push(protocol::read_payload(&mut input, buffer.copy_in)?);
        }
        let (response, outputs, sticky) = match driver.run(&request, &kernel.0[0], &inputs.0) {
            Ok(ran) => (
                Response {
                    failure: None,
                    sticky: false,
                    device_bytes: ran.device_bytes,
                    kernel_time_us: ran.kernel_time_us,
                    copied_bytes: ran.copied_bytes,
                    copy_time_us: ran.copy_time_us,
                    payloads: ran.outputs.iter().map(|o| o.len() as u64).collect(),
                },
                ran.outputs,
                false,
            ),
            Err(failed) => (
                Response {
                    failure: Some((failed.kind, failed.message)),
                    sticky: failed.sticky,
                    device_bytes: 0,
                    kernel_time_us: 0,
                    copied_bytes: 0,
                    copy_time_us: 0,
                    payloads: Vec::new(),
                },
                Vec::new(),
                failed.sticky,
            ),
        };
        let outputs = Wiped(outputs);
        let payloads: Vec<&[u8]> = outputs.0.iter().map(Vec::as_slice).collect();
        let response = Numbered { id, body: response };
        protocol::write_frame(&mut output, &response, &payloads)?;
        if sticky {
            return Ok(());
        }
    }
    Ok(())
}

/// The protocol's own descriptor: a copy of standard output, which then points to /dev/null.
/// A kernel's `printf` (the driver writes it to standard output when the host synchronises)
/// or a driver's own message could otherwise land among the frames: a broken stream at best,
/// a forged answer at worst.
#[allow(unsafe_code)]
fn protocol_output() -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor, owned by the File from here on.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open and nothing else owns it.
    let protocol = unsafe { std::fs::File::from_raw_fd(fd) };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto descriptor 1, which this process keeps open for ever.
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(protocol)
}

/// No core file from a host (a driver that aborts would dump the device mapping and the job's
/// bytes with it), and no other process of the same user may attach to it. Set here rather
/// than between fork and exec, so that the worker spawns hosts without running code in a
/// forked child.
#[allow(unsafe_code)]
fn no_core_dumps() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process, with valid arguments.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Ends this process (`_exit`, no clean-up that could wait for the device) once its parent,
/// the worker, is gone: a host spinning on a kernel would otherwise keep the GPU busy after a
/// worker crash, or after a shutdown that did not get to kill it. A thread polls the parent's
/// pid: `PR_SET_PDEATHSIG` fires when the *thread* that spawned the host exits, and the worker
/// spawns hosts from short-lived blocking threads.
#[allow(unsafe_code)]
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    let watch = move || loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            // SAFETY: _exit ends the process; nothing runs after it.
            unsafe { libc::_exit(70) };
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("dtee-parent-watch".into())
        .spawn(watch)
    {
        eprintln!("dtee device host: no parent watch ({error}); exiting");
        // SAFETY: as above.
        unsafe { libc::_exit(70) };
    }
}

/// Buffers zeroed when dropped.
struct Wiped(Vec<Vec<u8>>);

impl Drop for Wiped {
    fn drop(&mut self) {
        for buffer in &mut self.0 {
            zeroize::Zeroize::zeroize(buffer);
        }
    }
}
