use std::sync::Arc;

use super::*;
use serde_json::json;

type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

fn base() -> serde_json::Value {
    json!({
        "schema": "dtee.job/v1",
        "kernel": {
            "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "format": "wasm", "entry": "run", "target": "wasm"
        },
        "buffers": [
            {"kind": "input", "name": "x", "inline": "AAAA"},
            {"kind": "output", "name": "out", "size": 16}
        ],
        "params": [{"name": "n", "type": "u32", "value": 4}]
    })
}

fn parse(value: serde_json::Value) -> Result<JobSpec, String> {
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

#[test]
fn a_good_job_parses_and_validates() {
    parse(base()).unwrap();
}

#[test]
fn a_gpu_job_with_launch_geometry_and_sized_state_validates() {
    let mut value = base();
    value["kernel"]["format"] = json!("ptx");
    value["launch"] = json!({"grid": [4, 1, 1], "block": [256, 1, 1], "shared_mem_bytes": 1024});
    value["buffers"][1] = json!({"kind": "state", "name": "s", "key": "alice/s", "mode": "read_write", "max_size": 64});
    parse(value).unwrap();
}

#[test]
fn bad_jobs_are_refused_with_a_reason() {
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "unknown top-level field",
            Box::new(|v| v["extra"] = json!(1)),
        ),
        (
            "unknown buffer field",
            Box::new(|v| v["buffers"][0]["colour"] = json!("red")),
        ),
        (
            "wrong schema",
            Box::new(|v| v["schema"] = json!("dtee.job/v2")),
        ),
        (
            "bad base64",
            Box::new(|v| v["buffers"][0]["inline"] = json!("!!!")),
        ),
        (
            "both inline and blob",
            Box::new(|v| {
                v["buffers"][0]["blob"] = v["kernel"]["digest"].clone();
            }),
        ),
        (
            "neither inline nor blob",
            Box::new(|v| {
                v["buffers"][0].as_object_mut().unwrap().remove("inline");
            }),
        ),
        (
            "duplicate buffer",
            Box::new(|v| v["buffers"][1]["name"] = json!("x")),
        ),
        (
            "zero output",
            Box::new(|v| v["buffers"][1]["size"] = json!(0)),
        ),
        (
            "negative limit",
            Box::new(|v| v["limits"] = json!({"fuel": -1})),
        ),
        (
            "zero limit",
            Box::new(|v| v["limits"] = json!({"timeout_ms": 0})),
        ),
        (
            "fractional u32",
            Box::new(|v| v["params"][0]["value"] = json!(1.5)),
        ),
        (
            "negative u32",
            Box::new(|v| v["params"][0]["value"] = json!(-1)),
        ),
        (
            "bad digest",
            Box::new(|v| v["kernel"]["digest"] = json!("sha256:abc")),
        ),
        (
            "bad target",
            Box::new(|v| v["kernel"]["target"] = json!("WASM!")),
        ),
        (
            "fuel with the fast profile",
            Box::new(|v| {
                v["kernel"]["profile"] = json!("fast");
                v["limits"] = json!({"fuel": 1000});
            }),
        ),
        (
            "a profile on a GPU kernel",
            Box::new(|v| {
                v["kernel"]["format"] = json!("ptx");
                v["kernel"]["profile"] = json!("deterministic");
                v["launch"] = json!({"grid": [1, 1, 1], "block": [64, 1, 1]});
            }),
        ),
        (
            "an unknown profile",
            Box::new(|v| v["kernel"]["profile"] = json!("turbo")),
        ),
        (
            "launch on wasm",
            Box::new(|v| v["launch"] = json!({"grid": [1,1,1], "block": [1,1,1]})),
        ),
        (
            "ptx without launch",
            Box::new(|v| v["kernel"]["format"] = json!("ptx")),
        ),
        (
            "hsaco with a zero grid",
            Box::new(|v| {
                v["kernel"]["format"] = json!("hsaco");
                v["launch"] = json!({"grid": [0, 1, 1], "block": [64, 1, 1]});
            }),
        ),
        (
            "more than 1024 threads per block",
            Box::new(|v| {
                v["kernel"]["format"] = json!("ptx");
                v["launch"] = json!({"grid": [1, 1, 1], "block": [32, 32, 2]});
            }),
        ),
        (
            "a GPU kernel appending to state",
            Box::new(|v| {
                v["kernel"]["format"] = json!("ptx");
                v["launch"] = json!({"grid": [1, 1, 1], "block": [64, 1, 1]});
                v["buffers"][1] = json!({"kind": "state", "name": "log", "key": "alice/log", "mode": "append_only", "max_size": 64});
            }),
        ),
        (
            "a GPU kernel's writable state without max_size",
            Box::new(|v| {
                v["kernel"]["format"] = json!("ptx");
                v["launch"] = json!({"grid": [1, 1, 1], "block": [64, 1, 1]});
                v["buffers"][1] =
                    json!({"kind": "state", "name": "s", "key": "alice/s", "mode": "read_write"});
            }),
        ),
        (
            "bad buffer name",
            Box::new(|v| v["buffers"][0]["name"] = json!("1x")),
        ),
        (
            "unknown kind",
            Box::new(|v| v["buffers"][0]["kind"] = json!("secret")),
        ),
    ];
    for (what, mutate) in cases {
        let mut value = base();
        mutate(&mut value);
        assert!(parse(value).is_err(), "{what}: accepted");
    }
}

#[test]
fn a_validation_error_names_the_field_at_fault() {
    let field_of = |mutate: Mutation| {
        let mut value = base();
        mutate(&mut value);
        let spec: JobSpec = serde_json::from_value(value).unwrap();
        spec.validate().unwrap_err().field
    };
    assert_eq!(
        field_of(Box::new(|v| v["buffers"][0]["inline"] = json!("!!!"))),
        "buffers[0].inline"
    );
    assert_eq!(
        field_of(Box::new(|v| v["buffers"][1]["name"] = json!("x"))),
        "buffers[1].name"
    );
    assert_eq!(
        field_of(Box::new(|v| v["params"][0]["value"] = json!(-1))),
        "params[0].value"
    );
    assert_eq!(
        field_of(Box::new(|v| v["limits"] = json!({"fuel": 0}))),
        "limits.fuel"
    );
    assert_eq!(
        field_of(Box::new(|v| v["kernel"]["entry"] = json!(""))),
        "kernel.entry"
    );
    assert_eq!(
        field_of(Box::new(|v| {
            v["kernel"]["profile"] = json!("fast");
            v["limits"] = json!({"fuel": 5});
        })),
        "limits.fuel"
    );
}

#[test]
fn a_state_key_is_bound_once() {
    let state = |name: &str, key: &str, mode: &str| json!({"kind": "state", "name": name, "key": key, "mode": mode});
    let mut value = base();
    value["buffers"] = json!([
        state("a", "alice/log", "append_only"),
        state("b", "alice/other", "read_only"),
        state("c", "alice/log", "append_only"),
    ]);
    let spec: JobSpec = serde_json::from_value(value).unwrap();
    let error = spec.validate().unwrap_err();
    assert_eq!(error.field, "buffers[2].key");
    assert!(
        error.problem.contains("buffers[0] and buffers[2]"),
        "{}",
        error.problem
    );
    let mut value = base();
    value["buffers"] = json!([
        state("a", "alice/log", "append_only"),
        state("b", "alice/other", "read_write"),
    ]);
    let spec: JobSpec = serde_json::from_value(value).unwrap();
    assert!(spec.validate().is_ok());
}

#[test]
fn a_wasm_job_may_name_either_profile_and_leaving_it_out_is_another_job() {
    let mut ids = HashSet::new();
    for profile in [None, Some("deterministic"), Some("fast")] {
        let mut value = base();
        if let Some(profile) = profile {
            value["kernel"]["profile"] = json!(profile);
        }
        let spec = parse(value).unwrap_or_else(|e| panic!("{profile:?}: {e}"));
        assert_eq!(
            spec.kernel.profile.map(WasmProfile::as_str),
            profile,
            "the profile round-trips"
        );
        assert!(ids.insert(crate::job_id(&spec).unwrap()), "{profile:?}");
    }
}

#[test]
fn validation_decodes_inputs_and_parses_state_keys_once() {
    let mut value = base();
    value["buffers"][1] =
        json!({"kind": "state", "name": "s", "key": "alice/counter", "mode": "read_write"});
    let spec: JobSpec = serde_json::from_value(value).unwrap();
    let buffers = spec.validate().unwrap();
    assert_eq!(
        buffers[0],
        CheckedBuffer::Input {
            name: "x".into(),
            source: InputSource::Inline(Arc::from(vec![0u8, 0, 0])),
        }
    );
    match &buffers[1] {
        CheckedBuffer::State { key, mode, .. } => {
            assert_eq!(key.tenant(), "alice");
            assert_eq!(*mode, AccessMode::ReadWrite);
        }
        other => panic!("not a state buffer: {other:?}"),
    }
}
