//! One tenant must not decide another tenant's job: not through an expired copy that the broker
//! dead-letters, and not through a revocation (`dtee cancel`).

use std::time::Duration;

use dtee_schemas::job::AccessMode;
use dtee_schemas::protocol;
use dtee_schemas::state::StateKey;
use dtee_schemas::{ErrorCode, JobSpec};
use dtee_submitter::builder::{inline_input, output, state, wasm_job};
use dtee_tests::TestEnv;
use dtee_worker::stats::Stats;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;

/// Polls until `queue` holds `depth` messages.
async fn until_depth(env: &TestEnv, queue: &str, depth: u32) {
    for _ in 0..600 {
        if env.queue_depth_of(queue).await == depth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{queue} never held {depth} messages");
}

/// Publishes `spec` as `user` with a per-message TTL (`expiration`), the way any AMQP client
/// may.
async fn publish_expiring(env: &TestEnv, user: &str, spec: &JobSpec, expiration_ms: u32) {
    env.acts_as(user);
    let connection = dtee_tests::amqp_connect(&dtee_tests::tenant_amqp_url(user)).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(spec).unwrap()).unwrap();
    let properties = BasicProperties::default()
        .with_user_id(user.into())
        .with_message_id(dtee_schemas::job_id(spec).unwrap().as_str().into())
        .with_content_type(protocol::CONTENT_TYPE_JSON.into())
        .with_type(protocol::JOB_MESSAGE_TYPE.into())
        .with_delivery_mode(2)
        .with_expiration(expiration_ms.to_string().into());
    let confirm = channel
        .basic_publish(
            env.namespace.jobs_exchange().into(),
            protocol::submit_routing_key(user, "wasm").as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker took the expiring copy");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_copy_of_another_tenants_job_decides_nothing() {
    let env = TestEnv::new("tenancy-expired").await;
    // Declare the topology, then stop: the copy expires in the queue, with no worker to take it.
    env.start_worker().await.shutdown().await.unwrap();
    let alice = env.tenant_client("dtee-test-alice").await;
    let key = format!("dtee-test-alice/{}/counter", env.namespace);
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    spec.buffers = vec![state("counter", &key, AccessMode::ReadWrite, true)];
    let id = dtee_schemas::job_id(&spec).unwrap();

    // Bob publishes a copy of Alice's job that expires after 50 ms: the broker dead-letters it.
    publish_expiring(&env, "dtee-test-bob", &spec, 50).await;
    let dead = env.namespace.dead_letter_queue();
    until_depth(&env, &dead, 1).await;
    let worker = env.start_worker().await;
    until_depth(&env, &dead, 0).await; // handled and acked
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cached = env.client.cached_result(&id).await.unwrap();
    assert!(
        cached.is_none(),
        "an expired copy cached an answer for Alice's job: {:?}",
        cached.and_then(|r| r.error_code())
    );

    // Alice's own submission runs, and writes her state once.
    let result = dtee_tests::run_as(&alice, &spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    assert_eq!(Stats::get(&worker.stats.executed), 1);
    let state = env
        .client
        .state_get(&StateKey::parse(&key).unwrap())
        .await
        .unwrap();
    assert_eq!(
        state,
        (Some(1u64.to_le_bytes().to_vec()), 1),
        "written once"
    );
    alice.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cancels_only_its_own_jobs() {
    let env = TestEnv::new("tenancy-cancel").await;
    // The usual order, revocation read before the run (tests/e2e/late.rs covers tenancy of
    // revocations read after a short run).
    let worker = env
        .start_worker_with(|config| config.late_answers = false)
        .await;
    let alice = env.tenant_client("dtee-test-alice").await;
    let bob = env.tenant_client("dtee-test-bob").await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"hello"), output("out", 8)];

    // Bob revokes Alice's (predictable) job id: Alice's job still runs.
    spec.nonce = Some("bob cancels alice's job".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    bob.cancel(&id, Duration::from_secs(60)).await.unwrap();
    let result = dtee_tests::run_as(&alice, &spec).await;
    assert!(
        result.succeeded(),
        "bob's cancel decided alice's job: {:?}",
        result.error
    );

    // Alice revokes her own job: it is answered `cancelled` without running...
    spec.nonce = Some("alice cancels her own".to_owned());
    let id = dtee_schemas::job_id(&spec).unwrap();
    alice.cancel(&id, Duration::from_secs(60)).await.unwrap();
    let result = dtee_tests::run_as(&alice, &spec).await;
    assert_eq!(result.error_code(), Some(ErrorCode::Cancelled));
    assert_eq!(Stats::get(&worker.stats.executed), 1);
    // ...and that answer is not the stateless job's answer for everyone: Bob's identical job
    // submitted afterwards runs.
    let result = dtee_tests::run_as(&bob, &spec).await;
    assert!(
        result.succeeded(),
        "alice's cancel decided bob's job: {:?}",
        result.error
    );
    assert_eq!(Stats::get(&worker.stats.executed), 2);

    alice.close().await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_overwritten_by_another_tenant_heals_on_the_owners_next_upload() {
    // Uploads are SET NX, but Redis's ACLs cannot insist on NX: any user that may store blobs
    // can overwrite one with a plain SET. The digest check keeps the junk from running; the
    // worker then deletes it, so that the owner's next upload stores the right bytes again
    // (before, the junk stayed until an operator removed it, and every upload was a no-op).
    let env = TestEnv::new("blob-vandal").await;
    let worker = env.start_worker().await;
    // The kernel (never compiled on this worker, so read from Redis).
    let kernel = env.put_kernel("echo").await;
    let mut spec = wasm_job(kernel.clone(), "echo");
    spec.buffers = vec![inline_input("in", b"inline"), output("out", 32)];
    vandalise(&env, &kernel, &spec, ErrorCode::KernelHashMismatch).await;
    env.put_kernel("echo").await; // the owner uploads again, as `dtee run` does
    spec.nonce = Some("healed".to_owned());
    assert!(env.run(&spec).await.succeeded());
    // An input blob (never read on this worker, so not in its blob cache).
    let input = env.client.put_blob(b"an input blob").await.unwrap().0;
    spec.buffers[0] = dtee_submitter::builder::blob_input("in", input.clone());
    vandalise(&env, &input, &spec, ErrorCode::InputNotFound).await;
    env.client.put_blob(b"an input blob").await.unwrap();
    spec.nonce = Some("input healed".to_owned());
    let result = env.run(&spec).await;
    assert_eq!(
        result.output("out").unwrap().bytes().unwrap()[..13],
        *b"an input blob"
    );
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// Overwrites the blob `digest` with junk (a plain SET, as any user that may store blobs can),
/// runs `spec`, which names it, and checks that the job failed with `code` and that the worker
/// deleted the junk.
async fn vandalise(env: &TestEnv, digest: &dtee_schemas::Digest, spec: &JobSpec, code: ErrorCode) {
    let key = env.namespace.blob_key(digest);
    let mut vandal = env.client.redis();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b"junk".as_slice())
        .query_async(&mut vandal)
        .await
        .unwrap();
    let result = env.run(spec).await;
    assert_eq!(result.error_code(), Some(code), "{result:?}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut vandal)
        .await
        .unwrap();
    assert!(!exists, "the blob holding junk ({digest}) was deleted");
}
