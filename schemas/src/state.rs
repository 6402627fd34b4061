//! State keys: how a job names Redis state, and where that state lives.
//!
//! A job binds state with a key written `<tenant>/<path>`. The tenant is the AMQP user that
//! published the job (RabbitMQ validates the `user_id` property against the connection's user),
//! and a job may bind only keys of its own tenant. The path may carry a hash group in braces,
//! as Redis Cluster does: in `alice/{orders}/42` the group is `orders`.
//!
//! In Redis, with namespace `<ns>` and hash tag `{<tenant>}` (or `{<tenant>/<group>}` when the
//! path has a group):
//! - `<ns>:state:{tag}:<path>` holds the value (a string);
//! - `<ns>:ver:{tag}:<path>` holds its version (an integer, absent = 0);
//! - `<ns>:applied:{tag}:<job id>` records that a job's writes were committed, holding its
//!   result.
//!
//! **Redis Cluster rule:** one commit touches the state and version keys of every binding and
//! the job's applied record, so all of them must share a hash slot: every key a job binds must
//! have the same tenant and the same group. A job that binds keys of two groups is refused with
//! `invalid_job` before anything is read.

use std::fmt;

use crate::digest::Digest;
use crate::namespace::Namespace;

/// A parsed state key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    tenant: String,
    path: String,
    group: Option<String>,
}

/// Why a string is not a state key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state key {key:?} {why}")]
pub struct StateKeyError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub why: &'static str,
}

/// Whether `tenant` can name a tenant: 1 to 64 of `[A-Za-z0-9_.@-]`.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Whether `tenant` may have queues of its own ([`crate::namespace::Namespace::tenant_job_queue`]):
/// a [valid tenant](is_valid_tenant) without `.` (which would make `<tenant>.<routing key>`
/// ambiguous, and `.` in a `^{username}\\.` topic permission matches any character), and
/// not `_` (the anonymous result prefix). Jobs of other tenants are served from the shared
/// queues.
pub fn is_routable_tenant(tenant: &str) -> bool {
    is_valid_tenant(tenant) && !tenant.contains('.') && tenant != "_"
}

impl StateKey {
    /// Parses `<tenant>/<path>`.
    pub fn parse(key: &str) -> Result<StateKey, StateKeyError> {
        let error = |why| StateKeyError {
            key: key.chars().take(80).collect(),
            why,
        };
        if key.is_empty() || key.len() > 256 {
            return Err(error("must be 1 to 256 bytes"));
        }
        if key.chars().any(char::is_control) {
            return Err(error("must not contain control characters"));
        }
        let (tenant, path) = key
            .split_once('/')
            .ok_or_else(|| error("must be written <tenant>/<path>"))?;
        if !is_valid_tenant(tenant) {
            return Err(error(
                "must start with a tenant of 1 to 64 letters, digits, '_', '.', '@', '-'",
            ));
        }
        if path.is_empty() {
            return Err(error("has an empty path"));
        }
        // The Redis Cluster rule: the first "{...}" with something inside is the group.
        let group = path.find('{').and_then(|open| {
            let rest = &path[open + 1..];
            rest.find('}')
                .map(|close| &rest[..close])
                .filter(|g| !g.is_empty())
        });
        if group.is_some_and(|g| g.contains('/')) {
            return Err(error("has a hash group containing '/'"));
        }
        Ok(StateKey {
            tenant: tenant.to_owned(),
            path: path.to_owned(),
            group: group.map(str::to_owned),
        })
    }

    /// The tenant that owns the key.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The hash group, if the path has one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The Redis hash tag shared by every key of one commit, without braces.
    pub fn hash_tag(&self) -> String {
        match &self.group {
            Some(group) => format!("{}/{group}", self.tenant),
            None => self.tenant.clone(),
        }
    }

    /// Redis key of the value.
    pub fn value_key(&self, namespace: &Namespace) -> String {
        format!("{namespace}:state:{{{}}}:{}", self.hash_tag(), self.path)
    }

    /// Redis key of the version.
    pub fn version_key(&self, namespace: &Namespace) -> String {
        format!("{namespace}:ver:{{{}}}:{}", self.hash_tag(), self.path)
    }
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.path)
    }
}

/// Redis key of the record that a job's writes were committed, in the slot of `hash_tag`.
pub fn applied_key(namespace: &Namespace, hash_tag: &str, job_id: &Digest) -> String {
    format!("{namespace}:applied:{{{hash_tag}}}:{job_id}")
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag, modulo 16384).
pub fn cluster_slot(key: impl AsRef<[u8]>) -> u16 {
    let bytes = key.as_ref();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &byte in tagged.unwrap_or(bytes) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_into_tenant_path_and_group() {
        let key = StateKey::parse("alice/counters/hits").unwrap();
        assert_eq!(key.tenant(), "alice");
        assert_eq!(key.group(), None);
        let ns = Namespace::default();
        assert_eq!(key.value_key(&ns), "dtee:state:{alice}:counters/hits");
        assert_eq!(key.version_key(&ns), "dtee:ver:{alice}:counters/hits");
        let grouped = StateKey::parse("alice/{eu}/orders").unwrap();
        assert_eq!(grouped.group(), Some("eu"));
        assert_eq!(grouped.value_key(&ns), "dtee:state:{alice/eu}:{eu}/orders");
        for bad in [
            "",
            "alice",
            "alice/",
            "/x",
            "al ice/x",
            "alice/{a/b}x",
            "a\u{7}/x",
        ] {
            assert!(StateKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_key_of_a_commit_shares_a_slot() {
        let ns = Namespace::default();
        let job = Digest::of(b"job");
        let a = StateKey::parse("alice/{g}/a").unwrap();
        let b = StateKey::parse("alice/{g}/b").unwrap();
        let slot = cluster_slot(a.value_key(&ns));
        for key in [
            a.version_key(&ns),
            b.value_key(&ns),
            b.version_key(&ns),
            applied_key(&ns, &a.hash_tag(), &job),
        ] {
            assert_eq!(cluster_slot(&key), slot, "{key}");
        }
        // Known value from the Redis Cluster specification's test vector.
        assert_eq!(cluster_slot("123456789"), 0x31C3);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("{user1000}.followers")
        );
    }
}
