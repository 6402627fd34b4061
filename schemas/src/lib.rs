//! The dtee wire protocol, shared by workers, submitters and verifiers.
//!
//! - [`attestation`] — evidence and its verification (SEV-SNP, TPM, software);
//! - [`job`] — the job spec `dtee.job/v1` and its validation;
//! - [`result`] — the result `dtee.result/v1`;
//! - [`run`] — what one run did (status, state, limits, resources), as results and execution
//!   statements both report it;
//! - [`error`] — the stable error codes of failed results;
//! - [`canonical`] — RFC 8785 canonical JSON, from which job ids are computed;
//! - [`digest`] — `sha256:` content digests;
//! - [`state`] — state keys, their Redis layout and the Redis Cluster rule;
//! - [`namespace`] — the deployment namespace and the exchange, queue and Redis key names
//!   derived from it;
//! - [`protocol`] — routing keys, headers, the worker registry entry (and the names above);
//! - `cli` (feature `cli`) — the connection flags shared by the binaries, and `redact`;
//! - [`json_schema`] — the JSON Schemas generated from these types (committed in `schemas/json/`).
//!
//! **Invariant:** this crate does no I/O. It is pure data and pure functions, so that any
//! embedding (a worker, a client, an offline verifier) can use it.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod canonical;
#[cfg(feature = "cli")]
pub mod cli;
pub mod digest;
pub mod error;
pub mod job;
pub mod json_schema;
pub mod namespace;
pub mod protocol;
pub mod result;
pub mod run;
pub mod secrets;
pub mod state;

pub use digest::Digest;
pub use error::ErrorCode;
pub use job::JobSpec;
pub use result::JobResult;

/// The most JSON values (every scalar, array and object counts one) a job may hold: far above
/// what a worker runs by default (64 buffers and 64 parameters: a few hundred values), and it
/// bounds what parsing a job allocates whatever its text (a parsed value takes at least 32
/// bytes, and `0,` is two). A worker configured for more than about 14,000 buffers or 25,000
/// parameters still receives no job of that many.
pub const MAX_JOB_VALUES: usize = 100_000;

/// Why a message is not a valid job.
#[derive(Debug, thiserror::Error)]
pub enum JobParseError {
    /// Not JSON, or JSON with duplicate keys.
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON without a canonical form (integers beyond ±2^53).
    #[error("no canonical form: {0}")]
    Canonical(#[from] canonical::CanonicalError),
    /// A `null` anywhere in the job. No field of a job takes `null`: an absent optional field is
    /// left out, and `null` would otherwise give a different id from leaving it out.
    #[error("{path} is null: leave an absent field out instead")]
    Null {
        /// Where, as `buffers[1].blob`; `the job` for a top-level `null`.
        path: String,
    },
    /// More than [`MAX_JOB_VALUES`] JSON values, refused as soon as the parser meets one more.
    #[error("the job holds more than {MAX_JOB_VALUES} JSON values")]
    TooManyValues,
    /// JSON that does not fit the schema.
    #[error("does not match dtee.job/v1: {0}")]
    Schema(serde_json::Error),
    /// A spec that fits the schema but breaks a rule the schema cannot express.
    #[error("invalid job: {0}")]
    Invalid(#[from] job::ValidationError),
}

/// A parsed, validated job and its id.
#[derive(Debug, Clone)]
pub struct ParsedJob {
    /// `sha256:` of the canonical JSON of the spec.
    pub id: Digest,
    /// The spec.
    pub spec: JobSpec,
    /// The spec's buffers, validated: inputs decoded, state keys parsed.
    pub buffers: Vec<job::CheckedBuffer>,
}

/// Parses a job message body: strict JSON, canonical id, schema, validation.
pub fn parse_job(body: &[u8]) -> Result<ParsedJob, JobParseError> {
    let value =
        canonical::parse_strict_within(body, MAX_JOB_VALUES).map_err(|error| match error {
            canonical::StrictError::TooManyValues(_) => JobParseError::TooManyValues,
            canonical::StrictError::Json(error) => JobParseError::Json(error),
        })?;
    if let Some(path) = null_path(&value) {
        return Err(JobParseError::Null { path });
    }
    // The spec is read from the canonical form, so that validity depends only on the id: `1e8`
    // and `100000000` are the same job.
    let canonical = canonical::to_canonical_vec(&value)?;
    let id = Digest::of(&canonical);
    let spec: JobSpec = serde_json::from_slice(&canonical).map_err(JobParseError::Schema)?;
    let buffers = spec.validate()?;
    Ok(ParsedJob { id, spec, buffers })
}

/// Where the first `null` in `value` is, if there is one (objects in key order), written as
/// `buffers[1].blob`, or `the job` for a top-level `null`. Linear in the size of `value`: the
/// path is written only once a `null` is found.
fn null_path(value: &serde_json::Value) -> Option<String> {
    use std::fmt::Write as _;
    let mut path = Vec::new();
    if !find_null(value, &mut path) {
        return None;
    }
    if path.is_empty() {
        return Some("the job".to_owned());
    }
    let mut written = String::new();
    for step in path.iter().rev() {
        match step {
            Step::Index(index) => {
                let _ = write!(written, "[{index}]");
            }
            Step::Name(name) => {
                if !written.is_empty() {
                    written.push('.');
                }
                written.push_str(name);
            }
        }
    }
    Some(written)
}

/// One step of the path to a `null`.
enum Step<'a> {
    Index(usize),
    Name(&'a str),
}

/// Whether `value` holds a `null`; if so, `path` holds the steps to the first one, innermost
/// first.
fn find_null<'a>(value: &'a serde_json::Value, path: &mut Vec<Step<'a>>) -> bool {
    use serde_json::Value;
    let found = |step, item, path: &mut Vec<Step<'a>>| {
        let hit = find_null(item, path);
        if hit {
            path.push(step);
        }
        hit
    };
    match value {
        Value::Null => true,
        Value::Array(items) => items
            .iter()
            .enumerate()
            .any(|(index, item)| found(Step::Index(index), item, path)),
        Value::Object(members) => members
            .iter()
            .any(|(name, item)| found(Step::Name(name), item, path)),
        _ => false,
    }
}

/// A typed spec as it is sent: its canonical JSON and its id, with the checks [`parse_job`]
/// makes of those bytes (no `null`, a canonical form, [`JobSpec::validate`]) made on the spec
/// itself, so that a client does not parse back what it just wrote. Whatever this accepts,
/// [`parse_job`] accepts with the same id (tests/fuzz.rs).
pub fn serialize_job(spec: &JobSpec) -> Result<(Vec<u8>, Digest), JobParseError> {
    let value = serde_json::to_value(spec).expect("a JobSpec always serializes");
    if canonical::count_values(&value, MAX_JOB_VALUES) > MAX_JOB_VALUES {
        return Err(JobParseError::TooManyValues);
    }
    if let Some(path) = null_path(&value) {
        return Err(JobParseError::Null { path });
    }
    let body = canonical::to_canonical_vec(&value)?;
    spec.validate()?;
    let id = Digest::of(&body);
    Ok((body, id))
}

/// The job id of a spec: the digest of its canonical JSON.
pub fn job_id(spec: &JobSpec) -> Result<Digest, canonical::CanonicalError> {
    let value = serde_json::to_value(spec).expect("a JobSpec always serializes");
    canonical::canonical_digest(&value)
}
