//! JSON Schemas generated from the protocol types.
//!
//! The generated files are committed in `schemas/json/`; the test `json_schemas_are_fresh`
//! fails when they are stale. Regenerate with `DTEE_BLESS=1 cargo test -p dtee-schemas` and
//! commit the result.

use schemars::generate::SchemaSettings;

/// `(file name, schema)` for every generated schema.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    let generator = || SchemaSettings::draft2020_12().into_generator();
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
    ]
}

/// The text of a generated schema file, as committed.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}
