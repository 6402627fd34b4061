//! The SEV-SNP provider: inside an SNP guest, an extended attestation report from
//! `/dev/sev-guest` whose report_data binds the worker key. Without the device it fails with a
//! clear error: it never falls back to software.

use dtee_schemas::attestation::evidence::Evidence;
use dtee_schemas::attestation::execution::Tcb;
use dtee_schemas::attestation::snp::{SigningKey, SnpEvidence};
use dtee_schemas::attestation::Platform;
use sev::firmware::guest::Firmware;
use sev::firmware::host::CertType;

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
        // Opening it proves the driver answers; each report opens it again.
        Firmware::open().map_err(|error| {
            AttestationError::ProviderNotInitialized(format!("opening {SEV_GUEST_DEVICE}: {error}"))
        })?;
        Ok(SnpProvider { _private: () })
    }
}

impl Provider for SnpProvider {
    fn platform(&self) -> Platform {
        Platform::Snp
    }

    fn evidence(&self, public_key: &[u8; 32], _nonce: &[u8]) -> Result<Evidence, AttestationError> {
        // SNP reports carry no separate nonce: freshness comes from the key being new at each
        // start, and from the registry's evidence age.
        let mut firmware = Firmware::open().map_err(|error| {
            AttestationError::ProviderNotInitialized(format!("opening {SEV_GUEST_DEVICE}: {error}"))
        })?;
        let report_data = dtee_schemas::attestation::snp_report_data(public_key);
        let (report, certificates) = firmware
            .get_ext_report(None, Some(report_data), Some(0))
            .map_err(|error| {
                AttestationError::Failed(format!("requesting an extended SNP report: {error}"))
            })?;
        let certificates = certificates.unwrap_or_default();
        let find = |kind: CertType| {
            certificates
                .iter()
                .find(|entry| entry.cert_type == kind)
                .map(|entry| entry.data.clone())
        };
        // The certificate of the key that signed this report: a host's table may hold both a
        // VCEK and a VLEK, and evidence carrying the other one would fail verification.
        let signed_by = dtee_schemas::attestation::snp::parse_report(&report)
            .map_err(|why| AttestationError::Failed(format!("the SNP report: {why}")))?
            .signing_key;
        let (wanted, name) = match signed_by {
            SigningKey::Vcek => (CertType::VCEK, "VCEK"),
            SigningKey::Vlek => (CertType::VLEK, "VLEK"),
            SigningKey::Other(key) => {
                return Err(AttestationError::Failed(format!(
                    "the SNP report is signed by neither a VCEK nor a VLEK (SIGNING_KEY {key})"
                )))
            }
        };
        let vcek = find(wanted).ok_or_else(|| {
            AttestationError::Failed(format!(
                "the report is signed with the {name}, and the host supplied no {name} certificate with it (configure the hypervisor's SNP certificate table)"
            ))
        })?;
        Ok(Evidence::Snp(SnpEvidence {
            report,
            vcek_der: vcek,
            ask_der: find(CertType::ASK),
            ark_der: find(CertType::ARK),
        }))
    }

    fn tcb(&self) -> Tcb {
        Tcb {
            hardware_rooted: true,
            memory_protected: true,
            gpu_in_tcb: false,
            backend: "wasm".to_owned(),
            device: None,
        }
    }
}
