//! Deciding a worker's `release` request: the tenant's policy must accept the worker's evidence,
//! the worker's key must have signed the claims, and the claims must be recent. Only then is each
//! secret sealed to the worker's HPKE key, bound to the job.

use dtee_schemas::attestation::dsse::verify_ed25519;
use dtee_schemas::attestation::evidence::WorkerIdentity;
use dtee_schemas::attestation::verify::{accepted, verify_identity, Policy};
use dtee_schemas::attestation::Outcome;
use dtee_schemas::job::decode_base64;
use dtee_schemas::secrets::{
    is_valid_secret_name, parse_public_key, release_aad, seal, KeeperErrorCode, KeeperReply,
    ReleaseClaims, Released, RELEASE_CLOCK_SKEW_MS, RELEASE_INFO,
};
use dtee_schemas::state::is_valid_tenant;

use tracing::warn;

use crate::store::{SecretStore, StoreError};

/// At most this many secrets in one request.
pub const MAX_SECRETS_PER_JOB: usize = 16;

/// Why a release request is refused on its own, before anything is read for it: the tenant
/// it names, its secret names and count, the worker's HPKE key, its time, and the identity
/// key's signature over the claims.
pub fn check_signed(
    claims: &ReleaseClaims,
    identity: &WorkerIdentity,
    signature: &str,
    now_ms: u64,
) -> Result<(), String> {
    if !is_valid_tenant(&claims.tenant) {
        return Err("the claims do not name a tenant".to_owned());
    }
    if claims.secrets.is_empty() || claims.secrets.len() > MAX_SECRETS_PER_JOB {
        return Err(format!(
            "a release names 1 to {MAX_SECRETS_PER_JOB} secrets, not {}",
            claims.secrets.len()
        ));
    }
    if let Some(bad) = claims
        .secrets
        .iter()
        .find(|s| !is_valid_secret_name(&s.name))
    {
        return Err(format!("{:?} is not a secret name", bad.name));
    }
    parse_public_key(&claims.worker_hpke_key)
        .map_err(|_| "worker_hpke_key is not an X25519 public key".to_owned())?;
    if claims.issued_at_unix_ms.abs_diff(now_ms) > RELEASE_CLOCK_SKEW_MS {
        return Err(format!(
            "the request was made at {} ms, {} ms from the keeper's clock (at most {RELEASE_CLOCK_SKEW_MS})",
            claims.issued_at_unix_ms,
            claims.issued_at_unix_ms.abs_diff(now_ms)
        ));
    }
    let key = identity
        .public_key_bytes()
        .ok_or("the identity's public key is not 32 bytes of hex")?;
    let signature =
        decode_base64(signature).map_err(|_| "the signature is not base64".to_owned())?;
    verify_ed25519(&key, &claims.signed_bytes(), &signature)
        .map_err(|why| format!("the claims are not signed by the identity's key: {why}"))?;
    Ok(())
}

/// Why a release is refused, before any secret is read: [`check_signed`], then the tenant's
/// policy (`policy`: its text, if it set one) against the worker's identity.
pub fn check_claims(
    policy: Option<&str>,
    claims: &ReleaseClaims,
    identity: &WorkerIdentity,
    signature: &str,
    now_ms: u64,
) -> Result<(), String> {
    check_signed(claims, identity, signature, now_ms)?;
    let key = identity
        .public_key_bytes()
        .ok_or("the identity's public key is not 32 bytes of hex")?;
    let Some(policy) = policy else {
        return Err(format!(
            "tenant {} has set no release policy (dtee secret policy set)",
            claims.tenant
        ));
    };
    let policy: Policy =
        toml::from_str(policy).map_err(|e| format!("the tenant's policy does not parse: {e}"))?;
    let checks = verify_identity(identity, &key, &policy, (now_ms / 1000) as i64);
    if !accepted(&checks) {
        let failed: Vec<String> = checks
            .iter()
            .filter_map(|check| match &check.outcome {
                Outcome::Fail(why) => Some(format!("{}: {why}", check.name)),
                _ => None,
            })
            .collect();
        return Err(format!(
            "the worker's evidence does not pass the tenant's policy: {}",
            failed.join("; ")
        ));
    }
    Ok(())
}

/// Seals each requested secret of the claims' tenant to the worker. `checked` is the policy
/// that [`check_claims`] accepted the request under; the values are read in one atomic step
/// with the tenant's policy as it is then ([`SecretStore::release_read`]), and when that is
/// another (the owner changed it in between), the request is decided again under it. So
/// every release is decided under the policy in force when its values were read: a value read
/// after an owner's `set_policy` took effect is released only if the new policy accepts the
/// worker. (A release whose values were read just before may still be answered after it.)
pub async fn release(
    store: &SecretStore,
    request: &ReleaseRequest<'_>,
    checked: Option<&str>,
    now_ms: u64,
) -> Result<KeeperReply, StoreError> {
    let ReleaseRequest {
        claims,
        identity,
        signature,
    } = *request;
    let worker_key = parse_public_key(&claims.worker_hpke_key).expect("checked by check_claims");
    let read = store.release_read(&claims.tenant, &claims.secrets).await?;
    let policy = match read.policy {
        Ok(policy) => policy,
        Err(what) => {
            warn!(tenant = %claims.tenant, job_id = %claims.job_id, worker = %identity.worker_id, "release refused: {what} was not sealed by this keeper");
            return Ok(unsealed_policy(&what));
        }
    };
    if policy.as_deref() != checked {
        if let Err(why) = check_claims(policy.as_deref(), claims, identity, signature, now_ms) {
            return Ok(KeeperReply::refuse(
                KeeperErrorCode::SecretReleaseDenied,
                format!("the tenant's release policy changed while the release was decided: {why}"),
            ));
        }
    }
    // Every version there, or nothing opened.
    if let Some((secret, _)) = claims
        .secrets
        .iter()
        .zip(&read.values)
        .find(|(_, stored)| stored.is_none())
    {
        return Ok(KeeperReply::refuse(
            KeeperErrorCode::SecretNotFound,
            format!(
                "tenant {} has no secret {} version {}",
                claims.tenant, secret.name, secret.version
            ),
        ));
    }
    let mut released = Vec::with_capacity(claims.secrets.len());
    for (secret, stored) in claims.secrets.iter().zip(read.values) {
        // Opened only now that the release is decided, in the order asked.
        let Some(value) = store.open_released(&claims.tenant, secret, stored)? else {
            return Ok(KeeperReply::refuse(
                KeeperErrorCode::SecretNotFound,
                format!(
                    "tenant {} has no secret {} version {}",
                    claims.tenant, secret.name, secret.version
                ),
            ));
        };
        let Ok(value) = seal(
            &worker_key,
            RELEASE_INFO,
            &release_aad(claims, secret),
            &value,
        ) else {
            return Ok(KeeperReply::refuse(
                KeeperErrorCode::InvalidRequest,
                "worker_hpke_key cannot be sealed to",
            ));
        };
        released.push(Released {
            secret: secret.clone(),
            value,
        });
    }
    Ok(KeeperReply {
        released: Some(released),
        ..KeeperReply::default()
    })
}

/// A worker's `release` request: what it claims, who it is, and its signature over the claims.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseRequest<'a> {
    /// The claims.
    pub claims: &'a ReleaseClaims,
    /// The worker's identity, with its evidence.
    pub identity: &'a WorkerIdentity,
    /// The identity key's signature over the claims (base64).
    pub signature: &'a str,
}

/// The refusal of a release under a policy this keeper did not seal (`what` names it).
pub fn unsealed_policy(what: &str) -> KeeperReply {
    KeeperReply::refuse(
        KeeperErrorCode::SecretReleaseDenied,
        format!("{what} does not open under this keeper's key: it was not set through the keeper (or under another key); the owner must set it again"),
    )
}
