//! SEV-SNP verification: an attestation report, the AMD certificates that sign it, and a policy.
//!
//! The trust roots are AMD's root keys (ARKs) for Milan, Genoa and Turin, pinned in this crate
//! (`snp/*.pem`, see `snp/README.md`) together with the intermediate keys they sign: the ASK,
//! which signs chip endorsement keys (VCEKs), and the ASVK, which signs loaded endorsement keys
//! (VLEKs). Nothing in the evidence is trusted until it chains to a pinned ARK.
//!
//! [`verify`] runs every check and returns one [`Check`] per item, in this order (see
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
//! | `snp.debug` | the guest policy's DEBUG bit (19) is clear, unless the policy allows it |
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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sev::certs::snp::{Certificate as SevCertificate, Verifiable as _};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser as _;
use x509_cert::der::asn1::{Ia5StringRef, OctetStringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};
use x509_cert::Certificate;

use super::Check;

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
const POLICY_DEBUG_BIT: u32 = 19;
/// `SIG_ALGO` value for ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// AMD's X.509 extensions in VCEK/VLEK certificates (VCEK specification, AMD 57230).
mod oid {
    use super::ObjectIdentifier;
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// X.520 commonName.
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
}

/// Check names, in the order [`verify`] returns them.
pub mod check {
    /// The report parses.
    pub const REPORT_PARSE: &str = "snp.report_parse";
    /// The report version is at least the policy's minimum.
    pub const REPORT_VERSION: &str = "snp.report_version";
    /// The product is identified and accepted.
    pub const PRODUCT: &str = "snp.product";
    /// The ARK is AMD's pinned root.
    pub const ARK_PINNED: &str = "snp.ark_pinned";
    /// The ARK signs itself.
    pub const ARK_SELF_SIGNATURE: &str = "snp.ark_self_signature";
    /// The ARK signs the ASK (or ASVK).
    pub const ASK_SIGNATURE: &str = "snp.ask_signature";
    /// The ASK signs the VCEK (or the ASVK the VLEK).
    pub const VCEK_SIGNATURE: &str = "snp.vcek_signature";
    /// The VCEK (or VLEK) signs the report.
    pub const REPORT_SIGNATURE: &str = "snp.report_signature";
    /// The ARK is within its validity period.
    pub const ARK_VALIDITY: &str = "snp.ark_validity";
    /// The ASK (or ASVK) is within its validity period.
    pub const ASK_VALIDITY: &str = "snp.ask_validity";
    /// The VCEK (or VLEK) is within its validity period.
    pub const VCEK_VALIDITY: &str = "snp.vcek_validity";
    /// The VCEK's TCB extensions equal the report's reported TCB.
    pub const VCEK_TCB: &str = "snp.vcek_tcb";
    /// The VCEK's hwID equals the report's chip id.
    pub const VCEK_HWID: &str = "snp.vcek_hwid";
    /// Debugging is off, unless allowed.
    pub const DEBUG: &str = "snp.debug";
    /// The VMPL is the policy's.
    pub const VMPL: &str = "snp.vmpl";
    /// The report data is the expected one.
    pub const REPORT_DATA: &str = "snp.report_data";
    /// The measurement is allowed.
    pub const MEASUREMENT: &str = "snp.measurement";
    /// The reported TCB is at least the policy's minimum.
    pub const MIN_TCB: &str = "snp.min_tcb";
}

/// Every check [`verify`] returns, in order.
pub const CHECK_NAMES: [&str; 18] = [
    check::REPORT_PARSE,
    check::REPORT_VERSION,
    check::PRODUCT,
    check::ARK_PINNED,
    check::ARK_SELF_SIGNATURE,
    check::ASK_SIGNATURE,
    check::VCEK_SIGNATURE,
    check::REPORT_SIGNATURE,
    check::ARK_VALIDITY,
    check::ASK_VALIDITY,
    check::VCEK_VALIDITY,
    check::VCEK_TCB,
    check::VCEK_HWID,
    check::DEBUG,
    check::VMPL,
    check::REPORT_DATA,
    check::MEASUREMENT,
    check::MIN_TCB,
];

/// Evidence from an SNP guest: the raw attestation report and the certificates that sign it.
///
/// On the wire every field is standard padded base64: `report`, `vcek`, and optionally `ask` and
/// `ark`. The verifier always anchors on its pinned ARK, which an `ark` here must equal. Without
/// `ask` it uses its pinned ASK (ASVK for a VLEK); an `ask` here must be that certificate, or one
/// with the same subject that the pinned ARK signs (so that a reissued ASK still verifies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnpEvidence {
    /// The attestation report exactly as the firmware returned it (1184 bytes).
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub report: Vec<u8>,
    /// The DER certificate of the key that signed the report: the VCEK, or the VLEK when the
    /// report says it is VLEK-signed.
    #[serde(rename = "vcek", with = "base64_bytes")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub vcek_der: Vec<u8>,
    /// The DER ASK (the ASVK for a VLEK), if the guest supplied it.
    #[serde(
        rename = "ask",
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_opt"
    )]
    #[schemars(with = "Option<String>", extend("contentEncoding" = "base64"))]
    pub ask_der: Option<Vec<u8>>,
    /// The DER ARK, if the guest supplied it; it must be AMD's pinned ARK.
    #[serde(
        rename = "ark",
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_opt"
    )]
    #[schemars(with = "Option<String>", extend("contentEncoding" = "base64"))]
    pub ark_der: Option<Vec<u8>>,
}

/// An AMD EPYC product line with SEV-SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    /// 3rd generation EPYC.
    Milan,
    /// 4th generation EPYC.
    Genoa,
    /// 5th generation EPYC.
    Turin,
}

/// AMD's certificates for one product, PEM, pinned in this crate.
#[derive(Debug, Clone, Copy)]
pub struct AmdRoots {
    /// The AMD Root Key, self-signed: the trust anchor.
    pub ark: &'static str,
    /// The AMD SEV Key, signed by the ARK; signs VCEKs.
    pub ask: &'static str,
    /// The AMD SEV VLEK Key, signed by the ARK; signs VLEKs.
    pub asvk: &'static str,
}

impl Product {
    /// Every product, in release order.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The lowercase name used in policies: `milan`, `genoa`, `turin`.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        }
    }

    /// AMD's name, as certificates spell it.
    fn amd_name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// The product named by a VCEK's productName (`Milan-B0`, `Genoa`, `Turin`…) or an issuer's
    /// common name (`SEV-Milan`, `SEV-VLEK-Genoa`).
    fn from_amd_name(text: &str) -> Option<Product> {
        let text = text.strip_prefix("SEV-").unwrap_or(text);
        let text = text.strip_prefix("VLEK-").unwrap_or(text);
        let base = text.split('-').next().unwrap_or(text);
        Product::ALL
            .into_iter()
            .find(|product| base.eq_ignore_ascii_case(product.amd_name()))
    }

    /// The product of a CPUID family and model, as report versions 3 and later carry them.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }

    /// Bytes of the chip id a VCEK's hwID carries: 64, but 8 from Turin on.
    fn hwid_len(self) -> usize {
        match self {
            Product::Turin => 8,
            Product::Milan | Product::Genoa => 64,
        }
    }

    /// AMD's certificates for this product, pinned in this crate.
    pub fn roots(self) -> AmdRoots {
        match self {
            Product::Milan => AmdRoots {
                ark: include_str!("snp/milan_ark.pem"),
                ask: include_str!("snp/milan_ask.pem"),
                asvk: include_str!("snp/milan_asvk.pem"),
            },
            Product::Genoa => AmdRoots {
                ark: include_str!("snp/genoa_ark.pem"),
                ask: include_str!("snp/genoa_ask.pem"),
                asvk: include_str!("snp/genoa_asvk.pem"),
            },
            Product::Turin => AmdRoots {
                ark: include_str!("snp/turin_ark.pem"),
                ask: include_str!("snp/turin_ask.pem"),
                asvk: include_str!("snp/turin_asvk.pem"),
            },
        }
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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

/// What an SNP verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accepted launch measurements, hex of the 48 bytes (case-insensitive). Empty: none.
    pub allowed_measurements: Vec<String>,
    /// The VMPL the report must come from.
    pub vmpl: u32,
    /// Whether a guest whose policy allows debugging (and so whose memory the host can read) is
    /// acceptable.
    pub allow_debug: bool,
    /// Lowest accepted report version.
    pub min_report_version: u32,
    /// Lowest accepted reported TCB, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<SnpTcb>,
    /// Accepted products.
    pub products: Vec<Product>,
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy {
            allowed_measurements: Vec::new(),
            vmpl: 0,
            allow_debug: false,
            min_report_version: 2,
            min_tcb: None,
            products: Product::ALL.to_vec(),
        }
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

/// Verifies SNP evidence: chain, signature, certificate dates and extensions, and `policy`,
/// with `expected_report_data` the 64 bytes the report must carry (for a worker,
/// [`super::snp_report_data`] of its key) and `now_unix_secs` the time to check validity at.
/// Returns every check in [`CHECK_NAMES`] order; accept only if none failed.
pub fn verify(
    evidence: &SnpEvidence,
    expected_report_data: &[u8; 64],
    policy: &SnpPolicy,
    now_unix_secs: i64,
) -> Vec<Check> {
    let mut checks = Vec::with_capacity(CHECK_NAMES.len());

    let claims = match parse_report(&evidence.report) {
        Ok(claims) => {
            checks.push(Check::pass(check::REPORT_PARSE));
            claims
        }
        Err(why) => {
            checks.push(Check::fail(
                check::REPORT_PARSE,
                format!("the report does not parse: {why}"),
            ));
            for name in &CHECK_NAMES[1..] {
                checks.push(Check::skipped(*name, "the report did not parse"));
            }
            return checks;
        }
    };

    checks.push(Check::from_bool(
        check::REPORT_VERSION,
        claims.version >= policy.min_report_version,
        || {
            format!(
                "report version {} is below the policy's minimum {}",
                claims.version, policy.min_report_version
            )
        },
    ));

    let vek = Certificate::from_der(&evidence.vcek_der)
        .map_err(|error| format!("the VCEK is not a DER certificate: {error}"));
    let (product, product_check) = identify_product(&claims, vek.as_ref().ok(), policy);
    checks.push(product_check);

    let chain = check_chain(evidence, &claims, product, &vek, &mut checks);

    // The report signature, by the VCEK or VLEK (whether or not that chains: a failed chain is
    // its own check).
    checks.push(match &vek {
        Ok(vek) => check_report_signature(&evidence.report, &claims, vek),
        Err(_) => Check::skipped(check::REPORT_SIGNATURE, "the VCEK did not parse"),
    });

    // Validity periods.
    checks.push(match &chain.ark {
        Some(ark) => check_validity(check::ARK_VALIDITY, "ARK", ark, now_unix_secs),
        None => Check::skipped(check::ARK_VALIDITY, chain.why_no_ark.clone()),
    });
    checks.push(match &chain.ask {
        Some(ask) => check_validity(check::ASK_VALIDITY, chain.ask_label, ask, now_unix_secs),
        None => Check::skipped(check::ASK_VALIDITY, chain.why_no_ask.clone()),
    });
    checks.push(match &vek {
        Ok(vek) => check_validity(check::VCEK_VALIDITY, chain.vek_label, vek, now_unix_secs),
        Err(_) => Check::skipped(check::VCEK_VALIDITY, "the VCEK did not parse"),
    });

    // The VCEK's extensions against the report.
    checks.push(match &vek {
        Ok(vek) => check_vcek_tcb(vek, &claims.reported_tcb),
        Err(_) => Check::skipped(check::VCEK_TCB, "the VCEK did not parse"),
    });
    checks.push(match (&vek, product, claims.signing_key) {
        (_, _, SigningKey::Vlek) => Check::skipped(
            check::VCEK_HWID,
            "a VLEK is not chip-specific and carries no hwID",
        ),
        (Err(_), _, _) => Check::skipped(check::VCEK_HWID, "the VCEK did not parse"),
        (Ok(_), None, _) => Check::skipped(check::VCEK_HWID, "the product is not identified"),
        (Ok(vek), Some(product), _) => check_vcek_hwid(vek, &claims.chip_id, product),
    });

    checks.extend(check_policy(&claims, expected_report_data, policy));
    checks
}

/// The policy checks on a report's fields: `snp.debug`, `snp.vmpl`, `snp.report_data`,
/// `snp.measurement` and `snp.min_tcb`, in that order. [`verify`] ends with these; they are
/// public so that fields no fixture has (a debug policy, say) can be tested directly.
pub fn check_policy(
    claims: &SnpReportClaims,
    expected_report_data: &[u8; 64],
    policy: &SnpPolicy,
) -> Vec<Check> {
    let mut checks = Vec::with_capacity(5);

    checks.push(Check::from_bool(
        check::DEBUG,
        !claims.debug_allowed() || policy.allow_debug,
        || {
            format!(
                "guest policy {:#x} allows debugging (bit {POLICY_DEBUG_BIT}), so the host can \
                 read the guest's memory, and the policy does not allow that",
                claims.guest_policy
            )
        },
    ));

    checks.push(Check::from_bool(
        check::VMPL,
        claims.vmpl == policy.vmpl,
        || {
            format!(
                "the report is from VMPL {}, the policy requires VMPL {}",
                claims.vmpl, policy.vmpl
            )
        },
    ));

    checks.push(Check::from_bool(
        check::REPORT_DATA,
        claims.report_data == *expected_report_data,
        || {
            format!(
                "report_data is {}, expected {}",
                hex::encode(claims.report_data),
                hex::encode(expected_report_data)
            )
        },
    ));

    let measurement = claims.measurement_hex();
    checks.push(if policy.allowed_measurements.is_empty() {
        Check::fail(
            check::MEASUREMENT,
            format!("measurement {measurement}: the policy allows no measurement"),
        )
    } else {
        Check::from_bool(
            check::MEASUREMENT,
            policy
                .allowed_measurements
                .iter()
                .any(|allowed| allowed.trim().eq_ignore_ascii_case(&measurement)),
            || format!("measurement {measurement} is not in the policy's allow-list"),
        )
    });

    checks.push(match &policy.min_tcb {
        None => Check::skipped(check::MIN_TCB, "the policy sets no minimum TCB"),
        Some(min) => Check::from_bool(check::MIN_TCB, claims.reported_tcb.at_least(min), || {
            format!(
                "reported TCB ({}) is below the policy's minimum ({min})",
                claims.reported_tcb
            )
        }),
    });

    checks
}

/// Identifies the product from the report's CPUID (versions 3 and later) and the VCEK's
/// productName (or its issuer's name), which must agree, and checks that the report's TCB
/// layout is the product's and that the policy accepts it. Returns the product the chain is
/// checked against: identified, though perhaps rejected.
fn identify_product(
    claims: &SnpReportClaims,
    vek: Option<&Certificate>,
    policy: &SnpPolicy,
) -> (Option<Product>, Check) {
    let fail = |why: String| Check::fail(check::PRODUCT, why);

    let from_cpuid = match (claims.cpuid_family, claims.cpuid_model) {
        (Some(family), Some(model)) => match Product::from_cpuid(family, model) {
            Some(product) => Some(product),
            None => {
                return (
                    None,
                    fail(format!(
                        "CPUID family {family:#x} model {model:#x} is not Milan, Genoa or Turin"
                    )),
                );
            }
        },
        _ => None,
    };
    let from_cert = vek.and_then(cert_product);

    let product = match (from_cpuid, from_cert) {
        (Some(cpuid), Some(cert)) if cpuid != cert => {
            return (
                None,
                fail(format!(
                    "the report's CPUID says {cpuid} but the VCEK is for {cert}"
                )),
            );
        }
        (Some(product), _) | (None, Some(product)) => product,
        (None, None) => {
            return (
                None,
                fail(format!(
                    "unknown product: a version {} report names no CPUID and the VCEK names no \
                     product AMD makes SNP certificates for",
                    claims.version
                )),
            );
        }
    };

    // The sev crate reads TCB fields in the Turin layout exactly when it takes the report to be
    // from a Turin (from CPUID, or for version 2 from an 8-byte chip id); that must be this product.
    let turin_layout = claims.reported_tcb.fmc.is_some();
    if turin_layout != (product == Product::Turin) {
        let layout = if turin_layout { "Turin" } else { "Milan/Genoa" };
        return (
            Some(product),
            fail(format!(
                "the report has the {layout} layout but the VCEK is for {product}"
            )),
        );
    }

    if !policy.products.contains(&product) {
        return (
            Some(product),
            fail(format!("the policy does not accept {product}")),
        );
    }
    (Some(product), Check::pass(check::PRODUCT))
}

/// The product a VEK certificate is for: its productName extension, else its issuer's name.
fn cert_product(cert: &Certificate) -> Option<Product> {
    if let Ok(Some(value)) = unique_extension(cert, &oid::PRODUCT_NAME) {
        let name = Ia5StringRef::from_der(value)
            .map(|s| s.as_str().to_owned())
            .or_else(|_| Utf8StringRef::from_der(value).map(|s| s.as_str().to_owned()));
        if let Some(product) = name.ok().and_then(|name| Product::from_amd_name(&name)) {
            return Some(product);
        }
    }
    common_name(&cert.tbs_certificate.issuer).and_then(|cn| Product::from_amd_name(&cn))
}

/// The certificates the chain checks settled on, for the validity checks.
struct ChainOutcome {
    ark: Option<Certificate>,
    why_no_ark: String,
    ask: Option<Certificate>,
    why_no_ask: String,
    ask_label: &'static str,
    vek_label: &'static str,
}

/// `snp.ark_pinned`, `snp.ark_self_signature`, `snp.ask_signature` and `snp.vcek_signature`.
fn check_chain(
    evidence: &SnpEvidence,
    claims: &SnpReportClaims,
    product: Option<Product>,
    vek: &Result<Certificate, String>,
    checks: &mut Vec<Check>,
) -> ChainOutcome {
    let vlek = claims.signing_key == SigningKey::Vlek;
    let (ask_label, vek_label) = if vlek {
        ("ASVK", "VLEK")
    } else {
        ("ASK", "VCEK")
    };
    let mut outcome = ChainOutcome {
        ark: None,
        why_no_ark: String::new(),
        ask: None,
        why_no_ask: String::new(),
        ask_label,
        vek_label,
    };

    let Some(product) = product else {
        let why = "the product is not identified, so there is no pinned root to check against";
        for name in [
            check::ARK_PINNED,
            check::ARK_SELF_SIGNATURE,
            check::ASK_SIGNATURE,
            check::VCEK_SIGNATURE,
        ] {
            checks.push(Check::skipped(name, why));
        }
        outcome.why_no_ark = why.into();
        outcome.why_no_ask = why.into();
        return outcome;
    };
    let roots = product.roots();

    // ARK: always the pinned one; the evidence's, if any, must be it.
    let ark = match pinned(roots.ark) {
        Ok(ark) => ark,
        Err(why) => {
            // Unreachable with the certificates this crate ships; fail rather than panic.
            checks.push(Check::fail(
                check::ARK_PINNED,
                format!("pinned {product} ARK: {why}"),
            ));
            for name in [
                check::ARK_SELF_SIGNATURE,
                check::ASK_SIGNATURE,
                check::VCEK_SIGNATURE,
            ] {
                checks.push(Check::skipped(name, "no pinned ARK"));
            }
            outcome.why_no_ark = "no pinned ARK".into();
            outcome.why_no_ask = "no pinned ARK".into();
            return outcome;
        }
    };
    checks.push(match &evidence.ark_der {
        None => Check::pass(check::ARK_PINNED),
        Some(der) => Check::from_bool(check::ARK_PINNED, ark.der == *der, || {
            format!("the evidence's ARK is not AMD's pinned {product} ARK")
        }),
    });
    let ark_sev = SevCertificate::from(ark.cert.clone());
    checks.push(match (&ark_sev, &ark_sev).verify() {
        Ok(()) => Check::pass(check::ARK_SELF_SIGNATURE),
        Err(error) => Check::fail(
            check::ARK_SELF_SIGNATURE,
            format!("the {product} ARK does not sign itself: {error}"),
        ),
    });

    // ASK (ASVK for a VLEK): the pinned one, or the evidence's if it is the same key role
    // (same subject) and the ARK signs it.
    let pinned_ask = pinned(if vlek { roots.asvk } else { roots.ask });
    let ask: Result<Certificate, String> = match (&evidence.ask_der, pinned_ask) {
        (_, Err(why)) => Err(format!("pinned {product} {ask_label}: {why}")),
        (None, Ok(pinned)) => Ok(pinned.cert),
        (Some(der), Ok(pinned)) if *der == pinned.der => Ok(pinned.cert),
        (Some(der), Ok(pinned)) => match Certificate::from_der(der) {
            Err(error) => Err(format!(
                "the evidence's {ask_label} is not a DER certificate: {error}"
            )),
            Ok(cert) if cert.tbs_certificate.subject != pinned.cert.tbs_certificate.subject => {
                Err(format!(
                    "the evidence's {ask_label} is for {}, not {}",
                    cert.tbs_certificate.subject, pinned.cert.tbs_certificate.subject
                ))
            }
            Ok(cert) => Ok(cert),
        },
    };
    outcome.ark = Some(ark.cert);
    let ask = match ask {
        Ok(ask) => ask,
        Err(why) => {
            checks.push(Check::fail(check::ASK_SIGNATURE, why));
            checks.push(Check::skipped(
                check::VCEK_SIGNATURE,
                format!("no usable {ask_label}"),
            ));
            outcome.why_no_ask = format!("no usable {ask_label}");
            return outcome;
        }
    };
    let ask_sev = SevCertificate::from(ask.clone());
    checks.push(match (&ark_sev, &ask_sev).verify() {
        Ok(()) => Check::pass(check::ASK_SIGNATURE),
        Err(error) => Check::fail(
            check::ASK_SIGNATURE,
            format!("the {product} ARK does not sign the {ask_label}: {error}"),
        ),
    });
    outcome.ask = Some(ask);

    // VCEK (VLEK) by the ASK (ASVK).
    checks.push(match vek {
        Err(why) => Check::fail(check::VCEK_SIGNATURE, why.clone()),
        Ok(vek) => match (&ask_sev, &SevCertificate::from(vek.clone())).verify() {
            Ok(()) => Check::pass(check::VCEK_SIGNATURE),
            Err(error) => Check::fail(
                check::VCEK_SIGNATURE,
                format!("the {product} {ask_label} does not sign the {vek_label}: {error}"),
            ),
        },
    });
    outcome
}

/// A pinned certificate, parsed, with its DER.
struct Pinned {
    cert: Certificate,
    der: Vec<u8>,
}

fn pinned(pem: &str) -> Result<Pinned, String> {
    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|error| error.to_string())?;
    let der = cert.to_der().map_err(|error| error.to_string())?;
    Ok(Pinned { cert, der })
}

/// `snp.report_signature`: the VEK's P-384 key signs the report's bytes `0..0x2A0`.
fn check_report_signature(report: &[u8], claims: &SnpReportClaims, vek: &Certificate) -> Check {
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

/// notBefore ≤ now ≤ notAfter.
fn check_validity(name: &'static str, label: &str, cert: &Certificate, now: i64) -> Check {
    let validity = &cert.tbs_certificate.validity;
    let secs = |time: x509_cert::time::Time| {
        i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    let (not_before, not_after) = (secs(validity.not_before), secs(validity.not_after));
    if now < not_before {
        Check::fail(
            name,
            format!(
                "the {label} is not valid before {} (now {now})",
                validity.not_before
            ),
        )
    } else if now > not_after {
        Check::fail(
            name,
            format!("the {label} expired at {} (now {now})", validity.not_after),
        )
    } else {
        Check::pass(name)
    }
}

/// `snp.vcek_tcb`: the VEK's SPL extensions equal the report's reported TCB.
fn check_vcek_tcb(vek: &Certificate, reported: &SnpTcb) -> Check {
    let mut components = vec![
        ("bootloader", oid::BL_SPL, reported.bootloader),
        ("tee", oid::TEE_SPL, reported.tee),
        ("snp", oid::SNP_SPL, reported.snp),
        ("microcode", oid::UCODE_SPL, reported.microcode),
    ];
    if let Some(fmc) = reported.fmc {
        components.push(("fmc", oid::FMC_SPL, fmc));
    }
    let mut problems = Vec::new();
    for (label, oid, want) in components {
        match unique_extension(vek, &oid) {
            Err(why) => problems.push(format!("{label}: {why}")),
            Ok(None) => problems.push(format!("{label}: the VCEK has no {oid} extension")),
            Ok(Some(value)) => match u8::from_der(value) {
                Err(_) => problems.push(format!("{label}: extension {oid} is not a small INTEGER")),
                Ok(have) if have != want => {
                    problems.push(format!("{label}: VCEK {have}, report {want}"));
                }
                Ok(_) => {}
            },
        }
    }
    if problems.is_empty() {
        Check::pass(check::VCEK_TCB)
    } else {
        Check::fail(
            check::VCEK_TCB,
            format!(
                "the VCEK is not for the reported TCB: {}",
                problems.join("; ")
            ),
        )
    }
}

/// `snp.vcek_hwid`: the VCEK's hwID is the report's chip id (its first 8 bytes from Turin on).
fn check_vcek_hwid(vek: &Certificate, chip_id: &[u8; 64], product: Product) -> Check {
    let fail = |why: String| Check::fail(check::VCEK_HWID, why);
    let value = match unique_extension(vek, &oid::HW_ID) {
        Err(why) => return fail(why),
        Ok(None) => return fail("the VCEK has no hwID extension".into()),
        Ok(Some(value)) => value,
    };
    let len = product.hwid_len();
    // AMD's VCEKs carry the id as the extension's raw value; some issuers wrap it in a DER
    // OCTET STRING. The lengths tell them apart.
    let hwid = if value.len() == len {
        value
    } else {
        match OctetStringRef::from_der(value) {
            Ok(inner) if inner.as_bytes().len() == len => inner.as_bytes(),
            _ => {
                return fail(format!(
                    "the VCEK's hwID is {} bytes, a {product} chip id is {len}",
                    value.len()
                ));
            }
        }
    };
    Check::from_bool(check::VCEK_HWID, hwid == &chip_id[..len], || {
        format!(
            "the VCEK is for chip {}, the report is from chip {}",
            hex::encode(hwid),
            hex::encode(&chip_id[..len])
        )
    })
}

/// The value of the extension `oid`, if the certificate has exactly one.
fn unique_extension<'a>(
    cert: &'a Certificate,
    oid: &ObjectIdentifier,
) -> Result<Option<&'a [u8]>, String> {
    let mut found = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|extension| extension.extn_id == *oid);
    let first = found.next();
    if found.next().is_some() {
        return Err(format!("the certificate has more than one {oid} extension"));
    }
    Ok(first.map(|extension| extension.extn_value.as_bytes()))
}

/// The first common name in a distinguished name.
fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid::COMMON_NAME)
        .and_then(|atv| {
            let value = &atv.value;
            value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// Serde for bytes as standard padded base64.
mod base64_bytes {
    use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::job::encode_base64(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::job::decode_base64(&text).map_err(D::Error::custom)
    }
}

/// Serde for optional bytes as standard padded base64.
mod base64_opt {
    use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&crate::job::encode_base64(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => crate::job::decode_base64(&text)
                .map(Some)
                .map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::Outcome;
    use sha2::{Digest as _, Sha256};

    /// SHA-256 of each pinned ARK's DER: a change to the PEM files must be deliberate.
    const ARK_SHA256: [(Product, &str); 3] = [
        (
            Product::Milan,
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        ),
        (
            Product::Genoa,
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        ),
        (
            Product::Turin,
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        ),
    ];

    #[test]
    fn pinned_arks_have_the_expected_fingerprints() {
        for (product, fingerprint) in ARK_SHA256 {
            let ark = pinned(product.roots().ark).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&ark.der)),
                fingerprint,
                "{product}"
            );
        }
    }

    #[test]
    fn pinned_chains_verify_and_name_their_roles() {
        for product in Product::ALL {
            let roots = product.roots();
            let ark = pinned(roots.ark).unwrap();
            let ark_sev = SevCertificate::from(ark.cert.clone());
            (&ark_sev, &ark_sev).verify().unwrap();
            assert_eq!(
                common_name(&ark.cert.tbs_certificate.subject).unwrap(),
                format!("ARK-{}", product.amd_name())
            );
            for (pem, cn) in [
                (roots.ask, format!("SEV-{}", product.amd_name())),
                (roots.asvk, format!("SEV-VLEK-{}", product.amd_name())),
            ] {
                let cert = pinned(pem).unwrap();
                (&ark_sev, &SevCertificate::from(cert.cert.clone()))
                    .verify()
                    .unwrap();
                assert_eq!(common_name(&cert.cert.tbs_certificate.subject).unwrap(), cn);
                assert_eq!(
                    cert.cert.tbs_certificate.issuer,
                    ark.cert.tbs_certificate.subject
                );
            }
        }
    }

    #[test]
    fn pinned_roots_match_the_sev_crates_builtins() {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let builtin = [
            (Product::Milan, milan::ARK, milan::ASK),
            (Product::Genoa, genoa::ARK, genoa::ASK),
            (Product::Turin, turin::ARK, turin::ASK),
        ];
        for (product, ark, ask) in builtin {
            let der = |pem: &[u8]| Certificate::from_pem(pem).unwrap().to_der().unwrap();
            assert_eq!(
                pinned(product.roots().ark).unwrap().der,
                der(ark),
                "{product} ARK"
            );
            assert_eq!(
                pinned(product.roots().ask).unwrap().der,
                der(ask),
                "{product} ASK"
            );
        }
    }

    /// The SNP fixtures (see `schemas/tests/snp.rs` for where they are looked for).
    fn fixture(path: &str) -> Vec<u8> {
        let shared = std::env::var_os("DTEE_SHARED_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
            });
        let path = shared.join("fixtures/snp").join(path);
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    #[test]
    fn turin_vceks_carry_an_eight_byte_hwid_and_an_fmc_spl() {
        let vcek = Certificate::from_der(&fixture("virtee-sev/vcek_turin.der")).unwrap();
        assert_eq!(cert_product(&vcek), Some(Product::Turin));
        let hwid = hex::decode("1e550a8ee5cf9f4d").unwrap();
        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&hwid);
        assert_eq!(
            check_vcek_hwid(&vcek, &chip_id, Product::Turin).outcome,
            Outcome::Pass
        );
        chip_id[7] ^= 1;
        assert!(check_vcek_hwid(&vcek, &chip_id, Product::Turin).failed());
        // Read as a Milan/Genoa VCEK, its hwID has the wrong length.
        assert!(check_vcek_hwid(&vcek, &chip_id, Product::Genoa).failed());

        let tcb = SnpTcb {
            fmc: Some(0),
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 9,
        };
        assert_eq!(check_vcek_tcb(&vcek, &tcb).outcome, Outcome::Pass);
        assert!(check_vcek_tcb(
            &vcek,
            &SnpTcb {
                fmc: Some(1),
                ..tcb
            }
        )
        .failed());
        assert!(check_vcek_tcb(
            &vcek,
            &SnpTcb {
                microcode: 8,
                ..tcb
            }
        )
        .failed());
    }

    #[test]
    fn a_wrapped_hwid_is_read_too() {
        // Some issuers wrap the hwID in a DER OCTET STRING; build such a VCEK from a real one.
        let der = fixture("virtee-sev/vcek_milan.der");
        let mut vcek = Certificate::from_der(&der).unwrap();
        let chip_id: [u8; 64] = {
            let raw = unique_extension(&vcek, &oid::HW_ID).unwrap().unwrap();
            raw.try_into().unwrap()
        };
        for extension in vcek.tbs_certificate.extensions.iter_mut().flatten() {
            if extension.extn_id == oid::HW_ID {
                let wrapped = OctetStringRef::new(&chip_id).unwrap().to_der().unwrap();
                extension.extn_value = x509_cert::der::asn1::OctetString::new(wrapped).unwrap();
            }
        }
        assert_eq!(
            check_vcek_hwid(&vcek, &chip_id, Product::Milan).outcome,
            Outcome::Pass
        );
        let mut other = chip_id;
        other[63] ^= 1;
        assert!(check_vcek_hwid(&vcek, &other, Product::Milan).failed());
    }

    #[test]
    fn product_names() {
        assert_eq!(Product::from_amd_name("Milan-B0"), Some(Product::Milan));
        assert_eq!(Product::from_amd_name("Genoa"), Some(Product::Genoa));
        assert_eq!(Product::from_amd_name("SEV-Turin"), Some(Product::Turin));
        assert_eq!(
            Product::from_amd_name("SEV-VLEK-Genoa"),
            Some(Product::Genoa)
        );
        assert_eq!(Product::from_amd_name("Naples"), None);
        assert_eq!(Product::from_amd_name(""), None);
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }

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
