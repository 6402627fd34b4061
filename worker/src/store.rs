//! Redis access: blobs by digest and the result cache.
//!
//! Every call can fail only transiently (Redis unreachable or restarting); the caller retries.
//! The connection is a [`ConnectionManager`], which reconnects by itself.

use std::time::Duration;

use dtee_schemas::protocol::Namespace;
use dtee_schemas::Digest;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// The worker's view of Redis.
#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    namespace: Namespace,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to Redis.
    pub async fn connect(url: &str, namespace: Namespace) -> Result<Store, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(2));
        let redis = client.get_connection_manager_with_config(config).await?;
        Ok(Store { redis, namespace })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.redis.clone())
            .await
            .map(|_| ())
    }

    /// The underlying connection (cheap to clone).
    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// The blob stored under `digest`, if any.
    pub async fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, redis::RedisError> {
        self.redis
            .clone()
            .get(self.namespace.blob_key(digest))
            .await
    }

    /// The blobs stored under `digests`, in order.
    pub async fn blobs(
        &self,
        digests: &[&Digest],
    ) -> Result<Vec<Option<Vec<u8>>>, redis::RedisError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = digests
            .iter()
            .map(|digest| self.namespace.blob_key(digest))
            .collect();
        redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Whether `tenant` revoked its job `job_id` (`dtee cancel`).
    pub async fn is_revoked(
        &self,
        tenant: &str,
        job_id: &Digest,
    ) -> Result<bool, redis::RedisError> {
        redis::cmd("EXISTS")
            .arg(self.namespace.revoked_key(tenant, job_id))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// The cached result of `job_id`, if any.
    pub async fn cached_result(
        &self,
        job_id: &Digest,
    ) -> Result<Option<Vec<u8>>, redis::RedisError> {
        self.redis
            .clone()
            .get(self.namespace.result_key(job_id))
            .await
    }

    /// Records a failure that is not final, replacing any earlier one, for `ttl`: waiters find
    /// it, but the job runs again when resubmitted.
    pub async fn cache_failure(
        &self,
        job_id: &Digest,
        result: &[u8],
        ttl: Duration,
    ) -> Result<(), redis::RedisError> {
        redis::cmd("SET")
            .arg(self.namespace.failure_key(job_id))
            .arg(result)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Caches a final result. The first result cached for a job wins: a second execution (after a
    /// crash between caching and acking) does not overwrite it.
    pub async fn cache_result(
        &self,
        job_id: &Digest,
        result: &[u8],
        ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(self.namespace.result_key(job_id))
            .arg(result)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(stored.is_some())
    }
}
