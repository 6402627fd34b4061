//! A job whose message expired (a per-message TTL, `expiration`) is treated as never
//! submitted: the dead-letter handler acks it and publishes, caches and records nothing (an
//! answer under the job id would reach every waiter on it, and a copy of another tenant's job
//! must not decide it). Submitted again, the job runs.

use std::time::Duration;

use dtee_schemas::protocol;
use dtee_submitter::builder::{inline_input, output, wasm_job};
use dtee_tests::TestEnv;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

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
    let channel = env.client.connection().create_channel().await.unwrap();
    let properties = BasicProperties::default()
        .with_user_id(env.client.tenant().into())
        .with_content_type(protocol::CONTENT_TYPE_JSON.into())
        .with_message_id(id.as_str().into())
        .with_type(protocol::JOB_MESSAGE_TYPE.into())
        .with_delivery_mode(2)
        .with_expiration("50".into());
    channel
        .basic_publish(
            env.namespace.jobs_exchange().into(),
            protocol::submit_routing_key(env.client.tenant(), &protocol::job_routing_key(&spec))
                .as_str()
                .into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await
        .unwrap();
    for _ in 0..200 {
        if env.queue_depth_of(&dead).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.queue_depth_of(&dead).await, 1, "the message expired");

    let worker = env.start_worker().await;
    for _ in 0..200 {
        if env.queue_depth_of(&dead).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.queue_depth_of(&dead).await,
        0,
        "the dead letter was taken"
    );
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
