//! A tenant's secrets, through the secret keeper (PROTOCOL.md §12): store a new version, list,
//! read back, delete, and set the release policy. Values go to the keeper sealed to its public
//! key and come back sealed to a one-time key, so RabbitMQ never sees them. The tenant is the
//! AMQP user of `amqp_url`.

use std::time::Duration;

use dtee_keeper::client::{KeeperClient, KeeperClientError};
use dtee_schemas::secrets::{
    owner_aad, parse_public_key, seal, HpkeKeyPair, KeeperError, KeeperReply, KeeperRequest,
    SecretInfo, GET_INFO, PUT_INFO,
};
use redis::AsyncCommands;
use zeroize::Zeroizing;

use crate::ClientConfig;

/// The environment variable that pins the keeper's public key (64 hex digits) instead of
/// reading the one keepers publish in Redis.
pub const KEEPER_PUBLIC_KEY_ENV: &str = "DTEE_KEEPER_PUBLIC_KEY";

/// Why a secrets operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The keeper could not be reached or did not answer.
    #[error(transparent)]
    Keeper(#[from] KeeperClientError),
    /// The keeper refused.
    #[error("the keeper refused: {0}")]
    Refused(KeeperError),
    /// Redis failed (reading the keeper's public key).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No keeper has published its key, and none is pinned.
    #[error(
        "no keeper public key: start dtee-keeper in this namespace, or set {KEEPER_PUBLIC_KEY_ENV}"
    )]
    NoKeeperKey,
    /// The keeper's key or answer is malformed.
    #[error("{0}")]
    Malformed(String),
}

/// A tenant's connection to the keeper.
#[derive(Debug)]
pub struct Secrets {
    keeper: KeeperClient,
    keeper_key: [u8; 32],
}

impl Secrets {
    /// Connects to the keepers of the configured namespace.
    pub async fn connect(config: &ClientConfig) -> Result<Secrets, SecretsError> {
        let key_text = match std::env::var(KEEPER_PUBLIC_KEY_ENV) {
            Ok(pinned) => pinned,
            Err(_) => {
                let mut redis = dtee_net::redis_conn::connect(
                    &config.redis_url,
                    &config.tls,
                    dtee_net::RedisOptions::default(),
                )
                .await?;
                let published: Option<String> =
                    redis.get(config.namespace.keeper_public_key()).await?;
                published.ok_or(SecretsError::NoKeeperKey)?
            }
        };
        let keeper_key = parse_public_key(key_text.trim())
            .map_err(|_| SecretsError::Malformed("the keeper's public key is malformed".into()))?;
        let keeper = KeeperClient::connect(
            &config.amqp_url,
            &config.tls,
            config.namespace.clone(),
            Duration::from_secs(30),
        )
        .await?;
        Ok(Secrets { keeper, keeper_key })
    }

    /// The tenant: the AMQP user.
    pub fn tenant(&self) -> &str {
        self.keeper.user()
    }

    async fn ask(&self, request: &KeeperRequest) -> Result<KeeperReply, SecretsError> {
        let reply = self.keeper.request(request).await?;
        match reply.error {
            Some(error) => Err(SecretsError::Refused(error)),
            None => Ok(reply),
        }
    }

    /// Stores `value` as a new version of `name`; returns the version.
    pub async fn put(&self, name: &str, value: &[u8]) -> Result<u64, SecretsError> {
        let sealed = seal(
            &self.keeper_key,
            PUT_INFO,
            &owner_aad(self.tenant(), name),
            value,
        )
        .map_err(|e| SecretsError::Malformed(e.to_string()))?;
        let reply = self
            .ask(&KeeperRequest::Put {
                name: name.to_owned(),
                value: sealed,
            })
            .await?;
        reply
            .version
            .ok_or_else(|| SecretsError::Malformed("the keeper answered no version".into()))
    }

    /// The tenant's secrets and versions (no values).
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretsError> {
        Ok(self
            .ask(&KeeperRequest::List)
            .await?
            .secrets
            .unwrap_or_default())
    }

    /// The latest version of `name`.
    pub async fn latest_version(&self, name: &str) -> Result<u64, SecretsError> {
        self.list()
            .await?
            .into_iter()
            .find(|secret| secret.name == name)
            .and_then(|secret| secret.versions.last().map(|v| v.version))
            .ok_or_else(|| {
                SecretsError::Refused(KeeperError {
                    code: dtee_schemas::secrets::KeeperErrorCode::SecretNotFound,
                    message: format!("tenant {} has no secret {name}", self.tenant()),
                })
            })
    }

    /// Reads a value back (the latest version when `version` is `None`).
    pub async fn get(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(u64, Zeroizing<Vec<u8>>), SecretsError> {
        let once = HpkeKeyPair::generate();
        let reply = self
            .ask(&KeeperRequest::Get {
                name: name.to_owned(),
                version,
                reply_key: once.public_hex(),
            })
            .await?;
        let (Some(version), Some(sealed)) = (reply.version, reply.value) else {
            return Err(SecretsError::Malformed(
                "the keeper answered no value".into(),
            ));
        };
        let value = once
            .open(&sealed, GET_INFO, &owner_aad(self.tenant(), name))
            .map_err(|e| SecretsError::Malformed(e.to_string()))?;
        Ok((version, value))
    }

    /// Deletes one version, or every version; returns how many went.
    pub async fn delete(&self, name: &str, version: Option<u64>) -> Result<u64, SecretsError> {
        let reply = self
            .ask(&KeeperRequest::Delete {
                name: name.to_owned(),
                version,
            })
            .await?;
        Ok(reply.deleted.unwrap_or(0))
    }

    /// Sets the tenant's release policy (TOML, as `dtee verify --policy` reads).
    pub async fn set_policy(&self, policy: &str) -> Result<(), SecretsError> {
        self.ask(&KeeperRequest::SetPolicy {
            policy: policy.to_owned(),
        })
        .await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.keeper.close().await;
    }
}
