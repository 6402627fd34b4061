//! The supervisor of one device host (`device.rs`): starts it, sends it one job at a time,
//! waits for the answer no longer than the job's deadline, kills it (SIGKILL) when the deadline
//! passes or after a sticky failure, and starts a fresh one.
//!
//! A job whose own kernel ended the host (its deadline passed, or it faulted) pays for the
//! fresh host itself: the host is started again before that job is answered
//! ([`DeviceHost::restart_if_due`]), while the job still holds its tenant's device slot, so the
//! slots' fair share between tenants bounds how much device time one tenant's kernels cost the
//! others. A kernel that runs past its job's deadline (a deadline the job chose) never counts
//! against the device. Other ends do: more than [`MAX_RESTARTS`] of them within
//! [`RESTART_WINDOW`] mark the device failed, and its jobs are answered `device_failed`
//! without a host — but only when one of them was the device's (a host that ended outside any
//! job, a sticky failure of the device, a host that did not start), or when the jobs during
//! which the hosts ended were [`MIN_TENANTS`] tenants' or more. One tenant (or two colluding)
//! whose kernels fault cannot take a device away from the others; a GPU that fails everyone's
//! jobs is given up. (One whose kernels all hang while fresh hosts still start is not: its jobs
//! are answered `execution_timeout`, which is not final.)
//!
//! Unless the worker is told the tenants may share one (`DTEE_GPU_SHARE_HOST`), a job of
//! another tenant than the last runs in a fresh host, so in a fresh GPU context: drivers do
//! not clear the memory they reuse between launches in a context. Such a change is no restart.

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::device::DriverKind;
use super::protocol::{self, DeviceInfo, FailureKind, Hello, Numbered, Request, Response};

/// The hidden subcommand that runs a device host.
pub const DEVICE_HOST_COMMAND: &str = "__dtee-device-host";
/// Restarts allowed within [`RESTART_WINDOW`] before the device counts as failed.
pub const MAX_RESTARTS: usize = 10;
/// The window of [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How many tenants' jobs must have met the restarts of a window for the device to be given up
/// (a host that ended outside any job counts as the device's fault at once).
pub const MIN_TENANTS: usize = 3;
/// How long a starting host may take to open its device and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the supervisor has no answer from the device.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The deadline passed: the host was killed.
    #[error("the kernel ran past its {0} ms deadline; its device host was killed")]
    Timeout(u64),
    /// The host died or broke the protocol.
    #[error("the device host died: {0}")]
    Died(String),
    /// No host could be started, or the device was given up.
    #[error("the device is unavailable: {0}")]
    Unavailable(String),
}

enum Frame {
    Hello(Hello),
    Response(Response, Vec<Vec<u8>>),
}

/// What the reader thread may accept next: the answer to request `id`, with at most as many
/// payloads as `copy_out` lists, each at most that long (checked before anything is allocated).
struct Expected {
    id: u64,
    copy_out: Vec<u64>,
}

struct Running {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    frames: mpsc::Receiver<io::Result<Frame>>,
    expect: mpsc::Sender<Expected>,
}

impl Running {
    /// Kills the host and reaps it; what it said on the way out is lost.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        }
    }
}

/// Why the host that a start replaces ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Ended {
    /// Its job's kernel ran past the job's own deadline: never counted against the device.
    Overrun,
    /// A job of another tenant than its last came: ended on purpose, never counted.
    TenantChange,
    /// During a job of this tenant (a kernel fault, a host that died): the kernel's fault or
    /// the device's.
    InJob(String),
    /// Outside any job, or for a reason of the device's (a sticky device failure, a failed
    /// send, a host that did not start).
    #[default]
    Device,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    started_once: bool,
    /// Restarts within the window that count against the device, each with why the host
    /// before it ended.
    restarts: VecDeque<(Instant, Ended)>,
    /// Why the host that the next start replaces ended.
    ended_by: Ended,
    /// The number of the last request sent.
    last_id: u64,
    /// Whether the last job's own kernel ended the host, which that job starts again.
    restart_due: bool,
    /// The device the first host opened: every later host must open the same.
    device: Option<DeviceInfo>,
    /// The tenant whose job the running host ran last (`None`: a fresh host).
    tenant: Option<String>,
}

/// One device and the host process that drives it.
pub struct DeviceHost {
    kind: DriverKind,
    ordinal: u32,
    program: std::path::PathBuf,
    state: Mutex<State>,
    restarts: AtomicU64,
    /// Whether a host runs the jobs of different tenants one after the other.
    share_host: bool,
    /// Set once, when the device is given up: read without the state lock, which a running
    /// job holds for as long as it runs.
    failed: OnceLock<String>,
}

impl std::fmt::Debug for DeviceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHost")
            .field("driver", &self.kind)
            .field("device", &self.ordinal)
            .finish()
    }
}

impl DeviceHost {
    /// A supervisor for device `ordinal` of `kind`, whose hosts run `program` (the worker's own
    /// executable). Nothing starts until the first job. Unless `share_host`, a job of another
    /// tenant than the last one's gets a fresh host (and GPU context): the driver does not
    /// clear the memory it reuses between launches in a context (a kernel's local memory,
    /// AMD's scratch), which the next kernel could read.
    pub fn new(
        kind: DriverKind,
        ordinal: u32,
        program: std::path::PathBuf,
        share_host: bool,
    ) -> DeviceHost {
        DeviceHost {
            kind,
            ordinal,
            program,
            state: Mutex::new(State::default()),
            restarts: AtomicU64::new(0),
            share_host,
            failed: OnceLock::new(),
        }
    }

    /// Host restarts so far (after a kill, a crash or a sticky failure).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Why the device was given up, if it was.
    pub fn failed(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    /// Starts the first host and waits for its hello: the device it opened.
    pub fn start(&self) -> Result<DeviceInfo, HostError> {
        let mut state = self.state.lock().expect("host lock");
        self.ensure_running(&mut state)?
            .ok_or_else(|| HostError::Unavailable("the host was started already".into()))
    }

    /// Runs one request: sends it with `payloads` (the kernel, then each buffer's copy-in
    /// bytes) and waits for the answer until `deadline` after now. Blocking.
    /// `tenant`'s job is named as the cause if the host ends during it.
    pub fn run(
        &self,
        request: &Request,
        payloads: &[&[u8]],
        deadline: Duration,
        tenant: &str,
    ) -> Result<(Response, Vec<Vec<u8>>), HostError> {
        let mut state = self.state.lock().expect("host lock");
        if !self.share_host
            && state.running.is_some()
            && state.tenant.as_deref().is_some_and(|last| last != tenant)
        {
            let mut running = state.running.take().expect("running");
            // A host that had ended by itself meanwhile is the device's to answer for.
            let ended_alone = !matches!(running.child.try_wait(), Ok(None));
            let _ = running.kill();
            state.ended_by = if ended_alone {
                Ended::Device
            } else {
                Ended::TenantChange
            };
        }
        self.ensure_running(&mut state)?;
        state.tenant = Some(tenant.to_owned());
        // The job's time starts once a host is running: a host started now (because the last
        // one died) is not this job's to pay for, nor to be blamed for should its deadline
        // pass meanwhile.
        let started = Instant::now();
        // Every way below that ends the host ends it during this job, but a failed send.
        state.ended_by = Ended::InJob(tenant.to_owned());
        state.last_id += 1;
        let id = state.last_id;
        let running = state.running.as_mut().expect("a running host");
        let expected = Expected {
            id,
            copy_out: request
                .buffers
                .iter()
                .filter(|buffer| buffer.copy_out)
                .map(|buffer| buffer.device_bytes)
                .collect(),
        };
        let numbered = Numbered { id, body: request };
        let sent = running
            .expect
            .send(expected)
            .map_err(|_| io::Error::other("the host's reader has stopped"))
            .and_then(|()| protocol::write_frame(&mut running.stdin, &numbered, payloads));
        if let Err(error) = sent {
            // The host had ended before this job reached it.
            let status = state.running.take().expect("running").kill();
            state.ended_by = Ended::Device;
            return Err(HostError::Died(format!(
                "sending it the job failed ({error}); it exited with {status}"
            )));
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        match running.frames.recv_timeout(remaining) {
            Ok(Ok(Frame::Response(response, outputs))) => {
                if response.sticky {
                    // The host exits by itself; reap it.
                    let _ = state.running.take().expect("running").kill();
                    let kernel_fault =
                        matches!(response.failure, Some((FailureKind::KernelFault, _)));
                    state.restart_due = kernel_fault;
                    if !kernel_fault {
                        state.ended_by = Ended::Device;
                    }
                } else {
                    // The job is over: whatever ends this host later ends it outside a job.
                    state.ended_by = Ended::Device;
                }
                Ok((response, outputs))
            }
            Ok(Ok(Frame::Hello(_))) => {
                let status = state.running.take().expect("running").kill();
                Err(HostError::Died(format!(
                    "it said hello twice (exit: {status})"
                )))
            }
            Ok(Err(error)) => {
                let status = state.running.take().expect("running").kill();
                Err(HostError::Died(format!("{error}; it exited with {status}")))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = state.running.take().expect("running").kill();
                state.restart_due = true;
                state.ended_by = Ended::Overrun;
                Err(HostError::Timeout(deadline.as_millis() as u64))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = state.running.take().expect("running").kill();
                Err(HostError::Died(format!("it exited with {status}")))
            }
        }
    }

    /// Starts the host again if the last job's own kernel ended it (its deadline passed, or it
    /// faulted): called by that job, after its run is timed and before it is answered, so that
    /// the job that caused the restart pays for it. A start that fails is left to the next job.
    pub fn restart_if_due(&self) {
        let mut state = self.state.lock().expect("host lock");
        if !std::mem::take(&mut state.restart_due) {
            return;
        }
        if let Err(error) = self.ensure_running(&mut state) {
            tracing::warn!(
                driver = self.kind.name(),
                device = self.ordinal,
                %error,
                "a device host did not start again after a job's kernel ended the last one"
            );
        }
    }

    /// Starts a host unless one runs; the device it opened, if it started one now.
    fn ensure_running(&self, state: &mut State) -> Result<Option<DeviceInfo>, HostError> {
        if let Some(why) = self.failed.get() {
            return Err(HostError::Unavailable(why.clone()));
        }
        if state.running.is_some() {
            return Ok(None);
        }
        if state.started_once {
            let now = Instant::now();
            let cause = std::mem::take(&mut state.ended_by);
            if cause == Ended::TenantChange {
                // Not a restart: nothing failed.
                return self.start_fresh(state);
            }
            if cause != Ended::Overrun {
                state.restarts.push_back((now, cause));
            }
            while state
                .restarts
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RESTART_WINDOW)
            {
                state.restarts.pop_front();
            }
            self.restarts.fetch_add(1, Ordering::Relaxed);
            // One tenant's kernels that fault end the host as often as that tenant submits
            // them: its own jobs pay for it, and the device stays up for the others. Ends that
            // no job explains, or that many tenants' jobs met, are the device's.
            let device = state
                .restarts
                .iter()
                .any(|(_, cause)| *cause == Ended::Device);
            let tenants: std::collections::HashSet<_> = state
                .restarts
                .iter()
                .filter_map(|(_, cause)| match cause {
                    Ended::InJob(tenant) => Some(tenant),
                    _ => None,
                })
                .collect();
            if state.restarts.len() > MAX_RESTARTS && (device || tenants.len() >= MIN_TENANTS) {
                let why = format!(
                    "its device host was restarted {} times within {} s; the device is given up until the worker restarts",
                    state.restarts.len(),
                    RESTART_WINDOW.as_secs()
                );
                tracing::error!(driver = self.kind.name(), device = self.ordinal, "{why}");
                let _ = self.failed.set(why.clone());
                return Err(HostError::Unavailable(why));
            }
        }
        self.start_fresh(state)
    }

    /// Starts a host, which must open the device the first one opened.
    fn start_fresh(&self, state: &mut State) -> Result<Option<DeviceInfo>, HostError> {
        state.started_once = true;
        state.tenant = None;
        let (running, info) = self.spawn()?;
        // The same device as the first host's (a host's environment is not the worker's: see
        // `host_variable`), or none.
        if let Some(first) = &state.device {
            if *first != info {
                let _ = running.kill();
                let why = format!(
                    "a restarted device host opened {} where the first opened {}; the device is given up until the worker restarts",
                    info.device.name, first.device.name
                );
                tracing::error!(driver = self.kind.name(), device = self.ordinal, "{why}");
                let _ = self.failed.set(why.clone());
                return Err(HostError::Unavailable(why));
            }
        } else {
            state.device = Some(info.clone());
        }
        state.running = Some(running);
        Ok(Some(info))
    }

    fn spawn(&self) -> Result<(Running, DeviceInfo), HostError> {
        let mut command = Command::new(&self.program);
        command
            .arg(DEVICE_HOST_COMMAND)
            .arg("--driver")
            .arg(self.kind.name())
            .arg("--device")
            .arg(self.ordinal.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // None of the worker's environment (its Redis and AMQP URLs may hold credentials,
            // and a GPU with unified addressing may let a kernel read the host's memory) but
            // what the drivers read.
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| host_variable(name)));
        let mut child = command.spawn().map_err(|error| {
            HostError::Unavailable(format!(
                "starting {} {DEVICE_HOST_COMMAND}: {error}",
                self.program.display()
            ))
        })?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, frames) = mpsc::channel();
        let (expect, expectations) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name(format!("dtee-device-host-{}", self.ordinal))
            .spawn(move || read_frames(BufReader::new(stdout), sender, expectations));
        if let Err(error) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HostError::Unavailable(format!("a reader thread: {error}")));
        }
        let running = Running {
            child,
            stdin,
            frames,
            expect,
        };
        match running.frames.recv_timeout(HELLO_TIMEOUT) {
            Ok(Ok(Frame::Hello(Hello { device: Ok(info) }))) => Ok((running, info)),
            Ok(Ok(Frame::Hello(Hello { device: Err(why) }))) => {
                let _ = running.kill();
                Err(HostError::Unavailable(why))
            }
            Ok(Ok(Frame::Response(..))) => {
                let _ = running.kill();
                Err(HostError::Unavailable(
                    "the host answered before a job".into(),
                ))
            }
            Ok(Err(error)) => {
                let status = running.kill();
                Err(HostError::Unavailable(format!(
                    "the host did not say hello ({error}); it exited with {status}"
                )))
            }
            Err(_) => {
                let status = running.kill();
                Err(HostError::Unavailable(format!(
                    "the host did not open its device within {} s (exit: {status})",
                    HELLO_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

impl Drop for DeviceHost {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(running) = state.running.take() {
                let _ = running.kill();
            }
        }
    }
}

/// Whether a device host keeps the worker's environment variable `name`: the loader's and the
/// GPU runtimes' own, nothing else.
fn host_variable(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    matches!(
        name.as_ref(),
        "PATH" | "HOME" | "TMPDIR" | "LD_LIBRARY_PATH"
    ) || [
        "CUDA_", "HIP_", "ROCM_", "HSA_", "AMD_", "NVIDIA_", "ROCR_", "GPU_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// The reader thread: hello, then responses with their payloads, until the host's output ends.
/// A response must answer the request sent last (`expectations`, sent before each request),
/// and its payloads must fit that request's `copy_out` buffers, before any is read.
fn read_frames(
    mut stdout: impl io::Read,
    sender: mpsc::Sender<io::Result<Frame>>,
    expectations: mpsc::Receiver<Expected>,
) {
    match protocol::read_header::<Hello>(&mut stdout) {
        Ok(Some(hello)) => {
            if sender.send(Ok(Frame::Hello(hello))).is_err() {
                return;
            }
        }
        Ok(None) => return,
        Err(error) => {
            let _ = sender.send(Err(error));
            return;
        }
    }
    loop {
        let frame = protocol::read_header::<Numbered<Response>>(&mut stdout).and_then(|header| {
            let Some(Numbered { id, body: response }) = header else {
                return Ok(None);
            };
            let unasked = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
            let expected = expectations
                .try_recv()
                .map_err(|_| unasked(format!("an answer to no request (number {id})")))?;
            if id != expected.id {
                return Err(unasked(format!(
                    "an answer to request {id} while request {} was waiting",
                    expected.id
                )));
            }
            if response.payloads.len() > expected.copy_out.len()
                || response
                    .payloads
                    .iter()
                    .zip(&expected.copy_out)
                    .any(|(length, most)| length > most)
            {
                return Err(unasked(format!(
                    "payloads of {:?} bytes for buffers of {:?} bytes",
                    response.payloads, expected.copy_out
                )));
            }
            let mut outputs = Vec::with_capacity(response.payloads.len());
            for length in &response.payloads {
                outputs.push(protocol::read_payload(&mut stdout, *length)?);
            }
            Ok(Some(Frame::Response(response, outputs)))
        });
        match frame {
            Ok(Some(frame)) => {
                if sender.send(Ok(frame)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                let _ = sender.send(Err(error));
                return;
            }
        }
    }
}
