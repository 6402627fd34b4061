//! TPM quote verification against a real quote: `data/tpm/quote.json` was produced by swtpm
//! through the worker's TPM provider (regenerate it with
//! `DTEE_TPM_VECTOR_OUT=schemas/tests/data/tpm cargo test -p dtee-worker --test tpm writes_a_test_vector`).
//! It holds the evidence, the worker public key and the measurement the PCR was extended with.

use dtee_schemas::attestation::tpm::{self, PcrValue, TpmEvidence, TpmPolicy};
use dtee_schemas::attestation::{Check, Outcome};
use serde_json::Value;

const MEASUREMENT_PCR: u32 = 23;

struct Vector {
    evidence: TpmEvidence,
    worker_key: Vec<u8>,
    measurement: [u8; 32],
    ak_fingerprint: String,
}

fn vector() -> Vector {
    let value: Value = serde_json::from_str(include_str!("data/tpm/quote.json")).unwrap();
    let text = |name: &str| value[name].as_str().unwrap().to_owned();
    Vector {
        evidence: serde_json::from_value(value["evidence"].clone()).unwrap(),
        worker_key: hex::decode(text("worker_public_key")).unwrap(),
        measurement: hex::decode(text("measurement"))
            .unwrap()
            .try_into()
            .unwrap(),
        ak_fingerprint: text("ak_fingerprint"),
    }
}

/// The policy a verifier of this worker would hold: its AK and its measurement.
fn policy(vector: &Vector) -> TpmPolicy {
    TpmPolicy {
        allowed_aks: vec![vector.ak_fingerprint.clone()],
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: tpm::measurement_pcr_value(&vector.measurement),
        }],
        measurement_pcr: None,
    }
}

fn failed(checks: &[Check]) -> Vec<&str> {
    checks
        .iter()
        .filter(|check| check.failed())
        .map(|check| check.name.as_str())
        .collect()
}

fn verify_failures(vector: &Vector, evidence: &TpmEvidence, policy: &TpmPolicy) -> Vec<String> {
    failed(&tpm::verify(evidence, &vector.worker_key, policy))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn accepts_the_real_quote() {
    let vector = vector();
    let checks = tpm::verify(&vector.evidence, &vector.worker_key, &policy(&vector));
    let names: Vec<&str> = checks.iter().map(|check| check.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tpm.ak_pinned",
            "tpm.ak_public",
            "tpm.signature",
            "tpm.quote_format",
            "tpm.qualifying_data",
            "tpm.pcr_selection",
            "tpm.pcr_digest",
            "tpm.pcr_values",
        ]
    );
    assert!(
        checks.iter().all(|check| check.outcome == Outcome::Pass),
        "{checks:#?}"
    );
}

#[test]
fn the_vector_is_consistent() {
    let vector = vector();
    assert_eq!(
        tpm::ak_fingerprint(&vector.evidence.ak_public),
        vector.ak_fingerprint
    );
    tpm::check_ak_public(&vector.evidence.ak_public).unwrap();
    let indices: Vec<u32> = vector.evidence.pcrs.iter().map(|pcr| pcr.index).collect();
    assert_eq!(indices, [0, MEASUREMENT_PCR]);
    assert_eq!(
        vector.evidence.pcrs[1].value,
        tpm::measurement_pcr_value(&vector.measurement)
    );
}

#[test]
fn without_required_pcrs_the_value_check_is_skipped() {
    let vector = vector();
    let policy = TpmPolicy {
        pcrs: Vec::new(),
        ..policy(&vector)
    };
    let checks = tpm::verify(&vector.evidence, &vector.worker_key, &policy);
    assert!(failed(&checks).is_empty(), "{checks:#?}");
    let values = checks
        .iter()
        .find(|check| check.name == "tpm.pcr_values")
        .unwrap();
    assert!(matches!(values.outcome, Outcome::Skipped(_)));
}

#[test]
fn rejects_another_pinned_ak() {
    let vector = vector();
    let other = TpmPolicy {
        allowed_aks: vec![tpm::ak_fingerprint(b"another key")],
        ..policy(&vector)
    };
    assert_eq!(
        verify_failures(&vector, &vector.evidence, &other),
        ["tpm.ak_pinned"]
    );
    let none = TpmPolicy {
        allowed_aks: Vec::new(),
        ..policy(&vector)
    };
    assert_eq!(
        verify_failures(&vector, &vector.evidence, &none),
        ["tpm.ak_pinned"]
    );
    // Fingerprints compare without regard to case.
    let upper = TpmPolicy {
        allowed_aks: vec![vector.ak_fingerprint.to_uppercase()],
        ..policy(&vector)
    };
    assert!(verify_failures(&vector, &vector.evidence, &upper).is_empty());
}

#[test]
fn rejects_any_flipped_byte_in_the_quote() {
    let vector = vector();
    for index in 0..vector.evidence.quote.len() {
        let mut evidence = vector.evidence.clone();
        evidence.quote[index] ^= 0x01;
        let failures = verify_failures(&vector, &evidence, &policy(&vector));
        assert!(
            failures.contains(&"tpm.signature".to_owned()),
            "byte {index}: {failures:?}"
        );
    }
}

#[test]
fn rejects_any_flipped_byte_in_the_signature() {
    let vector = vector();
    for index in 0..vector.evidence.signature.len() {
        let mut evidence = vector.evidence.clone();
        evidence.signature[index] ^= 0x01;
        let failures = verify_failures(&vector, &evidence, &policy(&vector));
        assert_eq!(failures, ["tpm.signature"], "byte {index}");
    }
}

#[test]
fn rejects_a_changed_ak_public() {
    let vector = vector();
    let n = vector.evidence.ak_public.len();
    for index in 0..n {
        let mut evidence = vector.evidence.clone();
        evidence.ak_public[index] ^= 0x01;
        // Any change leaves the pinned key.
        let failures = verify_failures(&vector, &evidence, &policy(&vector));
        assert!(
            failures.contains(&"tpm.ak_pinned".to_owned()),
            "byte {index}: {failures:?}"
        );
        // Pinned anew, a changed point did not make the signature (or is no P-256 point). Other
        // bytes describe the key; only the pin vouches for them, which is why a fingerprint
        // must come from the TPM itself, never from the evidence being checked.
        if index >= n - 66 && !(n - 34..n - 32).contains(&index) {
            let pinned = TpmPolicy {
                allowed_aks: vec![tpm::ak_fingerprint(&evidence.ak_public)],
                ..policy(&vector)
            };
            let failures = verify_failures(&vector, &evidence, &pinned);
            assert!(
                failures.contains(&"tpm.signature".to_owned()),
                "byte {index}: {failures:?}"
            );
        }
    }
}

#[test]
fn rejects_an_ak_that_may_decrypt_or_is_not_restricted() {
    let vector = vector();
    // objectAttributes is the big-endian u32 at offset 4 of TPMT_PUBLIC.
    for (bit, why) in [
        (1u32 << 17, "decrypt"),
        (1 << 16, "restricted"),
        (1 << 18, "sign"),
        (1 << 1, "fixedTPM"),
    ] {
        let mut ak_public = vector.evidence.ak_public.clone();
        let attributes = u32::from_be_bytes(ak_public[4..8].try_into().unwrap()) ^ bit;
        ak_public[4..8].copy_from_slice(&attributes.to_be_bytes());
        let error = tpm::check_ak_public(&ak_public).unwrap_err();
        assert!(error.contains(why), "{error}");
    }
}

#[test]
fn rejects_the_quote_for_another_worker_key_or_nonce() {
    let vector = vector();
    let mut other_key = vector.worker_key.clone();
    other_key[0] ^= 0x01;
    let checks = tpm::verify(&vector.evidence, &other_key, &policy(&vector));
    assert_eq!(failed(&checks), ["tpm.qualifying_data"]);

    let mut evidence = vector.evidence.clone();
    evidence.nonce[0] ^= 0x01;
    assert_eq!(
        verify_failures(&vector, &evidence, &policy(&vector)),
        ["tpm.qualifying_data"]
    );
    evidence.nonce.clear();
    assert_eq!(
        verify_failures(&vector, &evidence, &policy(&vector)),
        ["tpm.qualifying_data"]
    );
}

#[test]
fn rejects_a_flipped_byte_in_extra_data() {
    let vector = vector();
    // TPMS_ATTEST: magic (4), type (2), qualifiedSigner (TPM2B), extraData (TPM2B).
    let quote = &vector.evidence.quote;
    let signer_size = usize::from(u16::from_be_bytes([quote[6], quote[7]]));
    let extra_data = 8 + signer_size + 2;
    assert_eq!(
        u16::from_be_bytes([quote[extra_data - 2], quote[extra_data - 1]]),
        32
    );
    let mut evidence = vector.evidence.clone();
    evidence.quote[extra_data + 5] ^= 0x80;
    assert_eq!(
        verify_failures(&vector, &evidence, &policy(&vector)),
        ["tpm.signature", "tpm.qualifying_data"]
    );
}

#[test]
fn rejects_a_changed_pcr_value() {
    let vector = vector();
    let mut evidence = vector.evidence.clone();
    evidence.pcrs[0].value = hex::encode([0x11u8; 32]);
    assert_eq!(
        verify_failures(&vector, &evidence, &policy(&vector)),
        ["tpm.pcr_digest"]
    );

    // The measurement PCR changed to what the policy wants still fails the digest.
    let mut evidence = vector.evidence.clone();
    evidence.pcrs[1].value = tpm::measurement_pcr_value(&[0x22; 32]);
    let wanting_it = TpmPolicy {
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: evidence.pcrs[1].value.clone(),
        }],
        ..policy(&vector)
    };
    assert_eq!(
        verify_failures(&vector, &evidence, &wanting_it),
        ["tpm.pcr_digest"]
    );

    // Values that are not 32 bytes of hex.
    for bad in ["", "zz", "00", &"0".repeat(66)] {
        let mut evidence = vector.evidence.clone();
        evidence.pcrs[0].value = bad.to_owned();
        assert_eq!(
            verify_failures(
                &vector,
                &evidence,
                &TpmPolicy {
                    pcrs: Vec::new(),
                    ..policy(&vector)
                }
            ),
            ["tpm.pcr_digest"]
        );
    }
}

#[test]
fn rejects_a_required_pcr_that_does_not_match() {
    let vector = vector();
    let other_measurement = TpmPolicy {
        pcrs: vec![PcrValue {
            index: MEASUREMENT_PCR,
            value: tpm::measurement_pcr_value(&[0x33; 32]),
        }],
        ..policy(&vector)
    };
    let checks = tpm::verify(&vector.evidence, &vector.worker_key, &other_measurement);
    assert_eq!(failed(&checks), ["tpm.pcr_values"]);
    let not_quoted = TpmPolicy {
        pcrs: vec![PcrValue {
            index: 7,
            value: hex::encode([0u8; 32]),
        }],
        ..policy(&vector)
    };
    assert_eq!(
        verify_failures(&vector, &vector.evidence, &not_quoted),
        ["tpm.pcr_values"]
    );
}

/// The `tpm.measurement` check of `verify_with_measurement`, by name.
fn measurement_check(
    vector: &Vector,
    evidence: &TpmEvidence,
    claimed: &[u8; 32],
    policy: &TpmPolicy,
) -> Check {
    let checks = tpm::verify_with_measurement(evidence, &vector.worker_key, claimed, policy);
    assert_eq!(checks.len(), 9);
    checks
        .into_iter()
        .last()
        .filter(|check| check.name == "tpm.measurement")
        .unwrap()
}

fn failure(check: &Check) -> &str {
    match &check.outcome {
        Outcome::Fail(why) => why,
        other => panic!("{} did not fail: {other:?}", check.name),
    }
}

/// `tpm.measurement`: the quoted measurement PCR must hold the identity's measurement, also
/// when the policy pins no PCR value (before, such a policy accepted any measurement the
/// identity named, and `worker_measurements` trusted the identity's word).
#[test]
fn the_measurement_pcr_must_hold_the_identitys_measurement() {
    let vector = vector();
    let no_values = TpmPolicy {
        pcrs: Vec::new(),
        ..policy(&vector)
    };
    let check = measurement_check(&vector, &vector.evidence, &vector.measurement, &no_values);
    assert_eq!(check.outcome, Outcome::Pass, "{check:?}");

    let claimed = [0x33; 32];
    let check = measurement_check(&vector, &vector.evidence, &claimed, &no_values);
    assert!(failure(&check).contains("PCR 23 is"), "{check:?}");

    // A worker extending PCR 16 needs a policy naming it; PCR 16 is not in this quote.
    let pcr16 = TpmPolicy {
        measurement_pcr: Some(16),
        ..no_values.clone()
    };
    let check = measurement_check(&vector, &vector.evidence, &vector.measurement, &pcr16);
    assert!(
        failure(&check).contains("PCR 16 is not quoted"),
        "{check:?}"
    );
    let pcr0 = TpmPolicy {
        measurement_pcr: Some(0),
        ..no_values
    };
    assert!(measurement_check(&vector, &vector.evidence, &vector.measurement, &pcr0).failed());
}

/// PCR values the quote does not bind prove nothing: with a bad signature, or with the claimed
/// value put in the evidence's list (first or after the real one), `tpm.measurement` fails.
#[test]
fn the_measurement_check_fails_when_the_quote_does_not_bind_the_values() {
    let vector = vector();
    let claimed = [0x33; 32];
    let claimed_value = tpm::measurement_pcr_value(&claimed);
    let no_values = TpmPolicy {
        pcrs: Vec::new(),
        ..policy(&vector)
    };
    let mut bad_signature = vector.evidence.clone();
    let last = bad_signature.signature.len() - 1;
    bad_signature.signature[last] ^= 1;
    let check = measurement_check(&vector, &bad_signature, &vector.measurement, &no_values);
    assert!(failure(&check).contains("does not bind"), "{check:?}");

    let mut relabelled = vector.evidence.clone();
    relabelled.pcrs[1].value = claimed_value.clone();
    let check = measurement_check(&vector, &relabelled, &claimed, &no_values);
    assert!(failure(&check).contains("does not bind"), "{check:?}");

    for position in [0, 2] {
        let mut extra = vector.evidence.clone();
        extra.pcrs.insert(
            position,
            PcrValue {
                index: MEASUREMENT_PCR,
                value: claimed_value.clone(),
            },
        );
        let check = measurement_check(&vector, &extra, &claimed, &no_values);
        assert!(failure(&check).contains("does not bind"), "{check:?}");
    }
}

/// `measurement_pcr` reads from a policy file, and an unknown key is still refused.
#[test]
fn a_policy_names_its_measurement_pcr() {
    let policy: TpmPolicy =
        serde_json::from_str(r#"{"allowed_aks": ["ab"], "measurement_pcr": 16}"#).unwrap();
    assert_eq!(policy.measurement_pcr, Some(16));
    let policy: TpmPolicy = serde_json::from_str(r#"{"allowed_aks": ["ab"]}"#).unwrap();
    assert_eq!(policy.measurement_pcr, None);
    assert!(
        serde_json::from_str::<TpmPolicy>(r#"{"allowed_aks": [], "measurement_pcrs": 16}"#)
            .is_err()
    );
}

#[test]
fn rejects_a_pcr_list_that_differs_from_the_selection() {
    let vector = vector();
    let mut reordered = vector.evidence.clone();
    reordered.pcrs.reverse();
    let failures = verify_failures(&vector, &reordered, &policy(&vector));
    assert_eq!(failures, ["tpm.pcr_selection", "tpm.pcr_digest"]);

    let mut dropped = vector.evidence.clone();
    dropped.pcrs.truncate(1);
    let failures = verify_failures(
        &vector,
        &dropped,
        &TpmPolicy {
            pcrs: Vec::new(),
            ..policy(&vector)
        },
    );
    assert_eq!(failures, ["tpm.pcr_selection", "tpm.pcr_digest"]);

    let mut renamed = vector.evidence.clone();
    renamed.pcrs[0].index = 1;
    assert_eq!(
        verify_failures(&vector, &renamed, &policy(&vector)),
        ["tpm.pcr_selection"]
    );

    let mut sha1 = vector.evidence.clone();
    sha1.pcr_bank = "sha1".to_owned();
    assert_eq!(
        verify_failures(&vector, &sha1, &policy(&vector)),
        ["tpm.pcr_selection"]
    );
}

#[test]
fn truncated_or_empty_bytes_fail_without_panicking() {
    let vector = vector();
    for field in 0..3 {
        let full = match field {
            0 => vector.evidence.ak_public.len(),
            1 => vector.evidence.quote.len(),
            _ => vector.evidence.signature.len(),
        };
        for len in 0..full {
            let mut evidence = vector.evidence.clone();
            match field {
                0 => evidence.ak_public.truncate(len),
                1 => evidence.quote.truncate(len),
                _ => evidence.signature.truncate(len),
            }
            let pinned = TpmPolicy {
                allowed_aks: vec![tpm::ak_fingerprint(&evidence.ak_public)],
                ..policy(&vector)
            };
            let failures = verify_failures(&vector, &evidence, &pinned);
            assert!(
                failures.contains(&"tpm.signature".to_owned()),
                "field {field}, {len} bytes: {failures:?}"
            );
        }
        // And trailing garbage is refused too.
        let mut evidence = vector.evidence.clone();
        match field {
            0 => evidence.ak_public.push(0),
            1 => evidence.quote.push(0),
            _ => evidence.signature.push(0),
        }
        let pinned = TpmPolicy {
            allowed_aks: vec![tpm::ak_fingerprint(&evidence.ak_public)],
            ..policy(&vector)
        };
        assert!(
            !verify_failures(&vector, &evidence, &pinned).is_empty(),
            "field {field} with a trailing byte"
        );
    }
}

#[test]
fn evidence_json_is_stable() {
    let vector = vector();
    let value = serde_json::to_value(&vector.evidence).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "ak_public",
            "nonce",
            "pcr_bank",
            "pcrs",
            "quote",
            "signature"
        ]
    );
    assert!(
        value["quote"].as_str().unwrap().starts_with("/1RDR4AY"),
        "base64 of ff544347 8018"
    );
    let back: TpmEvidence = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, vector.evidence);
    // Not base64: refused.
    let mut broken = value;
    broken["quote"] = Value::from("not base64!");
    assert!(serde_json::from_value::<TpmEvidence>(broken).is_err());

    // The JSON Schema accepts it.
    let schema = serde_json::to_value(schemars::schema_for!(TpmEvidence)).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(validator.is_valid(&serde_json::to_value(&vector.evidence).unwrap()));
}

#[test]
fn policy_parses_from_json() {
    let policy: TpmPolicy = serde_json::from_value(serde_json::json!({
        "allowed_aks": ["ab"],
        "pcrs": [{ "index": 23, "value": "00" }],
    }))
    .unwrap();
    assert_eq!(policy.pcrs[0].index, 23);
    let minimal: TpmPolicy =
        serde_json::from_value(serde_json::json!({ "allowed_aks": [] })).unwrap();
    assert!(minimal.pcrs.is_empty());
}
