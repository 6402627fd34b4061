//! Execution backends. A backend turns a compiled kernel, its buffers, its parameters and its
//! limits into the bytes it wrote, or an error with a stable code.
//!
//! Only the WebAssembly backend exists today; the HIP backend (GPU) will sit beside it behind
//! the cargo feature `hip`, with the same [`Invocation`] and [`Completed`] types.

use std::sync::Arc;

use dtee_schemas::job::{AccessMode, ScalarType};
use dtee_schemas::result::{EffectiveLimits, ResourceUsage};
use dtee_schemas::ErrorCode;

pub mod wasm;

/// The name of the WebAssembly backend, as results and metrics label it.
pub const WASM: &str = "wasm";

/// One buffer as a kernel sees it, in job order.
#[derive(Debug, Clone)]
pub enum Slot {
    /// Bytes the kernel may read: an input.
    Input {
        /// Buffer name.
        name: String,
        /// The bytes.
        data: Arc<[u8]>,
    },
    /// Bytes the kernel may write, up to `capacity`.
    Output {
        /// Buffer name.
        name: String,
        /// Capacity in bytes.
        capacity: u64,
    },
    /// Bound state.
    State {
        /// Buffer name.
        name: String,
        /// Access mode.
        mode: AccessMode,
        /// The value read (empty when absent or not readable).
        current: Arc<[u8]>,
        /// Largest value the kernel may write.
        capacity: u64,
    },
}

impl Slot {
    /// The buffer's name.
    pub fn name(&self) -> &str {
        match self {
            Slot::Input { name, .. } | Slot::Output { name, .. } | Slot::State { name, .. } => name,
        }
    }
}

/// A scalar parameter, converted once.
#[derive(Debug, Clone)]
pub struct ParamValue {
    /// Parameter name.
    pub name: String,
    /// Declared type.
    pub ty: ScalarType,
    /// The value as the job gave it.
    pub value: f64,
}

/// Everything a backend needs to run one kernel once.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Exported function to call.
    pub entry: String,
    /// Buffers, in job order.
    pub slots: Vec<Slot>,
    /// Scalars, in job order.
    pub params: Vec<ParamValue>,
    /// Limits to enforce.
    pub limits: EffectiveLimits,
}

/// A run that completed.
#[derive(Debug, Clone)]
pub struct Completed {
    /// For each slot, the bytes written (`None` where the kernel wrote nothing or cannot write).
    pub written: Vec<Option<Vec<u8>>>,
    /// Resources used.
    pub usage: ResourceUsage,
}

/// A run that failed, with the stable code the result will carry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KernelError {
    /// Stable code.
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
    /// Resources used up to the failure.
    pub usage: ResourceUsage,
}

impl KernelError {
    /// An error with no resource usage (the kernel never ran).
    pub fn before_run(code: ErrorCode, message: impl Into<String>) -> KernelError {
        KernelError {
            code,
            message: message.into(),
            usage: ResourceUsage::default(),
        }
    }
}
