//! Names on the wire: exchanges, queues, routing keys, headers, Redis keys, and the worker
//! registry's entries.
//!
//! The exchange, queue and Redis key names are derived from a [`Namespace`] (re-exported from
//! [`crate::namespace`]). PROTOCOL.md documents the same layout for clients in other languages.

use serde::{Deserialize, Serialize};

use crate::attestation::evidence::WorkerIdentity;
use crate::attestation::platform::Platform;
use crate::digest::Digest;
use crate::job::{JobSpec, PlatformRequirement};

pub use crate::namespace::{Namespace, NamespaceError, DEFAULT_NAMESPACE};
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

/// Every platform requirement, in the order a worker binds the routing keys it serves.
const REQUIREMENTS: [PlatformRequirement; 4] = [
    PlatformRequirement::Any,
    PlatformRequirement::Tpm,
    PlatformRequirement::Snp,
    PlatformRequirement::AnyHardware,
];

/// The routing key of a job for `target` that requires `requirement`: the target, with the
/// platform required appended (`wasm`, `wasm.tpm`, `wasm.snp`, `wasm.any-hardware`). No
/// requirement and `any` route alike.
pub fn routing_key(target: &str, requirement: Option<PlatformRequirement>) -> String {
    match requirement {
        None | Some(PlatformRequirement::Any) => target.to_owned(),
        Some(PlatformRequirement::Tpm) => format!("{target}.tpm"),
        Some(PlatformRequirement::Snp) => format!("{target}.snp"),
        Some(PlatformRequirement::AnyHardware) => format!("{target}.any-hardware"),
    }
}

/// The routing key of a job: [`routing_key`] of its target and the platform it requires.
/// Workers bind a queue for each key they can serve, so a job that requires a platform only
/// reaches workers that have it.
pub fn job_routing_key(spec: &JobSpec) -> String {
    routing_key(
        &spec.kernel.target,
        spec.attestation
            .as_ref()
            .map(|requirement| requirement.platform),
    )
}

/// The routing key a job is published under: `<user>.<routing key>`, where `user` is the
/// publishing connection's AMQP user (the `user_id` of the message) and `route` its
/// [`job_routing_key`]. RabbitMQ topic permissions (`^{username}\\.` on `<ns>.jobs`) hold each
/// user to its own prefix, so no tenant can put jobs into another tenant's queue.
pub fn submit_routing_key(user: &str, route: &str) -> String {
    format!("{user}.{route}")
}

/// The tenant and routing key of a job's publishing routing key, if it has the form
/// [`submit_routing_key`] makes for a [routable](crate::state::is_routable_tenant) tenant.
pub fn split_submit_routing_key(key: &str) -> Option<(&str, &str)> {
    let (tenant, route) = key.split_once('.')?;
    (crate::state::is_routable_tenant(tenant) && !route.is_empty()).then_some((tenant, route))
}

/// The routing keys a worker on `platform` serves for `target`: the key of every requirement the
/// platform [satisfies](Platform::satisfies), e.g. `wasm`, `wasm.tpm`, `wasm.any-hardware` for
/// a TPM.
pub fn served_routing_keys(target: &str, platform: Platform) -> Vec<String> {
    REQUIREMENTS
        .into_iter()
        .filter(|requirement| platform.satisfies(*requirement))
        .map(|requirement| routing_key(target, Some(requirement)))
        .collect()
}

/// The first word of the result routing key for a job delivered without `user_id` (accepted
/// only by single-tenant workers). No RabbitMQ user may be named `_`: it would read those
/// results.
pub const ANONYMOUS_RESULT_PREFIX: &str = "_";

/// The routing key of a result: `<user>.<job id>`, where `user` is the AMQP `user_id` of the
/// delivery it answers (RabbitMQ checked it against the publishing connection's user), or
/// [`ANONYMOUS_RESULT_PREFIX`] when the delivery had none. Each submitter of a job id gets its own
/// copy of the answer, and a topic permission `^{username}\.sha256:[0-9a-f]{64}$` on
/// `<ns>.results` keeps every user to its own keys.
pub fn result_routing_key(user: Option<&str>, job_id: &Digest) -> String {
    format!(
        "{}.{}",
        user.unwrap_or(ANONYMOUS_RESULT_PREFIX),
        job_id.as_str()
    )
}

/// The routing key a waiter binds once to receive the answer to every job it submitted with
/// `reply_to` set to its queue: `<user>.reply.<queue>`. Workers add it to each result as a
/// `BCC` routing key (RabbitMQ's sender-selected distribution), under the `user_id` of the
/// delivery, so a `reply_to` naming another tenant's queue reaches no one but its sender.
pub fn reply_routing_key(user: Option<&str>, queue: &str) -> String {
    format!("{}.reply.{queue}", user.unwrap_or(ANONYMOUS_RESULT_PREFIX))
}

/// Whether a job's `reply_to` can name a waiter's queue: 1 to 128 of `[A-Za-z0-9_.-]` (no
/// topic wildcards). Workers ignore any other.
pub fn is_valid_reply_to(queue: &str) -> bool {
    !queue.is_empty()
        && queue.len() <= 128
        && queue
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Result header: the extra routing keys of sender-selected distribution, removed by the
/// broker before delivery.
pub const HEADER_BCC: &str = "BCC";

/// A worker's entry in the registry: JSON stored under [`Namespace::worker_key`] with a TTL of a
/// few heartbeats, found with [`Namespace::worker_key_pattern`]. Workers write it, `dtee workers`
/// lists it. Fields unknown to this version are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// Identity and current evidence.
    pub identity: WorkerIdentity,
    /// The attestation platform.
    pub platform: Platform,
    /// Routing keys the worker consumes.
    pub routing_keys: Vec<String>,
    /// When the worker started, Unix milliseconds.
    pub started_at_unix_ms: u64,
    /// The last heartbeat, Unix milliseconds.
    pub heartbeat_at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::evidence::{Evidence, SoftwareEvidence, SOFTWARE_STATEMENT};

    #[test]
    fn a_result_is_routed_under_its_submitter() {
        let id = Digest::of(b"job");
        assert_eq!(
            result_routing_key(Some("alice@example.org"), &id),
            format!("alice@example.org.{id}")
        );
        assert_eq!(result_routing_key(None, &id), format!("_.{id}"));
        assert_eq!(submit_routing_key("alice", "wasm.tpm"), "alice.wasm.tpm");
        assert_eq!(
            reply_routing_key(Some("alice"), "amq.gen-Abc_1"),
            "alice.reply.amq.gen-Abc_1"
        );
        assert!(is_valid_reply_to("amq.gen-Abc_1"));
        assert!(!is_valid_reply_to("amq.#"));
        assert!(!is_valid_reply_to(""));
        assert_eq!(
            split_submit_routing_key("alice.wasm.tpm"),
            Some(("alice", "wasm.tpm"))
        );
        assert_eq!(split_submit_routing_key("wasm"), None);
        assert_eq!(split_submit_routing_key("_.wasm"), None);
        assert_eq!(split_submit_routing_key("alice."), None);
    }

    #[test]
    fn a_platform_serves_exactly_the_keys_of_the_requirements_it_satisfies() {
        assert_eq!(served_routing_keys("wasm", Platform::Software), ["wasm"]);
        assert_eq!(
            served_routing_keys("wasm", Platform::Tpm),
            ["wasm", "wasm.tpm", "wasm.any-hardware"]
        );
        assert_eq!(
            served_routing_keys("hip.gfx90a", Platform::Snp),
            ["hip.gfx90a", "hip.gfx90a.snp", "hip.gfx90a.any-hardware"]
        );
        for platform in Platform::ALL {
            let served = served_routing_keys("wasm", platform);
            assert!(served.contains(&routing_key("wasm", None)), "{platform}");
            for requirement in REQUIREMENTS {
                assert_eq!(
                    served.contains(&routing_key("wasm", Some(requirement))),
                    platform.satisfies(requirement),
                    "{platform} {requirement:?}"
                );
            }
        }
    }

    #[test]
    fn registry_entries_keep_their_wire_form() {
        let measurement = Digest::of(b"worker");
        let entry = WorkerEntry {
            identity: WorkerIdentity {
                worker_id: "w-1".to_owned(),
                public_key: "ab".to_owned(),
                measurement: measurement.clone(),
                evidence_created_at_unix_ms: 5,
                evidence: Evidence::Software(SoftwareEvidence {
                    statement: SOFTWARE_STATEMENT.to_owned(),
                    measurement: measurement.clone(),
                }),
            },
            platform: Platform::Tpm,
            routing_keys: vec!["wasm".to_owned(), "wasm.tpm".to_owned()],
            started_at_unix_ms: 1,
            heartbeat_at_unix_ms: 2,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"identity\":{{\"worker_id\":\"w-1\",\"public_key\":\"ab\",\
                 \"measurement\":\"{measurement}\",\"evidence_created_at_unix_ms\":5,\
                 \"evidence\":{{\"platform\":\"software\",\"statement\":{SOFTWARE_STATEMENT:?},\
                 \"measurement\":\"{measurement}\"}}}},\"platform\":\"tpm\",\
                 \"routing_keys\":[\"wasm\",\"wasm.tpm\"],\"started_at_unix_ms\":1,\
                 \"heartbeat_at_unix_ms\":2}}"
            )
        );
        let read: WorkerEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(read, entry);
    }
}
