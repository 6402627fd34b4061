//! A job whose message expired (a per-message TTL, `expiration`) is treated as never
//! submitted: the broker dead-letters it into a queue that keeps nothing (`<ns>.dead.expired`),
//! so nothing is published, cached or recorded (an answer under the job id would reach every
//! waiter on it, and a copy of another tenant's job must not decide it), and a tenant's flood
//! of such messages never reaches the shared dead-letter queue, where it would push out other
//! tenants' dead letters. Submitted again, the job runs.

use std::time::Duration;

use dtee_schemas::job::JobSpec;
use dtee_schemas::protocol;
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::TestEnv;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

/// Publishes `body` as the job `id` of `spec` through the jobs exchange with a per-message TTL,
/// as any AMQP client may.
async fn publish_expiring(env: &TestEnv, spec: &JobSpec, body: &[u8], id: &str, ttl_ms: u32) {
    let channel = env.client.connection().create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let properties = BasicProperties::default()
        .with_user_id(env.client.tenant().into())
        .with_content_type(protocol::CONTENT_TYPE_JSON.into())
        .with_message_id(id.into())
        .with_type(protocol::JOB_MESSAGE_TYPE.into())
        .with_delivery_mode(2)
        .with_expiration(ttl_ms.to_string().into());
    channel
        .basic_publish(
            env.namespace.jobs_exchange().into(),
            protocol::submit_routing_key(env.client.tenant(), &protocol::job_routing_key(spec))
                .as_str()
                .into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = channel.close(200, "published".into()).await;
}

/// Waits until the job queues of `route` are empty (the messages expired).
async fn until_expired(env: &TestEnv, route: &str) {
    for _ in 0..200 {
        if env.queue_depth(route).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the messages did not expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_is_dropped_unanswered_and_runs_when_submitted_again() {
    let env = TestEnv::new("dead-letter-expired").await;
    // Declare the topology, then leave the queue without a consumer.
    env.start_worker().await.shutdown().await.unwrap();
    let dead = env.namespace.dead_letter_queue();

    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"late"), output("out", 64)];
    let id = dtee_schemas::job_id(&spec).unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    let waiter = env.client.waiter().await.unwrap();
    let watch = waiter.watch_fresh(&id).await.unwrap();
    // The job as the client sends it, with a 50 ms message TTL.
    publish_expiring(&env, &spec, &body, id.as_str(), 50).await;
    until_expired(&env, "wasm").await;
    assert_eq!(
        env.queue_depth_of(&dead).await,
        0,
        "an expired job reached the dead-letter queue"
    );
    assert_eq!(env.queue_depth_of(&env.namespace.expired_sink()).await, 0);

    let worker = env.start_worker().await;
    let unanswered = watch.result(Duration::from_secs(2)).await;
    assert!(
        unanswered.is_err(),
        "an expired job was answered: {unanswered:?}"
    );
    assert!(
        env.client.cached_result(&id).await.unwrap().is_none(),
        "an expired job left a cached answer"
    );
    let result = env.run(&spec).await;
    assert!(result.succeeded(), "{:?}", result.error);
    assert_eq!(result.output("out").unwrap().bytes().unwrap(), b"late");
    waiter.close().await;
    worker.shutdown().await.unwrap();
    env.cleanup().await;
}

/// A tenant's flood of messages with a TTL of 0 (each expires into the dead-letter exchange at
/// once) leaves the shared dead-letter queue empty. Before, the flood filled the dead-letter
/// queue (bounded, dropping its oldest: other tenants' dead letters). A job dead-lettered for
/// its delivery limit still reaches that queue and is answered (tests/e2e/dead_letter.rs).
/// The dead-letter exchange starts as an earlier dtee's fanout exchange, which the worker
/// replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_expiring_jobs_never_reaches_the_dead_letter_queue() {
    let env = TestEnv::new("dead-letter-flood").await;
    // The dead-letter exchange as an earlier dtee declared it (a fanout exchange with the
    // dead-letter queue bound): a worker replaces it.
    let channel = env.client.connection().create_channel().await.unwrap();
    let (exchange, dead) = (
        env.namespace.dead_letter_exchange(),
        env.namespace.dead_letter_queue(),
    );
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(dead.as_str().into(), QueueDeclareOptions::durable(), quorum)
        .await
        .unwrap();
    channel
        .queue_bind(
            dead.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "declared".into()).await;
    env.start_worker().await.shutdown().await.unwrap();
    let mut spec = wasm_job(env.put_kernel("echo").await, "echo");
    spec.buffers = vec![inline_input("in", b"flood"), output("out", 64)];
    let id = dtee_schemas::job_id(&spec).unwrap();
    let body =
        dtee_schemas::canonical::to_canonical_vec(&serde_json::to_value(&spec).unwrap()).unwrap();
    for _ in 0..500 {
        publish_expiring(&env, &spec, &body, id.as_str(), 0).await;
    }
    until_expired(&env, "wasm").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        env.queue_depth_of(&dead).await,
        0,
        "expired jobs reached the shared dead-letter queue"
    );

    env.cleanup().await;
}
