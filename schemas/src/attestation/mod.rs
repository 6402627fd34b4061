//! Attestation: evidence that binds a worker's signing key to a platform, and the checks a
//! verifier runs on it. Pure: no I/O, no hardware, no clock (the time is a parameter).
//!
//! - [`Evidence`](evidence::Evidence): what a worker publishes about itself (software, TPM
//!   quote, SEV-SNP report), on its [`Platform`];
//! - [`execution`]: the signed statement about one execution that a result carries;
//! - [`snp`]: SEV-SNP evidence, and its report and certificate-chain verification;
//! - [`tpm`]: TPM 2.0 evidence, and its quote verification;
//! - `verify`: a result's attestation against a policy;
//! - every check yields a [`Check`], so that a verifier can print each one with its outcome.
//!
//! The verification code (`verify`, and the checks in [`snp`] and [`tpm`]) and the crates it
//! needs (`sev`, `p256`, `p384`, `x509-cert`) are behind the crate feature `verify`, on by
//! default. Without it the types a result carries, and the key bindings, remain.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};

pub mod dsse;
pub mod evidence;
pub mod execution;
pub mod platform;
mod serde_base64;
pub mod snp;
pub mod tpm;
#[cfg(feature = "verify")]
pub mod verify;

pub use platform::Platform;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed, and why.
    Fail(String),
    /// The check does not apply, and why.
    Skipped(String),
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Check {
    /// What was checked, e.g. `snp.report_signature`.
    pub name: String,
    /// How it went.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Pass,
        }
    }

    /// A failed check.
    pub fn fail(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail(why.into()),
        }
    }

    /// A skipped check.
    pub fn skipped(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Skipped(why.into()),
        }
    }

    /// `pass` if `ok`, else `fail` with `why`.
    pub fn from_bool(name: impl Into<String>, ok: bool, why: impl FnOnce() -> String) -> Check {
        if ok {
            Check::pass(name)
        } else {
            Check::fail(name, why())
        }
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail(_))
    }
}

/// Domain separator of key bindings, so that a binding cannot be confused with another hash.
pub const KEY_BINDING_DOMAIN: &[u8] = b"dtee.worker-key.v1\0";

/// The 64 bytes an SEV-SNP report's `report_data` carries to bind a worker key:
/// SHA-512(domain ‖ public key).
pub fn snp_report_data(public_key: &[u8]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(KEY_BINDING_DOMAIN);
    hasher.update(public_key);
    hasher.finalize().into()
}

/// The 32 bytes a TPM quote's qualifying data (`extraData`) carries to bind a worker key and a
/// nonce: SHA-256(domain ‖ public key ‖ nonce).
pub fn tpm_qualifying_data(public_key: &[u8], nonce: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(KEY_BINDING_DOMAIN);
    hasher.update(public_key);
    hasher.update(nonce);
    hasher.finalize().into()
}
