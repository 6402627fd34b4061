//! The Wasmtime engine every kernel runs in, and the thread that advances its epoch.
//!
//! The engine meters fuel and interrupts on epochs; its other settings make a kernel's result
//! independent of the host CPU. The wall-clock limit is an epoch deadline, so it is enforced to
//! the granularity of [`EPOCH_TICK`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances; the wall-clock limit is enforced to this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The largest stack a kernel may use, in bytes (deeper recursion traps).
const MAX_WASM_STACK: usize = 1 << 20;

/// A new engine with fuel, epoch interruption and deterministic floating point.
pub(super) fn new_engine() -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        // Deterministic NaN bit patterns, so a result does not depend on the host CPU.
        .cranelift_nan_canonicalization(true)
        // Relaxed SIMD with one deterministic semantics on every host.
        .relaxed_simd_deterministic(true)
        .max_wasm_stack(MAX_WASM_STACK);
    Engine::new(&config).map_err(|error| anyhow::anyhow!("creating the wasmtime engine: {error}"))
}

/// The epoch deadline, in ticks from now, for a wall-clock limit of `timeout_ms`: rounded up,
/// plus one tick because the current tick is already partly over.
pub(super) fn deadline_ticks(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct EpochTicker {
    /// Set on drop; the thread checks it every tick.
    stop: Arc<AtomicBool>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub(super) fn start(engine: Engine) -> EpochTicker {
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
