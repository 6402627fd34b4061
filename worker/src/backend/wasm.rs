//! The WebAssembly backend: Wasmtime with no WASI and no ambient access.
//!
//! The kernel reaches its buffers and parameters only through the host ABI of
//! schemas/KERNEL_ABI.md (imports from module `dtee`). Every limit is enforced while the kernel
//! runs, and each has its own error code:
//! - fuel (`fuel_exhausted`): Wasmtime's fuel metering;
//! - wall-clock time (`execution_timeout`): epoch interruption, with one ticker thread per
//!   backend advancing the epoch every [`EPOCH_TICK`];
//! - linear memory (`memory_limit_exceeded`): a [`wasmtime::ResourceLimiter`] that traps a
//!   `memory.grow` past the limit (and records the peak);
//! - output bytes (`output_limit_exceeded`): checked by the host on every write.
//!
//! Compiled modules are cached by digest, already linked ([`InstancePre`]), so a cached kernel
//! costs one instantiation per job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dtee_schemas::job::AccessMode;
use dtee_schemas::result::ResourceUsage;
use dtee_schemas::{Digest, ErrorCode};
use wasmtime::{
    Caller, Engine, Extern, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap, Val,
    ValType,
};

use super::{Completed, Invocation, KernelError, Slot};

/// How often the epoch advances; the wall-clock limit is enforced to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Host-side reasons to stop a kernel; they become traps carrying this value.
#[derive(Debug, Clone, thiserror::Error)]
enum HostTrap {
    #[error("output {name:?} holds at most {capacity} bytes; the kernel wrote up to byte {end}")]
    OutputCapacity {
        name: String,
        capacity: u64,
        end: u64,
    },
    #[error("the job's output limit of {limit} bytes was exceeded")]
    OutputLimit { limit: u64 },
    #[error("linear memory limit of {limit} bytes exceeded (asked for {desired})")]
    MemoryLimit { limit: u64, desired: u64 },
    #[error("the module does not export a memory named \"memory\"")]
    NoMemory,
    #[error("parameter index {0} does not exist")]
    BadParam(i32),
}

impl HostTrap {
    fn code(&self) -> ErrorCode {
        match self {
            HostTrap::OutputCapacity { .. } | HostTrap::OutputLimit { .. } => {
                ErrorCode::OutputLimitExceeded
            }
            HostTrap::MemoryLimit { .. } => ErrorCode::MemoryLimitExceeded,
            HostTrap::NoMemory | HostTrap::BadParam(_) => ErrorCode::KernelTrapped,
        }
    }
}

/// A buffer inside the store.
#[derive(Debug)]
struct HostSlot {
    name: String,
    /// Bytes the kernel may read, if readable.
    readable: Option<Arc<[u8]>>,
    /// Largest length the kernel may write, if writable.
    capacity: Option<u64>,
    /// Whether writes start from the readable value (read_write) or from empty.
    copy_on_write: bool,
    /// The bytes written, once the kernel wrote.
    written: Option<Vec<u8>>,
}

/// The store's data: buffers, parameters, limits and what was used (opaque outside this module).
#[derive(Debug)]
pub struct HostState {
    slots: Vec<HostSlot>,
    params: Vec<(String, i64, f64)>,
    memory_limit: u64,
    peak_memory: u64,
    output_limit: u64,
    output_used: u64,
    /// The first limit a host check tripped; it wins over whatever trap follows.
    tripped: Option<HostTrap>,
}

impl HostState {
    /// The length of a writable slot's write image: what it wrote so far, or for read_write
    /// state the value it starts from.
    fn image_len(&self, idx: usize) -> u64 {
        let slot = &self.slots[idx];
        match (&slot.written, &slot.readable, slot.copy_on_write) {
            (Some(image), _, _) => image.len() as u64,
            (None, Some(bytes), true) => bytes.len() as u64,
            _ => 0,
        }
    }

    /// The write image of a writable slot, created on first use.
    fn image_mut(&mut self, idx: usize) -> &mut Vec<u8> {
        let slot = &mut self.slots[idx];
        slot.written
            .get_or_insert_with(|| match (&slot.readable, slot.copy_on_write) {
                (Some(bytes), true) => bytes.to_vec(),
                _ => Vec::new(),
            })
    }

    /// Counts `growth` more output bytes against the job's output limit, or trips it.
    fn charge(&mut self, growth: u64) -> wasmtime::Result<()> {
        if self.output_used.saturating_add(growth) > self.output_limit {
            let limit = self.output_limit;
            return Err(self.trip(HostTrap::OutputLimit { limit }));
        }
        self.output_used += growth;
        Ok(())
    }

    fn trip(&mut self, trap: HostTrap) -> wasmtime::Error {
        if self.tripped.is_none() {
            self.tripped = Some(trap.clone());
        }
        wasmtime::Error::new(trap)
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_limit {
            return Err(self.trip(HostTrap::MemoryLimit {
                limit: self.memory_limit,
                desired,
            }));
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dtee-epoch".to_owned())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A compiled and linked kernel, or the deterministic reason it cannot run.
pub type Prepared = Result<Kernel, KernelError>;

/// A compiled, linked kernel, ready to instantiate.
pub type Kernel = InstancePre<HostState>;

/// The WebAssembly backend. Cheap to share behind an `Arc`.
pub struct WasmBackend {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Mutex<ModuleCache>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend").finish_non_exhaustive()
    }
}

/// Compiled modules by digest, least recently used evicted first.
struct ModuleCache {
    capacity: usize,
    clock: u64,
    entries: HashMap<Digest, (Arc<Prepared>, u64)>,
}

impl ModuleCache {
    fn get(&mut self, digest: &Digest) -> Option<Arc<Prepared>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(digest).map(|(prepared, used)| {
            *used = clock;
            Arc::clone(prepared)
        })
    }

    fn insert(&mut self, digest: Digest, prepared: Arc<Prepared>) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(digest, (prepared, self.clock));
    }
}

fn memory_of(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(caller.data_mut().trip(HostTrap::NoMemory)),
    }
}

fn read_name(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Option<String>> {
    let memory = memory_of(caller)?;
    let (Ok(ptr), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return Ok(None);
    };
    if len > 256 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len];
    memory.read(&*caller, ptr, &mut bytes)?;
    Ok(String::from_utf8(bytes).ok())
}

fn define_host_abi(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "dtee",
        "buffer_find",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let Some(name) = read_name(&mut caller, ptr, len)? else {
                return Ok(-1);
            };
            Ok(caller
                .data()
                .slots
                .iter()
                .position(|slot| slot.name == name)
                .map_or(-1, |idx| idx as i32))
        },
    )?;
    linker.func_wrap(
        "dtee",
        "buffer_len",
        |caller: Caller<'_, HostState>, idx: i32| -> i64 {
            let Some(slot) = usize::try_from(idx)
                .ok()
                .and_then(|idx| caller.data().slots.get(idx))
            else {
                return -1;
            };
            match (&slot.readable, slot.capacity) {
                (Some(bytes), _) => bytes.len() as i64,
                (None, Some(capacity)) => capacity.min(i64::MAX as u64) as i64,
                (None, None) => -1,
            }
        },
    )?;
    linker.func_wrap(
        "dtee",
        "buffer_read",
        |mut caller: Caller<'_, HostState>,
         idx: i32,
         offset: i64,
         dst: i32,
         len: i32|
         -> wasmtime::Result<i32> {
            let memory = memory_of(&mut caller)?;
            let (mem, state) = memory.data_and_store_mut(&mut caller);
            let Some(slot) = usize::try_from(idx)
                .ok()
                .and_then(|idx| state.slots.get(idx))
            else {
                return Ok(-1);
            };
            let Some(bytes) = &slot.readable else {
                return Ok(-2);
            };
            let (Ok(offset), Ok(len), Ok(dst)) = (
                usize::try_from(offset),
                usize::try_from(len),
                usize::try_from(dst as u32),
            ) else {
                return Ok(-3);
            };
            if offset > bytes.len() {
                return Ok(-3);
            }
            let count = len.min(bytes.len() - offset);
            let target = mem
                .get_mut(dst..dst.saturating_add(count))
                .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
            target.copy_from_slice(&bytes[offset..offset + count]);
            Ok(count as i32)
        },
    )?;
    linker.func_wrap(
        "dtee",
        "buffer_write",
        |mut caller: Caller<'_, HostState>,
         idx: i32,
         offset: i64,
         src: i32,
         len: i32|
         -> wasmtime::Result<i32> {
            let memory = memory_of(&mut caller)?;
            let (mem, state) = memory.data_and_store_mut(&mut caller);
            let Some(slot_idx) = usize::try_from(idx)
                .ok()
                .filter(|idx| *idx < state.slots.len())
            else {
                return Ok(-1);
            };
            let Some(capacity) = state.slots[slot_idx].capacity else {
                return Ok(-2);
            };
            let (Ok(offset), Ok(len), Ok(src)) = (
                u64::try_from(offset),
                usize::try_from(len),
                usize::try_from(src as u32),
            ) else {
                return Ok(-3);
            };
            let end = offset.saturating_add(len as u64);
            if end > capacity {
                let name = state.slots[slot_idx].name.clone();
                return Err(state.trip(HostTrap::OutputCapacity {
                    name,
                    capacity,
                    end,
                }));
            }
            let source = mem
                .get(src..src.saturating_add(len))
                .ok_or_else(|| wasmtime::Error::new(Trap::MemoryOutOfBounds))?;
            // Charge the output limit before allocating anything.
            let before = state.image_len(slot_idx);
            state.charge(end.saturating_sub(before))?;
            let image = state.image_mut(slot_idx);
            if end > before {
                image.resize(end as usize, 0);
            }
            image[offset as usize..end as usize].copy_from_slice(source);
            Ok(len as i32)
        },
    )?;
    linker.func_wrap(
        "dtee",
        "buffer_set_len",
        |mut caller: Caller<'_, HostState>, idx: i32, len: i64| -> wasmtime::Result<i32> {
            let state = caller.data_mut();
            let Some(slot_idx) = usize::try_from(idx)
                .ok()
                .filter(|idx| *idx < state.slots.len())
            else {
                return Ok(-1);
            };
            let Some(capacity) = state.slots[slot_idx].capacity else {
                return Ok(-2);
            };
            let Ok(len) = u64::try_from(len) else {
                return Ok(-3);
            };
            if len > capacity {
                let name = state.slots[slot_idx].name.clone();
                return Err(state.trip(HostTrap::OutputCapacity {
                    name,
                    capacity,
                    end: len,
                }));
            }
            let before = state.image_len(slot_idx);
            // Output bytes count what was written at its largest: shrinking refunds nothing
            // (a read_write image starts from a value that was never charged).
            if len > before {
                state.charge(len - before)?;
            }
            state.image_mut(slot_idx).resize(len as usize, 0);
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "dtee",
        "param_find",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let Some(name) = read_name(&mut caller, ptr, len)? else {
                return Ok(-1);
            };
            Ok(caller
                .data()
                .params
                .iter()
                .position(|(param, _, _)| *param == name)
                .map_or(-1, |idx| idx as i32))
        },
    )?;
    linker.func_wrap(
        "dtee",
        "param_i64",
        |mut caller: Caller<'_, HostState>, idx: i32| -> wasmtime::Result<i64> {
            match usize::try_from(idx)
                .ok()
                .and_then(|idx| caller.data().params.get(idx))
            {
                Some((_, int, _)) => Ok(*int),
                None => Err(caller.data_mut().trip(HostTrap::BadParam(idx))),
            }
        },
    )?;
    linker.func_wrap(
        "dtee",
        "param_f64",
        |mut caller: Caller<'_, HostState>, idx: i32| -> wasmtime::Result<f64> {
            match usize::try_from(idx)
                .ok()
                .and_then(|idx| caller.data().params.get(idx))
            {
                Some((_, _, float)) => Ok(*float),
                None => Err(caller.data_mut().trip(HostTrap::BadParam(idx))),
            }
        },
    )?;
    Ok(())
}

impl WasmBackend {
    /// Creates the engine, the linker with the host ABI, and the epoch ticker.
    pub fn new(module_cache_size: usize) -> anyhow::Result<WasmBackend> {
        let mut config = wasmtime::Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            // Deterministic NaN bit patterns, so a result does not depend on the host CPU.
            .cranelift_nan_canonicalization(true)
            // Relaxed SIMD with one deterministic semantics on every host.
            .relaxed_simd_deterministic(true)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config)
            .map_err(|error| anyhow::anyhow!("creating the wasmtime engine: {error}"))?;
        let mut linker = Linker::new(&engine);
        define_host_abi(&mut linker)
            .map_err(|error| anyhow::anyhow!("defining the host ABI: {error}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(WasmBackend {
            engine,
            linker,
            cache: Mutex::new(ModuleCache {
                capacity: module_cache_size,
                clock: 0,
                entries: HashMap::new(),
            }),
            _ticker: ticker,
        })
    }

    /// The prepared kernel for `digest`, if it is cached.
    pub fn cached(&self, digest: &Digest) -> Option<Arc<Prepared>> {
        self.cache.lock().expect("module cache lock").get(digest)
    }

    /// Compiles and links `bytes` (whose digest the caller has checked) and caches the outcome,
    /// including a deterministic failure. Blocking: call from a blocking thread.
    pub fn prepare(&self, digest: &Digest, bytes: &[u8]) -> Arc<Prepared> {
        let prepared = Arc::new(self.compile(bytes));
        self.cache
            .lock()
            .expect("module cache lock")
            .insert(digest.clone(), Arc::clone(&prepared));
        prepared
    }

    fn compile(&self, bytes: &[u8]) -> Prepared {
        if wasmparser_header(bytes).is_err() {
            return Err(KernelError::before_run(
                ErrorCode::KernelInvalid,
                "the kernel is not a WebAssembly binary module (bad magic or version)",
            ));
        }
        let module = Module::new(&self.engine, bytes).map_err(|error| {
            KernelError::before_run(
                ErrorCode::KernelInvalid,
                format!("the kernel does not compile: {error}"),
            )
        })?;
        let exports_memory = module.exports().any(|export| {
            export.name() == "memory" && matches!(export.ty(), wasmtime::ExternType::Memory(_))
        });
        if !exports_memory {
            return Err(KernelError::before_run(
                ErrorCode::KernelLinkFailed,
                "the kernel must export its linear memory as \"memory\"",
            ));
        }
        self.linker.instantiate_pre(&module).map_err(|error| {
            KernelError::before_run(
                ErrorCode::KernelLinkFailed,
                format!("the kernel cannot be linked: {error}"),
            )
        })
    }

    /// Runs one invocation to completion or to its first failure. Blocking: call from a
    /// blocking thread.
    pub fn run(
        &self,
        prepared: &InstancePre<HostState>,
        invocation: &Invocation,
    ) -> Result<Completed, KernelError> {
        let limits = invocation.limits;
        let slots = invocation
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::Input { name, data } => HostSlot {
                    name: name.clone(),
                    readable: Some(Arc::clone(data)),
                    capacity: None,
                    copy_on_write: false,
                    written: None,
                },
                Slot::Output { name, capacity } => HostSlot {
                    name: name.clone(),
                    readable: None,
                    capacity: Some(*capacity),
                    copy_on_write: false,
                    written: None,
                },
                Slot::State {
                    name,
                    mode,
                    current,
                    capacity,
                } => HostSlot {
                    name: name.clone(),
                    readable: matches!(mode, AccessMode::ReadOnly | AccessMode::ReadWrite)
                        .then(|| Arc::clone(current)),
                    capacity: (*mode != AccessMode::ReadOnly).then_some(*capacity),
                    copy_on_write: *mode == AccessMode::ReadWrite,
                    written: None,
                },
            })
            .collect();
        let params = invocation
            .params
            .iter()
            .map(|param| (param.name.clone(), param.value as i64, param.value))
            .collect();
        let state = HostState {
            slots,
            params,
            memory_limit: limits.memory_bytes,
            peak_memory: 0,
            output_limit: limits.output_bytes,
            output_used: 0,
            tripped: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        store.set_epoch_deadline(limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1);
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
        match outcome {
            Ok(0) => Ok(Completed {
                written: state.slots.into_iter().map(|slot| slot.written).collect(),
                usage,
            }),
            Ok(status) => Err(KernelError {
                code: ErrorCode::KernelFailed,
                message: format!("the kernel returned status {status}"),
                usage,
            }),
            Err(error) => {
                let (code, message) = classify(&error, state.tripped.as_ref());
                Err(KernelError {
                    code,
                    message,
                    usage,
                })
            }
        }
    }
}

/// Checks the 8-byte WebAssembly header, so that random bytes get a clear message.
fn wasmparser_header(bytes: &[u8]) -> Result<(), ()> {
    match bytes.get(..8) {
        Some([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]) => Ok(()),
        _ => Err(()),
    }
}

enum CallError {
    Link(String),
    Run(wasmtime::Error),
}

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

fn classify(error: &CallError, tripped: Option<&HostTrap>) -> (ErrorCode, String) {
    let error = match error {
        CallError::Link(message) => return (ErrorCode::KernelLinkFailed, message.clone()),
        CallError::Run(error) => error,
    };
    if let Some(trap) = tripped {
        return (trap.code(), trap.to_string());
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let code = match trap {
            Trap::OutOfFuel => ErrorCode::FuelExhausted,
            Trap::Interrupt => ErrorCode::ExecutionTimeout,
            _ => ErrorCode::KernelTrapped,
        };
        let message = match trap {
            Trap::OutOfFuel => "the kernel used all its fuel".to_owned(),
            Trap::Interrupt => "the wall-clock deadline passed".to_owned(),
            other => format!("the kernel trapped: {other}"),
        };
        return (code, message);
    }
    (
        ErrorCode::KernelTrapped,
        format!("the kernel failed: {error:#}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtee_schemas::result::EffectiveLimits;

    fn kernel(name: &str) -> Vec<u8> {
        let path = format!("{}/../kernels/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    fn run(name: &str, entry: &str, limits: EffectiveLimits) -> Result<Completed, KernelError> {
        let backend = WasmBackend::new(4).unwrap();
        let bytes = kernel(name);
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes);
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
        let backend = WasmBackend::new(1).unwrap();
        // (module (func (export "run") (result i32) i32.const 0))
        let bytes = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01,
            0x7f, 0x03, 0x02, 0x01, 0x00, 0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00,
            0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x00, 0x0b,
        ];
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes);
        assert_eq!(
            prepared.as_ref().as_ref().err().map(|e| e.code),
            Some(ErrorCode::KernelLinkFailed)
        );
    }

    #[test]
    fn a_write_far_past_the_output_limit_traps_before_allocating() {
        // out has a huge declared size; the job's output limit is 1 MiB. flood writes 64 KiB
        // chunks until it hits the limit: it must stop at 1 MiB, not allocate the declared size.
        let backend = WasmBackend::new(1).unwrap();
        let bytes = kernel("flood");
        let prepared = backend.prepare(&Digest::of(&bytes), &bytes);
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

    #[test]
    fn the_cache_keeps_a_deterministic_failure() {
        let backend = WasmBackend::new(1).unwrap();
        let digest = Digest::of(b"junk");
        let prepared = backend.prepare(&digest, b"junk");
        assert_eq!(
            prepared.as_ref().as_ref().err().map(|e| e.code),
            Some(ErrorCode::KernelInvalid)
        );
        assert!(backend.cached(&digest).is_some());
        // Capacity 1: a second module evicts the first.
        backend.prepare(&Digest::of(b"other"), b"other");
        assert!(backend.cached(&digest).is_none());
    }
}
