//! Secrets at rest in Redis, encrypted under the keeper's at-rest key (ChaCha20-Poly1305, a
//! random 96-bit nonce per value, associated data `<ns>/<tenant>/<name>/<version>`), so Redis
//! holds no value in the clear and a value moved to another key, tenant or version does not
//! decrypt. Release policies are sealed the same way (associated data
//! `policy/<ns>/<tenant>`): Redis is shared with the workers, whose login can write there, and
//! a policy written by anything but this keeper is refused, never read. Keys follow the Redis Cluster rule: one tenant's keys share the tag `{<tenant>}`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use dtee_net::{Lua, RedisConn};
use dtee_schemas::namespace::Namespace;
use dtee_schemas::secrets::{SecretInfo, SecretVersion, VersionInfo};
use redis::AsyncCommands;
use zeroize::Zeroizing;

/// Versions of one secret kept at most: a put beyond is refused until old ones are deleted.
pub const MAX_VERSIONS: u64 = 64;

/// Secrets of one tenant at most.
pub const MAX_SECRETS: u64 = 1000;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value does not decrypt under this keeper's key (another key, or tampered).
    #[error("stored secret {0} does not decrypt under this keeper's key")]
    Corrupt(String),
}

/// What [`SecretStore::release_read`] read, at one instant.
pub struct ReleaseRead {
    /// The tenant's release policy, if it set one; `Err` (what is wrong) for one this keeper
    /// did not seal for this tenant, which must be treated as no release at all.
    pub policy: Result<Option<String>, String>,
    /// The value of each requested version as stored (sealed under the at-rest key), in the
    /// order asked, `None` where there is none: opened by [`SecretStore::open_released`] once
    /// the release is decided.
    pub values: Vec<Option<Vec<u8>>>,
}

impl std::fmt::Debug for ReleaseRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("ReleaseRead")
            .field("policy", &self.policy)
            .field(
                "values_found",
                &self.values.iter().filter(|v| v.is_some()).count(),
            )
            .finish()
    }
}

/// The secrets of every tenant of one namespace.
pub struct SecretStore {
    redis: RedisConn,
    namespace: Namespace,
    cipher: ChaCha20Poly1305,
    delete: Lua,
}

/// Deletes versions of a secret atomically. KEYS[1]: the secret's hash (`next`, `v:<n>`,
/// `t:<n>`); KEYS[2]: the tenant's set of names. ARGV[1]: the name; ARGV[2]: a version, or
/// `all`. Keeps `next`, so a version number is never given twice. Answers how many went.
const DELETE: &str = r#"
local deleted = 0
local left = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local version = string.match(field, '^t:(%d+)$')
  if version then
    if ARGV[2] == 'all' or ARGV[2] == version then
      redis.call('HDEL', KEYS[1], 'v:' .. version, field)
      deleted = deleted + 1
    else
      left = left + 1
    end
  end
end
if deleted > 0 and left == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return deleted
"#;

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn version_of(field: &str, prefix: &str) -> Option<u64> {
    field.strip_prefix(prefix)?.parse().ok()
}

impl SecretStore {
    /// A store over `redis`, encrypting under `at_rest_key`.
    pub fn new(redis: RedisConn, namespace: Namespace, at_rest_key: &[u8; 32]) -> SecretStore {
        SecretStore {
            redis,
            namespace,
            cipher: ChaCha20Poly1305::new(Key::from_slice(at_rest_key)),
            delete: Lua::new(DELETE),
        }
    }

    fn aad(&self, tenant: &str, name: &str, version: u64) -> Vec<u8> {
        format!("{}/{tenant}/{name}/{version}", self.namespace).into_bytes()
    }

    /// A release policy's associated data: no value's (a secret name has no `/`, and this has
    /// three parts where a value's has four).
    fn policy_aad(&self, tenant: &str) -> Vec<u8> {
        format!("policy/{}/{tenant}", self.namespace).into_bytes()
    }

    /// `nonce || ciphertext` of `plain` under the at-rest key, bound to `aad`.
    fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut stored = nonce.to_vec();
        stored.extend(
            self.cipher
                .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
                .expect("encryption of a bounded value"),
        );
        stored
    }

    /// What [`SecretStore::seal`] sealed with `aad`, or `None` when `stored` is not that (another
    /// key, other associated data, or written by something else).
    fn open(&self, aad: &[u8], stored: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if stored.len() <= 12 {
            return None;
        }
        let (nonce, ciphertext) = stored.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// Stores a new version and returns its number; `Ok(None)` (nothing stored) when the
    /// secret already has [`MAX_VERSIONS`] versions or the tenant [`MAX_SECRETS`] secrets.
    /// (Concurrent puts may each pass the count: the bounds hold within the keepers' request
    /// concurrency.)
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        value: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let key = self.namespace.secret_key(tenant, name);
        let mut redis = self.redis.clone();
        let (fields, names, known): (u64, u64, bool) = redis::pipe()
            .hlen(&key)
            .scard(self.namespace.secret_names_key(tenant))
            .sismember(self.namespace.secret_names_key(tenant), name)
            .query_async(&mut redis)
            .await?;
        // `next`, then a `v:` and a `t:` field per version.
        if fields.saturating_sub(1) / 2 >= MAX_VERSIONS || (!known && names >= MAX_SECRETS) {
            return Ok(None);
        }
        let version: u64 = redis.hincr(&key, "next", 1).await?;
        let stored = self.seal(&self.aad(tenant, name, version), value);
        let created = dtee_schemas::run::unix_ms();
        redis::pipe()
            .atomic()
            .hset(&key, format!("v:{version}"), stored)
            .hset(&key, format!("t:{version}"), created)
            .sadd(self.namespace.secret_names_key(tenant), name)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(Some(version))
    }

    /// The versions of `name`, oldest first (empty when there is none). Reads the field names
    /// and the `t:<n>` times only, never the values (`v:<n>`, up to a secret's size each).
    async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let key = self.namespace.secret_key(tenant, name);
        let mut redis = self.redis.clone();
        let fields: Vec<String> = redis.hkeys(&key).await?;
        let times: Vec<String> = fields
            .into_iter()
            .filter(|field| version_of(field, "t:").is_some())
            .collect();
        if times.is_empty() {
            return Ok(Vec::new());
        }
        let created: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&times)
            .query_async(&mut redis)
            .await?;
        let mut versions: Vec<VersionInfo> = times
            .iter()
            .zip(created)
            .filter_map(|(field, created)| {
                Some(VersionInfo {
                    version: version_of(field, "t:")?,
                    created_at_unix_ms: created?.parse().ok()?,
                })
            })
            .collect();
        versions.sort_by_key(|info| info.version);
        Ok(versions)
    }

    /// The value of a version (the latest when `version` is `None`), or `None` when there is
    /// no such secret or version.
    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<(u64, Zeroizing<Vec<u8>>)>, StoreError> {
        let version = match version {
            Some(version) => version,
            None => match self.versions(tenant, name).await?.last() {
                Some(latest) => latest.version,
                None => return Ok(None),
            },
        };
        let mut redis = self.redis.clone();
        let stored: Option<Vec<u8>> = redis
            .hget(
                self.namespace.secret_key(tenant, name),
                format!("v:{version}"),
            )
            .await?;
        Ok(self
            .open_value(tenant, name, version, stored)?
            .map(|value| (version, value)))
    }

    /// A value [`SecretStore::release_read`] read for `secret`, opened; `None` when there was
    /// none, [`StoreError::Corrupt`] when this keeper did not seal it.
    pub fn open_released(
        &self,
        tenant: &str,
        secret: &SecretVersion,
        stored: Option<Vec<u8>>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.open_value(tenant, &secret.name, secret.version, stored)
    }

    /// A stored value of `name`'s `version` opened; `None` when there is none.
    fn open_value(
        &self,
        tenant: &str,
        name: &str,
        version: u64,
        stored: Option<Vec<u8>>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(stored) = stored.filter(|stored| stored.len() > 12) else {
            return Ok(None);
        };
        self.open(&self.aad(tenant, name, version), &stored)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("{tenant}/{name} version {version}")))
    }

    /// What a release is decided on, read in one atomic step (a `MULTI`; the keys share the
    /// tenant's tag, so they lie in one slot of a cluster): the tenant's release policy, and
    /// the value of each version in `secrets`, `None` where there is none. The policy is
    /// `Err` (what is wrong) when this keeper did not seal it ([`SecretStore::policy`]). The
    /// values are not opened here.
    pub async fn release_read(
        &self,
        tenant: &str,
        secrets: &[SecretVersion],
    ) -> Result<ReleaseRead, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(self.namespace.secret_policy_key(tenant));
        for secret in secrets {
            pipe.hget(
                self.namespace.secret_key(tenant, &secret.name),
                format!("v:{}", secret.version),
            );
        }
        let mut read: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.redis.clone()).await?;
        if read.len() != secrets.len() + 1 {
            return Err(StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a release read answered with the wrong number of values",
            ))));
        }
        let values = read.split_off(1);
        let policy = match read.pop().flatten() {
            None => Ok(None),
            Some(stored) => match self.open_policy(tenant, &stored) {
                Ok(policy) => Ok(Some(policy)),
                Err(StoreError::Corrupt(what)) => Err(what),
                Err(other) => return Err(other),
            },
        };
        Ok(ReleaseRead { policy, values })
    }

    /// The tenant's secrets and their versions, without values.
    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>, StoreError> {
        let mut redis = self.redis.clone();
        let mut names: Vec<String> = redis
            .smembers(self.namespace.secret_names_key(tenant))
            .await?;
        names.sort();
        let mut secrets = Vec::with_capacity(names.len());
        for name in names {
            let versions = self.versions(tenant, &name).await?;
            if !versions.is_empty() {
                secrets.push(SecretInfo { name, versions });
            }
        }
        Ok(secrets)
    }

    /// Deletes one version, or all; returns how many versions went. One script, so that a
    /// put running alongside either lands before it (and goes with "all") or after it (and
    /// stays listed): the name leaves the tenant's set only when no version is left.
    pub async fn delete(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u64>,
    ) -> Result<u64, StoreError> {
        let mut call = self.delete.call();
        call.key(self.namespace.secret_key(tenant, name))
            .key(self.namespace.secret_names_key(tenant))
            .arg(name)
            .arg(version.map_or_else(|| "all".to_owned(), |v| v.to_string()));
        Ok(self.redis.run_script(&call).await?)
    }

    /// Sets the tenant's release policy (already checked to parse), sealed under the at-rest
    /// key like a value: whoever else can write to Redis (a worker's login, say) cannot write a
    /// policy this keeper will read.
    pub async fn set_policy(&self, tenant: &str, policy: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let sealed = self.seal(&self.policy_aad(tenant), policy.as_bytes());
        redis
            .set::<_, _, ()>(self.namespace.secret_policy_key(tenant), sealed)
            .await?;
        Ok(())
    }

    /// The tenant's release policy, if it set one; [`StoreError::Corrupt`] for one this keeper
    /// did not seal for this tenant (written to Redis by something else, or another tenant's
    /// moved here), which the caller must treat as no release at all.
    pub async fn policy(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        let mut redis = self.redis.clone();
        let stored: Option<Vec<u8>> = redis.get(self.namespace.secret_policy_key(tenant)).await?;
        match stored {
            None => Ok(None),
            Some(stored) => self.open_policy(tenant, &stored).map(Some),
        }
    }

    /// A stored release policy opened: [`StoreError::Corrupt`] when this keeper did not seal
    /// it for `tenant`.
    fn open_policy(&self, tenant: &str, stored: &[u8]) -> Result<String, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("the release policy of {tenant}"));
        let policy = self
            .open(&self.policy_aad(tenant), stored)
            .ok_or_else(corrupt)?;
        String::from_utf8(policy.to_vec()).map_err(|_| corrupt())
    }
}
