//! TPM 2.0 quote verification.
//!
//! A worker with a TPM proves its key like this: it resets a resettable PCR (23 by default),
//! extends it with its measurement, and asks the TPM for a quote of that PCR and PCR 0 by a
//! restricted attestation key (AK), with [`super::tpm_qualifying_data`] of its public key and a
//! nonce as the quote's qualifying data. The evidence ([`TpmEvidence`]) carries the AK's public
//! area, the quote (`TPMS_ATTEST`), its signature (`TPMT_SIGNATURE`) and the quoted PCR values,
//! all as the TPM marshalled them.
//!
//! [`verify`] checks that evidence against a [`TpmPolicy`], which pins AKs by
//! [`ak_fingerprint`] and may require PCR values. Only ECC P-256 AKs signing with ECDSA over
//! SHA-256, and the SHA-256 PCR bank, are accepted.
//!
//! What a passing verdict means: a TPM holding a pinned AK quoted PCRs with these values, and
//! the quote names this worker key and nonce. A restricted AK signs only data the TPM itself
//! generated (it refuses to sign anything that starts with `TPM_GENERATED_VALUE`), so a valid
//! signature over a quote with that magic is the TPM's own statement. The measurement PCR is
//! resettable, so its value is as trustworthy as the software that may reset and extend it: the
//! boot PCRs (0 here) say which software that is.
//!
//! The TPM structures are parsed with a small big-endian reader; any malformed input yields a
//! failed check, never a panic.
//!
//! The evidence types are always available; verification ([`verify`], [`TpmPolicy`],
//! [`check_ak_public`] and the wire parsers behind them) needs the crate feature `verify`.

// Without `verify`, the links above to verification items have nothing to point to.
#![cfg_attr(not(feature = "verify"), allow(rustdoc::broken_intra_doc_links))]

mod evidence;
#[cfg(feature = "verify")]
mod verifier;
#[cfg(feature = "verify")]
mod wire;

pub use evidence::{
    ak_fingerprint, measurement_pcr_value, pcr_extend, PcrValue, TpmEvidence, PCR_BANK,
};
#[cfg(feature = "verify")]
pub use verifier::{
    check_ak_public, verify, verify_with_measurement, TpmPolicy, DEFAULT_MEASUREMENT_PCR,
};
#[cfg(feature = "verify")]
pub use wire::{TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};
