//! What a kernel's store holds ([`HostState`]), the limits checked against it, and how a stopped
//! kernel's trap becomes a stable [`ErrorCode`].
//!
//! Each limit has its own code:
//! - fuel (`fuel_exhausted`): Wasmtime's fuel metering ([`Trap::OutOfFuel`]);
//! - wall-clock time (`execution_timeout`): the epoch deadline ([`Trap::Interrupt`]);
//! - linear memory (`memory_limit_exceeded`): the [`ResourceLimiter`] here, which traps a
//!   `memory.grow` past the limit (and records the peak);
//! - output bytes (`output_limit_exceeded`): [`HostState::charge`] and
//!   [`HostState::check_capacity`], called by the host ABI on every write before it allocates.
//!
//! A host check that trips records its [`HostTrap`] in the state: that first reason wins over
//! whatever trap Wasmtime reports as the kernel unwinds.

use std::sync::Arc;

use dtee_schemas::job::AccessMode;
use dtee_schemas::run::EffectiveLimits;
use dtee_schemas::ErrorCode;
use wasmtime::{ResourceLimiter, Trap};

use super::engine::HostDeadline;
use crate::backend::{Invocation, Slot};

/// The most elements a kernel's tables may grow to.
pub(super) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The most tables a kernel may define.
pub(super) const MAX_TABLES: usize = 4;

/// Host-side reasons to stop a kernel; they become traps carrying this value.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum HostTrap {
    /// A write past one buffer's capacity.
    #[error("output {name:?} holds at most {capacity} bytes; the kernel wrote up to byte {end}")]
    OutputCapacity {
        /// The buffer.
        name: String,
        /// Its capacity.
        capacity: u64,
        /// The end offset the kernel asked for.
        end: u64,
    },
    /// Writes past the job's output limit, all buffers together.
    #[error("the job's output limit of {limit} bytes was exceeded")]
    OutputLimit {
        /// The job's output limit.
        limit: u64,
    },
    /// A `memory.grow` past the job's memory limit.
    #[error("linear memory limit of {limit} bytes exceeded (asked for {desired})")]
    MemoryLimit {
        /// The job's memory limit.
        limit: u64,
        /// The size the kernel asked for.
        desired: u64,
    },
    /// A host function needed the kernel's memory, and the module exports none.
    #[error("the module does not export a memory named \"memory\"")]
    NoMemory,
    /// `param_i64` or `param_f64` of an index that names no parameter.
    #[error("parameter index {0} does not exist")]
    BadParam(i32),
}

impl HostTrap {
    /// The code a job stopped by this trap fails with.
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
pub(super) struct HostSlot {
    /// Buffer name, as `buffer_find` matches it.
    pub(super) name: String,
    /// Bytes the kernel may read, if readable.
    pub(super) readable: Option<Arc<[u8]>>,
    /// Largest length the kernel may write, if writable.
    pub(super) capacity: Option<u64>,
    /// Whether writes start from the readable value (read_write) or from empty.
    copy_on_write: bool,
    /// The bytes written, once the kernel wrote.
    written: Option<Vec<u8>>,
}

impl HostSlot {
    /// The slot a kernel sees for one buffer of the invocation.
    fn new(slot: &Slot) -> HostSlot {
        let (readable, capacity, copy_on_write) = match slot {
            Slot::Input { data, .. } => (Some(Arc::clone(data)), None, false),
            Slot::Output { capacity, .. } => (None, Some(*capacity), false),
            Slot::State {
                mode,
                current,
                capacity,
                ..
            } => (
                matches!(mode, AccessMode::ReadOnly | AccessMode::ReadWrite)
                    .then(|| Arc::clone(current)),
                (*mode != AccessMode::ReadOnly).then_some(*capacity),
                *mode == AccessMode::ReadWrite,
            ),
        };
        HostSlot {
            name: slot.name().to_owned(),
            readable,
            capacity,
            copy_on_write,
            written: None,
        }
    }
}

/// A scalar parameter as the host ABI hands it out.
#[derive(Debug)]
pub(super) struct HostParam {
    /// Parameter name, as `param_find` matches it.
    pub(super) name: String,
    /// The value for `param_i64` (a float truncated toward zero).
    pub(super) int: i64,
    /// The value for `param_f64`.
    pub(super) float: f64,
}

/// The store's data: buffers, parameters, limits and what was used (opaque outside this module).
#[derive(Debug)]
pub struct HostState {
    /// The job's buffers, in job order: a buffer's index is its position.
    pub(super) slots: Vec<HostSlot>,
    /// The job's scalars, in job order.
    pub(super) params: Vec<HostParam>,
    /// The job's linear memory limit, bytes.
    memory_limit: u64,
    /// The largest linear memory size granted, bytes.
    pub(super) peak_memory: u64,
    /// The job's output limit, bytes.
    output_limit: u64,
    /// Output bytes charged so far.
    pub(super) output_used: u64,
    /// The first limit a host check tripped; it wins over whatever trap follows.
    tripped: Option<HostTrap>,
    /// The run's wall-clock deadline (`None`: unchecked, for runs outside a backend). Wasmtime
    /// checks its epoch deadline at function entries and loop heads, not when a host call
    /// returns, so every host function checks this one first: straight-line host calls cannot
    /// run past the limit by more than one call's work.
    pub(super) deadline: Option<HostDeadline>,
}

impl HostState {
    /// The state for one run of `invocation` within `limits`.
    pub(super) fn new(invocation: &Invocation, limits: EffectiveLimits) -> HostState {
        HostState {
            slots: invocation.slots.iter().map(HostSlot::new).collect(),
            params: invocation
                .params
                .iter()
                .map(|param| HostParam {
                    name: param.name.clone(),
                    int: param.value as i64,
                    float: param.value,
                })
                .collect(),
            memory_limit: limits.memory_bytes,
            peak_memory: 0,
            output_limit: limits.output_bytes,
            output_used: 0,
            tripped: None,
            deadline: None,
        }
    }

    /// Traps with the wall-clock deadline's trap (`execution_timeout`) once it has passed.
    pub(super) fn check_deadline(&self) -> wasmtime::Result<()> {
        match &self.deadline {
            Some(deadline) if deadline.passed() => Err(wasmtime::Error::new(Trap::Interrupt)),
            _ => Ok(()),
        }
    }

    /// What each slot wrote, in slot order.
    pub(super) fn into_written(self) -> Vec<Option<Vec<u8>>> {
        self.slots.into_iter().map(|slot| slot.written).collect()
    }

    /// The length of a writable slot's write image: what it wrote so far, or for read_write
    /// state the value it starts from.
    pub(super) fn image_len(&self, idx: usize) -> u64 {
        let slot = &self.slots[idx];
        match (&slot.written, &slot.readable, slot.copy_on_write) {
            (Some(image), _, _) => image.len() as u64,
            (None, Some(bytes), true) => bytes.len() as u64,
            _ => 0,
        }
    }

    /// The write image of a writable slot, created on first use.
    pub(super) fn image_mut(&mut self, idx: usize) -> &mut Vec<u8> {
        let slot = &mut self.slots[idx];
        slot.written
            .get_or_insert_with(|| match (&slot.readable, slot.copy_on_write) {
                (Some(bytes), true) => bytes.to_vec(),
                _ => Vec::new(),
            })
    }

    /// Sets a writable slot's write image to `len` bytes: its first `len` bytes (of what it
    /// wrote, or of the read_write value it starts from, copying no more), zero-filled beyond.
    pub(super) fn image_of_len(&mut self, idx: usize, len: usize) {
        let slot = &mut self.slots[idx];
        let image =
            slot.written
                .get_or_insert_with(|| match (&slot.readable, slot.copy_on_write) {
                    (Some(bytes), true) => bytes[..len.min(bytes.len())].to_vec(),
                    _ => Vec::new(),
                });
        image.resize(len, 0);
    }

    /// Trips the buffer's capacity when `end` lies past it.
    pub(super) fn check_capacity(
        &mut self,
        idx: usize,
        capacity: u64,
        end: u64,
    ) -> wasmtime::Result<()> {
        if end > capacity {
            let name = self.slots[idx].name.clone();
            return Err(self.trip(HostTrap::OutputCapacity {
                name,
                capacity,
                end,
            }));
        }
        Ok(())
    }

    /// Counts `growth` more output bytes against the job's output limit, or trips it.
    pub(super) fn charge(&mut self, growth: u64) -> wasmtime::Result<()> {
        if self.output_used.saturating_add(growth) > self.output_limit {
            let limit = self.output_limit;
            return Err(self.trip(HostTrap::OutputLimit { limit }));
        }
        self.output_used += growth;
        Ok(())
    }

    /// Records `trap` (unless an earlier one was recorded) and returns it as a Wasmtime error,
    /// which stops the kernel.
    pub(super) fn trip(&mut self, trap: HostTrap) -> wasmtime::Error {
        if self.tripped.is_none() {
            self.tripped = Some(trap.clone());
        }
        wasmtime::Error::new(trap)
    }

    /// The code and message of a run that stopped with `error`: the first limit a host check
    /// tripped, else the trap Wasmtime reports.
    pub(super) fn classify(&self, error: &wasmtime::Error) -> (ErrorCode, String) {
        if let Some(trap) = &self.tripped {
            return (trap.code(), trap.to_string());
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => (
                ErrorCode::FuelExhausted,
                "the kernel used all its fuel".to_owned(),
            ),
            Some(Trap::Interrupt) => (
                ErrorCode::ExecutionTimeout,
                "the wall-clock deadline passed".to_owned(),
            ),
            Some(other) => (
                ErrorCode::KernelTrapped,
                format!("the kernel trapped: {other}"),
            ),
            // Every pool slot is taken: the worker's fault, not the kernel's (not final).
            None if error.is::<wasmtime::PoolConcurrencyLimitError>() => (
                ErrorCode::InternalError,
                format!("the worker had no free instance slot: {error:#}"),
            ),
            None => (
                ErrorCode::KernelTrapped,
                format!("the kernel failed: {error:#}"),
            ),
        }
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
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        1
    }
}
