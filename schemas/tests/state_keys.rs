//! Runs `schemas/vectors/state-keys.json`: which state keys are accepted, their hash group and
//! Redis keys (PROTOCOL.md §3, §7). Client libraries run the same file.

use dtee_schemas::namespace::Namespace;
use dtee_schemas::state::StateKey;
use serde_json::Value;

#[test]
fn state_key_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/state-keys.json");
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let namespace = Namespace::new(file["namespace"].as_str().unwrap().to_owned()).unwrap();
    let long = format!("guest/{}", "x".repeat(251));
    assert!(StateKey::parse(&long).is_err(), "257 bytes is too long");
    assert!(
        StateKey::parse(&long[..256]).is_ok(),
        "256 bytes is allowed"
    );
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let key = case["key"].as_str().unwrap();
        let parsed = StateKey::parse(key);
        if case["valid"] == false {
            assert!(parsed.is_err(), "{key:?} is accepted: {parsed:?}");
            continue;
        }
        let parsed = parsed.unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert_eq!(parsed.tenant(), case["tenant"], "{key:?}");
        assert_eq!(parsed.group(), case["group"].as_str(), "{key:?}");
        assert_eq!(parsed.value_key(&namespace), case["value_key"], "{key:?}");
        assert_eq!(
            parsed.version_key(&namespace),
            case["version_key"],
            "{key:?}"
        );
    }
}
