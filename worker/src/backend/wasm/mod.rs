//! The WebAssembly backend: Wasmtime with no WASI and no ambient access.
//!
//! The kernel reaches its buffers and parameters only through the host ABI of
//! schemas/KERNEL_ABI.md (imports from module `dtee`, in `abi.rs`). Every limit is enforced while
//! the kernel runs, and each has its own error code (`limits.rs`): fuel through Wasmtime's fuel
//! metering, wall-clock time through epoch interruption with one ticker thread per backend
//! (`engine.rs`), linear memory through a [`wasmtime::ResourceLimiter`], and output bytes by the
//! host on every write.
//!
//! Kernels are compiled in a child process under a deadline and an address-space limit
//! (`compile.rs`). Compiled modules are cached by digest, already linked ([`InstancePre`]), so a
//! cached kernel costs one instantiation per job (`cache.rs`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use dtee_schemas::job::{KernelFormat, WasmProfile};
use dtee_schemas::result::ResourceUsage;
use dtee_schemas::run::EffectiveLimits;
use dtee_schemas::{Digest, ErrorCode};
use wasmtime::{Engine, InstancePre, Linker, Module, Store, Val, ValType};

use super::{Backend, Completed, Invocation, KernelError, PrepareError};

mod abi;
mod compile;
mod engine;
mod limits;

pub use abi::{DTEE_ERR_ACCESS, DTEE_ERR_BAD_INDEX, DTEE_ERR_RANGE};
pub use compile::{
    child_main as compiler_main, CompileSettings, CompilerError, COMPILE_SUBCOMMAND,
};
pub use engine::EPOCH_TICK;
pub use limits::HostState;

use crate::fair_cache::FairCache;
use engine::EpochTicker;

/// A compiled and linked kernel, or the deterministic reason it cannot run.
pub type Prepared = super::Prepared<InstancePre<HostState>>;

/// The WebAssembly backend. Cheap to share behind an `Arc`.
///
pub struct WasmBackend {
    /// How this backend's kernels run: metered and canonical, or fast.
    profile: WasmProfile,
    /// The engine every kernel is compiled for and run in.
    engine: Engine,
    /// The host ABI, linked into every module at compilation.
    linker: Linker<HostState>,
    /// Compiled modules (or their deterministic failures) by digest, shared fairly by tenants.
    cache: Mutex<FairCache<Arc<Prepared>>>,
    /// How kernels are compiled, and within which bounds.
    compile: CompileSettings,
    /// Advances the engine's epoch while kernels run, until the backend is dropped.
    ticker: EpochTicker,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend").finish_non_exhaustive()
    }
}

impl WasmBackend {
    /// Creates the engine, the linker with the host ABI, and the epoch ticker.
    /// Compiled modules are cached up to `module_cache_size` of them and `module_cache_bytes`
    /// in all; kernels are compiled within `compile`'s bounds. At most `kernel_slots` kernels
    /// run at once (the engine's instance pool has room for two more).
    pub fn new(
        module_cache_size: usize,
        module_cache_bytes: usize,
        compile: CompileSettings,
        kernel_slots: usize,
    ) -> anyhow::Result<WasmBackend> {
        WasmBackend::with_profile(
            WasmProfile::Deterministic,
            module_cache_size,
            module_cache_bytes,
            compile,
            kernel_slots,
        )
    }

    /// Like [`WasmBackend::new`], for the jobs of one profile (a backend serves one: fuel
    /// metering and NaN canonicalisation are properties of the engine).
    pub fn with_profile(
        profile: WasmProfile,
        module_cache_size: usize,
        module_cache_bytes: usize,
        compile: CompileSettings,
        kernel_slots: usize,
    ) -> anyhow::Result<WasmBackend> {
        let pool_slots = u32::try_from(kernel_slots.saturating_add(2)).unwrap_or(u32::MAX);
        let engine = engine::new_engine(Some(pool_slots), profile)?;
        let mut linker = Linker::new(&engine);
        abi::define(&mut linker)
            .map_err(|error| anyhow::anyhow!("defining the host ABI: {error}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(WasmBackend {
            profile,
            engine,
            linker,
            cache: Mutex::new(FairCache::new(module_cache_size, module_cache_bytes)),
            compile,
            ticker,
        })
    }

    /// The profile this backend runs kernels with.
    pub fn profile(&self) -> WasmProfile {
        self.profile
    }

    /// Compiles (in a child process, under the compile bounds) and links `bytes`; `Err` when
    /// the compiler could not be run at all.
    fn compile(&self, bytes: &[u8]) -> Result<Prepared, CompilerError> {
        if !has_wasm_header(bytes) {
            return Ok(Err(KernelError::before_run(
                ErrorCode::KernelInvalid,
                "the kernel is not a WebAssembly binary module (bad magic or version)",
            )));
        }
        let invalid = |message: String| {
            KernelError::before_run(
                ErrorCode::KernelInvalid,
                format!("the kernel does not compile: {message}"),
            )
        };
        let Some(program) = &self.compile.program else {
            return Ok(compile::in_process(&self.engine, bytes)
                .map_err(invalid)
                .and_then(|module| self.link(&module)));
        };
        Ok(
            match compile::in_child(program, &self.compile, self.profile, bytes)? {
                // The artefact is this executable's own; loading it checks it against the
                // engine's instance pool, which refuses a module needing more than a pool slot
                // holds: a property of the kernel, answered as such.
                compile::Compiled::Artefact(artefact) => {
                    match compile::load(&self.engine, &artefact) {
                        Ok(module) => self.link(&module),
                        Err(error) => Err(KernelError::before_run(
                            ErrorCode::KernelLinkFailed,
                            format!(
                        "the kernel cannot be loaded into this worker's instance pool: {error:#}"
                    ),
                        )),
                    }
                }
                compile::Compiled::Invalid(message) => Err(invalid(message)),
                compile::Compiled::LimitExceeded(message) => Err(KernelError::before_run(
                    ErrorCode::KernelCompileLimitExceeded,
                    message,
                )),
            },
        )
    }

    /// Checks that a compiled module exports its memory, and links it with the host ABI.
    fn link(&self, module: &Module) -> Prepared {
        let exports_memory = module.exports().any(|export| {
            export.name() == "memory" && matches!(export.ty(), wasmtime::ExternType::Memory(_))
        });
        if !exports_memory {
            return Err(KernelError::before_run(
                ErrorCode::KernelLinkFailed,
                "the kernel must export its linear memory as \"memory\"",
            ));
        }
        self.linker.instantiate_pre(module).map_err(|error| {
            KernelError::before_run(
                ErrorCode::KernelLinkFailed,
                format!("the kernel cannot be linked: {error}"),
            )
        })
    }
}

impl Backend for WasmBackend {
    type Kernel = InstancePre<HostState>;

    fn name(&self) -> &'static str {
        "wasm"
    }

    fn format(&self) -> KernelFormat {
        KernelFormat::Wasm
    }

    fn cached(&self, tenant: &str, digest: &Digest) -> Option<Arc<Prepared>> {
        self.cache
            .lock()
            .expect("module cache lock")
            .get(tenant, digest)
    }

    fn prepare(
        &self,
        tenant: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Arc<Prepared>, PrepareError> {
        let prepared = Arc::new(self.compile(bytes).map_err(|error| PrepareError {
            backend: "wasm",
            source: Box::new(error),
        })?);
        // A compile limit depends on how loaded the worker was, which another tenant may have
        // caused: not kept for every tenant (the job path keeps it for the tenant that met it).
        if !is_compile_limit(&prepared) {
            let size = cached_size(&prepared, bytes.len());
            self.cache.lock().expect("module cache lock").insert(
                tenant,
                digest.clone(),
                Arc::clone(&prepared),
                size,
            );
        }
        Ok(prepared)
    }

    /// Runs one invocation to completion or to its first failure. Blocking: call from a
    /// blocking thread.
    fn run(
        &self,
        prepared: &InstancePre<HostState>,
        invocation: &Invocation,
    ) -> Result<Completed, KernelError> {
        self.run_within(prepared, invocation, invocation.limits)
    }
}

/// Whether `prepared` is a compile limit (`kernel_compile_limit_exceeded`).
fn is_compile_limit(prepared: &Prepared) -> bool {
    matches!(prepared, Err(error) if error.code == ErrorCode::KernelCompileLimitExceeded)
}

/// A short run's limits ([`WasmBackend::run_short`]): what a kernel may spend where the job's
/// task runs, before it is run again on a blocking thread.
#[derive(Debug, Clone, Copy)]
pub struct ShortRun {
    /// Fuel.
    pub fuel: u64,
    /// Linear memory, bytes: bounds what one bulk memory instruction (one unit of fuel) may
    /// touch.
    pub memory_bytes: u64,
    /// Wall-clock time, milliseconds (to the epoch's granularity).
    pub timeout_ms: u64,
}

impl WasmBackend {
    /// Runs `invocation` within the smaller of its limits and `short`. `None` when it stopped
    /// at one of `short`'s limits and its own would have let it go on: then nothing of this run
    /// counts, and it is to be run again, from the start, with [`Backend::run`] (a kernel sees
    /// only its buffers and parameters, so the second run does what the first would have).
    pub fn run_short(
        &self,
        prepared: &InstancePre<HostState>,
        invocation: &Invocation,
        short: ShortRun,
    ) -> Option<Result<Completed, KernelError>> {
        let own = invocation.limits;
        let mut limits = own;
        limits.fuel = own.fuel.min(short.fuel);
        limits.memory_bytes = own.memory_bytes.min(short.memory_bytes);
        limits.timeout_ms = own.timeout_ms.min(short.timeout_ms);
        let result = self.run_within(prepared, invocation, limits);
        let cut_short = match &result {
            Err(error) => match error.code {
                ErrorCode::FuelExhausted => limits.fuel < own.fuel,
                ErrorCode::MemoryLimitExceeded => limits.memory_bytes < own.memory_bytes,
                ErrorCode::ExecutionTimeout => limits.timeout_ms < own.timeout_ms,
                _ => false,
            },
            Ok(_) => false,
        };
        (!cut_short).then_some(result)
    }

    /// Runs one invocation within `limits`.
    fn run_within(
        &self,
        prepared: &InstancePre<HostState>,
        invocation: &Invocation,
        limits: EffectiveLimits,
    ) -> Result<Completed, KernelError> {
        let mut store = Store::new(&self.engine, HostState::new(invocation, limits));
        store.limiter(|state| state);
        let metered = self.profile == WasmProfile::Deterministic;
        if metered {
            store.set_fuel(limits.fuel).expect("fuel is enabled");
        }
        // The epoch advances while this is held; taken before the deadline is set.
        let _running = self.ticker.running();
        store.set_epoch_deadline(engine::deadline_ticks(limits.timeout_ms));
        store.data_mut().deadline = Some(self.ticker.host_deadline(limits.timeout_ms));
        store.epoch_deadline_trap();

        let started = Instant::now();
        let outcome = call_entry(&mut store, prepared, &invocation.entry);
        let wall_time = started.elapsed();

        // The fast profile meters nothing: it reports no fuel consumed.
        let fuel_consumed = match store.get_fuel() {
            Ok(left) if metered => limits.fuel.saturating_sub(left),
            _ => 0,
        };
        let state = store.into_data();
        let usage = ResourceUsage {
            fuel_consumed,
            peak_memory_bytes: state.peak_memory,
            wall_time_us: wall_time.as_micros() as u64,
            output_bytes: state.output_used,
            ..ResourceUsage::default()
        };
        let (code, message) = match outcome {
            Ok(0) => {
                return Ok(Completed {
                    written: state.into_written(),
                    usage,
                    device: None,
                })
            }
            Ok(status) => (
                ErrorCode::KernelFailed,
                format!("the kernel returned status {status}"),
            ),
            Err(CallError::Link(message)) => (ErrorCode::KernelLinkFailed, message),
            Err(CallError::Run(error)) => state.classify(&error),
        };
        Err(KernelError {
            code,
            message,
            usage,
            device: None,
        })
    }
}

/// What a cache entry costs in memory, as counted against the cache's byte bound: a compiled
/// module's image (code, data, metadata: `Module::image_range`) plus its WebAssembly size, an
/// upper bound on the data segments Wasmtime copies into copy-on-write memory images (it does
/// for modules compiled in memory); a failure's message.
fn cached_size(prepared: &Prepared, wasm_bytes: usize) -> usize {
    match prepared {
        Ok(pre) => {
            let image = pre.module().image_range();
            (image.end as usize).saturating_sub(image.start as usize) + wasm_bytes
        }
        Err(error) => std::mem::size_of::<KernelError>() + error.message.len(),
    }
}

/// Whether `bytes` start with the 8-byte WebAssembly header, so that random bytes get a clear
/// message.
fn has_wasm_header(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00])
}

/// Why the entry was not called to completion.
enum CallError {
    /// The entry is missing or has the wrong type.
    Link(String),
    /// Instantiation or the call failed: a trap, a limit, or a host error.
    Run(wasmtime::Error),
}

/// Instantiates the kernel, checks the entry's type and calls it; its status (0 for an entry
/// that returns nothing).
fn call_entry(
    store: &mut Store<HostState>,
    prepared: &InstancePre<HostState>,
    entry: &str,
) -> Result<i32, CallError> {
    let instance = prepared.instantiate(&mut *store).map_err(CallError::Run)?;
    let Some(func) = instance.get_func(&mut *store, entry) else {
        return Err(CallError::Link(format!(
            "the kernel exports no function named {entry:?}"
        )));
    };
    let ty = func.ty(&*store);
    if ty.params().len() != 0 {
        return Err(CallError::Link(format!(
            "entry {entry:?} must take no parameters"
        )));
    }
    let results: Vec<ValType> = ty.results().collect();
    let mut out = match results.as_slice() {
        [] => vec![],
        [ValType::I32] => vec![Val::I32(0)],
        _ => {
            return Err(CallError::Link(format!(
                "entry {entry:?} must return nothing or an i32"
            )))
        }
    };
    func.call(&mut *store, &[], &mut out)
        .map_err(CallError::Run)?;
    Ok(out.first().and_then(Val::i32).unwrap_or(0))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod short_tests;

#[cfg(test)]
mod profile_tests;
