//! The namespace of a deployment, and every exchange, queue and Redis key name derived from it.
//!
//! Everything is derived from a [`Namespace`] (default `dtee`) so that several deployments, and
//! parallel tests, can share one broker and one Redis without seeing each other. PROTOCOL.md
//! documents the same layout for clients in other languages. [`crate::protocol`] re-exports
//! these names beside the message types, headers and routing keys.

use std::fmt;

use crate::digest::Digest;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "dtee";

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

    /// Topic exchange that jobs are published to: `<ns>.jobs`, routing key
    /// `<user>.<routing key>` ([`crate::protocol::submit_routing_key`]). It routes a job to its
    /// tenant's queue ([`tenant_job_queue`](Self::tenant_job_queue)) when one exists, and
    /// otherwise, through its alternate exchange [`intake_exchange`](Self::intake_exchange), to
    /// the shared queue of the routing key ([`job_queue`](Self::job_queue)).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.0)
    }

    /// Topic exchange that receives the jobs `<ns>.jobs` has no tenant queue for (its
    /// alternate exchange), and routes them by `*.<routing key>` to the shared queues:
    /// `<ns>.intake`.
    pub fn intake_exchange(&self) -> String {
        format!("{}.intake", self.0)
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

    /// Shared quorum queue of one routing key, for tenants without a queue of their own yet:
    /// `<ns>.jobs.<routing key>`.
    pub fn job_queue(&self, target: &str) -> String {
        format!("{}.jobs.{target}", self.0)
    }

    /// Quorum queue of one tenant for one routing key: `<ns>.jobs.<routing key>/<tenant>`, bound
    /// to `<ns>.jobs` by `<tenant>.<routing key>`. Workers consume every tenant's queue, so that
    /// a tenant's backlog waits in its own queue and not in front of other tenants' jobs.
    pub fn tenant_job_queue(&self, route: &str, tenant: &str) -> String {
        format!("{}.jobs.{route}/{tenant}", self.0)
    }

    /// Fanout exchange, and the stream bound to it, of the tenant queues that exist, one message
    /// `<routing key>/<tenant>` per queue: `<ns>.tenants`. The worker that first sees a tenant's
    /// job in a shared queue declares the tenant's queue and publishes it here; every worker
    /// reads the stream from its start and consumes the queues of the routing keys it serves.
    /// It lives in the broker, with the bindings it describes, so the two cannot part.
    pub fn tenants_announcements(&self) -> String {
        format!("{}.tenants", self.0)
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

    /// Redis key by which `tenant` revokes its own job (`dtee cancel`):
    /// `<ns>:revoked:<tenant>:<job id>`, with a TTL. A revocation cancels the job only for
    /// deliveries of that tenant; each tenant's Redis user may write only its own prefix.
    pub fn revoked_key(&self, tenant: &str, job_id: &Digest) -> String {
        format!("{}:revoked:{tenant}:{job_id}", self.0)
    }

    /// The direct exchange of requests to the secret keeper (routing keys [`KEEPER_TENANT_KEY`]
    /// and [`KEEPER_RELEASE_KEY`]).
    pub fn keeper_exchange(&self) -> String {
        format!("{}.keeper", self.0)
    }

    /// The queue the keepers consume requests from.
    pub fn keeper_queue(&self) -> String {
        format!("{}.keeper", self.0)
    }

    /// Redis hash of a tenant's secret: `next` (the last version given), and per version `v:<n>`
    /// (nonce and ciphertext under the keeper's at-rest key) and `t:<n>` (created, Unix ms).
    pub fn secret_key(&self, tenant: &str, name: &str) -> String {
        format!("{}:secret:{{{tenant}}}:{name}", self.0)
    }

    /// Redis set of a tenant's secret names.
    pub fn secret_names_key(&self, tenant: &str) -> String {
        format!("{}:secrets:{{{tenant}}}", self.0)
    }

    /// Redis key of a tenant's release policy (TOML, as `dtee verify --policy` reads).
    pub fn secret_policy_key(&self, tenant: &str) -> String {
        format!("{}:secret-policy:{{{tenant}}}", self.0)
    }

    /// Redis key where keepers publish their HPKE public key (hex).
    pub fn keeper_public_key(&self) -> String {
        format!("{}:keeper:public-key", self.0)
    }

    /// Redis key of a worker's registry entry ([`crate::protocol::WorkerEntry`], its identity
    /// and evidence, with a heartbeat TTL): `<ns>:worker:<worker id>`.
    pub fn worker_key(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.0)
    }

    /// The `SCAN MATCH` pattern of every [`worker_key`](Self::worker_key) of the namespace:
    /// `<ns>:worker:*`. A namespace has no glob characters, so the pattern matches nothing else.
    pub fn worker_key_pattern(&self) -> String {
        format!("{}:worker:*", self.0)
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

/// Routing key of tenants' requests to the keeper (`put`, `list`, `get`, `delete`,
/// `set_policy`).
pub const KEEPER_TENANT_KEY: &str = "tenant";
/// Routing key of workers' `release` requests.
pub const KEEPER_RELEASE_KEY: &str = "release";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_layout() {
        let ns = Namespace::default();
        let id = Digest::of(b"x");
        assert_eq!(ns.jobs_exchange(), "dtee.jobs");
        assert_eq!(ns.intake_exchange(), "dtee.intake");
        assert_eq!(
            ns.tenant_job_queue("wasm.tpm", "alice"),
            "dtee.jobs.wasm.tpm/alice"
        );
        assert_eq!(ns.tenants_announcements(), "dtee.tenants");
        assert_eq!(ns.results_exchange(), "dtee.results");
        assert_eq!(ns.job_queue("wasm"), "dtee.jobs.wasm");
        assert_eq!(ns.blob_key(&id), format!("dtee:blob:{id}"));
        assert_eq!(ns.result_key(&id), format!("dtee:result:{id}"));
        assert_eq!(ns.worker_key("w-1"), "dtee:worker:w-1");
        assert_eq!(ns.worker_key_pattern(), "dtee:worker:*");
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "Dtee", "a.b", "a:b", "-x", &"x".repeat(49)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?}");
        }
        assert!(Namespace::new("t-1_a").is_ok());
    }
}
