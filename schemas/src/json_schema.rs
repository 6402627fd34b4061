//! JSON Schemas generated from the protocol types.
//!
//! The generated files are committed in `schemas/json/`; the test `json_schemas_are_fresh`
//! fails when they are stale. Regenerate with `DTEE_BLESS=1 cargo test -p dtee-schemas` and
//! commit the result.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::Schema;
use serde_json::Value;

/// `(file name, schema)` for every generated schema.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    let generator = || {
        SchemaSettings::draft2020_12()
            .with_transform(RecursiveTransform(without_null))
            .into_generator()
    };
    vec![
        (
            "job.v1.schema.json",
            generator()
                .into_root_schema_for::<crate::job::JobSpec>()
                .to_value(),
        ),
        (
            "execution.v1.schema.json",
            generator()
                .into_root_schema_for::<crate::attestation::execution::ExecutionStatement>()
                .to_value(),
        ),
        (
            "result.v1.schema.json",
            generator()
                .into_root_schema_for::<crate::result::JobResult>()
                .to_value(),
        ),
        (
            "keeper-request.v1.schema.json",
            generator()
                .into_root_schema_for::<crate::secrets::KeeperRequest>()
                .to_value(),
        ),
        (
            "keeper-reply.v1.schema.json",
            generator()
                .into_root_schema_for::<crate::secrets::KeeperReply>()
                .to_value(),
        ),
    ]
}

/// Takes `null` out of what a field may hold. dtee never writes `null`: an absent optional field
/// is left out, and a job holding `null` is refused (`JobParseError::Null`), because `null`
/// would give a different job id from leaving the field out.
fn without_null(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|ty| ty != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            object.insert("type".to_owned(), only);
        }
    }
    if let Some(Value::Array(variants)) = object.get_mut("anyOf") {
        variants.retain(|variant| *variant != serde_json::json!({"type": "null"}));
        if variants.len() == 1 {
            let Some(Value::Object(only)) = variants.pop() else {
                return;
            };
            object.remove("anyOf");
            for (key, value) in only {
                object.entry(key).or_insert(value);
            }
        }
    }
}

/// The text of a generated schema file, as committed.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}
