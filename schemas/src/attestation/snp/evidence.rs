//! The evidence an SNP guest publishes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Evidence from an SNP guest: the raw attestation report and the certificates that sign it.
///
/// On the wire every field is standard padded base64: `report`, `vcek`, and optionally `ask` and
/// `ark`. The verifier always anchors on its pinned ARK, which an `ark` here must equal. Without
/// `ask` it uses its pinned ASK (ASVK for a VLEK); an `ask` here must be that certificate, or one
/// with the same subject that the pinned ARK signs (so that a reissued ASK still verifies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnpEvidence {
    /// The attestation report exactly as the firmware returned it (1184 bytes).
    #[serde(with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub report: Vec<u8>,
    /// The DER certificate of the key that signed the report: the VCEK, or the VLEK when the
    /// report says it is VLEK-signed.
    #[serde(rename = "vcek", with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub vcek_der: Vec<u8>,
    /// The DER ASK (the ASVK for a VLEK), if the guest supplied it.
    #[serde(
        rename = "ask",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::attestation::serde_base64::option"
    )]
    #[schemars(with = "Option<String>", extend("contentEncoding" = "base64"))]
    pub ask_der: Option<Vec<u8>>,
    /// The DER ARK, if the guest supplied it; it must be AMD's pinned ARK.
    #[serde(
        rename = "ark",
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::attestation::serde_base64::option"
    )]
    #[schemars(with = "Option<String>", extend("contentEncoding" = "base64"))]
    pub ark_der: Option<Vec<u8>>,
}
