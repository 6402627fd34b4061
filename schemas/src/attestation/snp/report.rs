//! The SNP attestation report: its layout, the fields verification uses, and its signature.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser as _;
use x509_cert::Certificate;

use super::check;
use crate::attestation::Check;

/// Length of an SNP attestation report, bytes.
pub const REPORT_LEN: usize = 1184;
/// The report's signed bytes are `0..SIGNED_LEN`; the signature follows.
const SIGNED_LEN: usize = 0x2A0;
/// Offsets of the signature's R and S (72 bytes each, little-endian, zero-extended).
const SIG_R: usize = 0x2A0;
const SIG_S: usize = 0x2E8;
/// Bytes of a P-384 scalar.
const SCALAR_LEN: usize = 48;
/// End of the S field; the signature's reserved bytes run from here to the end of the report.
const SIG_RESERVED: usize = 0x330;
/// Offset of the guest policy (u64, little-endian).
const GUEST_POLICY: usize = 0x08;
/// Bit of the guest policy that allows debugging.
pub(super) const POLICY_DEBUG_BIT: u32 = 19;
/// The guest policy bit that lets a migration agent (which can export guest memory) be bound.
pub(super) const POLICY_MIGRATE_MA_BIT: u32 = 18;
/// `SIG_ALGO` value for ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// A TCB version: the security patch levels of the platform's firmware components.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC firmware SPL: Turin and later only. In a minimum, ignored for products without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl SnpTcb {
    /// Whether every component is at least `min`'s (component-wise, as AMD compares TCBs).
    pub fn at_least(&self, min: &SnpTcb) -> bool {
        let fmc_ok = match (self.fmc, min.fmc) {
            (Some(have), Some(want)) => have >= want,
            _ => true,
        };
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
            && fmc_ok
    }
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Which key signed a report, per its KEY_INFO.SIGNING_KEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's VCEK.
    Vcek,
    /// A VLEK loaded by the cloud provider.
    Vlek,
    /// Anything else: 7 means unsigned, the others are reserved.
    Other(u32),
}

/// The fields of a parsed report that verification uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReportClaims {
    /// Report format version.
    pub version: u32,
    /// The guest policy, as the report carries it.
    pub guest_policy: u64,
    /// The VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm (1: ECDSA P-384 with SHA-384).
    pub signature_algorithm: u32,
    /// Which key signed the report.
    pub signing_key: SigningKey,
    /// Whether the firmware was told not to sign (MASK_CHIP_KEY).
    pub mask_chip_key: bool,
    /// The 64 bytes the guest asked to include.
    pub report_data: [u8; 64],
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// Data the host supplied at launch.
    pub host_data: [u8; 32],
    /// The chip id (Turin: 8 significant bytes).
    pub chip_id: [u8; 64],
    /// The TCB the VCEK is derived from.
    pub reported_tcb: SnpTcb,
    /// CPUID family (report version 3 and later).
    pub cpuid_family: Option<u8>,
    /// CPUID model (report version 3 and later).
    pub cpuid_model: Option<u8>,
}

impl SnpReportClaims {
    /// Whether the guest policy allows debugging (bit 19).
    pub fn debug_allowed(&self) -> bool {
        (self.guest_policy >> POLICY_DEBUG_BIT) & 1 == 1
    }

    /// Whether the guest policy allows a migration agent (bit 18), which can export the guest's
    /// memory.
    pub fn migration_agent_allowed(&self) -> bool {
        (self.guest_policy >> POLICY_MIGRATE_MA_BIT) & 1 == 1
    }

    /// The measurement, lowercase hex.
    pub fn measurement_hex(&self) -> String {
        hex::encode(self.measurement)
    }
}

/// Parses a report's fields (with the `sev` crate). Checks nothing about its signature.
pub fn parse_report(bytes: &[u8]) -> Result<SnpReportClaims, String> {
    if bytes.len() != REPORT_LEN {
        return Err(format!(
            "a report is {REPORT_LEN} bytes, not {}",
            bytes.len()
        ));
    }
    let report = AttestationReport::from_bytes(bytes).map_err(|error| error.to_string())?;
    let mut policy = [0u8; 8];
    policy.copy_from_slice(&bytes[GUEST_POLICY..GUEST_POLICY + 8]);
    let signing_key = match report.key_info.signing_key() {
        0 => SigningKey::Vcek,
        1 => SigningKey::Vlek,
        other => SigningKey::Other(other),
    };
    let tcb = report.reported_tcb;
    Ok(SnpReportClaims {
        version: report.version,
        guest_policy: u64::from_le_bytes(policy),
        vmpl: report.vmpl,
        signature_algorithm: report.sig_algo,
        signing_key,
        mask_chip_key: report.key_info.mask_chip_key(),
        report_data: report.report_data,
        measurement: report.measurement,
        host_data: report.host_data,
        chip_id: report.chip_id,
        reported_tcb: SnpTcb {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
            fmc: tcb.fmc,
        },
        cpuid_family: report.cpuid_fam_id,
        cpuid_model: report.cpuid_mod_id,
    })
}

/// `snp.report_signature`: the VEK's P-384 key signs the report's bytes `0..0x2A0`.
pub(super) fn check_report_signature(
    report: &[u8],
    claims: &SnpReportClaims,
    vek: &Certificate,
) -> Check {
    let fail = |why: String| Check::fail(check::REPORT_SIGNATURE, why);
    if claims.mask_chip_key {
        return fail("the report is unsigned (MASK_CHIP_KEY is set)".into());
    }
    if let SigningKey::Other(key) = claims.signing_key {
        return fail(format!(
            "the report is signed by neither a VCEK nor a VLEK (SIGNING_KEY {key})"
        ));
    }
    if claims.signature_algorithm != SIG_ALGO_ECDSA_P384_SHA384 {
        return fail(format!(
            "signature algorithm {} is not ECDSA P-384 with SHA-384",
            claims.signature_algorithm
        ));
    }
    // parse_report checked the length.
    let r = &report[SIG_R..SIG_R + 72];
    let s = &report[SIG_S..SIG_S + 72];
    if r[SCALAR_LEN..]
        .iter()
        .chain(&s[SCALAR_LEN..])
        .chain(&report[SIG_RESERVED..])
        .any(|&b| b != 0)
    {
        return fail("the signature's unused bytes are not zero".into());
    }
    let mut rs = [0u8; 2 * SCALAR_LEN];
    for (i, byte) in r[..SCALAR_LEN].iter().rev().enumerate() {
        rs[i] = *byte;
    }
    for (i, byte) in s[..SCALAR_LEN].iter().rev().enumerate() {
        rs[SCALAR_LEN + i] = *byte;
    }
    let signature = match p384::ecdsa::Signature::from_slice(&rs) {
        Ok(signature) => signature,
        Err(_) => return fail("the signature is not a valid P-384 signature".into()),
    };
    let spki = &vek.tbs_certificate.subject_public_key_info;
    let key = match p384::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
    {
        Ok(key) => key,
        Err(_) => return fail("the VCEK's public key is not a P-384 key".into()),
    };
    use p384::ecdsa::signature::Verifier as _;
    match key.verify(&report[..SIGNED_LEN], &signature) {
        Ok(()) => Check::pass(check::REPORT_SIGNATURE),
        Err(_) => fail("the VCEK's key does not sign this report".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_comparison_is_component_wise() {
        let tcb = SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        assert!(tcb.at_least(&tcb));
        assert!(tcb.at_least(&SnpTcb {
            microcode: 100,
            ..tcb
        }));
        assert!(!tcb.at_least(&SnpTcb { snp: 9, ..tcb }));
        assert!(!tcb.at_least(&SnpTcb {
            bootloader: 4,
            microcode: 0,
            ..tcb
        }));
        assert!(
            tcb.at_least(&SnpTcb {
                fmc: Some(1),
                ..tcb
            }),
            "fmc ignored where absent"
        );
        let turin = SnpTcb {
            fmc: Some(1),
            ..tcb
        };
        assert!(!turin.at_least(&SnpTcb {
            fmc: Some(2),
            ..tcb
        }));
    }
}
