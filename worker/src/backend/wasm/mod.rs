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

use dtee_schemas::job::KernelFormat;
use dtee_schemas::result::ResourceUsage;
use dtee_schemas::{Digest, ErrorCode};
use wasmtime::{Engine, InstancePre, Linker, Module, Store, Val, ValType};

use super::{Backend, Completed, Invocation, KernelError, PrepareError};

mod abi;
mod cache;
mod compile;
mod engine;
mod limits;

pub use abi::{DTEE_ERR_ACCESS, DTEE_ERR_BAD_INDEX, DTEE_ERR_RANGE};
pub use compile::{
    child_main as compiler_main, CompileSettings, CompilerError, COMPILE_SUBCOMMAND,
};
pub use engine::EPOCH_TICK;
pub use limits::HostState;

use cache::ModuleCache;
use engine::EpochTicker;

/// A compiled and linked kernel, or the deterministic reason it cannot run.
pub type Prepared = super::Prepared<InstancePre<HostState>>;

/// The WebAssembly backend. Cheap to share behind an `Arc`.
///
pub struct WasmBackend {
    /// The engine every kernel is compiled for and run in.
    engine: Engine,
    /// The host ABI, linked into every module at compilation.
    linker: Linker<HostState>,
    /// Compiled modules (or their deterministic failures) by digest.
    cache: Mutex<ModuleCache<InstancePre<HostState>>>,
    /// How kernels are compiled, and within which bounds.
    compile: CompileSettings,
    /// Advances the engine's epoch until the backend is dropped.
    _ticker: EpochTicker,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend").finish_non_exhaustive()
    }
}

impl WasmBackend {
    /// Creates the engine, the linker with the host ABI, and the epoch ticker.
    /// Compiled modules are cached up to `module_cache_size` of them and `module_cache_bytes`
    /// in all; kernels are compiled within `compile`'s bounds.
    pub fn new(
        module_cache_size: usize,
        module_cache_bytes: usize,
        compile: CompileSettings,
    ) -> anyhow::Result<WasmBackend> {
        let engine = engine::new_engine()?;
        let mut linker = Linker::new(&engine);
        abi::define(&mut linker)
            .map_err(|error| anyhow::anyhow!("defining the host ABI: {error}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(WasmBackend {
            engine,
            linker,
            cache: Mutex::new(ModuleCache::new(module_cache_size, module_cache_bytes)),
            compile,
            _ticker: ticker,
        })
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
        Ok(match compile::in_child(program, &self.compile, bytes)? {
            compile::Compiled::Artefact(artefact) => {
                self.link(&compile::load(&self.engine, &artefact)?)
            }
            compile::Compiled::Invalid(message) => Err(invalid(message)),
            compile::Compiled::LimitExceeded(message) => Err(KernelError::before_run(
                ErrorCode::KernelCompileLimitExceeded,
                message,
            )),
        })
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

    fn cached(&self, digest: &Digest) -> Option<Arc<Prepared>> {
        self.cache.lock().expect("module cache lock").get(digest)
    }

    fn prepare(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Prepared>, PrepareError> {
        let prepared = Arc::new(self.compile(bytes).map_err(|error| PrepareError {
            backend: "wasm",
            source: Box::new(error),
        })?);
        // Compile-limit failures are cached too: the worker spends its bound once per digest.
        let size = cached_size(&prepared, bytes.len());
        self.cache.lock().expect("module cache lock").insert(
            digest.clone(),
            Arc::clone(&prepared),
            size,
        );
        Ok(prepared)
    }

    /// Runs one invocation to completion or to its first failure. Blocking: call from a
    /// blocking thread.
    fn run(
        &self,
        prepared: &InstancePre<HostState>,
        invocation: &Invocation,
    ) -> Result<Completed, KernelError> {
        let limits = invocation.limits;
        let mut store = Store::new(&self.engine, HostState::new(invocation));
        store.limiter(|state| state);
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        store.set_epoch_deadline(engine::deadline_ticks(limits.timeout_ms));
        store.epoch_deadline_trap();

        let started = Instant::now();
        let outcome = call_entry(&mut store, prepared, &invocation.entry);
        let wall_time = started.elapsed();

        let fuel_left = store.get_fuel().unwrap_or(0);
        let state = store.into_data();
        let usage = ResourceUsage {
            fuel_consumed: limits.fuel.saturating_sub(fuel_left),
            peak_memory_bytes: state.peak_memory,
            wall_time_us: wall_time.as_micros() as u64,
            output_bytes: state.output_used,
        };
        let (code, message) = match outcome {
            Ok(0) => {
                return Ok(Completed {
                    written: state.into_written(),
                    usage,
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
mod tests {
    use super::*;
    use crate::backend::Slot;
    use dtee_schemas::result::EffectiveLimits;

    fn kernel(name: &str) -> Vec<u8> {
        let path = format!("{}/../kernels/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    fn run(name: &str, entry: &str, limits: EffectiveLimits) -> Result<Completed, KernelError> {
        let backend = WasmBackend::new(4, usize::MAX, CompileSettings::in_process()).unwrap();
        let bytes = kernel(name);
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes).unwrap();
        let Ok(prepared) = prepared.as_ref() else {
            panic!("{name} does not compile")
        };
        let invocation = Invocation {
            entry: entry.to_owned(),
            slots: vec![],
            params: vec![],
            limits,
        };
        backend.run(prepared, &invocation)
    }

    const LIMITS: EffectiveLimits = EffectiveLimits {
        timeout_ms: 10_000,
        memory_bytes: 1 << 24,
        fuel: 1 << 40,
        output_bytes: 1 << 20,
    };

    #[test]
    fn a_timed_out_kernel_stops_at_its_deadline() {
        let error = run(
            "spin",
            "spin",
            EffectiveLimits {
                timeout_ms: 50,
                ..LIMITS
            },
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::ExecutionTimeout);
        assert!(error.usage.wall_time_us >= 50_000, "{:?}", error.usage);
        assert!(error.usage.wall_time_us < 5_000_000, "{:?}", error.usage);
        // Wasmtime 48 does not flush its fuel counter before the epoch-deadline trap, so the
        // fuel of an interrupted run is only what was flushed at the last call: a lower bound
        // (documented on ResourceUsage::fuel_consumed).
        assert!(error.usage.fuel_consumed <= LIMITS.fuel);
    }

    #[test]
    fn a_module_without_memory_is_a_link_failure() {
        let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process()).unwrap();
        // (module (func (export "run") (result i32) i32.const 0))
        let bytes = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01,
            0x7f, 0x03, 0x02, 0x01, 0x00, 0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00,
            0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x00, 0x0b,
        ];
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes).unwrap();
        assert_eq!(
            prepared.as_ref().as_ref().err().map(|e| e.code),
            Some(ErrorCode::KernelLinkFailed)
        );
    }

    #[test]
    fn a_write_far_past_the_output_limit_traps_before_allocating() {
        // out has a huge declared size; the job's output limit is 1 MiB. flood writes 64 KiB
        // chunks until it hits the limit: it must stop at 1 MiB, not allocate the declared size.
        let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process()).unwrap();
        let bytes = kernel("flood");
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes).unwrap();
        let Ok(prepared) = prepared.as_ref() else {
            panic!("flood does not compile")
        };
        let invocation = Invocation {
            entry: "flood".to_owned(),
            slots: vec![Slot::Output {
                name: "out".to_owned(),
                capacity: 1 << 40,
            }],
            params: vec![],
            limits: EffectiveLimits {
                output_bytes: 1 << 20,
                ..LIMITS
            },
        };
        let error = backend.run(prepared, &invocation).unwrap_err();
        assert_eq!(error.code, ErrorCode::OutputLimitExceeded);
        assert!(error.usage.output_bytes <= 1 << 20, "{:?}", error.usage);
    }

    /// Runs an entry of kernels/wasm/edges.wasm with outputs `a` and `b` (1 KiB each) and a
    /// 1 KiB output limit.
    fn run_edges(entry: &str) -> Result<Completed, KernelError> {
        let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process()).unwrap();
        let bytes = kernel("edges");
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes).unwrap();
        let Ok(prepared) = prepared.as_ref() else {
            panic!("edges does not compile")
        };
        let output = |name: &str| Slot::Output {
            name: name.to_owned(),
            capacity: 1024,
        };
        let invocation = Invocation {
            entry: entry.to_owned(),
            slots: vec![output("a"), output("b")],
            params: vec![],
            limits: EffectiveLimits {
                output_bytes: 1024,
                ..LIMITS
            },
        };
        backend.run(prepared, &invocation)
    }

    #[test]
    fn shrinking_a_buffer_gives_no_output_bytes_back() {
        // 1024 bytes written to "a", "a" shrunk to 0, then 1 byte to "b": the output limit
        // counts each buffer at its largest, so the last write is past the 1024-byte limit.
        let error = run_edges("refill").unwrap_err();
        assert_eq!(
            error.code,
            ErrorCode::OutputLimitExceeded,
            "{}",
            error.message
        );
    }

    #[test]
    fn a_name_pointer_past_linear_memory_traps() {
        // buffer_find(2^31, 4): the pointer is an address like any other, past memory.
        let error = run_edges("find_high").unwrap_err();
        assert_eq!(error.code, ErrorCode::KernelTrapped, "{}", error.message);
    }

    /// Prepares (or finds) and runs a kernel through the [`Backend`] trait alone.
    fn run_through<B: Backend>(
        backend: &B,
        bytes: &[u8],
        invocation: &Invocation,
    ) -> Result<Completed, KernelError> {
        let digest = Digest::of(bytes);
        let prepared = backend
            .cached(&digest)
            .unwrap_or_else(|| backend.prepare(&digest, bytes).unwrap());
        assert!(backend.cached(&digest).is_some(), "prepare caches");
        backend.run(
            prepared.as_ref().as_ref().map_err(Clone::clone)?,
            invocation,
        )
    }

    #[test]
    fn echo_through_the_backend_trait_copies_its_input() {
        let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process()).unwrap();
        assert_eq!(
            (backend.name(), backend.format()),
            ("wasm", KernelFormat::Wasm)
        );
        let bytes = kernel("echo");
        let data: Arc<[u8]> = Arc::from(&b"hello, kernel"[..]);
        let mut invocation = Invocation {
            entry: "echo".to_owned(),
            slots: vec![
                Slot::Input {
                    name: "in".to_owned(),
                    data: Arc::clone(&data),
                },
                Slot::Output {
                    name: "out".to_owned(),
                    capacity: 64,
                },
            ],
            params: vec![],
            limits: LIMITS,
        };
        let completed = run_through(&backend, &bytes, &invocation).unwrap();
        assert_eq!(completed.written, vec![None, Some(data.to_vec())]);
        assert_eq!(completed.usage.output_bytes, data.len() as u64);

        // "in" as an output: buffer_read answers DTEE_ERR_ACCESS and echo returns 3.
        invocation.slots[0] = Slot::Output {
            name: "in".to_owned(),
            capacity: 64,
        };
        let error = run_through(&backend, &bytes, &invocation).unwrap_err();
        assert_eq!(error.code, ErrorCode::KernelFailed);
        assert_eq!(error.message, "the kernel returned status 3");
    }

    #[test]
    fn the_cache_keeps_a_deterministic_failure() {
        let backend = WasmBackend::new(1, usize::MAX, CompileSettings::in_process()).unwrap();
        let digest = Digest::of(b"junk");
        let prepared = backend.prepare(&digest, b"junk").unwrap();
        assert_eq!(
            prepared.as_ref().as_ref().err().map(|e| e.code),
            Some(ErrorCode::KernelInvalid)
        );
        assert!(backend.cached(&digest).is_some());
        // Capacity 1: a second module evicts the first.
        backend.prepare(&Digest::of(b"other"), b"other").unwrap();
        assert!(backend.cached(&digest).is_none());
    }

    #[test]
    fn the_module_cache_is_bounded_in_bytes_of_compiled_modules() {
        let bytes = kernel("echo");
        let probe = WasmBackend::new(16, usize::MAX, CompileSettings::in_process()).unwrap();
        let size = cached_size(
            &probe.prepare(&Digest::of(b"probe"), &bytes).unwrap(),
            bytes.len(),
        );
        assert!(size > bytes.len(), "a compiled module has an image: {size}");
        // Room for two and a half compiled copies (under different digests): a third evicts
        // the least recently used, although the count bound (16) is far away.
        let backend = WasmBackend::new(16, size * 5 / 2, CompileSettings::in_process()).unwrap();
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        assert!(backend.prepare(&a, &bytes).is_ok());
        assert!(backend.prepare(&b, &bytes).is_ok());
        assert!(
            backend.cached(&a).is_some(),
            "using a leaves b least recently used"
        );
        assert!(backend.prepare(&c, &bytes).is_ok());
        assert!(backend.cached(&b).is_none(), "b was evicted");
        assert!(backend.cached(&a).is_some() && backend.cached(&c).is_some());
        assert_eq!(backend.cache.lock().unwrap().bytes(), 2 * size);
        // A module larger than the whole budget runs but is not kept.
        let small = WasmBackend::new(16, size - 1, CompileSettings::in_process()).unwrap();
        assert!(small.prepare(&a, &bytes).is_ok());
        assert!(small.cached(&a).is_none());
    }
}
