//! DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1): a payload, its
//! type, and signatures over the pre-authentication encoding (PAE) of both.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Payload type of dtee execution attestations.
pub const EXECUTION_PAYLOAD_TYPE: &str = "application/vnd.dtee.execution+json";

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
    /// What the payload is.
    pub payload_type: String,
    /// Signatures over `pae(payload_type, payload bytes)`.
    pub signatures: Vec<Signature>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signature {
    /// Which key signed: `ed25519:` + hex of the public key.
    pub keyid: String,
    /// The Ed25519 signature, base64.
    pub sig: String,
}

/// The pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`, with
/// lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The key id of an Ed25519 public key.
pub fn keyid(public_key: &[u8; 32]) -> String {
    format!("ed25519:{}", hex::encode(public_key))
}

impl Envelope {
    /// Signs `payload` with `key`.
    pub fn sign(payload_type: &str, payload: &[u8], key: &ed25519_dalek::SigningKey) -> Envelope {
        use ed25519_dalek::Signer as _;
        let signature = key.sign(&pae(payload_type, payload));
        Envelope {
            payload: crate::job::encode_base64(payload),
            payload_type: payload_type.to_owned(),
            signatures: vec![Signature {
                keyid: keyid(&key.verifying_key().to_bytes()),
                sig: crate::job::encode_base64(&signature.to_bytes()),
            }],
        }
    }

    /// The payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        crate::job::decode_base64(&self.payload)
            .map_err(|error| format!("payload is not base64: {error}"))
    }

    /// Verifies that some signature is a valid Ed25519 signature by `public_key` over the PAE,
    /// under [`verify_ed25519`]'s rule.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), String> {
        let payload = self.payload_bytes()?;
        let message = pae(&self.payload_type, &payload);
        let wanted = keyid(public_key);
        let mut reasons = Vec::new();
        for signature in self.signatures.iter().filter(|s| s.keyid == wanted) {
            match crate::job::decode_base64(&signature.sig) {
                Ok(bytes) => match verify_ed25519(public_key, &message, &bytes) {
                    Ok(()) => return Ok(()),
                    Err(why) => reasons.push(why),
                },
                Err(error) => reasons.push(format!("signature is not base64: {error}")),
            }
        }
        if reasons.is_empty() {
            Err(format!("no signature by {wanted}"))
        } else {
            Err(reasons.join("; "))
        }
    }
}

/// Ed25519 verification under dtee's strict rule (ATTESTATION.md §5), which clients in other
/// languages follow and `schemas/vectors/ed25519/` pins:
///
/// - the signature is 64 bytes, `R ‖ S`, and `S` (little-endian) is below the group order `L`;
/// - the public key `A` is a canonical point encoding (`y < p`, and `x = 0` only with the sign
///   bit clear), and neither `A` nor `R` is of small order (order 1, 2, 4 or 8);
/// - the encoding of `[S]B − [k]A` equals `R` byte for byte, with `k = SHA-512(R ‖ A ‖ M) mod L`
///   (the cofactorless equation; a non-canonical `R` therefore never matches).
///
/// That is ed25519-dalek's `verify_strict` plus the canonical check of `A`, which dalek's key
/// decoding does not make.
pub fn verify_ed25519(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .map_err(|error| format!("the public key is not a valid Ed25519 key: {error}"))?;
    if key.to_edwards().compress().to_bytes() != *public_key {
        return Err("the public key is not a canonical point encoding".to_owned());
    }
    let signature =
        <[u8; 64]>::try_from(signature).map_err(|_| "signature is not 64 bytes".to_owned())?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|error| format!("signature does not verify: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn a_signed_envelope_verifies_and_any_change_breaks_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key().to_bytes();
        let envelope = Envelope::sign(EXECUTION_PAYLOAD_TYPE, b"{\"a\":1}", &key);
        envelope.verify(&public).unwrap();
        let mut other_type = envelope.clone();
        other_type.payload_type = "text/plain".to_owned();
        assert!(other_type.verify(&public).is_err());
        let mut other_payload = envelope.clone();
        other_payload.payload = crate::job::encode_base64(b"{\"a\":2}");
        assert!(other_payload.verify(&public).is_err());
        let other_key = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(envelope.verify(&other_key).is_err());
    }
}
