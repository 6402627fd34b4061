//! [`verify`]: TPM evidence against a [`TpmPolicy`].

use p256::ecdsa::signature::Verifier as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::evidence::{ak_fingerprint, PcrValue, TpmEvidence, PCR_BANK};
use super::wire::{
    describe_selection, index_list, parse_ak_public, parse_pcr_value, parse_quote, parse_signature,
    TPM_ALG_SHA256,
};
use crate::attestation::{tpm_qualifying_data, Check};

/// What a verifier accepts from TPM evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmPolicy {
    /// Accepted attestation keys: hex SHA-256 of their marshalled `TPMT_PUBLIC`
    /// ([`ak_fingerprint`]). Evidence from any other key fails.
    pub allowed_aks: Vec<String>,
    /// PCR values the quote must show (SHA-256 bank); may be empty.
    #[serde(default)]
    pub pcrs: Vec<PcrValue>,
    /// The PCR the worker resets and extends with its measurement (`DTEE_TPM_PCR`); default
    /// [`DEFAULT_MEASUREMENT_PCR`]. [`verify_with_measurement`] checks that it holds the
    /// identity's measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_pcr: Option<u32>,
}

/// The measurement PCR when a policy names none: 23, the worker's default `DTEE_TPM_PCR`.
pub const DEFAULT_MEASUREMENT_PCR: u32 = 23;

/// The checks that bind `evidence.pcrs` to what the TPM signed: only when all of them pass is
/// a PCR value in the evidence one the TPM quoted.
const BINDING_CHECKS: [&str; 5] = [
    "tpm.ak_public",
    "tpm.signature",
    "tpm.quote_format",
    "tpm.pcr_selection",
    "tpm.pcr_digest",
];

/// The checks of [`verify`], then `tpm.measurement`: the quoted measurement PCR (the policy's
/// `measurement_pcr`, default 23) holds SHA-256(32 zero bytes ‖ `measurement`), the value the
/// worker sets before every quote. So an identity cannot name another measurement than the one
/// extended into a pinned TPM at quote time (which is as trustworthy as the software that may
/// use that TPM: the PCR is resettable; ATTESTATION.md §9). `tpm.measurement` fails whenever a
/// check binding the PCR values to the quote failed, since the values are then anyone's.
pub fn verify_with_measurement(
    evidence: &TpmEvidence,
    worker_public_key: &[u8],
    measurement: &[u8; 32],
    policy: &TpmPolicy,
) -> Vec<Check> {
    let mut checks = verify(evidence, worker_public_key, policy);
    let unbound = checks
        .iter()
        .any(|check| check.failed() && BINDING_CHECKS.contains(&check.name.as_str()));
    checks.push(if unbound {
        Check::fail(
            "tpm.measurement",
            "the quote does not bind the PCR values (see the failed checks above)",
        )
    } else {
        measurement_check(evidence, measurement, policy)
    });
    checks
}

fn measurement_check(evidence: &TpmEvidence, measurement: &[u8; 32], policy: &TpmPolicy) -> Check {
    let index = policy.measurement_pcr.unwrap_or(DEFAULT_MEASUREMENT_PCR);
    let expected = super::evidence::measurement_pcr_value(measurement);
    match evidence.pcrs.iter().find(|pcr| pcr.index == index) {
        None => Check::fail(
            "tpm.measurement",
            format!(
                "the measurement PCR {index} is not quoted (a worker with another DTEE_TPM_PCR \
                 needs that index as the policy's measurement_pcr)"
            ),
        ),
        Some(pcr) => Check::from_bool(
            "tpm.measurement",
            pcr.value.eq_ignore_ascii_case(&expected),
            || {
                format!(
                    "PCR {index} is {}, not one extend of the identity's measurement from zero \
                     ({expected})",
                    pcr.value
                )
            },
        ),
    }
}

/// Whether a marshalled `TPMT_PUBLIC` is an attestation key [`verify`] accepts: ECC P-256,
/// restricted, signing only, fixedTPM, ECDSA over SHA-256, SHA-256 names.
pub fn check_ak_public(ak_public: &[u8]) -> Result<(), String> {
    parse_ak_public(ak_public).map(|_| ())
}

/// Checks TPM evidence for `worker_public_key` against `policy`.
///
/// Always returns the same checks, in this order, so that a verifier can print them:
/// `tpm.ak_pinned`, `tpm.ak_public`, `tpm.signature`, `tpm.quote_format`,
/// `tpm.qualifying_data`, `tpm.pcr_selection`, `tpm.pcr_digest`, `tpm.pcr_values`. The
/// evidence is acceptable only if none fails.
pub fn verify(evidence: &TpmEvidence, worker_public_key: &[u8], policy: &TpmPolicy) -> Vec<Check> {
    let mut checks = Vec::with_capacity(8);

    // The AK is pinned by its exact public area.
    let fingerprint = ak_fingerprint(&evidence.ak_public);
    checks.push(if policy.allowed_aks.is_empty() {
        Check::fail("tpm.ak_pinned", "the policy pins no attestation key")
    } else {
        Check::from_bool(
            "tpm.ak_pinned",
            policy
                .allowed_aks
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(&fingerprint)),
            || format!("attestation key {fingerprint} is not in the policy's allowed_aks"),
        )
    });

    // The AK is an ECC P-256 restricted signing key.
    let ak = parse_ak_public(&evidence.ak_public);
    checks.push(match &ak {
        Ok(_) => Check::pass("tpm.ak_public"),
        Err(why) => Check::fail("tpm.ak_public", format!("attestation key: {why}")),
    });

    // The AK signed the quote.
    checks.push(match (&ak, parse_signature(&evidence.signature)) {
        (Err(_), _) => Check::fail("tpm.signature", "no usable attestation key"),
        (Ok(_), Err(why)) => Check::fail("tpm.signature", format!("signature: {why}")),
        (Ok(key), Ok(signature)) => Check::from_bool(
            "tpm.signature",
            key.verify(&evidence.quote, &signature).is_ok(),
            || "the signature does not verify over the quote with the attestation key".to_owned(),
        ),
    });

    // The quote is a TPM-generated quote.
    let quote = parse_quote(&evidence.quote);
    checks.push(match &quote {
        Ok(_) => Check::pass("tpm.quote_format"),
        Err(why) => Check::fail("tpm.quote_format", format!("quote: {why}")),
    });
    let Ok(quote) = quote else {
        for name in [
            "tpm.qualifying_data",
            "tpm.pcr_selection",
            "tpm.pcr_digest",
            "tpm.pcr_values",
        ] {
            checks.push(Check::fail(name, "the quote does not parse"));
        }
        return checks;
    };

    // The quote names this worker key and nonce.
    let expected = tpm_qualifying_data(worker_public_key, &evidence.nonce);
    checks.push(Check::from_bool(
        "tpm.qualifying_data",
        quote.extra_data == expected,
        || {
            format!(
                "the quote's qualifying data {} is not {} (the worker key and nonce)",
                hex::encode(&quote.extra_data),
                hex::encode(expected)
            )
        },
    ));

    // The quote selects exactly the PCRs the evidence lists, in the same order.
    let selected = quote.selected_pcrs();
    let listed: Vec<(u16, u32)> = evidence
        .pcrs
        .iter()
        .map(|pcr| (TPM_ALG_SHA256, pcr.index))
        .collect();
    checks.push(if evidence.pcr_bank != PCR_BANK {
        Check::fail(
            "tpm.pcr_selection",
            format!(
                "PCR bank {:?} is not supported (only {PCR_BANK})",
                evidence.pcr_bank
            ),
        )
    } else {
        Check::from_bool("tpm.pcr_selection", selected == listed, || {
            format!(
                "the quote selects {} but the evidence lists {PCR_BANK}:{}",
                describe_selection(&selected),
                index_list(listed.iter().map(|(_, index)| *index))
            )
        })
    });

    // The listed values are the quoted ones.
    let values: Result<Vec<[u8; 32]>, String> = evidence
        .pcrs
        .iter()
        .map(|pcr| {
            parse_pcr_value(&pcr.value).ok_or_else(|| {
                format!(
                    "PCR {} value {:?} is not 32 bytes of hex",
                    pcr.index, pcr.value
                )
            })
        })
        .collect();
    checks.push(match values {
        Err(why) => Check::fail("tpm.pcr_digest", why),
        Ok(values) => {
            let mut hasher = Sha256::new();
            for value in &values {
                hasher.update(value);
            }
            let digest = hasher.finalize();
            Check::from_bool(
                "tpm.pcr_digest",
                quote.pcr_digest == digest.as_slice(),
                || {
                    format!(
                        "the quote's PCR digest {} is not the digest of the listed values {}",
                        hex::encode(&quote.pcr_digest),
                        hex::encode(digest)
                    )
                },
            )
        }
    });

    // The policy's PCR values.
    checks.push(if policy.pcrs.is_empty() {
        Check::skipped("tpm.pcr_values", "the policy requires no PCR values")
    } else {
        let mismatches: Vec<String> = policy
            .pcrs
            .iter()
            .filter_map(|required| {
                let found = evidence.pcrs.iter().find(|pcr| pcr.index == required.index);
                match found {
                    None => Some(format!("PCR {} is not quoted", required.index)),
                    Some(pcr) if pcr.value.eq_ignore_ascii_case(&required.value) => None,
                    Some(pcr) => Some(format!(
                        "PCR {} is {}, the policy requires {}",
                        required.index, pcr.value, required.value
                    )),
                }
            })
            .collect();
        Check::from_bool("tpm.pcr_values", mismatches.is_empty(), || {
            mismatches.join("; ")
        })
    });

    checks
}
