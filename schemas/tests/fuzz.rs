//! Property tests (proptest) over the parts that take hostile input: strict JSON parsing, job
//! parsing and validation, and canonical JSON. CI runs them with proptest's default bound (256
//! cases each); `PROPTEST_CASES=100000 cargo test -p dtee-schemas --test fuzz` runs longer.

use dtee_schemas::canonical::{parse_strict, to_canonical_vec};
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON values whose numbers have a canonical form.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Canonical JSON is valid strict JSON, means the same value, and is a fixed point.
    #[test]
    fn canonical_form_round_trips_and_is_idempotent(value in json_value()) {
        let canonical = to_canonical_vec(&value).unwrap();
        let reparsed = parse_strict(&canonical).unwrap();
        prop_assert_eq!(to_canonical_vec(&reparsed).unwrap(), canonical.clone());
        // Numbers may change representation (1.0 and 1 are one number), nothing else.
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        prop_assert_eq!(to_canonical_vec(&parse_strict(&pretty).unwrap()).unwrap(), canonical);
    }

    /// No byte string makes job parsing panic; whatever parses also validates and has the id
    /// of its canonical form.
    #[test]
    fn parse_job_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(parsed) = dtee_schemas::parse_job(&bytes) {
            prop_assert!(parsed.spec.validate().is_ok());
        }
        let _ = parse_strict(&bytes);
    }

    /// Mutating a valid job's JSON never panics, and accepted mutations keep ids consistent.
    #[test]
    fn parse_job_survives_mutated_jobs(
        value in json_value(),
        field in prop::sample::select(vec!["schema", "kernel", "buffers", "params", "limits", "nonce", "launch", "attestation"]),
    ) {
        let mut job = serde_json::json!({
            "schema": "dtee.job/v1",
            "kernel": {"digest": format!("sha256:{}", "ab".repeat(32)), "format": "wasm", "entry": "run", "target": "wasm"},
            "buffers": [{"kind": "output", "name": "out", "size": 8}]
        });
        job[field] = value;
        let body = serde_json::to_vec(&job).unwrap();
        if let Ok(parsed) = dtee_schemas::parse_job(&body) {
            prop_assert_eq!(parsed.id, dtee_schemas::canonical::canonical_digest(&job).unwrap());
        }
    }
}
