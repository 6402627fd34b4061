//! Secrets for jobs: the worker's HPKE key (made at start-up, beside the signing key, and
//! vouched for by it: the release request that carries it is signed by the evidence-bound key),
//! the keeper link, and the released values, held for one job and zeroed after.

use std::sync::Arc;
use std::time::Duration;

use dtee_keeper::client::{KeeperClient, KeeperClientError};
use dtee_schemas::job::encode_base64;
use dtee_schemas::namespace::Namespace;
use dtee_schemas::secrets::{
    release_aad, HpkeKeyPair, KeeperErrorCode, KeeperRequest, ReleaseClaims, Released,
    SecretVersion, RELEASE_INFO,
};
use dtee_schemas::{Digest, ErrorCode};
use tokio::sync::Mutex;
use zeroize::Zeroize;

use crate::attestation::Attestor;
use crate::failure::Transient;
use crate::job::{Failure, Halt};

/// How long a release may take before the job is retried.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker's side of the secret keeper.
#[derive(Debug)]
pub(crate) struct SecretLink {
    key: HpkeKeyPair,
    amqp_url: String,
    tls: dtee_net::Tls,
    namespace: Namespace,
    client: Mutex<Option<Arc<KeeperClient>>>,
}

/// Released values for one job; zeroed when dropped (after the run, once the backend's slots,
/// which share them, are gone).
#[derive(Debug, Default)]
pub(crate) struct SecretValues(Vec<(usize, Arc<[u8]>)>);

impl SecretValues {
    /// The value for the buffer at `index`.
    pub(crate) fn get(&self, index: usize) -> Option<&Arc<[u8]>> {
        self.0.iter().find(|(i, _)| *i == index).map(|(_, v)| v)
    }
}

impl Drop for SecretValues {
    fn drop(&mut self) {
        for (_, value) in &mut self.0 {
            wipe(value);
        }
    }
}

/// Zeroes a value that nothing else shares any more; whether it did.
fn wipe(value: &mut Arc<[u8]>) -> bool {
    match Arc::get_mut(value) {
        Some(bytes) => {
            bytes.zeroize();
            true
        }
        None => false,
    }
}

impl SecretLink {
    /// A link with a fresh HPKE key; the keeper connection opens on first use.
    pub(crate) fn new(amqp_url: String, tls: dtee_net::Tls, namespace: Namespace) -> SecretLink {
        SecretLink {
            key: HpkeKeyPair::generate(),
            amqp_url,
            tls,
            namespace,
            client: Mutex::new(None),
        }
    }

    /// Asks the keeper for the job's secrets and opens them. A refusal fails the job (not
    /// final); no answer makes it wait and retry.
    pub(crate) async fn release(
        &self,
        attestor: &Attestor,
        tenant: &str,
        job_id: &Digest,
        secrets: &[(usize, &str, &SecretVersion)],
    ) -> Result<SecretValues, Halt> {
        if secrets.is_empty() {
            return Ok(SecretValues::default());
        }
        let claims = ReleaseClaims {
            tenant: tenant.to_owned(),
            job_id: job_id.clone(),
            secrets: secrets.iter().map(|(_, _, s)| (*s).clone()).collect(),
            worker_hpke_key: self.key.public_hex(),
            issued_at_unix_ms: crate::clock::unix_ms(),
        };
        let request = KeeperRequest::Release {
            signature: encode_base64(&attestor.sign(&claims.signed_bytes())),
            identity: attestor.identity(),
            claims: claims.clone(),
        };
        let reply = self.ask(&request).await?;
        if let Some(error) = reply.error {
            return Err(match error.code {
                KeeperErrorCode::SecretNotFound => {
                    Halt::Fail(Failure::new(ErrorCode::SecretNotFound, error.message))
                }
                KeeperErrorCode::Unavailable => Halt::Retry(Transient::KeeperStore(error.message)),
                _ => Halt::Fail(Failure::new(ErrorCode::SecretReleaseDenied, error.message)),
            });
        }
        let released = reply.released.unwrap_or_default();
        self.open(&claims, secrets, &released)
            .map_err(|why| Halt::Fail(Failure::new(ErrorCode::SecretReleaseDenied, why)))
    }

    /// Opens each released value with this worker's key and this job's associated data; an
    /// answer sealed to another key, for another job or for other secrets does not open.
    pub(crate) fn open(
        &self,
        claims: &ReleaseClaims,
        secrets: &[(usize, &str, &SecretVersion)],
        released: &[Released],
    ) -> Result<SecretValues, String> {
        if released.len() != secrets.len() {
            return Err("the keeper's answer does not match the request".to_owned());
        }
        let mut values = SecretValues::default();
        for ((index, _, wanted), got) in secrets.iter().zip(released) {
            if got.secret != **wanted {
                return Err("the keeper's answer does not match the request".to_owned());
            }
            let value = self
                .key
                .open(&got.value, RELEASE_INFO, &release_aad(claims, wanted))
                .map_err(|_| {
                    format!(
                        "the released value of {} does not open with this worker's key for this job",
                        wanted.name
                    )
                })?;
            values.0.push((*index, Arc::from(&value[..])));
        }
        Ok(values)
    }

    async fn ask(
        &self,
        request: &KeeperRequest,
    ) -> Result<dtee_schemas::secrets::KeeperReply, Halt> {
        let client = {
            let mut slot = self.client.lock().await;
            match slot.as_ref().filter(|client| client.is_open()) {
                Some(client) => Arc::clone(client),
                None => {
                    let connected = KeeperClient::connect(
                        &self.amqp_url,
                        &self.tls,
                        self.namespace.clone(),
                        RELEASE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| Halt::Retry(Transient::Keeper(e)))?;
                    Arc::clone(slot.insert(Arc::new(connected)))
                }
            }
        };
        let result = client.request(request).await;
        if matches!(
            result,
            Err(KeeperClientError::Amqp(_) | KeeperClientError::NoKeeper(_))
        ) {
            // The channel is gone: the next attempt reconnects.
            let mut slot = self.client.lock().await;
            if slot
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, &client))
            {
                *slot = None;
            }
        }
        result.map_err(|e| Halt::Retry(Transient::Keeper(e)))
    }
}

#[cfg(test)]
mod tests {
    use dtee_schemas::secrets::{seal, KeeperReply};

    use super::*;

    fn claims(link: &SecretLink, job: &[u8]) -> ReleaseClaims {
        ReleaseClaims {
            tenant: "alice".into(),
            job_id: Digest::of(job),
            secrets: vec![SecretVersion {
                name: "token".into(),
                version: 1,
            }],
            worker_hpke_key: link.key.public_hex(),
            issued_at_unix_ms: 1,
        }
    }

    /// What a keeper answers for `claims`, sealed to `key`.
    fn answer(claims: &ReleaseClaims, key: &[u8; 32]) -> Vec<Released> {
        let secret = claims.secrets[0].clone();
        vec![Released {
            value: seal(key, RELEASE_INFO, &release_aad(claims, &secret), b"s3cret").unwrap(),
            secret,
        }]
    }

    #[test]
    fn a_release_opens_only_for_this_worker_and_this_job() {
        let link = SecretLink::new(
            String::new(),
            dtee_net::Tls::default(),
            Namespace::new("t").unwrap(),
        );
        let wanted = SecretVersion {
            name: "token".into(),
            version: 1,
        };
        let secrets = [(0, "data", &wanted)];
        let ours = claims(&link, b"job a");
        let values = link
            .open(&ours, &secrets, &answer(&ours, &link.key.public()))
            .unwrap();
        assert_eq!(&values.get(0).unwrap()[..], b"s3cret");

        // Sealed to another key (say, for another worker): refused.
        let other = HpkeKeyPair::generate();
        assert!(link
            .open(&ours, &secrets, &answer(&ours, &other.public()))
            .is_err());
        // Replayed from another job of the same worker: refused.
        let earlier = claims(&link, b"job b");
        assert!(link
            .open(&ours, &secrets, &answer(&earlier, &link.key.public()))
            .is_err());
        // Another secret or version than asked for: refused.
        let mut swapped = answer(&ours, &link.key.public());
        swapped[0].secret.version = 2;
        assert!(link.open(&ours, &secrets, &swapped).is_err());
        assert!(link.open(&ours, &secrets, &[]).is_err());
        let _ = KeeperReply::default();
    }

    #[test]
    fn a_released_value_is_zeroed_once_nothing_shares_it() {
        let mut value: Arc<[u8]> = Arc::from(&b"s3cret"[..]);
        let slot = Arc::clone(&value); // the backend's slot, during the run
        assert!(!wipe(&mut value), "not while the run may read it");
        assert_eq!(&slot[..], b"s3cret");
        drop(slot);
        assert!(wipe(&mut value));
        assert_eq!(&value[..], &[0u8; 6]);
    }
}
