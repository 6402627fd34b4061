//! Execution backends. A backend turns a kernel binary, its buffers, its parameters and its
//! limits into the bytes the kernel wrote and the resources it used, or into a failure with a
//! stable [`ErrorCode`].
//!
//! [`Backend`] is the interface, and [`Invocation`], [`Slot`], [`ParamValue`], [`Completed`] and
//! [`KernelError`] are its vocabulary. [`wasm::WasmBackend`] runs WebAssembly on the CPU;
//! [`gpu::GpuBackend`] runs `ptx` (CUDA, feature `cuda`) or `hsaco` (HIP, feature `hip`) kernels
//! on one GPU through a supervised device host. [`Runner`] is the one a job runs on.
//!
//! # What a backend is given
//!
//! - [`Backend::prepare`]: the kernel's bytes. The caller has already checked them against the
//!   job's digest and the worker's `max_kernel_bytes`, and has routed only jobs whose kernel
//!   format is the backend's [`Backend::format`].
//! - [`Backend::run`]: the prepared kernel and an [`Invocation`]: the entry point's name, the
//!   buffers as typed [`Slot`]s in job order (inputs with their bytes, outputs with their
//!   capacity, bound state with its access mode, the value read and its capacity), the scalar
//!   parameters in job order, and the [`EffectiveLimits`], already resolved against the worker's
//!   defaults and maximums.
//!
//! The job's GPU launch geometry (`JobSpec::launch`, which the schema requires for GPU formats
//! and forbids for wasm) is [`Invocation::launch`], `None` for wasm.
//!
//! # What a backend returns
//!
//! [`Completed`]: for each slot, in slot order, the bytes the kernel wrote (an output's value, a
//! `write_only` or `read_write` state buffer's new value, or the bytes to append to an
//! `append_only` one), and the [`ResourceUsage`]. Or a [`KernelError`]: a stable code, a message
//! for humans, and the resources used up to the failure. A backend answers only these codes:
//! `kernel_invalid`, `kernel_compile_limit_exceeded` and `kernel_link_failed` (from `prepare`,
//! or `kernel_link_failed` from `run` when the entry is missing or has the wrong type),
//! `kernel_failed` (a non-zero status),
//! `kernel_trapped`, and one code per limit below; a GPU backend also `device_failed` (its device
//! or device host failed) and `invalid_job` (a binding a GPU cannot honour). The caller turns everything else (Redis,
//! RabbitMQ, a panic on the kernel's thread) into its own outcome.
//!
//! # Who enforces which limit
//!
//! | Limit | Enforced by | Error code |
//! | --- | --- | --- |
//! | the kernel's format and the worker's targets | the caller, before `prepare` | `unsupported_target` |
//! | kernel size, kernel digest | the caller, before `prepare` | `excessive_resource_requirements`, `kernel_hash_mismatch` |
//! | compile time and memory (`DTEE_COMPILE_TIMEOUT_MS`, `DTEE_COMPILE_MEMORY_BYTES`) | the backend, while it compiles | `kernel_compile_limit_exceeded` |
//! | kernels compiling at once | the caller (`compile_slots`) | none: jobs wait |
//! | limits within the worker's maximums | the caller, before `run` | `excessive_resource_requirements` |
//! | each slot's capacity (an output's `size`, a state buffer's `max_size`, both capped by `output_bytes`) | the caller computes it; the backend enforces it on every write | `output_limit_exceeded` |
//! | `output_bytes`, all writes together | the backend, before it allocates for a write | `output_limit_exceeded` |
//! | `timeout_ms` | the backend, while the kernel runs | `execution_timeout` |
//! | `memory_bytes` | the backend, while the kernel runs | `memory_limit_exceeded` |
//! | `fuel` | the backends that meter instructions (wasm), while the kernel runs | `fuel_exhausted` |
//! | kernels running at once | the caller (`kernel_slots`) | none: jobs wait |
//! | input blobs and state values read ahead of a run, beyond 1 MiB of each | the caller (`data_slots`, one per kernel slot or device: `job::reads`) | none: jobs wait |
//! | results over 1 MiB waiting for the broker | the caller (`result_slots`, one per kernel slot and device, taken before the kernel slot is given back: `job::reads`) | none: jobs wait |
//! | the size of the serialized result | the caller, after `run` | `output_limit_exceeded` |
//!
//! A backend enforces its limits itself because only it can stop a kernel in the middle: the
//! caller never sees a kernel that overran and then judges it afterwards.
//!
//! # Threads
//!
//! `prepare` and `run` block (compiling, running a kernel): the caller calls them on a blocking
//! thread. `cached` only looks in memory and may be called anywhere.

use std::sync::Arc;

use dtee_schemas::job::{AccessMode, KernelFormat, ScalarType};
use dtee_schemas::result::{EffectiveLimits, ResourceUsage};
use dtee_schemas::run::GpuDevice;
use dtee_schemas::{Digest, ErrorCode};

pub mod gpu;
pub mod wasm;

/// A kernel compiled and ready to run, or the deterministic reason it cannot run. A backend
/// caches either by digest, so the same bytes are not compiled again, not even to fail again.
pub type Prepared<K> = Result<K, KernelError>;

/// An execution backend: compiles kernels of one format, caches them by digest, and runs them
/// under the limits of an [`Invocation`]. See the module documentation for what it is given,
/// what it returns and which limits it enforces.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A kernel compiled (and, where the backend links, linked) for this backend. Cloned for
    /// each run, so it should be cheap to clone (a handle, not the code).
    type Kernel: Clone + Send + Sync + 'static;

    /// The backend's name as results, attestations and metrics give it (`wasm`).
    fn name(&self) -> &'static str;

    /// The kernel format this backend runs.
    fn format(&self) -> KernelFormat;

    /// The prepared kernel for `digest`, if it is cached, for a job of `tenant` (who is charged
    /// for the entry from now on: the cache is shared fairly, `fair_cache`). Never blocks on
    /// compilation.
    fn cached(&self, tenant: &str, digest: &Digest) -> Option<Arc<Prepared<Self::Kernel>>>;

    /// Compiles `bytes`, whose digest the caller has checked is `digest`, within the backend's
    /// compile bounds, and caches the outcome, a deterministic failure included but not a
    /// compile limit (`kernel_compile_limit_exceeded` depends on the worker's load: the job path
    /// keeps it for the tenant that met it, `job::fetch::CompileRefusals`). `Err` only when the backend could not try (its compiler could not be run):
    /// nothing is cached and the caller retries. Blocking. The entry is charged to `tenant`.
    fn prepare(
        &self,
        tenant: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Arc<Prepared<Self::Kernel>>, PrepareError>;

    /// Runs one invocation to completion or to its first failure, enforcing its limits.
    /// Blocking.
    fn run(&self, kernel: &Self::Kernel, invocation: &Invocation)
        -> Result<Completed, KernelError>;
}

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
    /// GPU launch geometry (`None` for wasm).
    pub launch: Option<dtee_schemas::job::Launch>,
    /// The tenant whose job this is (a GPU device is given up only for failures that more
    /// than one tenant's jobs met).
    pub tenant: String,
}

/// A run that completed.
#[derive(Debug, Clone)]
pub struct Completed {
    /// For each slot, in slot order, the bytes written: an output's value, a writable state
    /// buffer's new value, or an `append_only` buffer's bytes to append (`None` where the kernel
    /// wrote nothing or cannot write).
    pub written: Vec<Option<Vec<u8>>>,
    /// Resources used.
    pub usage: ResourceUsage,
    /// The GPU it ran on (`None` on the CPU).
    pub device: Option<GpuDevice>,
}

/// The backend could not try to prepare a kernel, for a reason that is not the kernel's (its
/// compiler could not be started or its output not loaded): not cached, and the job is retried.
#[derive(Debug, thiserror::Error)]
#[error("the {backend} backend could not compile the kernel")]
pub struct PrepareError {
    /// The backend's name.
    pub backend: &'static str,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
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
    /// The GPU it failed on, once a device was chosen (boxed: most errors have none).
    pub device: Option<Box<GpuDevice>>,
}

impl KernelError {
    /// An error with no resource usage (the kernel never ran).
    pub fn before_run(code: ErrorCode, message: impl Into<String>) -> KernelError {
        KernelError {
            code,
            message: message.into(),
            usage: ResourceUsage::default(),
            device: None,
        }
    }
}

/// The capacity of an output or writable state slot, `declared` by the job (a state binding
/// without `max_size` declares none). A WebAssembly kernel writes through host calls that stop
/// at the capacity, so the output limit caps it. A GPU kernel writes its device buffer
/// directly, so the buffer has the size the job declared (a smaller one would be written past)
/// and the GPU backend refuses the job when what it copies back exceeds the output limit.
pub fn slot_capacity(format: KernelFormat, declared: Option<u64>, output_bytes: u64) -> u64 {
    match format {
        KernelFormat::Wasm => declared.unwrap_or(output_bytes).min(output_bytes),
        KernelFormat::Ptx | KernelFormat::Hsaco => declared.unwrap_or(output_bytes),
    }
}

/// The backend one job runs on: the wasm engine, or one GPU device.
#[derive(Debug, Clone)]
pub(crate) enum Runner {
    /// The WebAssembly backend, on the CPU.
    Wasm(Arc<wasm::WasmBackend>),
    /// A GPU, through its device host.
    Gpu(Arc<gpu::GpuBackend>),
}

/// A kernel prepared by a [`Runner`].
#[derive(Clone)]
pub(crate) enum AnyKernel {
    /// A linked WebAssembly module.
    Wasm(<wasm::WasmBackend as Backend>::Kernel),
    /// A GPU kernel's checked bytes.
    Gpu(gpu::GpuKernel),
}

impl Runner {
    /// The prepared kernel for `digest`, if cached.
    pub(crate) fn cached(&self, tenant: &str, digest: &Digest) -> Option<Prepared<AnyKernel>> {
        match self {
            Runner::Wasm(backend) => backend
                .cached(tenant, digest)
                .map(|prepared| prepared.as_ref().clone().map(AnyKernel::Wasm)),
            Runner::Gpu(backend) => backend
                .cached(tenant, digest)
                .map(|prepared| prepared.as_ref().clone().map(AnyKernel::Gpu)),
        }
    }

    /// What a digest compiles to differs between runners: the backend and, for wasm, its
    /// profile.
    pub(crate) fn compiled_as(&self) -> &'static str {
        match self {
            Runner::Wasm(backend) => match backend.profile() {
                dtee_schemas::job::WasmProfile::Deterministic => "wasm",
                dtee_schemas::job::WasmProfile::Fast => "wasm-fast",
            },
            Runner::Gpu(_) => "gpu",
        }
    }

    /// Prepares `bytes` (blocking), charging the cache entry to `tenant`.
    pub(crate) fn prepare(
        &self,
        tenant: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Prepared<AnyKernel>, PrepareError> {
        Ok(match self {
            Runner::Wasm(backend) => backend
                .prepare(tenant, digest, bytes)?
                .as_ref()
                .clone()
                .map(AnyKernel::Wasm),
            Runner::Gpu(backend) => backend
                .prepare(tenant, digest, bytes)?
                .as_ref()
                .clone()
                .map(AnyKernel::Gpu),
        })
    }

    /// Runs a prepared kernel (blocking).
    pub(crate) fn run(
        &self,
        kernel: &AnyKernel,
        invocation: &Invocation,
    ) -> Result<Completed, KernelError> {
        match (self, kernel) {
            (Runner::Wasm(backend), AnyKernel::Wasm(kernel)) => backend.run(kernel, invocation),
            (Runner::Gpu(backend), AnyKernel::Gpu(kernel)) => backend.run(kernel, invocation),
            _ => Err(KernelError {
                code: ErrorCode::InternalError,
                message: "a kernel prepared by one backend was given to another".to_owned(),
                usage: ResourceUsage::default(),
                device: None,
            }),
        }
    }
}
