//! SEV-SNP verification: an attestation report, the AMD certificates that sign it, and a policy.
//!
//! The trust roots are AMD's root keys (ARKs) for Milan, Genoa and Turin, pinned in this crate
//! (`snp/*.pem`, see `snp/README.md`) together with the intermediate keys they sign: the ASK,
//! which signs chip endorsement keys (VCEKs), and the ASVK, which signs loaded endorsement keys
//! (VLEKs). Nothing in the evidence is trusted until it chains to a pinned ARK.
//!
//! [`verify`] runs every check and returns one [`Check`](super::Check) per item, in this order (see
//! [`CHECK_NAMES`]):
//!
//! | name | what |
//! |---|---|
//! | `snp.report_parse` | the report is a well-formed 1184-byte SNP report (version ≥ 2) |
//! | `snp.report_version` | its version is at least [`SnpPolicy::min_report_version`] |
//! | `snp.product` | the product (Milan, Genoa, Turin) is identified consistently and accepted |
//! | `snp.ark_pinned` | the ARK is the pinned one; an ARK in the evidence must equal it |
//! | `snp.ark_self_signature` | the ARK signs itself |
//! | `snp.ask_signature` | the ARK signs the ASK (the ASVK when the report is VLEK-signed) |
//! | `snp.vcek_signature` | the ASK signs the VCEK (the ASVK signs the VLEK) |
//! | `snp.report_signature` | the VCEK/VLEK signs the report (ECDSA P-384, SHA-384) |
//! | `snp.ark_validity`, `snp.ask_validity`, `snp.vcek_validity` | notBefore ≤ now ≤ notAfter |
//! | `snp.vcek_tcb` | the VCEK's TCB extensions equal the report's `reported_tcb` |
//! | `snp.vcek_hwid` | the VCEK's hwID extension equals the report's `chip_id` |
//! | `snp.debug` | the guest policy's DEBUG bit (19) and MIGRATE_MA bit (18) are clear, unless the policy allows each |
//! | `snp.vmpl` | the report's VMPL equals the policy's |
//! | `snp.report_data` | `report_data` equals the expected 64 bytes |
//! | `snp.measurement` | the launch measurement is in the policy's allow-list |
//! | `snp.min_tcb` | the reported TCB is at least the policy's minimum, if it sets one |
//!
//! A check is `Skipped` only where it cannot apply: when something it needs failed an earlier
//! check (so some check has failed already), or where it does not apply by design (`snp.vcek_hwid`
//! for a VLEK, which is not chip-specific; `snp.min_tcb` without a minimum). Evidence is accepted
//! exactly when no check failed. Hostile input (malformed reports, garbage certificates) yields
//! failed checks, never a panic.
//!
//! The report signature is checked over the report's own bytes `0x000..0x2A0`, as the SNP ABI
//! specifies, not over a re-encoding of the parsed fields; the signature's unused bytes (the high
//! bytes of R and S and the reserved tail) must be zero, so that a report cannot be altered
//! without failing the signature check.
//!
//! The code is laid out by subject: `evidence` (what a guest publishes), `report` (its layout,
//! parsing and signature), `chain` (the certificates), `vcek` (AMD's certificate extensions),
//! `product` (the pinned roots), `policy` (what a verifier accepts) and `verifier` (the order
//! of the checks). The evidence type is always available; verification (everything else here)
//! needs the crate feature `verify`.

// Without `verify`, the links above to verification items have nothing to point to.
#![cfg_attr(not(feature = "verify"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "verify")]
mod chain;
#[cfg(feature = "verify")]
pub mod check;
mod evidence;
#[cfg(feature = "verify")]
mod policy;
#[cfg(feature = "verify")]
mod product;
#[cfg(feature = "verify")]
mod report;
#[cfg(feature = "verify")]
mod vcek;
#[cfg(feature = "verify")]
mod verifier;

#[cfg(feature = "verify")]
pub use check::CHECK_NAMES;
pub use evidence::SnpEvidence;
#[cfg(feature = "verify")]
pub use policy::{check_policy, SnpPolicy};
#[cfg(feature = "verify")]
pub use product::{AmdRoots, Product};
#[cfg(feature = "verify")]
pub use report::{parse_report, SigningKey, SnpReportClaims, SnpTcb, REPORT_LEN};
#[cfg(feature = "verify")]
pub use verifier::verify;
