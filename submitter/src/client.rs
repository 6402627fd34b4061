use std::time::Duration;

use dtee_net::RedisConn;
use dtee_schemas::protocol::{Namespace, WorkerEntry};
use dtee_schemas::state::StateKey;
use dtee_schemas::{Digest, JobResult};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::waiter::ResultWaiter;

mod submit;

pub use submit::{PreparedJob, DEFAULT_NACK_RETRIES};

/// Where the client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// AMQP URL of RabbitMQ.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Namespace of exchanges, queues and keys.
    pub namespace: Namespace,
    /// TLS material for `amqps://` and `rediss://`.
    pub tls: dtee_net::Tls,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            namespace: Namespace::default(),
            tls: dtee_net::Tls::default(),
        }
    }
}

/// What can go wrong talking to dtee.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// RabbitMQ failed or refused.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The job is not valid; nothing was sent.
    #[error("{0}")]
    InvalidJob(#[from] dtee_schemas::JobParseError),
    /// No queue is bound for the job's routing key: no worker that serves the target (with the
    /// attestation platform the job requires) has declared it.
    #[error("no queue serves routing key {target:?} in namespace {namespace:?}: start a worker that serves this target (with the attestation platform the job requires) first")]
    NoRoute {
        /// The job's target.
        target: String,
        /// The namespace.
        namespace: String,
    },
    /// The broker refused responsibility for the message.
    #[error("the broker did not confirm the job (nack), nor any resend the client made: the tenant's job queue is full (its length limit) or the broker could not store it; it was not accepted")]
    Nacked,
    /// The AMQP user's name cannot be carried by the jobs' routing keys.
    #[error("AMQP user {0:?} cannot submit jobs: a dtee user name is 1 to 64 of letters, digits, '_', '@' and '-' (no '.'), since jobs are published under `<user>.<routing key>`")]
    UnroutableUser(String),
    /// No result arrived in time.
    #[error("no result for {0} arrived in time")]
    Timeout(Digest),
    /// A connection setting cannot work (a URL's scheme, a cluster URL).
    #[error("{0}")]
    InvalidSetting(String),
    /// A message that is not a valid result arrived.
    #[error("malformed result: {0}")]
    MalformedResult(serde_json::Error),
    /// What is stored as a job's result answers another job (its `job_id` differs): refused,
    /// since a result stands only for the job it names (a worker or anyone else who can write
    /// the result key could otherwise pass one job's genuine result off as another's).
    #[error("the result stored for {expected} is the result of another job, {found}: refused")]
    ResultOfAnotherJob {
        /// The job whose result was asked for.
        expected: Digest,
        /// The job the stored result names.
        found: Digest,
    },
}

/// Parses a stored result of `job_id`, refusing one that names another job.
pub(crate) fn stored_result(bytes: &[u8], job_id: &Digest) -> Result<JobResult, ClientError> {
    let result: JobResult = serde_json::from_slice(bytes).map_err(ClientError::MalformedResult)?;
    if result.job_id != *job_id {
        return Err(ClientError::ResultOfAnotherJob {
            expected: job_id.clone(),
            found: result.job_id,
        });
    }
    Ok(result)
}

impl ClientError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Amqp(_)
                | ClientError::Redis(_)
                | ClientError::Nacked
                | ClientError::Timeout(_)
        )
    }
}

/// A connection to RabbitMQ and Redis.
pub struct Client {
    config: ClientConfig,
    connection: Connection,
    /// Publishes jobs, in confirm mode.
    channel: Channel,
    redis: RedisConn,
    /// The AMQP user, sent as `user_id` on every job: the job's tenant.
    user: String,
    /// How many times a publish the broker nacked is sent again (see [`Client::set_nack_retries`]).
    nack_retries: u32,
    /// Resends made so far ([`Client::resends`]).
    resends: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

/// Refuses settings that cannot work before connecting: a scheme that is not AMQP or Redis,
/// a malformed cluster URL.
fn check_urls(config: &ClientConfig) -> Result<(), ClientError> {
    dtee_net::amqp::check(&config.amqp_url)
        .and_then(|()| dtee_net::redis_conn::check(&config.redis_url))
        .map_err(ClientError::InvalidSetting)
}

impl Client {
    /// Connects to RabbitMQ and Redis.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        check_urls(&config)?;
        let connection = dtee_net::amqp::connect(
            &config.amqp_url,
            ConnectionProperties::default().with_connection_name("dtee client".into()),
            &config.tls,
        )
        .await?
        .connection;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let redis = dtee_net::redis_conn::connect(
            &config.redis_url,
            &config.tls,
            dtee_net::RedisOptions::default(),
        )
        .await?;
        let user = dtee_keeper::client::amqp_user(&config.amqp_url);
        Ok(Client {
            config,
            connection,
            channel,
            redis,
            user,
            nack_retries: DEFAULT_NACK_RETRIES,
            resends: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The tenant: the AMQP user, sent as `user_id` on every job.
    pub fn tenant(&self) -> &str {
        &self.user
    }

    /// The configuration it connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The namespace in use.
    pub fn namespace(&self) -> &Namespace {
        &self.config.namespace
    }

    /// The underlying AMQP connection (for tools that open their own channels).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// A Redis connection (cheap clone).
    pub fn redis(&self) -> RedisConn {
        self.redis.clone()
    }

    /// Stores `bytes` under their digest, only if absent. Returns the digest and whether
    /// this call stored it.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, bool), ClientError> {
        let digest = Digest::of(bytes);
        let stored: Option<String> = redis::cmd("SET")
            .arg(self.config.namespace.blob_key(&digest))
            .arg(bytes)
            .arg("NX")
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((digest, stored.is_some()))
    }

    /// Checks that the namespace's exchanges exist (a worker
    /// declared them), for a clear error before submitting.
    pub async fn check_topology(&self) -> Result<(), ClientError> {
        let channel = self.connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.config.namespace.jobs_exchange().into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "ok".into()).await;
        Ok(())
    }

    /// A state key's value (`None` when absent) and version (0 when never written), read
    /// atomically. For operators and examples; jobs read state through their bindings.
    pub async fn state_get(&self, key: &StateKey) -> Result<(Option<Vec<u8>>, u64), ClientError> {
        let (value, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("MGET")
            .arg(key.value_key(&self.config.namespace))
            .arg(key.version_key(&self.config.namespace))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((value, version.unwrap_or(0)))
    }

    /// Replaces a state key's value and bumps its version atomically; returns the new version.
    /// Jobs that read the old version and commit later see a conflict and run again.
    pub async fn state_put(&self, key: &StateKey, value: &[u8]) -> Result<u64, ClientError> {
        let (version,): (u64,) = redis::pipe()
            .atomic()
            .set(key.value_key(&self.config.namespace), value)
            .ignore()
            .incr(key.version_key(&self.config.namespace), 1)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(version)
    }

    /// The registry entries of the namespace's live workers, sorted by key; an entry this
    /// version cannot read is left out.
    pub async fn workers(&self) -> Result<Vec<WorkerEntry>, ClientError> {
        let redis = self.redis.clone();
        let mut keys = redis
            .scan_match(&self.config.namespace.worker_key_pattern())
            .await?;
        keys.sort();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let body = redis.get_bytes(&key).await?;
            if let Some(entry) = body.and_then(|body| serde_json::from_slice(&body).ok()) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Revokes this client's tenant's job for `ttl`: a worker that receives it from this tenant
    /// afterwards answers `cancelled` without running it. The same job published by another
    /// tenant is not affected, and a job that already has a final result keeps it.
    pub async fn cancel(&self, job_id: &Digest, ttl: Duration) -> Result<(), ClientError> {
        redis::cmd("SET")
            .arg(self.config.namespace.revoked_key(&self.user, job_id))
            .arg("1")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// The cached final result of a job, if any.
    pub async fn cached_result(&self, job_id: &Digest) -> Result<Option<JobResult>, ClientError> {
        // A key of another type is read as absent, as the worker reads it.
        let bytes = self
            .redis
            .get_bytes(&self.config.namespace.result_key(job_id))
            .await?;
        bytes.map(|bytes| stored_result(&bytes, job_id)).transpose()
    }

    /// A waiter with its own exclusive result queue, for the results of this client's own
    /// submissions (bound under its user, [`Client::tenant`]).
    pub async fn waiter(&self) -> Result<ResultWaiter, ClientError> {
        ResultWaiter::new(
            &self.connection,
            self.config.namespace.clone(),
            self.user.clone(),
            self.redis.clone(),
        )
        .await
    }

    /// Waits for one job's result.
    pub async fn wait(&self, job_id: &Digest, timeout: Duration) -> Result<JobResult, ClientError> {
        let waiter = self.waiter().await?;
        let result = waiter.wait(job_id, timeout).await;
        waiter.close().await;
        result
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_cluster_urls_are_accepted_and_bad_schemes_refused() {
        let with = |amqp: &str, redis: &str| ClientConfig {
            amqp_url: amqp.to_owned(),
            redis_url: redis.to_owned(),
            ..ClientConfig::default()
        };
        for (amqp, redis) in [
            ("amqps://u:p@host/%2f", "redis://host/"),
            ("AMQPS://u:p@a/%2f,amqp://u:p@b/%2f", "REDISS://host/"),
            ("amqp://u:p@host/%2f", "rediss+cluster://a:7001,b:7002"),
        ] {
            assert!(check_urls(&with(amqp, redis)).is_ok(), "{amqp} {redis}");
        }
        for (amqp, redis) in [
            ("http://u:p@host/", "redis://host/"),
            ("amqp://u:p@host/%2f", "memcached://host/"),
            ("amqp://u:p@host/%2f", "redis+cluster://a:1/5"),
        ] {
            assert!(
                matches!(
                    check_urls(&with(amqp, redis)),
                    Err(ClientError::InvalidSetting(_))
                ),
                "{amqp} {redis}"
            );
        }
    }
}
