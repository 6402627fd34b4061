//! Check names, in the order [`verify`](super::verify) returns them.

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

/// Every check [`verify`](super::verify) returns, in order.
pub const CHECK_NAMES: [&str; 18] = [
    REPORT_PARSE,
    REPORT_VERSION,
    PRODUCT,
    ARK_PINNED,
    ARK_SELF_SIGNATURE,
    ASK_SIGNATURE,
    VCEK_SIGNATURE,
    REPORT_SIGNATURE,
    ARK_VALIDITY,
    ASK_VALIDITY,
    VCEK_VALIDITY,
    VCEK_TCB,
    VCEK_HWID,
    DEBUG,
    VMPL,
    REPORT_DATA,
    MEASUREMENT,
    MIN_TCB,
];
