//! The committed JSON Schemas (`schemas/json/`) and the golden example messages
//! (`schemas/examples/`): the schemas are fresh, the examples validate against them, round-trip
//! through the Rust types and pass the job checks.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dtee_schemas::job::decode_base64;
use dtee_schemas::{canonical, json_schema, parse_job, Digest, ErrorCode, JobResult, JobSpec};
use serde_json::{json, Value};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json_dir() -> PathBuf {
    crate_dir().join("json")
}

/// `file name -> (raw bytes, value)` of every `schemas/examples/*.json`.
fn examples() -> BTreeMap<String, (Vec<u8>, Value)> {
    let dir = crate_dir().join("examples");
    let mut examples = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".json") {
            continue;
        }
        let bytes = fs::read(dir.join(&name)).unwrap();
        let value = canonical::parse_strict(&bytes)
            .unwrap_or_else(|error| panic!("examples/{name} is not strict JSON: {error}"));
        examples.insert(name, (bytes, value));
    }
    for required in [
        "job-saxpy-inline.json",
        "job-sha256-blob.json",
        "job-with-limits-and-state.json",
        "result-succeeded.json",
        "result-failed.json",
    ] {
        assert!(
            examples.contains_key(required),
            "examples/{required} is missing"
        );
    }
    examples
}

/// The schema `file` (e.g. `job.v1.schema.json`) as generated; `json_schemas_are_fresh` checks
/// that the committed copy in `schemas/json/` is the same.
fn schema(file: &str) -> Value {
    json_schema::all()
        .into_iter()
        .find_map(|(name, schema)| (name == file).then_some(schema))
        .unwrap_or_else(|| panic!("json_schema::all() has no {file}"))
}

fn validator(file: &str) -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema(file))
        .unwrap_or_else(|error| panic!("{file} is not a usable schema: {error}"))
}

/// Every schema error for `instance`, one per line.
fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|error| format!("at {}: {error}", error.instance_path))
        .collect()
}

#[test]
fn json_schemas_are_fresh() {
    let bless = std::env::var("DTEE_BLESS").is_ok_and(|value| value == "1");
    let dir = json_dir();
    let mut stale = Vec::new();
    for (file, schema) in json_schema::all() {
        assert!(
            jsonschema::meta::is_valid(&schema),
            "the generated {file} is not a valid JSON Schema: {:?}",
            jsonschema::meta::validate(&schema)
                .err()
                .map(|error| error.to_string())
        );
        let rendered = json_schema::render(&schema);
        let path = dir.join(file);
        if bless {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, &rendered).unwrap();
            continue;
        }
        if fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str()) {
            stale.push(format!("schemas/json/{file}"));
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing JSON Schemas: {}.\nThey are generated from the Rust types in \
         schemas/src; regenerate them with `DTEE_BLESS=1 cargo test -p dtee-schemas` and commit \
         the result.",
        stale.join(", ")
    );
}

#[test]
fn every_example_validates_against_its_json_schema() {
    let job = validator("job.v1.schema.json");
    let result = validator("result.v1.schema.json");
    let mut failures = Vec::new();
    for (name, (_, value)) in examples() {
        let validator = if name.starts_with("job-") {
            &job
        } else if name.starts_with("result-") {
            &result
        } else {
            panic!("examples/{name}: names start with job- or result-");
        };
        for error in schema_errors(validator, &value) {
            failures.push(format!("examples/{name}: {error}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn job_examples_round_trip_and_are_valid_jobs() {
    for (name, (bytes, value)) in examples() {
        if !name.starts_with("job-") {
            continue;
        }
        let spec: JobSpec = serde_json::from_value(value.clone())
            .unwrap_or_else(|error| panic!("examples/{name} is not a JobSpec: {error}"));
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            value,
            "examples/{name} does not round-trip through JobSpec"
        );
        spec.validate()
            .unwrap_or_else(|error| panic!("examples/{name}: {error}"));
        let parsed = parse_job(&bytes).unwrap_or_else(|error| panic!("examples/{name}: {error}"));
        assert_eq!(parsed.spec, spec, "examples/{name}");
        // The spec is written as serde writes it, so the id of the bytes and of the spec agree.
        assert_eq!(
            parsed.id,
            dtee_schemas::job_id(&spec).unwrap(),
            "examples/{name}: job id"
        );
    }
}

#[test]
fn result_examples_round_trip_and_are_consistent() {
    let examples = examples();
    let job_id = |name: &str| parse_job(&examples[name].0).unwrap().id;
    for (name, (_, value)) in &examples {
        if !name.starts_with("result-") {
            continue;
        }
        let result: JobResult = serde_json::from_value(value.clone())
            .unwrap_or_else(|error| panic!("examples/{name} is not a JobResult: {error}"));
        assert_eq!(
            &serde_json::to_value(&result).unwrap(),
            value,
            "examples/{name} does not round-trip through JobResult"
        );
        assert_eq!(
            result.error.is_some(),
            !result.succeeded(),
            "examples/{name}: error must be present exactly when the job failed"
        );
        if !result.succeeded() {
            assert!(
                result.outputs.is_empty(),
                "examples/{name}: failed with outputs"
            );
        }
        for output in &result.outputs {
            let bytes = output
                .bytes()
                .unwrap_or_else(|error| panic!("examples/{name}: {}: {error}", output.name));
            assert_eq!(
                bytes.len() as u64,
                output.size,
                "examples/{name}: {}",
                output.name
            );
            assert_eq!(
                output.digest,
                Digest::of(&bytes),
                "examples/{name}: {}",
                output.name
            );
        }
    }

    let succeeded: JobResult =
        serde_json::from_value(examples["result-succeeded.json"].1.clone()).unwrap();
    assert_eq!(succeeded.job_id, job_id("job-saxpy-inline.json"));
    // saxpy: out = a * x + y, with a = 2, x = [1, 2, 3, 4], y = [0.5; 4].
    let floats = |bytes: Vec<u8>| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
            .collect()
    };
    let job = parse_job(&examples["job-saxpy-inline.json"].0)
        .unwrap()
        .spec;
    let input = |index: usize| match &job.buffers[index] {
        dtee_schemas::job::Buffer::Input {
            inline: Some(text), ..
        } => floats(decode_base64(text).unwrap()),
        other => panic!("unexpected buffer {other:?}"),
    };
    let (x, y, a) = (input(0), input(1), job.params[0].value as f32);
    let expected: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a * x + y).collect();
    assert_eq!(
        floats(succeeded.output("out").unwrap().bytes().unwrap()),
        expected
    );

    let failed: JobResult =
        serde_json::from_value(examples["result-failed.json"].1.clone()).unwrap();
    assert_eq!(failed.job_id, job_id("job-with-limits-and-state.json"));
    assert_eq!(failed.error_code(), Some(ErrorCode::FuelExhausted));
    let resources = failed.resources.unwrap();
    assert_eq!(
        Some(resources.fuel_consumed),
        failed.limits.map(|limits| limits.fuel)
    );
}

#[test]
fn the_job_schema_refuses_what_serde_refuses() {
    let job = validator("job.v1.schema.json");
    let base = examples()["job-with-limits-and-state.json"].1.clone();
    assert!(job.is_valid(&base));
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "unknown top-level field",
            Box::new(|v| v["priority"] = json!(1)),
        ),
        (
            "unknown kernel field",
            Box::new(|v| v["kernel"]["hash"] = json!("x")),
        ),
        (
            "unknown buffer field",
            Box::new(|v| v["buffers"][0]["colour"] = json!("red")),
        ),
        (
            "unknown limit",
            Box::new(|v| v["limits"]["gpu_ms"] = json!(5)),
        ),
        (
            "wrong schema version",
            Box::new(|v| v["schema"] = json!("dtee.job/v2")),
        ),
        (
            "missing schema",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("schema");
            }),
        ),
        (
            "unknown buffer kind",
            Box::new(|v| v["buffers"][0]["kind"] = json!("secret")),
        ),
        (
            "unknown access mode",
            Box::new(|v| v["buffers"][1]["mode"] = json!("readwrite")),
        ),
        (
            "unknown format",
            Box::new(|v| v["kernel"]["format"] = json!("spirv")),
        ),
        (
            "uppercase digest",
            Box::new(|v| {
                let upper = v["kernel"]["digest"].as_str().unwrap().to_uppercase();
                v["kernel"]["digest"] = json!(upper);
            }),
        ),
        (
            "negative limit",
            Box::new(|v| v["limits"]["fuel"] = json!(-1)),
        ),
        (
            "string param value",
            Box::new(|v| v["params"][0]["value"] = json!("1")),
        ),
    ];
    for (what, mutate) in cases {
        let mut value = base.clone();
        mutate(&mut value);
        assert!(!job.is_valid(&value), "the job schema accepts: {what}");
        assert!(
            serde_json::from_value::<JobSpec>(value).is_err(),
            "serde accepts: {what}"
        );
    }
}

#[test]
fn the_result_schema_refuses_a_wrong_version_but_allows_new_fields() {
    let result = validator("result.v1.schema.json");
    let base = examples()["result-failed.json"].1.clone();

    let mut wrong_version = base.clone();
    wrong_version["schema"] = json!("dtee.result/v2");
    assert!(!result.is_valid(&wrong_version));
    assert!(serde_json::from_value::<JobResult>(wrong_version).is_err());

    let mut unknown_code = base.clone();
    unknown_code["error"]["code"] = json!("out_of_coffee");
    assert!(!result.is_valid(&unknown_code));

    // Results do not deny unknown fields: newer workers may add information.
    let mut newer = base;
    newer["queue_wait_ms"] = json!(12);
    assert_eq!(schema_errors(&result, &newer), Vec::<String>::new());
    assert!(serde_json::from_value::<JobResult>(newer).is_ok());
}

#[test]
fn the_result_schema_requires_outputs_and_an_error_exactly_when_failed() {
    let result = validator("result.v1.schema.json");
    let failed = examples()["result-failed.json"].1.clone();
    let succeeded = examples()["result-succeeded.json"].1.clone();
    assert_eq!(schema_errors(&result, &failed), Vec::<String>::new());
    assert_eq!(schema_errors(&result, &succeeded), Vec::<String>::new());

    let mut no_outputs = succeeded.clone();
    no_outputs.as_object_mut().unwrap().remove("outputs");
    assert!(!result.is_valid(&no_outputs));

    let mut failed_without_error = failed.clone();
    failed_without_error
        .as_object_mut()
        .unwrap()
        .remove("error");
    assert!(!result.is_valid(&failed_without_error));

    let mut succeeded_with_error = succeeded;
    succeeded_with_error["error"] = failed["error"].clone();
    assert!(!result.is_valid(&succeeded_with_error));

    let mut null_attestation = failed;
    null_attestation["attestation"] = Value::Null;
    assert!(!result.is_valid(&null_attestation));
}

/// `null` is refused anywhere in a job (PROTOCOL.md §2), by the parser and by the schema, with
/// the field named; leaving the field out is the only way to say "absent".
#[test]
fn a_job_holding_null_is_refused_and_names_the_field() {
    let job = validator("job.v1.schema.json");
    let base = examples()["job-with-limits-and-state.json"].1.clone();
    type Mutation = fn(&mut Value);
    let cases: [(&str, Mutation); 6] = [
        ("nonce", |v| v["nonce"] = Value::Null),
        ("attestation", |v| v["attestation"] = Value::Null),
        ("launch", |v| v["launch"] = Value::Null),
        ("limits.fuel", |v| v["limits"]["fuel"] = Value::Null),
        ("limits", |v| v["limits"] = Value::Null),
        ("buffers[0].blob", |v| v["buffers"][0]["blob"] = Value::Null),
    ];
    for (path, mutate) in cases {
        let mut spec = base.clone();
        mutate(&mut spec);
        assert!(!job.is_valid(&spec), "the schema accepts null at {path}");
        let body = serde_json::to_vec(&spec).unwrap();
        match parse_job(&body) {
            Err(dtee_schemas::JobParseError::Null { path: named }) => assert_eq!(named, path),
            other => panic!("null at {path}: {other:?}"),
        }
    }
    let body = b"null";
    assert!(matches!(
        parse_job(body),
        Err(dtee_schemas::JobParseError::Null { .. })
    ));
}

/// The keeper's messages validate against their generated schemas, and a request with an
/// unknown operation or field does not.
#[test]
fn keeper_messages_match_their_schemas() {
    use dtee_schemas::secrets::{
        seal, HpkeKeyPair, KeeperErrorCode, KeeperReply, KeeperRequest, PUT_INFO,
    };
    let request = validator("keeper-request.v1.schema.json");
    let reply = validator("keeper-reply.v1.schema.json");
    let key = HpkeKeyPair::generate();
    let requests = [
        KeeperRequest::Put {
            name: "api-key".into(),
            value: seal(&key.public(), PUT_INFO, b"alice/api-key", b"v").unwrap(),
        },
        KeeperRequest::List,
        KeeperRequest::Get {
            name: "api-key".into(),
            version: Some(2),
            reply_key: key.public_hex(),
        },
        KeeperRequest::Delete {
            name: "api-key".into(),
            version: None,
        },
        KeeperRequest::SetPolicy {
            policy: "allow_software = true".into(),
        },
    ];
    for message in &requests {
        let value = serde_json::to_value(message).unwrap();
        assert_eq!(
            schema_errors(&request, &value),
            Vec::<String>::new(),
            "{value}"
        );
    }
    assert!(!request.is_valid(&json!({"op": "steal"})));
    assert!(!request.is_valid(&json!({"op": "list", "all_tenants": true})));
    let refusal = serde_json::to_value(KeeperReply::refuse(
        KeeperErrorCode::SecretReleaseDenied,
        "no policy",
    ))
    .unwrap();
    assert_eq!(schema_errors(&reply, &refusal), Vec::<String>::new());
    assert_eq!(refusal["error"]["code"], "secret_release_denied");
}
