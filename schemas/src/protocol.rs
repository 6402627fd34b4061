//! Names on the wire: exchanges, queues, routing keys, headers and Redis keys.
//!
//! Everything is derived from a [`Namespace`] (default `dtee`) so that several deployments, and
//! parallel tests, can share one broker and one Redis without seeing each other. PROTOCOL.md
//! documents the same layout for clients in other languages.

use std::fmt;

use crate::Digest;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "dtee";
/// The default AMQP URL: a local RabbitMQ with its guest user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default Redis URL: a local Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Content type of jobs and results.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// AMQP `type` property of a job message.
pub const JOB_MESSAGE_TYPE: &str = "dtee.job/v1";
/// AMQP `type` property of a result message.
pub const RESULT_MESSAGE_TYPE: &str = "dtee.result/v1";
/// Result header: `true` when the result was republished from the result cache instead of
/// being produced by a new execution.
pub const HEADER_CACHED: &str = "dtee-cached";
/// Job header: when the client published the job, Unix milliseconds (for the queue-wait
/// histogram; optional).
pub const HEADER_SUBMITTED_AT: &str = "dtee-submitted-unix-ms";
/// Result header: the id of the worker that published the message.
pub const HEADER_WORKER: &str = "dtee-worker";

/// Default delivery limit of job queues: a message delivered this many times without an ack is
/// dead-lettered.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// A validated namespace: 1 to 48 of `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// Why a namespace is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {0:?} must be 1 to 48 of a-z, 0-9, '_', '-', starting with a letter or digit")]
pub struct NamespaceError(pub String);

impl Namespace {
    /// Validates a namespace.
    pub fn new(name: impl Into<String>) -> Result<Namespace, NamespaceError> {
        let name = name.into();
        let mut bytes = name.bytes();
        let ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.len() <= 48
            && bytes
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Namespace(name))
        } else {
            Err(NamespaceError(name))
        }
    }

    /// The namespace itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Direct exchange that routes jobs by target: `<ns>.jobs`.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.0)
    }

    /// Topic exchange for results, routing key = job id: `<ns>.results`.
    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.0)
    }

    /// Fanout exchange that job queues dead-letter into: `<ns>.dead`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.0)
    }

    /// Quorum queue that holds dead-lettered jobs: `<ns>.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.0)
    }

    /// Quorum queue of one target: `<ns>.jobs.<target>`.
    pub fn job_queue(&self, target: &str) -> String {
        format!("{}.jobs.{target}", self.0)
    }

    /// Redis key of a blob (kernel or large input): `<ns>:blob:<digest>`.
    pub fn blob_key(&self, digest: &Digest) -> String {
        format!("{}:blob:{digest}", self.0)
    }

    /// Redis key of the latest failure that is not final (the job may succeed when run again,
    /// e.g. `kernel_not_found`): `<ns>:failure:<job id>`, kept briefly and overwritten.
    pub fn failure_key(&self, job_id: &Digest) -> String {
        format!("{}:failure:{job_id}", self.0)
    }

    /// Redis key that revokes a job (`dtee cancel`): `<ns>:revoked:<job id>`, with a TTL.
    pub fn revoked_key(&self, job_id: &Digest) -> String {
        format!("{}:revoked:{job_id}", self.0)
    }

    /// Redis key of a worker's registry entry (its identity and evidence, with a heartbeat
    /// TTL): `<ns>:worker:<worker id>`.
    pub fn worker_key(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.0)
    }

    /// Redis key of a cached final result: `<ns>:result:<job id>`.
    pub fn result_key(&self, job_id: &Digest) -> String {
        format!("{}:result:{job_id}", self.0)
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(DEFAULT_NAMESPACE.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The routing key of a job: its target, with the attestation platform it requires appended
/// (`wasm`, `wasm.tpm`, `wasm.snp`, `wasm.any-hardware`). Workers bind a queue for each key they
/// can serve, so a job that requires a platform only reaches workers that have it.
pub fn job_routing_key(spec: &crate::JobSpec) -> String {
    use crate::job::PlatformRequirement;
    match spec
        .attestation
        .as_ref()
        .map(|requirement| requirement.platform)
    {
        None | Some(PlatformRequirement::Any) => spec.kernel.target.clone(),
        Some(PlatformRequirement::Tpm) => format!("{}.tpm", spec.kernel.target),
        Some(PlatformRequirement::Snp) => format!("{}.snp", spec.kernel.target),
        Some(PlatformRequirement::AnyHardware) => format!("{}.any-hardware", spec.kernel.target),
    }
}

/// The routing keys a worker serves for `target` on `platform` (`software`, `tpm`, `snp`).
pub fn served_routing_keys(target: &str, platform: &str) -> Vec<String> {
    match platform {
        "tpm" | "snp" => vec![
            target.to_owned(),
            format!("{target}.{platform}"),
            format!("{target}.any-hardware"),
        ],
        _ => vec![target.to_owned()],
    }
}

/// The routing key of a result: the job id as written.
pub fn result_routing_key(job_id: &Digest) -> &str {
    job_id.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let ns = Namespace::default();
        let id = Digest::of(b"x");
        assert_eq!(ns.jobs_exchange(), "dtee.jobs");
        assert_eq!(ns.results_exchange(), "dtee.results");
        assert_eq!(ns.job_queue("wasm"), "dtee.jobs.wasm");
        assert_eq!(ns.blob_key(&id), format!("dtee:blob:{id}"));
        assert_eq!(ns.result_key(&id), format!("dtee:result:{id}"));
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "Dtee", "a.b", "a:b", "-x", &"x".repeat(49)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?}");
        }
        assert!(Namespace::new("t-1_a").is_ok());
    }
}
