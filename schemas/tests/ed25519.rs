//! Runs `schemas/vectors/ed25519/vectors.json` against the verifier's Ed25519 rule
//! (ATTESTATION.md §5). Client libraries run the same file.

use dtee_schemas::attestation::dsse::verify_ed25519;
use serde_json::Value;

#[test]
fn ed25519_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/ed25519/vectors.json");
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.iter().filter(|case| case["valid"] == true).count() >= 2);
    assert!(cases.iter().filter(|case| case["valid"] == false).count() >= 6);
    for case in cases {
        let bytes = |field: &str| hex::decode(case[field].as_str().unwrap()).unwrap();
        let key: [u8; 32] = bytes("public_key").try_into().unwrap();
        let verdict = verify_ed25519(&key, &bytes("message"), &bytes("signature"));
        assert_eq!(
            verdict.is_ok(),
            case["valid"] == true,
            "{}: {verdict:?} ({})",
            case["name"],
            case["why"]
        );
    }
}
