//! The Wasmtime engine every kernel runs in, and the thread that advances its epoch while
//! kernels run.
//!
//! The engine meters fuel and interrupts on epochs; its other settings make a kernel's result
//! independent of the host CPU. The wall-clock limit is an epoch deadline, so it is enforced to
//! the granularity of [`EPOCH_TICK`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dtee_schemas::job::WasmProfile;
use wasmtime::Engine;

use super::limits::{MAX_TABLES, MAX_TABLE_ELEMENTS};

/// How often the epoch advances; the wall-clock limit is enforced to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The largest stack a kernel may use, in bytes (deeper recursion traps).
const MAX_WASM_STACK: usize = 1 << 20;

/// Bytes of a kernel's linear memory that are zeroed with `memset` when its run ends (the rest
/// is reset with `madvise`): most kernels touch less than this, so a pool slot is reused with no
/// system call.
const KEEP_RESIDENT_BYTES: usize = 256 << 10;

/// The largest instance state (Wasmtime's `VMContext`) a kernel may need, in bytes: reserved per
/// pool slot. A module too large for it is refused when it is loaded.
const MAX_INSTANCE_BYTES: usize = 4 << 20;

/// A new engine for `profile`, with epoch interruption.
///
/// With `pool_slots`, kernels are instantiated from a pool of that many slots, each with its
/// linear memory and tables reserved when the engine is made: instantiating is then a matter of
/// resetting a slot, instead of mapping, protecting and unmapping memory for every run
/// (measured: 28 µs less worker CPU per trivial job). A slot's memory is zeroed before it is
/// used again, so nothing of one run is seen by the next. The compiler child makes its engine
/// without a pool (its address space is limited; compiling instantiates nothing).
///
/// The `deterministic` profile meters fuel and canonicalises NaN results, so a result does not
/// depend on the host CPU; `fast` does neither (the epoch deadline still bounds a run). In
/// tight float loops the two costs compound (loadtest/kernels.sh: matmul 1.7× native with both,
/// 1.7× without fuel alone, 1.37× without canonicalisation alone, 1.15× without either).
pub(super) fn new_engine(pool_slots: Option<u32>, profile: WasmProfile) -> anyhow::Result<Engine> {
    let deterministic = profile == WasmProfile::Deterministic;
    let mut config = wasmtime::Config::new();
    config
        .consume_fuel(deterministic)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(deterministic)
        // Relaxed SIMD with one deterministic semantics on every host.
        .relaxed_simd_deterministic(true)
        .max_wasm_stack(MAX_WASM_STACK);
    if let Some(slots) = pool_slots {
        let tables = u32::try_from(MAX_TABLES).unwrap_or(u32::MAX);
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots.saturating_mul(tables))
            .max_memories_per_module(1)
            .max_tables_per_module(tables)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_core_instance_size(MAX_INSTANCE_BYTES)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            // Reuse warm slots, whichever kernel used them last, before touching a cold one:
            // as few slots resident as runs at once.
            .max_unused_warm_slots(0);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|error| anyhow::anyhow!("creating the wasmtime engine: {error}"))
}

/// The epoch deadline, in ticks from now, for a wall-clock limit of `timeout_ms`: rounded up,
/// plus one tick because the current tick is already partly over.
pub(super) fn deadline_ticks(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Ticks in a row with no kernel running (and none started) after which the ticker parks until
/// one starts: an idle worker does not wake every [`EPOCH_TICK`] (measured: 1.5–1.8 % of a core
/// on this machine, for nothing), and a busy one never parks, so starting a kernel costs no
/// wake-up while jobs keep coming.
const IDLE_TICKS_BEFORE_PARKING: u32 = 50;

/// What the ticker thread and the runs share.
#[derive(Default)]
struct Shared {
    /// Ticks so far: the engine's epoch, as the host functions can read it.
    ticks: Arc<AtomicU64>,
    /// Kernels running now.
    running: AtomicUsize,
    /// Kernels started so far (activity between two ticks).
    started: AtomicU64,
    /// The thread is parked, or about to: a run that starts must wake it.
    parked: AtomicBool,
    /// Set on drop.
    stop: AtomicBool,
    /// Held while parking and while waking the thread, so no wake-up is lost.
    lock: Mutex<()>,
    wake: Condvar,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while kernels run, until dropped.
pub(super) struct EpochTicker {
    shared: Arc<Shared>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

/// A kernel run in progress ([`EpochTicker::running`]): the epoch advances while one exists.
pub(super) struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub(super) fn start(engine: Engine) -> EpochTicker {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dtee-epoch".to_owned())
            .spawn(move || tick(&engine, &thread_shared))
            .expect("spawning the epoch thread");
        EpochTicker {
            shared,
            thread: Some(thread),
        }
    }

    /// Marks a kernel run as started, waking the ticker if it parked; hold the guard until the
    /// run ends. Take it before setting the run's epoch deadline.
    pub(super) fn running(&self) -> Running<'_> {
        let shared = &*self.shared;
        shared.started.fetch_add(1, Ordering::Relaxed);
        // SeqCst with the thread's store of `parked` and load of `running`: either this sees
        // `parked` and wakes it, or it sees this run and does not wait.
        shared.running.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) {
            let _lock = shared
                .lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shared.wake.notify_one();
        }
        Running(shared)
    }

    /// The deadline a run of `timeout_ms` that starts now has, for the host functions: the
    /// same tick as the engine's epoch deadline ([`deadline_ticks`]). Take it while holding
    /// [`EpochTicker::running`], as the epoch deadline.
    pub(super) fn host_deadline(&self, timeout_ms: u64) -> HostDeadline {
        let ticks = Arc::clone(&self.shared.ticks);
        let at = ticks
            .load(Ordering::Acquire)
            .saturating_add(deadline_ticks(timeout_ms));
        HostDeadline { ticks, at }
    }

    /// Whether the thread is parked (tests).
    #[cfg(test)]
    pub(super) fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }
}

/// A run's wall-clock deadline as host functions check it: one atomic load, where reading the
/// clock would cost 20 ns a call (measured here), as much again as a host call itself.
#[derive(Debug, Clone)]
pub(super) struct HostDeadline {
    ticks: Arc<AtomicU64>,
    at: u64,
}

impl HostDeadline {
    /// Whether the deadline has passed.
    pub(super) fn passed(&self) -> bool {
        self.ticks.load(Ordering::Acquire) >= self.at
    }
}

/// The ticker thread: advances the epoch every tick, and parks after a while with no run.
fn tick(engine: &Engine, shared: &Shared) {
    let mut idle = 0;
    let mut seen = shared.started.load(Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        shared.ticks.fetch_add(1, Ordering::Release);
        let started = shared.started.load(Ordering::Relaxed);
        if shared.running.load(Ordering::SeqCst) > 0 || started != seen {
            idle = 0;
            seen = started;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS_BEFORE_PARKING {
            continue;
        }
        let mut lock = shared
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.parked.store(true, Ordering::SeqCst);
        while shared.running.load(Ordering::SeqCst) == 0 && !shared.stop.load(Ordering::SeqCst) {
            lock = shared
                .wake
                .wait(lock)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        shared.parked.store(false, Ordering::SeqCst);
        drop(lock);
        idle = 0;
        seen = shared.started.load(Ordering::Relaxed);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _lock = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.shared.wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
