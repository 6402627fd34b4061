//! Result routing: a result reaches only the tenant whose delivery it answers. Results go to
//! `<ns>.results` under `<user_id>.<job id>`, and RabbitMQ topic permissions pin each tenant's
//! bindings to its own prefix.

use std::time::Duration;

use dtee_schemas::job::AccessMode;
use dtee_schemas::protocol::result_routing_key;
use dtee_schemas::ErrorCode;
use dtee_submitter::builder::{state, wasm_job};
use dtee_tests::{TestEnv, RESULT_TIMEOUT};
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_a_copy_reaches_only_the_tenant_that_sent_the_copy() {
    let env = TestEnv::new("result-routing").await;
    let worker = env.start_worker().await;
    let alice = env.tenant_client("dtee-test-route-a").await;
    let bob = env.tenant_client("dtee-test-route-b").await;
    let mut spec = wasm_job(env.put_kernel("increment").await, "increment");
    let key = format!("dtee-test-route-a/{}/counter", env.namespace);
    spec.buffers = vec![state("counter", &key, AccessMode::ReadWrite, true)];
    let id = dtee_schemas::job_id(&spec).unwrap();

    // Alice is waiting for her job; Bob publishes a copy of it first and is refused.
    let alice_waiter = alice.waiter().await.unwrap();
    let alice_watch = alice_waiter.watch_fresh(&id).await.unwrap();
    let bob_waiter = bob.waiter().await.unwrap();
    let bob_watch = bob_waiter.watch_fresh(&id).await.unwrap();
    bob.submit(&spec).await.unwrap();
    let refusal = bob_watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(refusal.error_code(), Some(ErrorCode::StateAccessDenied));
    bob_waiter.close().await;
    // Give a wrongly routed copy of the refusal time to reach Alice's queue.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Alice's waiter took nothing from Bob's copy: it gets her own success.
    alice.submit(&spec).await.unwrap();
    let result = alice_watch.result(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        result.error_code(),
        None,
        "alice's waiter took another tenant's answer: {:?}",
        result.error
    );
    assert!(result.succeeded());
    alice_waiter.close().await;
    alice.close().await;
    bob.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_keep_a_tenant_to_its_own_result_keys() {
    // The permission that deploy/rabbitmq/definitions.json gives submitters on the results
    // exchange, set here on this test's exchange in the default vhost.
    let env = TestEnv::new("result-perm").await;
    let worker = env.start_worker().await;
    let carol = "dtee-test-route-c";
    dtee_tests::ensure_tenant_user(carol);
    let exchange = env.namespace.results_exchange();
    assert!(dtee_tests::rabbitmqctl(&[
        "set_topic_permissions",
        "-p",
        "/",
        carol,
        &exchange,
        "^$",
        r"^{username}\.(sha256:[0-9a-f]{64}|reply\.amq\.gen-[A-Za-z0-9_-]{1,64})$",
    ]));
    let client = env.tenant_client(carol).await;
    let echo = env.put_kernel("echo").await;
    let mut spec = wasm_job(echo, "echo");
    spec.buffers = vec![
        dtee_submitter::builder::inline_input("in", b"mine"),
        dtee_submitter::builder::output("out", 16),
    ];
    // Carol's own key: bound, and her result arrives.
    let waiter = client.waiter().await.unwrap();
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    client.submit(&spec).await.unwrap();
    assert!(watch.result(RESULT_TIMEOUT).await.unwrap().succeeded());
    waiter.close().await;
    // Another tenant's key, the anonymous prefix, and wildcards: refused by RabbitMQ.
    let other = result_routing_key(Some("dtee-test-route-a"), &id);
    let anonymous = result_routing_key(None, &id);
    for key in [
        other.as_str(),
        anonymous.as_str(),
        "#",
        "*.#",
        "dtee-test-route-c.#",
    ] {
        let channel = client.connection().create_channel().await.unwrap();
        let queue = dtee_tests::scratch_queue(&channel, "").await;
        let bound = channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(bound.is_err(), "carol bound {key}");
    }
    assert!(dtee_tests::rabbitmqctl(&[
        "clear_topic_permissions",
        "-p",
        "/",
        carol,
        &exchange
    ]));
    client.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_binding_brings_every_submitted_result_and_nobody_elses() {
    let env = TestEnv::new("result-reply").await;
    let worker = env.start_worker().await;
    let alice = env.tenant_client("dtee-test-reply-a").await;
    let bob = env.tenant_client("dtee-test-reply-b").await;
    let echo = env.put_kernel("echo").await;
    let job = |text: &str| {
        let mut spec = wasm_job(echo.clone(), "echo");
        spec.buffers = vec![
            dtee_submitter::builder::inline_input("in", text.as_bytes()),
            dtee_submitter::builder::output("out", 16),
        ];
        spec
    };
    // Alice's waiter binds once; twenty jobs come back through that one binding.
    let waiter = alice.waiter().await.unwrap();
    for idx in 0..20 {
        let spec = job(&format!("reply {idx}"));
        let id = dtee_schemas::job_id(&spec).unwrap();
        let watch = waiter.watch_reply(&id).await.unwrap();
        alice
            .submit_replying(&spec, waiter.reply_to())
            .await
            .unwrap();
        let result = watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
        assert!(result.succeeded(), "{result:?}");
        assert_eq!(result.job_id, id);
    }
    // Bob names Alice's queue as his reply_to: his result is routed under his own user
    // (bob.reply.<alice's queue>), which nobody bound, and never reaches Alice.
    let spec = job("bob's");
    let id = dtee_schemas::job_id(&spec).unwrap();
    let watch = waiter.watch_reply(&id).await.unwrap();
    let bob_waiter = bob.waiter().await.unwrap();
    let bob_watch = bob_waiter.watch_fresh(&id).await.unwrap();
    bob.submit_replying(&spec, waiter.reply_to()).await.unwrap();
    let bobs = bob_watch.result(dtee_tests::RESULT_TIMEOUT).await.unwrap();
    assert!(bobs.succeeded());
    assert!(matches!(
        watch.result(std::time::Duration::from_secs(2)).await,
        Err(dtee_submitter::ClientError::Timeout(_))
    ));
    bob_waiter.close().await;
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// `watch_reply_only` reads nothing before the job is published (PROTOCOL §9: step 3 is
/// optional on the reply path), and misses nothing: a job whose result is cached is answered
/// from the cache through the reply queue, with the cached bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_watch_that_reads_nothing_gets_a_cached_answer_through_the_reply_queue() {
    let env = TestEnv::new("reply-only").await;
    // The usual order: a short stateless repeat settled late would run (tests/e2e/late.rs).
    let worker = env
        .start_worker_with(|config| config.late_answers = false)
        .await;
    let echo = env.put_kernel("echo").await;
    let mut spec = wasm_job(echo, "echo");
    spec.buffers = vec![
        dtee_submitter::builder::inline_input("in", b"answered once"),
        dtee_submitter::builder::output("out", 16),
    ];
    let waiter = env.client.waiter().await.unwrap();
    let mut results = Vec::new();
    for _ in 0..2 {
        let job = dtee_submitter::PreparedJob::new(&spec).unwrap();
        let watch = waiter.watch_reply_only(job.id()).await.unwrap();
        assert!(!watch.is_cached(), "nothing was read");
        env.client
            .submit_prepared(&job, Some(waiter.reply_to()))
            .await
            .unwrap();
        results.push(watch.result(RESULT_TIMEOUT).await.unwrap());
    }
    assert!(results[0].succeeded(), "{:?}", results[0]);
    assert_eq!(results[0], results[1], "the second is the cached answer");
    dtee_tests::eventually(|| dtee_worker::stats::Stats::get(&worker.stats.deduplicated) == 1)
        .await;
    assert_eq!(dtee_worker::stats::Stats::get(&worker.stats.executed), 1);
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A result stands only for the job it names: one job's genuine result, stored in Redis or
/// published under another job's id (as a worker, or anyone else who can write the result key
/// or the results exchange, could), is not taken as that other job's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stored_or_published_for_another_job_is_not_taken() {
    use dtee_submitter::builder::{inline_input, output};
    use dtee_submitter::ClientError;
    let env = TestEnv::new("another-job").await;
    let worker = env.start_worker().await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"genuine"), output("out", 16)];
    let genuine = env.run(&spec).await;
    assert!(genuine.succeeded());
    let bytes = serde_json::to_vec(&genuine).unwrap();
    spec.nonce = Some("another".to_owned());
    let other = dtee_schemas::job_id(&spec).unwrap();

    let key = env.namespace.result_key(&other);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&bytes)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();
    let refused = |error: ClientError| {
        assert!(
            matches!(&error, ClientError::ResultOfAnotherJob { expected, found }
                if *expected == other && *found == genuine.job_id),
            "{error}"
        );
    };
    refused(env.client.cached_result(&other).await.unwrap_err());
    let waiter = env.client.waiter().await.unwrap();
    match waiter.watch(&other).await {
        Ok(_) => panic!("a result of another job was taken"),
        Err(error) => refused(error),
    }
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut env.client.redis())
        .await
        .unwrap();

    let watch = waiter.watch_fresh(&other).await.unwrap();
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .basic_publish(
            env.namespace.results_exchange().into(),
            result_routing_key(Some(env.client.tenant()), &other).into(),
            lapin::options::BasicPublishOptions::default(),
            &bytes,
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        watch.result(Duration::from_millis(1500)).await,
        Err(ClientError::Timeout(_))
    ));
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A result the broker keeps refusing (here because the submitter bound a queue of its own
/// that takes nothing, `x-max-length` 0 with `reject-publish`, to its result key) is left in
/// Redis and the job acknowledged after a few resends, instead of holding the delivery, and the
/// batched acks behind it, for as long as the submitter likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_broker_keeps_refusing_is_left_in_redis_and_the_job_acked() {
    use dtee_submitter::builder::{inline_input, output};
    use dtee_worker::stats::Stats;
    let env = TestEnv::new("refused-result").await;
    let worker = env.start_worker().await;
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"refused"), output("out", 16)];
    let id = dtee_schemas::job_id(&spec).unwrap();
    let _refusing = env
        .refuse_results(&result_routing_key(Some(env.client.tenant()), &id))
        .await;
    env.client.submit(&spec).await.unwrap();
    dtee_tests::eventually(|| Stats::get(&worker.stats.acked) == 1).await;
    assert_eq!(Stats::get(&worker.stats.results_refused), 1);
    let cached = env
        .client
        .cached_result(&id)
        .await
        .unwrap()
        .expect("in Redis");
    assert!(cached.succeeded());
    assert_eq!(env.queue_depth("wasm").await, 0);
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}
