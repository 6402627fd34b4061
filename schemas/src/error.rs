//! The stable error codes of failed results (DESIGN §7).
//!
//! Codes are part of the wire protocol: they are never renamed or reused, only added. Clients
//! branch on the code, never on the message.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a job failed. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not a valid `dtee.job/v1` spec: bad JSON, wrong schema version, unknown or
    /// missing fields, bad values.
    InvalidJob,
    /// No blob is stored under the kernel's digest.
    KernelNotFound,
    /// The stored kernel bytes do not hash to the digest the job names.
    KernelHashMismatch,
    /// The kernel bytes are not a valid module for its format (not WebAssembly, fails to compile).
    KernelInvalid,
    /// The kernel imports something the host does not provide, or lacks the entry point or memory.
    KernelLinkFailed,
    /// The kernel trapped (unreachable, out-of-bounds access, stack overflow, division by zero).
    KernelTrapped,
    /// The kernel returned a non-zero status.
    KernelFailed,
    /// A blob input names a digest that is not stored, or whose bytes do not match.
    InputNotFound,
    /// The job asks for limits above the worker's configured maximums.
    ExcessiveResourceRequirements,
    /// The wall-clock deadline passed.
    ExecutionTimeout,
    /// The kernel used all its fuel.
    FuelExhausted,
    /// The kernel tried to grow its memory past the limit.
    MemoryLimitExceeded,
    /// The kernel wrote more output than an output's size or the output limit allows.
    OutputLimitExceeded,
    /// The job names a format or target that no backend of this worker serves.
    UnsupportedTarget,
    /// A bound state key that must exist is absent.
    StateBindingNotFound,
    /// The bound state kept changing under the job; retries were exhausted.
    StateConflict,
    /// The job binds state outside its tenant's namespace.
    StateAccessDenied,
    /// Evidence could not be produced or checked.
    AttestationFailed,
    /// The job requires an attestation platform that this worker cannot provide.
    AttestationUnsatisfiable,
    /// The requested attestation provider does not exist on this platform.
    UnsupportedProvider,
    /// The attestation provider was used before it was initialized.
    ProviderNotInitialized,
    /// The secure execution environment failed (device or firmware error).
    SecureExecutionFailed,
    /// The job exceeded its delivery limit (it kept killing or stalling workers).
    DeadLettered,
    /// The job was revoked before it ran.
    Cancelled,
    /// A bug or an unexpected condition in the worker.
    InternalError,
    /// A state write would make a bound value larger than the store allows (the value set, or
    /// the value plus what is appended); nothing was written.
    StateValueTooLarge,
    /// The kernel could not be compiled within the worker's compile bounds (time, memory).
    KernelCompileLimitExceeded,
    /// The GPU, its driver or the worker's device host failed for a reason not shown to be the
    /// kernel's (the host died, the device ran out of memory, the device was given up).
    DeviceFailed,
    /// The secret keeper refused to release a secret the job names: the secret belongs to
    /// another tenant, or this worker's evidence does not pass the owner's release policy (or
    /// the owner set none).
    SecretReleaseDenied,
    /// A secret (or the version) the job names does not exist.
    SecretNotFound,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJob,
        ErrorCode::KernelNotFound,
        ErrorCode::KernelHashMismatch,
        ErrorCode::KernelInvalid,
        ErrorCode::KernelLinkFailed,
        ErrorCode::KernelTrapped,
        ErrorCode::KernelFailed,
        ErrorCode::InputNotFound,
        ErrorCode::ExcessiveResourceRequirements,
        ErrorCode::ExecutionTimeout,
        ErrorCode::FuelExhausted,
        ErrorCode::MemoryLimitExceeded,
        ErrorCode::OutputLimitExceeded,
        ErrorCode::UnsupportedTarget,
        ErrorCode::StateBindingNotFound,
        ErrorCode::StateConflict,
        ErrorCode::StateAccessDenied,
        ErrorCode::AttestationFailed,
        ErrorCode::AttestationUnsatisfiable,
        ErrorCode::UnsupportedProvider,
        ErrorCode::ProviderNotInitialized,
        ErrorCode::SecureExecutionFailed,
        ErrorCode::DeadLettered,
        ErrorCode::Cancelled,
        ErrorCode::InternalError,
        ErrorCode::StateValueTooLarge,
        ErrorCode::KernelCompileLimitExceeded,
        ErrorCode::DeviceFailed,
        ErrorCode::SecretReleaseDenied,
        ErrorCode::SecretNotFound,
    ];

    /// Whether this failure is a property of the job itself, so running the same job again
    /// gives the same answer. Final failures are cached like successes (identical jobs run
    /// once); the others (a missing kernel or input, a worker's maximums, an unavailable
    /// platform, a state conflict) are not, and the job runs again when resubmitted.
    pub fn is_final(self) -> bool {
        match self {
            ErrorCode::InvalidJob
            | ErrorCode::KernelInvalid
            | ErrorCode::KernelLinkFailed
            | ErrorCode::KernelTrapped
            | ErrorCode::KernelFailed
            | ErrorCode::FuelExhausted
            | ErrorCode::MemoryLimitExceeded
            | ErrorCode::OutputLimitExceeded
            | ErrorCode::Cancelled
            // The same job on the same state writes the same bytes; append_only values only
            // grow. Final, so the failure is recorded as the job's applied result and a
            // redelivery writes nothing.
            | ErrorCode::StateValueTooLarge => true,
            // A wall-clock deadline depends on how loaded the worker was, which another tenant
            // may have caused: cached, it would let one tenant decide another's identical job.
            ErrorCode::ExecutionTimeout
            | ErrorCode::KernelNotFound
            | ErrorCode::KernelHashMismatch
            | ErrorCode::InputNotFound
            | ErrorCode::ExcessiveResourceRequirements
            | ErrorCode::UnsupportedTarget
            | ErrorCode::StateBindingNotFound
            | ErrorCode::StateConflict
            // Depends on who submitted the job, not on the job: never cached under its id.
            | ErrorCode::StateAccessDenied
            | ErrorCode::AttestationFailed
            | ErrorCode::AttestationUnsatisfiable
            | ErrorCode::UnsupportedProvider
            | ErrorCode::ProviderNotInitialized
            | ErrorCode::SecureExecutionFailed
            // A delivery limit can be reached by crashes another tenant's job caused (RabbitMQ
            // 3.x counts returns of prefetched messages): resubmitted, the job runs again.
            | ErrorCode::DeadLettered
            | ErrorCode::InternalError
            // Decided by worker settings (compile time and memory bounds) and by how loaded the
            // worker is, not by the job alone: a worker with larger bounds may compile it.
            | ErrorCode::KernelCompileLimitExceeded
            // The device, not the job: another worker (or a fresh host) may run it.
            | ErrorCode::DeviceFailed
            // A policy can change, or another worker pass it; a secret can be stored later.
            | ErrorCode::SecretReleaseDenied
            | ErrorCode::SecretNotFound => false,
        }
    }

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::KernelNotFound => "kernel_not_found",
            ErrorCode::KernelHashMismatch => "kernel_hash_mismatch",
            ErrorCode::KernelInvalid => "kernel_invalid",
            ErrorCode::KernelLinkFailed => "kernel_link_failed",
            ErrorCode::KernelTrapped => "kernel_trapped",
            ErrorCode::KernelFailed => "kernel_failed",
            ErrorCode::InputNotFound => "input_not_found",
            ErrorCode::ExcessiveResourceRequirements => "excessive_resource_requirements",
            ErrorCode::ExecutionTimeout => "execution_timeout",
            ErrorCode::FuelExhausted => "fuel_exhausted",
            ErrorCode::MemoryLimitExceeded => "memory_limit_exceeded",
            ErrorCode::OutputLimitExceeded => "output_limit_exceeded",
            ErrorCode::UnsupportedTarget => "unsupported_target",
            ErrorCode::StateBindingNotFound => "state_binding_not_found",
            ErrorCode::StateConflict => "state_conflict",
            ErrorCode::StateAccessDenied => "state_access_denied",
            ErrorCode::AttestationFailed => "attestation_failed",
            ErrorCode::AttestationUnsatisfiable => "attestation_unsatisfiable",
            ErrorCode::UnsupportedProvider => "unsupported_provider",
            ErrorCode::ProviderNotInitialized => "provider_not_initialized",
            ErrorCode::SecureExecutionFailed => "secure_execution_failed",
            ErrorCode::DeadLettered => "dead_lettered",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::StateValueTooLarge => "state_value_too_large",
            ErrorCode::KernelCompileLimitExceeded => "kernel_compile_limit_exceeded",
            ErrorCode::DeviceFailed => "device_failed",
            ErrorCode::SecretReleaseDenied => "secret_release_denied",
            ErrorCode::SecretNotFound => "secret_not_found",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let via_serde = serde_json::to_value(code).unwrap();
            assert_eq!(via_serde, serde_json::Value::from(code.as_str()));
            assert!(seen.insert(code.as_str()), "{code} listed twice");
        }
        assert_eq!(seen.len(), 30);
    }
}
