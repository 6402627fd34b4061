//! The SEV-SNP provider: inside an SNP guest, an extended attestation report from
//! `/dev/sev-guest` whose report_data binds the worker key. Without the device it fails with a
//! clear error: it never falls back to software.

use dtee_schemas::attestation::evidence::Evidence;
use dtee_schemas::attestation::execution::Tcb;

use super::{AttestationError, Provider};

/// The guest device of SEV-SNP.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// An SEV-SNP guest's attestation.
#[derive(Debug)]
pub struct SnpProvider {
    _private: (),
}

impl SnpProvider {
    /// Opens the guest device.
    pub fn open() -> Result<SnpProvider, AttestationError> {
        if !std::path::Path::new(SEV_GUEST_DEVICE).exists() {
            return Err(AttestationError::UnsupportedProvider(format!(
                "{SEV_GUEST_DEVICE} does not exist: this is not an SEV-SNP guest (or the sev-guest driver is not loaded)"
            )));
        }
        Ok(SnpProvider { _private: () })
    }
}

impl Provider for SnpProvider {
    fn platform(&self) -> &'static str {
        "snp"
    }

    fn evidence(
        &self,
        _public_key: &[u8; 32],
        _nonce: &[u8],
    ) -> Result<Evidence, AttestationError> {
        Err(AttestationError::ProviderNotInitialized(
            "SEV-SNP report retrieval is not wired in yet".to_owned(),
        ))
    }

    fn tcb(&self) -> Tcb {
        Tcb {
            hardware_rooted: true,
            memory_protected: true,
            gpu_in_tcb: false,
            backend: "wasm".to_owned(),
        }
    }
}
