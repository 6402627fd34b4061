//! Compiling kernels in a child process, under a wall-clock deadline and an address-space limit.
//!
//! A Cranelift compilation cannot be interrupted inside a thread, and its time and memory grow
//! faster than linearly with some modules (thousands of blocks over hundreds of locals). So the
//! worker never compiles a kernel itself: it runs its own executable with [`COMPILE_SUBCOMMAND`],
//! writes the kernel's bytes to the child's stdin, and reads the compiled artefact
//! ([`wasmtime::Engine::precompile_module`], for an engine with the same configuration) from its
//! stdout. The child limits its own address space (`RLIMIT_AS`) and CPU time (`RLIMIT_CPU`, a
//! backstop should the worker die) before it reads anything; the parent kills it at the deadline.
//! A kernel that does not compile within these bounds fails `kernel_compile_limit_exceeded`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dtee_schemas::job::WasmProfile;
use wasmtime::{Engine, Module};

/// The hidden first argument that makes the worker's executable a kernel compiler.
pub const COMPILE_SUBCOMMAND: &str = "__dtee-compile-kernel";

/// The compiler's exit status when the module is not valid WebAssembly.
const EXIT_INVALID: u8 = 3;
/// The compiler's exit status when a valid module does not compile.
const EXIT_UNCOMPILABLE: u8 = 4;
/// The compiler's exit status when its arguments or its pipes are broken.
const EXIT_USAGE: u8 = 64;
/// How much of the compiler's stderr is kept for the failure message.
const MESSAGE_BYTES: u64 = 2048;

/// Bounds on compiling one kernel, and how many compile at once.
#[derive(Debug, Clone)]
pub struct CompileSettings {
    /// Wall-clock time one compilation may take; the child is killed at this deadline.
    pub timeout: Duration,
    /// Address space the compiler may use (its `RLIMIT_AS`); also caps the artefact read back.
    pub memory_bytes: u64,
    /// Compilations running at once (the caller's compile slots).
    pub concurrency: usize,
    /// The executable run with [`COMPILE_SUBCOMMAND`]: the `dtee-worker` binary. `None`
    /// compiles in the calling thread with no bound at all: for the backend's unit tests only.
    pub program: Option<PathBuf>,
}

impl CompileSettings {
    /// Unbounded compilation in the calling thread: for unit tests only.
    pub fn in_process() -> CompileSettings {
        CompileSettings {
            timeout: Duration::MAX,
            memory_bytes: u64::MAX,
            concurrency: 1,
            program: None,
        }
    }
}

/// What the compiler made of a kernel.
#[derive(Debug)]
pub(super) enum Compiled {
    /// The artefact, for [`load`].
    Artefact(Vec<u8>),
    /// The kernel is not valid WebAssembly or does not compile: why.
    Invalid(String),
    /// The compiler was stopped by a bound: which, and after how long.
    LimitExceeded(String),
}

/// The worker could not run the compiler (not the kernel's fault): retried, never cached.
#[derive(Debug, thiserror::Error)]
pub enum CompilerError {
    /// The compiler could not be started.
    #[error("starting the kernel compiler {program}")]
    Spawn {
        /// The executable.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the compiler failed.
    #[error("waiting for the kernel compiler")]
    Wait(#[source] std::io::Error),
}

/// Compiles `bytes` in a child process under `settings`' bounds.
pub(super) fn in_child(
    program: &PathBuf,
    settings: &CompileSettings,
    profile: WasmProfile,
    bytes: &[u8],
) -> Result<Compiled, CompilerError> {
    let cpu_secs = settings.timeout.as_secs().saturating_add(2);
    let mut child = Command::new(program)
        .arg(COMPILE_SUBCOMMAND)
        .arg(settings.memory_bytes.to_string())
        .arg(cpu_secs.to_string())
        .arg(profile.as_str())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CompilerError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let started = Instant::now();
    let deadline = started.checked_add(settings.timeout);
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (status, artefact, message) = std::thread::scope(|scope| {
        // A child that stops reading (killed, or dead) closes the pipe: the write fails, which
        // is fine, since its exit status says why.
        scope.spawn(move || stdin.as_mut().map(|pipe| pipe.write_all(bytes)));
        let artefact = scope.spawn(move || read_capped(stdout, settings.memory_bytes));
        let message = scope.spawn(move || read_capped(stderr, MESSAGE_BYTES));
        let status = wait_until(&mut child, deadline);
        let artefact = artefact.join().unwrap_or_default();
        let message = message.join().unwrap_or_default();
        (status, artefact, message)
    });
    let elapsed = started.elapsed().as_millis();
    let message = String::from_utf8_lossy(&message).trim().to_owned();
    Ok(match status.map_err(CompilerError::Wait)? {
        None => Compiled::LimitExceeded(format!(
            "the kernel did not compile within this worker's limit of {} ms",
            settings.timeout.as_millis()
        )),
        Some(status) if status.success() => Compiled::Artefact(artefact),
        Some(status) => match status.code() {
            Some(code)
                if code == i32::from(EXIT_INVALID) || code == i32::from(EXIT_UNCOMPILABLE) =>
            {
                Compiled::Invalid(message)
            }
            _ => Compiled::LimitExceeded(format!(
                "the kernel compiler stopped after {elapsed} ms ({}) within this worker's limits \
                 of {} ms and {} bytes of address space: {message}",
                describe(status),
                settings.timeout.as_millis(),
                settings.memory_bytes
            )),
        },
    })
}

/// Waits for `child` until `deadline`; `None` when it had to be killed.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Option<Instant>,
) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            // Killing a child that has just exited fails harmlessly; wait reaps it either way.
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Up to `cap` bytes from `pipe` (the rest is drained and dropped).
fn read_capped(pipe: Option<impl Read>, cap: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.by_ref().take(cap).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    }
    bytes
}

/// An exit status in words.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Loads an artefact that [`in_child`] compiled.
pub(super) fn load(engine: &Engine, artefact: &[u8]) -> wasmtime::Result<Module> {
    #[allow(unsafe_code)]
    // SAFETY: `Module::deserialize` trusts its input to be native code that Wasmtime compiled.
    // These bytes come from our own executable (the `dtee-worker` binary, run with
    // COMPILE_SUBCOMMAND by `in_child`), which compiled them with `Engine::precompile_module`
    // for an engine of the same configuration (`engine::new_engine`), over a pipe only the
    // two processes hold; the kernel's tenant supplied the WebAssembly, never these bytes.
    // Wasmtime checks the artefact's header (its version and the engine's settings) and
    // refuses a mismatch.
    unsafe {
        Module::deserialize(engine, artefact)
    }
}

/// Compiles in this thread with no bound: for unit tests only.
pub(super) fn in_process(engine: &Engine, bytes: &[u8]) -> Result<Module, String> {
    Module::new(engine, bytes).map_err(|error| format!("{error:#}"))
}

/// The compiler child's `main`: `dtee-worker __dtee-compile-kernel MEMORY_BYTES CPU_SECS
/// PROFILE`, the kernel on stdin, the artefact on stdout, why it failed on stderr.
pub fn child_main(args: &[OsString]) -> ExitCode {
    let parse = |arg: Option<&OsString>| arg.and_then(|a| a.to_str()?.parse::<u64>().ok());
    let profile = args
        .get(2)
        .and_then(|a| a.to_str())
        .and_then(WasmProfile::from_name);
    let (Some(memory_bytes), Some(cpu_secs), Some(profile)) =
        (parse(args.first()), parse(args.get(1)), profile)
    else {
        eprintln!(
            "usage: dtee-worker {COMPILE_SUBCOMMAND} MEMORY_BYTES CPU_SECS deterministic|fast < kernel.wasm"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if let Err(error) = limit_self(memory_bytes, cpu_secs) {
        eprintln!("setting the compiler's limits: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the kernel: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    let engine = match super::engine::new_engine(None, profile) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(error) = Module::validate(&engine, &bytes) {
        eprintln!("{error:#}");
        return ExitCode::from(EXIT_INVALID);
    }
    let artefact = match engine.precompile_module(&bytes) {
        Ok(artefact) => artefact,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::from(EXIT_UNCOMPILABLE);
        }
    };
    match std::io::stdout().lock().write_all(&artefact) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_USAGE),
    }
}

/// Limits this process's address space and CPU time; no core dumps.
fn limit_self(memory_bytes: u64, cpu_secs: u64) -> std::io::Result<()> {
    set_limit(libc::RLIMIT_CORE, 0, 0)?;
    set_limit(libc::RLIMIT_AS, memory_bytes, memory_bytes)?;
    // SIGXCPU at the soft limit, SIGKILL one second later.
    set_limit(libc::RLIMIT_CPU, cpu_secs, cpu_secs.saturating_add(1))
}

/// `setrlimit(resource, soft, hard)`.
fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    #[allow(unsafe_code)]
    // SAFETY: setrlimit reads the one `rlimit` we pass by reference, which lives across the
    // call; it changes only this process's limits and touches no Rust-managed memory.
    let status = unsafe { libc::setrlimit(resource, &limit) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
