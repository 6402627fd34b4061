//! Property tests (proptest) over the parts that take hostile input: strict JSON parsing, job
//! parsing and validation, and canonical JSON. CI runs them with proptest's default bound (256
//! cases each); `PROPTEST_CASES=100000 cargo test -p dtee-schemas --test fuzz` runs longer.

use dtee_schemas::canonical::{parse_strict, to_canonical_vec, utf16_order};
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
    /// The fast member-name order is the UTF-16 code-unit order of RFC 8785, on names that
    /// share prefixes and mix one- to four-byte characters.
    #[test]
    fn member_names_order_by_utf16_code_units(
        prefix in "[a\u{e9}\u{e000}\u{1f600}]{0,6}",
        a in "[a-z\u{e9}\u{7ff}\u{800}\u{e000}\u{ffff}\u{10000}\u{1f600}]{0,6}",
        b in "[a-z\u{e9}\u{7ff}\u{800}\u{e000}\u{ffff}\u{10000}\u{1f600}]{0,6}",
    ) {
        let (a, b) = (format!("{prefix}{a}"), format!("{prefix}{b}"));
        prop_assert_eq!(utf16_order(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
    }

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

    /// A typed spec serialized without parsing it back ([`dtee_schemas::serialize_job`], what
    /// the client sends) is accepted exactly when `parse_job` accepts its canonical JSON, with
    /// the same bytes and id. Random values rarely make a valid spec (mostly `nonce` and small
    /// `params` do), so the rule-breaking cases are the deterministic test below.
    #[test]
    fn serialize_job_agrees_with_parse_job(
        value in json_value(),
        field in prop::sample::select(vec!["kernel", "buffers", "params", "limits", "nonce", "launch", "attestation"]),
    ) {
        let mut job = serde_json::json!({
            "schema": "dtee.job/v1",
            "kernel": {"digest": format!("sha256:{}", "ab".repeat(32)), "format": "wasm", "entry": "run", "target": "wasm"},
            "buffers": [{"kind": "output", "name": "out", "size": 8}]
        });
        job[field] = value;
        if let Ok(spec) = serde_json::from_value::<dtee_schemas::JobSpec>(job) {
            let written = serde_json::to_value(&spec).unwrap();
            let reparsed = to_canonical_vec(&written)
                .map_err(dtee_schemas::JobParseError::from)
                .and_then(|body| dtee_schemas::parse_job(&body).map(|parsed| (body, parsed.id)));
            match (dtee_schemas::serialize_job(&spec), reparsed) {
                (Ok(direct), Ok(reparsed)) => prop_assert_eq!(direct, reparsed),
                (Err(_), Err(_)) => {}
                (direct, reparsed) => prop_assert!(
                    false,
                    "serialize_job: {:?}, parse_job: {:?}",
                    direct.map(|(_, id)| id),
                    reparsed.map(|(_, id)| id)
                ),
            }
        }
    }
}

/// Specs that fit the schema but break its rules are refused by `serialize_job` as `parse_job`
/// refuses their JSON, and valid ones get the same bytes and id.
#[test]
fn serialize_job_refuses_what_parse_job_refuses() {
    let kernel = serde_json::json!({"digest": format!("sha256:{}", "ab".repeat(32)), "format": "wasm", "entry": "run", "target": "wasm"});
    let out = serde_json::json!({"kind": "output", "name": "out", "size": 8});
    let cases = [
        (serde_json::json!([out, out]), false),
        (
            serde_json::json!([{"kind": "output", "name": "", "size": 8}]),
            false,
        ),
        (
            serde_json::json!([{"kind": "input", "name": "in", "inline": "not base64!"}, out]),
            false,
        ),
        (
            serde_json::json!([{"kind": "input", "name": "in", "inline": "aGk="}, out]),
            true,
        ),
        (serde_json::json!([out]), true),
    ];
    let param = |ty: &str, value: serde_json::Value| serde_json::json!([{"name": "a", "type": ty, "value": value}]);
    let params = [
        (param("f32", serde_json::json!(-0.0)), true),
        (param("f64", serde_json::json!(1e300)), true),
        (param("u32", serde_json::json!(4294967296u64)), false),
        (param("i64", serde_json::json!(1e17)), false),
        (param("u32", serde_json::json!(1.5)), false),
    ];
    let jobs = cases
        .into_iter()
        .map(|(buffers, valid)| (serde_json::json!({"schema": "dtee.job/v1", "kernel": kernel, "buffers": buffers}), valid))
        .chain(params.into_iter().map(|(params, valid)| {
            (serde_json::json!({"schema": "dtee.job/v1", "kernel": kernel, "buffers": [out], "params": params}), valid)
        }));
    for (job, valid) in jobs {
        let spec: dtee_schemas::JobSpec = serde_json::from_value(job.clone()).unwrap();
        // What parse_job sees: the JSON the typed spec writes.
        let written = serde_json::to_value(&spec).unwrap();
        let parsed = to_canonical_vec(&written)
            .map_err(dtee_schemas::JobParseError::from)
            .and_then(|body| dtee_schemas::parse_job(&body).map(|parsed| (body, parsed.id)));
        assert_eq!(parsed.is_ok(), valid, "parse_job of {job}");
        match dtee_schemas::serialize_job(&spec) {
            Ok(direct) => {
                assert!(valid, "serialize_job accepted {job}");
                assert_eq!(direct, parsed.unwrap());
            }
            Err(error) => assert!(!valid, "serialize_job refused {job}: {error}"),
        }
    }
    // A NaN parameter, which JSON cannot carry, is written as null and refused.
    let mut spec: dtee_schemas::JobSpec = serde_json::from_value(
        serde_json::json!({"schema": "dtee.job/v1", "kernel": kernel, "buffers": [out], "params": param("f32", 1.0.into())}),
    )
    .unwrap();
    spec.params[0].value = f64::NAN;
    assert!(matches!(
        dtee_schemas::serialize_job(&spec),
        Err(dtee_schemas::JobParseError::Null { .. })
    ));
}

/// A job's JSON values are counted as it is parsed: `[0,0,…]` takes two bytes of text per value
/// and 32 bytes or more once parsed, so a 16 MiB message could otherwise take 256 MiB. Refused
/// past `MAX_JOB_VALUES` by both `parse_job` and `serialize_job`, and accepted at the limit.
#[test]
fn a_job_of_too_many_json_values_is_refused_by_both_paths() {
    use dtee_schemas::{JobParseError, MAX_JOB_VALUES};
    let kernel = serde_json::json!({"digest": format!("sha256:{}", "ab".repeat(32)), "format": "wasm", "entry": "run", "target": "wasm"});
    let out = serde_json::json!({"kind": "output", "name": "out", "size": 8});
    let param =
        |index: usize| serde_json::json!({"name": format!("p{index}"), "type": "u32", "value": 1});
    // Top level, schema, kernel and its 4 fields, buffers and `out` with its 3 fields, params:
    // 13 values, then 4 per parameter (the object and its three fields).
    let job = |params: usize| serde_json::json!({"schema": "dtee.job/v1", "kernel": kernel, "buffers": [out], "params": (0..params).map(param).collect::<Vec<_>>()});
    let fits = (MAX_JOB_VALUES - 13) / 4;
    let cases = [(fits, true), (fits + 1, false)];
    for (params, valid) in cases {
        let value = job(params);
        assert_eq!(
            dtee_schemas::canonical::count_values(&value, MAX_JOB_VALUES) <= MAX_JOB_VALUES,
            valid
        );
        let body = to_canonical_vec(&value).unwrap();
        match dtee_schemas::parse_job(&body) {
            Err(JobParseError::TooManyValues) => assert!(!valid, "{params} parameters refused"),
            Err(error) => panic!("{params} parameters: {error}"),
            Ok(parsed) => {
                assert!(valid, "{params} parameters accepted");
                assert_eq!(parsed.spec.params.len(), params);
            }
        }
        let spec: dtee_schemas::JobSpec = serde_json::from_value(value).unwrap();
        match dtee_schemas::serialize_job(&spec) {
            Err(JobParseError::TooManyValues) => assert!(!valid),
            Err(error) => panic!("{params} parameters: {error}"),
            Ok((written, _)) => assert_eq!(written, body),
        }
    }
    // Anything, not only a job: an array of MAX_JOB_VALUES zeros is one value too many.
    let zeros = format!("[{}0]", "0,".repeat(MAX_JOB_VALUES - 1));
    assert!(matches!(
        dtee_schemas::parse_job(zeros.as_bytes()),
        Err(JobParseError::TooManyValues)
    ));
    assert!(matches!(
        dtee_schemas::canonical::parse_strict_within(zeros.as_bytes(), MAX_JOB_VALUES + 1),
        Ok(Value::Array(items)) if items.len() == MAX_JOB_VALUES
    ));
}

/// Finding the first `null` is linear in the job's size: its path is written once, when the
/// `null` is found. Written for every value on the way (as it was), this job, a 1 MiB member
/// name over 90,000 numbers, copied the name 90,000 times: 94 GB, hours of one worker thread
/// for one message.
#[test]
fn the_first_null_of_a_large_job_is_found_without_copying_its_path_per_value() {
    let name = "n".repeat(1 << 20);
    let body = format!("{{\"{name}\":[{}null]}}", "0,".repeat(90_000));
    let started = std::time::Instant::now();
    let refused = dtee_schemas::parse_job(body.as_bytes());
    // Generous: seconds against hours; a bound on the algorithm, not a benchmark.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    match refused {
        Err(dtee_schemas::JobParseError::Null { path }) => {
            assert_eq!(path, format!("{name}[90000]"));
        }
        other => panic!("expected the null to be found, got {other:?}"),
    }
}
