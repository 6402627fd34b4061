//! The Rust side of the client conformance suite (clients/conformance/README.md): the jobs of
//! `clients/conformance/jobs.json`, built with `dtee_submitter::builder`, give the canonical bytes
//! and job ids written there. The Python and Node clients check the same file with their own
//! typed helpers, so all three build the same ids for the same jobs.
//!
//! `DTEE_BLESS=1 cargo test -p dtee-submitter --test conformance` rewrites `canonical` and
//! `job_id` from the Rust builder.

use std::path::PathBuf;

use dtee_schemas::job::{AttestationRequirement, Limits};
use dtee_schemas::{Digest, JobSpec};
use dtee_submitter::builder;
use serde_json::Value;

fn jobs_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/conformance/jobs.json")
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {value}"))
        .to_owned()
}

fn from<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// Applies one helper call of the case to the spec.
fn apply(spec: &mut JobSpec, step: &Value) {
    let (helper, args) = step
        .as_object()
        .and_then(|object| object.iter().next())
        .expect("a step is an object of one helper call");
    match helper.as_str() {
        "input_f32" => {
            let values: Vec<f32> = from(&args["values"]);
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            spec.buffers
                .push(builder::inline_input(&text(args, "name"), &bytes));
        }
        "input_bytes" => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(args, "bytes"))
                .expect("standard base64");
            spec.buffers
                .push(builder::inline_input(&text(args, "name"), &bytes));
        }
        "input_blob" => {
            let digest: Digest = text(args, "digest").parse().expect("a digest");
            spec.buffers
                .push(builder::blob_input(&text(args, "name"), digest));
        }
        "output" => spec.buffers.push(builder::output(
            &text(args, "name"),
            args["size"].as_u64().expect("size"),
        )),
        "param" => spec.params.push(builder::param(
            &text(args, "name"),
            from(&args["type"]),
            args["value"].as_f64().expect("value"),
        )),
        "state" => {
            let mut buffer = builder::state(
                &text(args, "name"),
                &text(args, "key"),
                from(&args["mode"]),
                args["may_be_absent"].as_bool().expect("may_be_absent"),
            );
            if let dtee_schemas::job::Buffer::State { max_size, .. } = &mut buffer {
                *max_size = args["max_size"].as_u64();
            }
            spec.buffers.push(buffer);
        }
        "secret" => spec.buffers.push(builder::secret(
            &text(args, "name"),
            &text(args, "tenant"),
            &text(args, "secret"),
            args["version"].as_u64().expect("version"),
        )),
        "limits" => spec.limits = from::<Limits>(args),
        "attestation" => {
            spec.attestation = Some(AttestationRequirement {
                platform: from(args),
            })
        }
        "nonce" => spec.nonce = Some(args.as_str().expect("nonce").to_owned()),
        other => panic!("unknown helper {other}"),
    }
}

#[test]
fn typed_helpers_build_the_conformance_jobs() {
    let path = jobs_file();
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bless = std::env::var("DTEE_BLESS").is_ok_and(|value| value == "1");
    let mut stale = Vec::new();
    for case in file["cases"].as_array_mut().unwrap() {
        let kernel: Digest = text(case, "kernel").parse().unwrap();
        let mut spec = builder::wasm_job(kernel, &text(case, "entry"));
        // The wasm profile, given when the builder is made.
        spec.kernel.profile = case
            .get("profile")
            .map(|profile| serde_json::from_value(profile.clone()).expect("a profile name"));
        for step in case["steps"].as_array().unwrap() {
            apply(&mut spec, step);
        }
        let value = serde_json::to_value(&spec).unwrap();
        let canonical = dtee_schemas::canonical::to_canonical_vec(&value).unwrap();
        // The worker accepts the job: it is valid and its id is the digest of those bytes.
        let parsed =
            dtee_schemas::parse_job(&canonical).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        let canonical = String::from_utf8(canonical).unwrap();
        let id = parsed.id.to_string();
        assert_eq!(id, Digest::of(canonical.as_bytes()).to_string());
        if case["canonical"] != canonical.as_str() || case["job_id"] != id.as_str() {
            stale.push(text(case, "name"));
            case["canonical"] = Value::from(canonical);
            case["job_id"] = Value::from(id);
        }
    }
    if bless {
        let mut out = serde_json::to_string_pretty(&file).unwrap();
        out.push('\n');
        std::fs::write(&path, out).unwrap();
    } else {
        assert!(
            stale.is_empty(),
            "{stale:?} in {} differ from what the Rust builder makes; rerun with DTEE_BLESS=1 \
             if the change is intended (it changes every client's job ids)",
            path.display()
        );
    }
}
