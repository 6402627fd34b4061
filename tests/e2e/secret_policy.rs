//! A release and a change of its owner's policy at the same time (PROTOCOL.md §12): the keeper
//! decides a release under the policy it reads together with the values, so a release checked
//! under a policy that the owner has replaced since is decided again under the new one. Drives
//! the keeper's own release decision (`dtee_keeper::release::release`, what the keeper's
//! request handler calls once the first policy check passed) against the real Redis, with the
//! policy changed between that check and the release, where the handler has no hook.

use dtee_keeper::release::{check_claims, release, ReleaseRequest};
use dtee_keeper::store::SecretStore;
use dtee_schemas::job::encode_base64;
use dtee_schemas::secrets::{
    release_aad, HpkeKeyPair, KeeperErrorCode, KeeperReply, ReleaseClaims, SecretVersion,
    RELEASE_INFO,
};
use dtee_tests::TestEnv;

const TENANT: &str = "dtee-test-alice";
const SOFTWARE: &str = "allow_software = true\n";

/// A worker's signed request for `secrets` of `TENANT` (name and version), with a software
/// identity, and the key its values are sealed to.
fn request(
    secrets: &[(&str, u64)],
) -> (
    ReleaseClaims,
    dtee_schemas::attestation::evidence::WorkerIdentity,
    String,
    HpkeKeyPair,
) {
    let attestor = dtee_tests::software_attestor("worker", dtee_schemas::Digest::of(b"a worker"));
    let hpke = HpkeKeyPair::generate();
    let claims = ReleaseClaims {
        tenant: TENANT.to_owned(),
        job_id: dtee_schemas::Digest::of(b"a job"),
        secrets: secrets
            .iter()
            .map(|(name, version)| SecretVersion {
                name: (*name).to_owned(),
                version: *version,
            })
            .collect(),
        worker_hpke_key: hpke.public_hex(),
        issued_at_unix_ms: dtee_schemas::run::unix_ms(),
    };
    let signature = encode_base64(&attestor.sign(&claims.signed_bytes()));
    (claims, attestor.identity(), signature, hpke)
}

/// The values released, each opened for the secret it is labelled with, in the order asked.
fn released_values(
    reply: &KeeperReply,
    claims: &ReleaseClaims,
    hpke: &HpkeKeyPair,
) -> Vec<Vec<u8>> {
    let released = reply.released.as_ref().expect("released");
    let names: Vec<&SecretVersion> = released.iter().map(|r| &r.secret).collect();
    assert_eq!(names, claims.secrets.iter().collect::<Vec<_>>());
    released
        .iter()
        .map(|r| {
            hpke.open(&r.value, RELEASE_INFO, &release_aad(claims, &r.secret))
                .expect("opens with the worker's key")
                .to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_decided_under_the_policy_read_with_its_values() {
    let env = TestEnv::new("secret-policy-race").await;
    let (at_rest, _) = dtee_keeper::derive_keys(&rand::random());
    let store = SecretStore::new(env.client.redis(), env.namespace.clone(), &at_rest);
    assert_eq!(
        store.put(TENANT, "key", b"alice's value").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.put(TENANT, "other", b"another value").await.unwrap(),
        Some(1)
    );
    let both: [&[u8]; 2] = [b"another value", b"alice's value"];
    let (claims, identity, signature, hpke) = request(&[("other", 1), ("key", 1)]);
    let asked = ReleaseRequest {
        claims: &claims,
        identity: &identity,
        signature: &signature,
    };
    let now = dtee_schemas::run::unix_ms();
    let tpm_only = format!("[tpm]\nallowed_aks = [\"{}\"]\n", "ab".repeat(32));

    // The policy checked is still in force: released.
    store.set_policy(TENANT, SOFTWARE).await.unwrap();
    check_claims(Some(SOFTWARE), &claims, &identity, &signature, now).expect("accepted");
    let reply = release(&store, &asked, Some(SOFTWARE), now).await.unwrap();
    assert!(reply.error.is_none(), "{:?}", reply.error);
    assert_eq!(released_values(&reply, &claims, &hpke), both);

    // Checked under the software policy, then the owner allowed only a TPM: refused, and
    // nothing released.
    store.set_policy(TENANT, &tpm_only).await.unwrap();
    let reply = release(&store, &asked, Some(SOFTWARE), now).await.unwrap();
    let error = reply.error.expect("refused under the new policy");
    assert_eq!(error.code, KeeperErrorCode::SecretReleaseDenied);
    assert!(
        error.message.contains("changed") && error.message.contains("software"),
        "{}",
        error.message
    );
    assert!(reply.released.is_none());

    // Removed since: no policy, nothing released.
    let mut redis = env.client.redis();
    redis::cmd("DEL")
        .arg(env.namespace.secret_policy_key(TENANT))
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let reply = release(&store, &asked, Some(SOFTWARE), now).await.unwrap();
    assert_eq!(
        reply.error.expect("no policy").code,
        KeeperErrorCode::SecretReleaseDenied
    );

    // Replaced by a policy that was not sealed by this keeper (written by another login of
    // Redis): refused as the first check refuses it.
    redis::cmd("SET")
        .arg(env.namespace.secret_policy_key(TENANT))
        .arg(vec![7u8; 40])
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let reply = release(&store, &asked, Some(SOFTWARE), now).await.unwrap();
    let error = reply.error.expect("refused");
    assert_eq!(error.code, KeeperErrorCode::SecretReleaseDenied);
    assert!(error.message.contains("does not open"), "{}", error.message);

    // Changed to another policy that also accepts the worker: decided again, and released.
    let also_software = "allow_software = true\nmax_evidence_age_secs = 3600\n";
    store.set_policy(TENANT, also_software).await.unwrap();
    let reply = release(&store, &asked, Some(SOFTWARE), now).await.unwrap();
    assert!(reply.error.is_none(), "{:?}", reply.error);
    assert_eq!(released_values(&reply, &claims, &hpke), both);

    // A version that is not there (after one that is): not found, nothing released.
    let (claims, identity, signature, _) = request(&[("other", 1), ("key", 2)]);
    let asked = ReleaseRequest {
        claims: &claims,
        identity: &identity,
        signature: &signature,
    };
    let reply = release(&store, &asked, Some(also_software), now)
        .await
        .unwrap();
    let error = reply.error.expect("not found");
    assert_eq!(error.code, KeeperErrorCode::SecretNotFound);
    assert!(error.message.contains("key version 2"), "{}", error.message);
    assert!(reply.released.is_none());
    env.cleanup().await;
}
