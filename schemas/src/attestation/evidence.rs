//! What a worker publishes about itself: its key, its measurement, and the platform's evidence
//! that binds them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::platform::Platform;
use super::snp::SnpEvidence;
use super::tpm::TpmEvidence;
use crate::canonical;
use crate::digest::Digest;

/// The statement software evidence makes, verbatim: nothing vouches for it.
pub const SOFTWARE_STATEMENT: &str = "software identity: no hardware root of trust vouches for this worker; its measurement and key are self-reported";

/// Platform evidence binding a worker key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "platform", rename_all = "snake_case")]
pub enum Evidence {
    /// No hardware root: a self-reported measurement.
    Software(SoftwareEvidence),
    /// A TPM 2.0 quote by a restricted attestation key.
    Tpm(TpmEvidence),
    /// An AMD SEV-SNP attestation report and its certificates.
    Snp(SnpEvidence),
}

impl Evidence {
    /// The platform, whose written form is the evidence's `platform` tag.
    pub fn platform(&self) -> Platform {
        match self {
            Evidence::Software(_) => Platform::Software,
            Evidence::Tpm(_) => Platform::Tpm,
            Evidence::Snp(_) => Platform::Snp,
        }
    }

    /// Whether a hardware root of trust vouches for the evidence.
    pub fn is_hardware(&self) -> bool {
        self.platform().is_hardware()
    }

    /// The digest of the evidence's canonical JSON, which the execution attestation names.
    pub fn digest(&self) -> Digest {
        let value = serde_json::to_value(self).expect("evidence serializes");
        canonical::canonical_digest(&value).expect("evidence has no out-of-range integers")
    }
}

/// Software evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoftwareEvidence {
    /// Always [`SOFTWARE_STATEMENT`].
    pub statement: String,
    /// The worker's measurement (digest of its binary and effective configuration), as the
    /// worker itself reports it.
    pub measurement: Digest,
}

/// A worker's identity as it publishes it (registry) and as it travels in every result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerIdentity {
    /// The worker's id.
    pub worker_id: String,
    /// Its Ed25519 public key, hex; the private key never leaves the worker's memory.
    pub public_key: String,
    /// Digest of the worker binary and its effective configuration.
    pub measurement: Digest,
    /// When the evidence was produced, Unix milliseconds.
    pub evidence_created_at_unix_ms: u64,
    /// The platform's evidence.
    pub evidence: Evidence,
}

impl WorkerIdentity {
    /// The public key bytes, if the hex is a 32-byte key.
    pub fn public_key_bytes(&self) -> Option<[u8; 32]> {
        let bytes = hex::decode(&self.public_key).ok()?;
        bytes.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The evidence digest is taken over the canonical JSON of the evidence as received
    /// (ATTESTATION.md §3): that equals the digest of what the types write back only because
    /// evidence with a field they do not know is refused, not dropped.
    #[test]
    fn evidence_with_an_unknown_field_is_refused_and_known_evidence_digests_as_received() {
        let measurement = Digest::of(b"worker");
        let known = serde_json::json!({
            "platform": "software",
            "statement": SOFTWARE_STATEMENT,
            "measurement": measurement.to_string(),
        });
        let evidence: Evidence = serde_json::from_value(known.clone()).unwrap();
        assert_eq!(
            evidence.digest(),
            canonical::canonical_digest(&known).unwrap()
        );
        let mut extra = known;
        extra["note"] = "added in transit".into();
        assert!(serde_json::from_value::<Evidence>(extra).is_err());
    }
}
