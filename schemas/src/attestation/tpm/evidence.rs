//! TPM evidence as a worker publishes it, and the PCR arithmetic a policy is written with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The PCR bank quotes use.
pub const PCR_BANK: &str = "sha256";

/// One PCR and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PcrValue {
    /// The PCR index, 0 to 23 on common TPMs.
    pub index: u32,
    /// Its value, hex (32 bytes for the SHA-256 bank).
    pub value: String,
}

impl PcrValue {
    /// A PCR value from raw bytes.
    pub fn new(index: u32, value: &[u8]) -> PcrValue {
        PcrValue {
            index,
            value: hex::encode(value),
        }
    }
}

/// A TPM quote binding a worker key, as a worker publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmEvidence {
    /// The attestation key's `TPMT_PUBLIC`, marshalled, base64. A policy pins the SHA-256 of
    /// these bytes ([`ak_fingerprint`]).
    #[serde(with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub ak_public: Vec<u8>,
    /// The quote's `TPMS_ATTEST`, marshalled, base64: the message the AK signed.
    #[serde(with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub quote: Vec<u8>,
    /// The quote's `TPMT_SIGNATURE`, marshalled, base64.
    #[serde(with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub signature: Vec<u8>,
    /// The PCR bank quoted: always `sha256`.
    pub pcr_bank: String,
    /// The quoted PCRs and their values, in the quote's selection order (ascending index).
    pub pcrs: Vec<PcrValue>,
    /// The nonce mixed into the qualifying data, base64.
    #[serde(with = "crate::attestation::serde_base64")]
    #[schemars(with = "String", extend("contentEncoding" = "base64"))]
    pub nonce: Vec<u8>,
}

/// The fingerprint by which a policy pins an attestation key: hex SHA-256 of its marshalled
/// `TPMT_PUBLIC`.
pub fn ak_fingerprint(ak_public: &[u8]) -> String {
    hex::encode(Sha256::digest(ak_public))
}

/// `TPM2_PCR_Extend` in the SHA-256 bank: SHA-256(old ‖ digest).
pub fn pcr_extend(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(old);
    hasher.update(digest);
    hasher.finalize().into()
}

/// The value of the measurement PCR once a worker has reset it and extended it with its
/// measurement, hex: what a policy requires to pin the worker's measurement.
pub fn measurement_pcr_value(measurement: &[u8; 32]) -> String {
    hex::encode(pcr_extend(&[0; 32], measurement))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_pcr_value_is_one_extend_from_zero() {
        let measurement = [7u8; 32];
        let mut hasher = Sha256::new();
        hasher.update([0u8; 32]);
        hasher.update(measurement);
        assert_eq!(
            measurement_pcr_value(&measurement),
            hex::encode(hasher.finalize())
        );
    }
}
